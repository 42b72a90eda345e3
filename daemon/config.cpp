// Loading and validating firmad.toml with toml++.
#include "daemon/config.hpp"

#include <grp.h>
#include <pwd.h>

#include <openssl/err.h>
#include <openssl/objects.h>
#include <openssl/x509.h>

#include <algorithm>
#include <charconv>
#include <cstdint>
#include <functional>
#include <limits>
#include <memory>
#include <new>
#include <set>
#include <tuple>
#include <utility>
#include <toml++/toml.h>

#include "daemon/business_days.hpp"

namespace firmad {
namespace {

constexpr std::pair<std::string_view, std::uint64_t> kUnits[] = {
    {"d", 86400000}, {"h", 3600000}, {"m", 60000}, {"s", 1000}, {"ms", 1}};

// "500ms", "60s", "10m", "6h", "2d": digits and one unit; nullopt for anything else.
std::optional<std::chrono::milliseconds> parse_duration(std::string_view s) {
  std::uint64_t value = 0;
  auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), value);
  if (ec != std::errc() || p == s.data()) return std::nullopt;
  const std::string_view unit(p, s.data() + s.size() - p);
  std::uint64_t ms_per_unit = 0;
  for (const auto& [name, ms] : kUnits)
    if (unit == name) ms_per_unit = ms;
  if (ms_per_unit == 0) return std::nullopt;
  // Anything this large is out of every accepted range anyway.
  if (value > static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max()) / ms_per_unit) return std::nullopt;
  return std::chrono::milliseconds(static_cast<std::int64_t>(value * ms_per_unit));
}

// The largest unit that writes `d` exactly: 30d, 1h, 100ms.
std::string format_duration(std::chrono::milliseconds d) {
  if (d.count() == 0) return "0s";
  for (const auto& [name, ms] : kUnits) {
    if (d.count() % static_cast<std::int64_t>(ms) == 0)
      return std::to_string(d.count() / static_cast<std::int64_t>(ms)) + std::string(name);
  }
  return std::to_string(d.count()) + "ms";  // not reached: the last unit divides everything
}

class Reader {
 public:
  explicit Reader(std::string file) : file_(std::move(file)) {}

  [[noreturn]] void fail(const std::string& key, const std::string& problem) const {
    throw ConfigError(file_ + ": " + key + ": " + problem);
  }

  // Rejects keys not in `allowed`: a typo must not silently fall back to a default.
  void only(const toml::table& t, const std::string& where, std::initializer_list<std::string_view> allowed) const {
    for (const auto& [k, v] : t) {
      if (std::find(allowed.begin(), allowed.end(), k.str()) == allowed.end()) {
        std::string list;
        for (auto a : allowed) list += (list.empty() ? "" : ", ") + std::string(a);
        fail(where.empty() ? std::string(k.str()) : where + "." + std::string(k.str()), "unknown key (accepted: " + list + ")");
      }
    }
  }

  std::optional<std::string> string(const toml::table& t, const std::string& where, std::string_view k) const {
    const toml::node* n = t.get(k);
    if (!n) return std::nullopt;
    if (!n->is_string()) fail(where + "." + std::string(k), "must be a string");
    return std::string(n->as_string()->get());
  }

  std::string required_string(const toml::table& t, const std::string& where, std::string_view k) const {
    auto v = string(t, where, k);
    if (!v || v->empty()) fail(where + "." + std::string(k), "is required and must be a non-empty string");
    return *v;
  }

  std::optional<std::int64_t> integer(const toml::table& t, const std::string& where, std::string_view k,
                                      std::int64_t lo, std::int64_t hi) const {
    const toml::node* n = t.get(k);
    if (!n) return std::nullopt;
    if (!n->is_integer() || n->as_integer()->get() < lo || n->as_integer()->get() > hi)
      fail(where + "." + std::string(k), "must be an integer from " + std::to_string(lo) + " to " + std::to_string(hi));
    return n->as_integer()->get();
  }

  std::optional<bool> boolean(const toml::table& t, const std::string& where, std::string_view k) const {
    const toml::node* n = t.get(k);
    if (!n) return std::nullopt;
    if (!n->is_boolean()) fail(where + "." + std::string(k), "must be true or false");
    return n->as_boolean()->get();
  }

