// Reading and validating a key's [keys.<alias>.renewal] table.
#include "daemon/config_reader.hpp"

#include <algorithm>
#include <charconv>
#include <functional>
#include <stdexcept>
#include <tuple>
#include <utility>

#include "daemon/mx/subject.hpp"

namespace firmad::config_detail {
namespace {

// An http:// or https:// URL with a host, an optional port and path, and no
// user, query or fragment (firmad appends its own paths and queries).
bool valid_url(std::string_view u) {
  std::string_view rest;
  if (u.starts_with("https://")) rest = u.substr(8);
  else if (u.starts_with("http://")) rest = u.substr(7);
  else return false;
  if (has_control_char(u) || u.find_first_of(" ?#@\\") != std::string_view::npos) return false;
  const std::string_view authority = rest.substr(0, rest.find('/'));
  std::string_view host = authority, port;
  if (authority.starts_with("[")) {  // [IPv6]:port
    const auto close = authority.find(']');
    if (close == std::string_view::npos || close == 1) return false;
    host = authority.substr(0, close + 1);
    if (close + 1 < authority.size()) {
      if (authority[close + 1] != ':') return false;
      port = authority.substr(close + 2);
      if (port.empty()) return false;
    }
  } else if (const auto colon = authority.find(':'); colon != std::string_view::npos) {
    host = authority.substr(0, colon);
    port = authority.substr(colon + 1);
    if (port.empty()) return false;
  }
  if (host.empty()) return false;
  if (!port.empty()) {
    unsigned n = 0;
    auto [p, ec] = std::from_chars(port.data(), port.data() + port.size(), n);
    if (ec != std::errc() || p != port.data() + port.size() || n == 0 || n > 65535) return false;
  }
  return true;
}

}  // namespace

RenewalConfig read_renewal(const Reader& r, const std::string& w, const toml::table& t) {
  using namespace std::chrono_literals;
  r.only(t, w, {"provider", "key", "key_type", "subject", "trust_anchors", "automatic", "before_days",
                "lifetime_fraction", "jitter", "retry_initial", "retry_max", "warn_days", "certificate_file",
                "chain_file", "file_owner", "file_group", "file_mode", "post_install", "post_install_timeout", "url",
                "lookup_path", "submit_path", "fetch_path", "connect_timeout", "timeout", "max_response_bytes",
                "max_redirects", "command", "helper_timeout", "helper_max_output", "acceptance_text"});
  RenewalConfig c;
  const std::optional<std::string> provider = r.string(t, w, "provider");
  if (!provider) r.fail(w + ".provider", "is required (accepted: \"idse\", \"helper\", \"est\")");
  if (*provider == "idse") c.provider = RenewalProvider::Idse;
  else if (*provider == "helper") c.provider = RenewalProvider::Helper;
  else if (*provider == "est") c.provider = RenewalProvider::Est;
  else r.fail(w + ".provider", "unknown provider '" + *provider + "' (accepted: \"idse\", \"helper\", \"est\")");

  // Keys that mean nothing to the chosen provider are refused rather than ignored.
  auto only_with = [&](std::initializer_list<std::string_view> keys, bool applies, const char* which) {
    for (std::string_view k : keys)
      if (!applies && t.get(k)) r.fail(w + "." + std::string(k), std::string("only goes with provider = ") + which);
  };
  const bool network = c.provider == RenewalProvider::Idse || c.provider == RenewalProvider::Est;
  only_with({"lookup_path", "submit_path", "fetch_path", "acceptance_text"}, c.provider == RenewalProvider::Idse,
            "\"idse\"");
  only_with({"url", "connect_timeout", "timeout", "max_response_bytes", "max_redirects"}, network,
            "\"idse\" or \"est\"");
  only_with({"command", "helper_timeout", "helper_max_output"}, c.provider == RenewalProvider::Helper, "\"helper\"");

  if (auto k = r.string(t, w, "key")) {
    if (*k == "new") c.new_key = true;
    else if (*k == "reuse") c.new_key = false;
    else r.fail(w + ".key", "accepted: \"new\", \"reuse\"");
  }
  if (auto k = r.string(t, w, "key_type")) {
    static constexpr std::string_view kTypes[] = {"rsa-2048", "rsa-3072", "rsa-4096", "ec-p256", "ec-p384"};
    if (std::find(std::begin(kTypes), std::end(kTypes), *k) == std::end(kTypes))
      r.fail(w + ".key_type", "accepted: \"rsa-2048\", \"rsa-3072\", \"rsa-4096\", \"ec-p256\", \"ec-p384\"");
    c.key_type = *k;
  }
  if (auto k = r.string(t, w, "subject")) {
    // Parsed as the renewal will parse it, so that what OpenSSL refuses
    // (unknown types, C=MEX) is found at load, not at renewal.
    if (!k->empty()) {
      try {
        parse_subject(*k);
      } catch (const std::invalid_argument& e) {
        r.fail(w + ".subject", std::string(e.what()) + ", e.g. \"/C=MX/O=Empresa/CN=Nombre\"");
      }
    }
    c.subject = *k;
  }
  c.trust_anchors = r.strings(t, w, "trust_anchors");
  if (c.trust_anchors.empty())
    r.fail(w + ".trust_anchors", "is required: PEM files of the CAs a new certificate must chain to, e.g. [\"/etc/firmad/ca.pem\"]");
  for (const std::string& f : c.trust_anchors)
    if (!absolute_path(f)) r.fail(w + ".trust_anchors", "'" + f + "' is not an absolute path");

  // Scheduling.
  if (auto v = r.boolean(t, w, "automatic")) c.automatic = *v;
  if (auto v = r.integer(t, w, "before_days", 1, 3650)) c.before_days = static_cast<int>(*v);
  if (const toml::node* n = t.get("lifetime_fraction")) {
    if (c.before_days) r.fail(w + ".lifetime_fraction", "only one of before_days and lifetime_fraction may be set");
    const double f = n->is_floating_point() ? n->as_floating_point()->get() : -1;
    if (!(f > 0 && f < 1)) r.fail(w + ".lifetime_fraction", "must be a number greater than 0 and less than 1, e.g. 0.66");
    c.lifetime_fraction = f;
  }
  if (auto v = r.seconds(t, w, "jitter", 0s, 24h * 30)) c.jitter = *v;
  if (auto v = r.seconds(t, w, "retry_initial", 1s, 24h)) c.retry_initial = *v;
  if (auto v = r.seconds(t, w, "retry_max", 1s, 24h * 30)) c.retry_max = *v;
  if (c.retry_initial > c.retry_max)
    r.fail(w + ".retry_initial", "must not be longer than retry_max (" + format_duration(c.retry_max) + ")");
  if (const toml::node* n = t.get("warn_days")) {
    const toml::array* a = n->as_array();
    if (!a) r.fail(w + ".warn_days", "must be an array of integers from 1 to 3650");
    c.warn_days.clear();
    for (const toml::node& e : *a) {
      if (!e.is_integer() || e.as_integer()->get() < 1 || e.as_integer()->get() > 3650)
        r.fail(w + ".warn_days", "must be an array of integers from 1 to 3650");
      c.warn_days.push_back(static_cast<int>(e.as_integer()->get()));
    }
    std::sort(c.warn_days.begin(), c.warn_days.end(), std::greater<>());
    c.warn_days.erase(std::unique(c.warn_days.begin(), c.warn_days.end()), c.warn_days.end());
  }

  // Installing.
  for (auto [key, field] : {std::pair{"certificate_file", &c.certificate_file}, std::pair{"chain_file", &c.chain_file}}) {
    if (auto v = r.string(t, w, key)) {
      if (!absolute_path(*v)) r.fail(w + "." + key, "must be an absolute path");
      *field = *v;
    }
  }
  const bool files = !c.certificate_file.empty() || !c.chain_file.empty();
  for (std::string_view k : {"file_owner", "file_group", "file_mode"})
    if (t.get(k) && !files) r.fail(w + "." + std::string(k), "only goes with certificate_file or chain_file");
  if (auto v = r.id_name(t, w, "file_owner")) c.file_owner = r.user(w + ".file_owner", *v);
  if (auto v = r.id_name(t, w, "file_group")) c.file_group = r.group(w + ".file_group", *v);
  if (auto v = r.string(t, w, "file_mode")) {
    const std::optional<mode_t> mode = octal_mode(*v);
    if (!mode) r.fail(w + ".file_mode", "must be an octal mode string of at most \"0777\", e.g. \"0644\"");
    c.file_mode = *mode;
  }
  for (auto [key, argv] : {std::pair{"post_install", &c.post_install}, std::pair{"command", &c.command}}) {
    *argv = r.strings(t, w, key);
    if (t.get(key) && (argv->empty() || !absolute_path(argv->front())))
      r.fail(w + "." + key, "must be a command line whose first element is an absolute program path, e.g. [\"/usr/bin/true\"]");
    for (const std::string& arg : *argv)
      if (arg.find('\0') != std::string::npos) r.fail(w + "." + key, "arguments must not contain NUL characters");
  }
  if (auto v = r.duration(t, w, "post_install_timeout", 100ms, 1h)) c.post_install_timeout = *v;

  // Network.
  if (auto v = r.string(t, w, "url")) {
    if (!valid_url(*v))
      r.fail(w + ".url", "must be an http:// or https:// URL with a host and no user, query or fragment, e.g. " +
                             std::string(c.provider == RenewalProvider::Est ? "\"https://ca.example.com/.well-known/est\""
                                                                            : "\"https://idse.imss.gob.mx\""));
    // Paths are appended to it: "https://host/" + "/idse/..." would double the slash.
    c.url = v->substr(0, v->find_last_not_of('/') + 1);
  } else if (network) {
    r.fail(w + ".url", "is required with provider = \"" + *provider + "\"");
  }
  for (auto [key, field, placeholder] : {std::tuple{"lookup_path", &c.lookup_path, "{npie}"},
                                         std::tuple{"submit_path", &c.submit_path, ""},
                                         std::tuple{"fetch_path", &c.fetch_path, "{serial}"}}) {
    if (auto v = r.string(t, w, key)) {
      if (v->empty() || (*v)[0] != '/' || has_control_char(*v) || v->find_first_of(" #") != std::string::npos)
        r.fail(w + "." + key, "must be a path starting with '/', without spaces or a fragment");
      if (*placeholder && v->find(placeholder) == std::string::npos)
        r.fail(w + "." + key, std::string("must contain ") + placeholder + ", e.g. \"" + *field + "\"");
      *field = *v;
    }
  }
  if (auto v = r.duration(t, w, "connect_timeout", 100ms, 10min)) c.connect_timeout = *v;
  if (auto v = r.duration(t, w, "timeout", 1s, 1h)) c.timeout = *v;
  if (auto v = r.integer(t, w, "max_response_bytes", 1024, 64 * 1024 * 1024)) c.max_response_bytes = *v;
  if (auto v = r.integer(t, w, "max_redirects", 0, 10)) c.max_redirects = static_cast<int>(*v);

  // helper.
  if (c.provider == RenewalProvider::Helper && c.command.empty())
    r.fail(w + ".command", "is required with provider = \"helper\", e.g. [\"/usr/libexec/certmonger/my-ca-helper\"]");
  if (auto v = r.duration(t, w, "helper_timeout", 1s, 1h)) c.helper_timeout = *v;
  if (auto v = r.integer(t, w, "helper_max_output", 1024, 64 * 1024 * 1024)) c.helper_max_output = *v;

  if (auto v = r.string(t, w, "acceptance_text")) {
    if (v->empty() || v->size() > 4096 || v->find('\0') != std::string::npos)
      r.fail(w + ".acceptance_text", "must be a non-empty text of at most 4096 bytes");
    c.acceptance_text = *v;
  }
  return c;
}

}  // namespace firmad::config_detail