  // A duration written with a unit ("500ms", "60s", "10m", "6h", "2d"), from lo to hi.
  std::optional<std::chrono::milliseconds> duration(const toml::table& t, const std::string& where, std::string_view k,
                                                    std::chrono::milliseconds lo, std::chrono::milliseconds hi) const {
    const toml::node* n = t.get(k);
    if (!n) return std::nullopt;
    const std::optional<std::chrono::milliseconds> d = n->is_string() ? parse_duration(n->as_string()->get()) : std::nullopt;
    if (!d || *d < lo || *d > hi)
      fail(where + "." + std::string(k), "must be a duration from " + format_duration(lo) + " to " + format_duration(hi) +
                                             " written with a unit, e.g. \"" + format_duration(hi / 2) +
                                             "\" (accepted units: ms, s, m, h, d)");
    return d;
  }

  // A duration as above that must also be a whole number of seconds.
  std::optional<std::chrono::seconds> seconds(const toml::table& t, const std::string& where, std::string_view k,
                                              std::chrono::seconds lo, std::chrono::seconds hi) const {
    auto d = duration(t, where, k, lo, hi);
    if (!d) return std::nullopt;
    if (d->count() % 1000 != 0) fail(where + "." + std::string(k), "must be a whole number of seconds (accepted units: s, m, h, d)");
    return std::chrono::duration_cast<std::chrono::seconds>(*d);
  }

  // An array of strings; absent: empty.
  std::vector<std::string> strings(const toml::table& t, const std::string& where, std::string_view k) const {
    std::vector<std::string> out;
    const toml::node* n = t.get(k);
    if (!n) return out;
    const toml::array* a = n->as_array();
    if (!a) fail(where + "." + std::string(k), "must be an array of strings");
    for (const toml::node& e : *a) {
      if (!e.is_string()) fail(where + "." + std::string(k), "must be an array of strings");
      out.emplace_back(e.as_string()->get());
    }
    return out;
  }

  // A user or group given as a name or a numeric id.
  std::optional<std::string> id_name(const toml::table& t, const std::string& where, std::string_view k) const {
    const toml::node* n = t.get(k);
    if (!n) return std::nullopt;
    if (n->is_string() && !n->as_string()->get().empty()) return std::string(n->as_string()->get());
    if (n->is_integer() && n->as_integer()->get() >= 0) return std::to_string(n->as_integer()->get());
    fail(where + "." + std::string(k), "must be a name or a numeric id");
  }

  uid_t user(const std::string& key, const std::string& name) const {
    uid_t id;
    if (numeric(name, id)) return id;
    const passwd* pw = getpwnam(name.c_str());
    if (!pw) fail(key, "no such user '" + name + "' (accepted: user names or numeric uids)");
    return pw->pw_uid;
  }

  gid_t group(const std::string& key, const std::string& name) const {
    gid_t id;
    if (numeric(name, id)) return id;
    const ::group* gr = getgrnam(name.c_str());
    if (!gr) fail(key, "no such group '" + name + "' (accepted: group names or numeric gids)");
    return gr->gr_gid;
  }

  std::vector<uid_t> users(const toml::table& t, const std::string& where, std::string_view k) const {
    std::vector<uid_t> out;
    for (const std::string& name : names(t, where, k)) out.push_back(user(where + "." + std::string(k), name));
    return out;
  }

  std::vector<gid_t> groups(const toml::table& t, const std::string& where, std::string_view k) const {
    std::vector<gid_t> out;
    for (const std::string& name : names(t, where, k)) out.push_back(group(where + "." + std::string(k), name));
    return out;
  }

 private:
  template <typename Id>
  static bool numeric(const std::string& s, Id& id) {
    auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), id);
    return ec == std::errc() && p == s.data() + s.size();
  }

  // A list of names or numbers.
  std::vector<std::string> names(const toml::table& t, const std::string& where, std::string_view k) const {
    std::vector<std::string> out;
    const toml::node* n = t.get(k);
    if (!n) return out;
    const toml::array* a = n->as_array();
    if (!a) fail(where + "." + std::string(k), "must be an array of names or numeric ids");
    for (const toml::node& e : *a) {
      if (e.is_string()) out.emplace_back(e.as_string()->get());
      else if (e.is_integer() && e.as_integer()->get() >= 0) out.push_back(std::to_string(e.as_integer()->get()));
      else fail(where + "." + std::string(k), "must be an array of names or numeric ids");
    }
    return out;
  }

  std::string file_;
};

const toml::table* subtable(const Reader& r, const toml::table& root, std::string_view k) {
  const toml::node* n = root.get(k);
  if (!n) return nullptr;
  if (!n->is_table()) r.fail(std::string(k), "must be a table");
  return n->as_table();
}

// "0660", "644": an octal permission string of at most 0777.
std::optional<mode_t> octal_mode(std::string_view s) {
  unsigned mode = 0;
  auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), mode, 8);
  if (ec != std::errc() || p == s.data() || p != s.data() + s.size() || mode > 0777) return std::nullopt;
  return static_cast<mode_t>(mode);
}

void read_daemon(const Reader& r, const toml::table& t, DaemonConfig& d) {
  const std::string w = "daemon";
  r.only(t, w, {"socket", "socket_mode", "socket_group", "state_directory", "max_connections",
                "max_connections_per_peer", "idle_timeout_ms", "busy_poll_us", "log_level"});
  if (auto s = r.string(t, w, "socket")) {
    if (s->empty() || (*s)[0] != '/') r.fail(w + ".socket", "must be an absolute path");
    if (s->size() >= 108) r.fail(w + ".socket", "is longer than a Unix socket path may be (107 bytes)");
    d.socket = *s;
  }
  if (auto s = r.string(t, w, "socket_mode")) {
    const std::optional<mode_t> mode = octal_mode(*s);
    if (!mode || (*mode & 0007))
      r.fail(w + ".socket_mode", "must be an octal mode string without access for others, e.g. \"0660\"");
    d.socket_mode = *mode;
  }
  if (t.get("socket_group")) d.socket_group = r.group(w + ".socket_group", r.required_string(t, w, "socket_group"));
  if (auto s = r.string(t, w, "state_directory")) d.state_directory = *s;
  if (auto v = r.integer(t, w, "max_connections", 1, 65536)) d.max_connections = *v;
  if (auto v = r.integer(t, w, "max_connections_per_peer", 1, 65536)) d.max_connections_per_peer = *v;
  if (auto v = r.integer(t, w, "idle_timeout_ms", 100, 3600000)) d.idle_timeout = std::chrono::milliseconds(*v);
  if (auto v = r.integer(t, w, "busy_poll_us", 0, 1000)) d.busy_poll = std::chrono::microseconds(*v);
  if (auto s = r.string(t, w, "log_level")) {
    if (!log::parse_level(*s, d.log_level)) r.fail(w + ".log_level", "accepted: error, warning, notice, info, debug");
  }
}

TokenConfig read_token(const Reader& r, std::string name, const toml::table& t) {
  const std::string w = "tokens." + name;
  r.only(t, w, {"module", "uri", "sessions", "queue_limit", "pin_source", "pin_file", "pin_credential",
                "refresh_interval_ms"});
  TokenConfig tok;
  tok.name = std::move(name);
  tok.module = r.required_string(t, w, "module");
  tok.uri = r.required_string(t, w, "uri");
  if (tok.uri.rfind("pkcs11:", 0) != 0) r.fail(w + ".uri", "must be a PKCS#11 URI starting with \"pkcs11:\"");
  if (auto v = r.integer(t, w, "sessions", 1, 64)) tok.sessions = *v;
  if (auto v = r.integer(t, w, "queue_limit", 1, 100000)) tok.queue_limit = *v;
  if (auto v = r.integer(t, w, "refresh_interval_ms", 100, 3600000)) tok.refresh_interval = std::chrono::milliseconds(*v);
  const std::string source = r.string(t, w, "pin_source").value_or("admin");
  if (source == "file") {
    tok.pin_source = PinSource::File;
    tok.pin_file = r.required_string(t, w, "pin_file");
    if (tok.pin_file[0] != '/') r.fail(w + ".pin_file", "must be an absolute path");
  } else if (source == "credential") {
    tok.pin_source = PinSource::Credential;
    tok.pin_credential = r.required_string(t, w, "pin_credential");
    if (tok.pin_credential.find('/') != std::string::npos) r.fail(w + ".pin_credential", "must be a credential name, not a path");
  } else if (source == "admin") {
    tok.pin_source = PinSource::Admin;
  } else {
    r.fail(w + ".pin_source", "accepted: \"file\", \"credential\", \"admin\"");
  }
  if (tok.pin_source != PinSource::File && t.get("pin_file")) r.fail(w + ".pin_file", "only goes with pin_source = \"file\"");
  if (tok.pin_source != PinSource::Credential && t.get("pin_credential"))
    r.fail(w + ".pin_credential", "only goes with pin_source = \"credential\"");
  return tok;
}

bool has_control_char(std::string_view s) {
  return std::any_of(s.begin(), s.end(), [](char c) { return static_cast<unsigned char>(c) < 0x20 || c == 0x7f; });
}

bool absolute_path(std::string_view s) { return !s.empty() && s[0] == '/' && !has_control_char(s); }

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

// Why `s` is not a subject in OpenSSL's one-line form "/C=MX/O=Empresa/CN=Nombre",
// or nullopt if it is one. Each attribute is added to a scratch X509_NAME, so
// unknown types and values OpenSSL refuses (C=MEX) are found at load, not at renewal.
std::optional<std::string> subject_problem(std::string_view s) {
  if (s.empty()) return std::nullopt;
  if (s[0] != '/' || s.size() > 1024 || has_control_char(s)) return "must start with '/' and be one line of at most 1024 characters";
  std::unique_ptr<X509_NAME, decltype(&X509_NAME_free)> name(X509_NAME_new(), X509_NAME_free);
  if (!name) throw std::bad_alloc();
  for (std::size_t pos = 1; pos <= s.size();) {
    const std::size_t end = std::min(s.find('/', pos), s.size());
    const std::string_view part = s.substr(pos, end - pos);
    pos = end + 1;
    const auto eq = part.find('=');
    if (eq == std::string_view::npos || eq == 0 || eq + 1 == part.size())
      return "'" + std::string(part) + "' is not of the form type=value";
    const std::string type(part.substr(0, eq)), value(part.substr(eq + 1));
    const std::unique_ptr<ASN1_OBJECT, decltype(&ASN1_OBJECT_free)> object(OBJ_txt2obj(type.c_str(), 0), ASN1_OBJECT_free);
    if (!object) {
      ERR_clear_error();
      return "unknown attribute type '" + type + "' (accepted: C, ST, L, O, OU, CN, serialNumber, ... or a dotted OID)";
    }
    if (X509_NAME_add_entry_by_txt(name.get(), type.c_str(), MBSTRING_UTF8,
                                   reinterpret_cast<const unsigned char*>(value.data()), static_cast<int>(value.size()),
                                   -1, 0) != 1) {
      ERR_clear_error();
      return "'" + value + "' is not a valid " + type + " value (wrong length or characters)";
    }
  }
  return std::nullopt;
}

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
    if (auto problem = subject_problem(*k)) r.fail(w + ".subject", *problem + ", e.g. \"/C=MX/O=Empresa/CN=Nombre\"");
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

KeyConfig read_key(const Reader& r, std::string alias, const toml::table& t) {
  const std::string w = "keys." + alias;
  r.only(t, w, {"token", "uri", "allow_users", "allow_groups", "npie", "registro_patronal", "role", "renewal"});
  KeyConfig k;
  k.alias = std::move(alias);
  k.token = r.required_string(t, w, "token");
  k.uri = r.required_string(t, w, "uri");
  if (k.uri.rfind("pkcs11:", 0) != 0) r.fail(w + ".uri", "must be a PKCS#11 URI starting with \"pkcs11:\"");
  k.allow.users = r.users(t, w, "allow_users");
  k.allow.groups = r.groups(t, w, "allow_groups");
  k.npie = r.string(t, w, "npie").value_or("");
  k.registro_patronal = r.string(t, w, "registro_patronal").value_or("");
  k.role = r.string(t, w, "role").value_or("principal");
  if (k.role != "principal" && k.role != "additional") r.fail(w + ".role", "accepted: \"principal\", \"additional\"");
  for (const auto* field : {&k.npie, &k.registro_patronal}) {
    if (field->size() > 64 || field->find_first_of("\n\r\t") != std::string::npos)
      r.fail(w + "." + (field == &k.npie ? "npie" : "registro_patronal"), "must be a single line of at most 64 characters");
  }
  if (const toml::node* n = t.get("renewal")) {
    if (!n->is_table()) r.fail(w + ".renewal", "must be a table");
    k.renewal = read_renewal(r, w + ".renewal", *n->as_table());
  }
  return k;
}

bool valid_date(std::string_view s) { return Date::parse(s).has_value(); }

}  // namespace

bool valid_key_name(std::string_view s) {
  return !s.empty() && s.size() <= 64 && std::all_of(s.begin(), s.end(), [](char c) {
    return std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '_' || c == '.';
  });
}

const TokenConfig* Config::token(const std::string& name) const {
  for (const auto& t : tokens)
    if (t.name == name) return &t;
  return nullptr;
}

const KeyConfig* Config::key(const std::string& alias) const {
  for (const auto& k : keys)
    if (k.alias == alias) return &k;
  return nullptr;
}

Config load_config(const std::string& path) {
  Reader r(path);
  toml::table root;
  try {
    root = toml::parse_file(path);
  } catch (const toml::parse_error& e) {
    const auto& src = e.source();
    if (!src.begin) throw ConfigError(path + ": " + std::string(e.description()));
    throw ConfigError(path + ":" + std::to_string(src.begin.line) + ":" + std::to_string(src.begin.column) + ": " +
                      std::string(e.description()));
  }
  Config cfg;
  cfg.path = path;
  r.only(root, "", {"daemon", "access", "tokens", "keys", "calendar"});
  if (const toml::table* d = subtable(r, root, "daemon")) read_daemon(r, *d, cfg.daemon);
  if (const toml::table* a = subtable(r, root, "access")) {
    r.only(*a, "access", {"admin_users", "admin_groups"});
    cfg.admins.users = r.users(*a, "access", "admin_users");
    cfg.admins.groups = r.groups(*a, "access", "admin_groups");
  } else {
    cfg.admins.users = {0};
  }
  if (const toml::table* tokens = subtable(r, root, "tokens")) {
    for (const auto& [name, node] : *tokens) {
      if (!node.is_table()) r.fail("tokens." + std::string(name.str()), "must be a table");
      if (!valid_key_name(name.str())) r.fail("tokens." + std::string(name.str()), "names use letters, digits, '-', '_', '.'");
      cfg.tokens.push_back(read_token(r, std::string(name.str()), *node.as_table()));
    }
  }
  if (cfg.tokens.empty()) r.fail("tokens", "at least one [tokens.<name>] table is required");
  if (const toml::table* cal = subtable(r, root, "calendar")) {
    r.only(*cal, "calendar", {"extra_non_working_days"});
    if (const toml::node* n = cal->get("extra_non_working_days")) {
      const toml::array* a = n->as_array();
      if (!a) r.fail("calendar.extra_non_working_days", "must be an array of \"YYYY-MM-DD\" dates");
      for (const toml::node& e : *a) {
        if (!e.is_string() || !valid_date(e.as_string()->get()))
          r.fail("calendar.extra_non_working_days", "must be an array of \"YYYY-MM-DD\" dates");
        cfg.calendar.extra_non_working_days.emplace_back(e.as_string()->get());
      }
    }
  }
  if (const toml::table* keys = subtable(r, root, "keys")) {
    for (const auto& [alias, node] : *keys) {
      if (!node.is_table()) r.fail("keys." + std::string(alias.str()), "must be a table");
      if (!valid_key_name(alias.str())) r.fail("keys." + std::string(alias.str()), "aliases use letters, digits, '-', '_', '.'");
      KeyConfig k = read_key(r, std::string(alias.str()), *node.as_table());
      if (!cfg.token(k.token)) {
        std::string names;
        for (const auto& t : cfg.tokens) names += (names.empty() ? "" : ", ") + t.name;
        r.fail("keys." + k.alias + ".token", "no token named '" + k.token + "' (accepted: " + names + ")");
      }
      cfg.keys.push_back(std::move(k));
    }
  }
  return cfg;
}

}  // namespace firmad
