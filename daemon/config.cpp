// Loading and validating firmad.toml with toml++ ([keys.<alias>.renewal] is read in renewal_config.cpp).
#include "daemon/config.hpp"

#include <grp.h>
#include <pwd.h>

#include <algorithm>
#include <cctype>
#include <charconv>
#include <cstdint>
#include <limits>
#include <utility>
#include <toml++/toml.h>

#include "daemon/mx/business_days.hpp"
#include "daemon/config_reader.hpp"

namespace firmad {
namespace config_detail {
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

template <typename Id>
bool numeric(const std::string& s, Id& id) {
  auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), id);
  return ec == std::errc() && p == s.data() + s.size();
}

}  // namespace

// The largest unit that writes `d` exactly: 30d, 1h, 100ms.
std::string format_duration(std::chrono::milliseconds d) {
  if (d.count() == 0) return "0s";
  for (const auto& [name, ms] : kUnits) {
    if (d.count() % static_cast<std::int64_t>(ms) == 0)
      return std::to_string(d.count() / static_cast<std::int64_t>(ms)) + std::string(name);
  }
  return std::to_string(d.count()) + "ms";  // not reached: the last unit divides everything
}

void Reader::fail(const std::string& key, const std::string& problem) const {
  throw ConfigError(file_ + ": " + key + ": " + problem);
}

void Reader::only(const toml::table& t, const std::string& where, std::initializer_list<std::string_view> allowed) const {
  for (const auto& [k, v] : t) {
    if (std::find(allowed.begin(), allowed.end(), k.str()) == allowed.end()) {
      std::string list;
      for (auto a : allowed) list += (list.empty() ? "" : ", ") + std::string(a);
      fail(where.empty() ? std::string(k.str()) : where + "." + std::string(k.str()), "unknown key (accepted: " + list + ")");
    }
  }
}

std::optional<std::string> Reader::string(const toml::table& t, const std::string& where, std::string_view k) const {
  const toml::node* n = t.get(k);
  if (!n) return std::nullopt;
  if (!n->is_string()) fail(where + "." + std::string(k), "must be a string");
  return std::string(n->as_string()->get());
}

std::string Reader::required_string(const toml::table& t, const std::string& where, std::string_view k) const {
  auto v = string(t, where, k);
  if (!v || v->empty()) fail(where + "." + std::string(k), "is required and must be a non-empty string");
  return *v;
}

std::optional<std::int64_t> Reader::integer(const toml::table& t, const std::string& where, std::string_view k,
                                            std::int64_t lo, std::int64_t hi) const {
  const toml::node* n = t.get(k);
  if (!n) return std::nullopt;
  if (!n->is_integer() || n->as_integer()->get() < lo || n->as_integer()->get() > hi)
    fail(where + "." + std::string(k), "must be an integer from " + std::to_string(lo) + " to " + std::to_string(hi));
  return n->as_integer()->get();
}

std::optional<bool> Reader::boolean(const toml::table& t, const std::string& where, std::string_view k) const {
  const toml::node* n = t.get(k);
  if (!n) return std::nullopt;
  if (!n->is_boolean()) fail(where + "." + std::string(k), "must be true or false");
  return n->as_boolean()->get();
}

std::optional<std::chrono::milliseconds> Reader::duration(const toml::table& t, const std::string& where,
                                                          std::string_view k, std::chrono::milliseconds lo,
                                                          std::chrono::milliseconds hi) const {
  const toml::node* n = t.get(k);
  if (!n) return std::nullopt;
  const std::optional<std::chrono::milliseconds> d = n->is_string() ? parse_duration(n->as_string()->get()) : std::nullopt;
  if (!d || *d < lo || *d > hi)
    fail(where + "." + std::string(k), "must be a duration from " + format_duration(lo) + " to " + format_duration(hi) +
                                           " written with a unit, e.g. \"" + format_duration(hi / 2) +
                                           "\" (accepted units: ms, s, m, h, d)");
  return d;
}

std::optional<std::chrono::seconds> Reader::seconds(const toml::table& t, const std::string& where, std::string_view k,
                                                    std::chrono::seconds lo, std::chrono::seconds hi) const {
  auto d = duration(t, where, k, lo, hi);
  if (!d) return std::nullopt;
  if (d->count() % 1000 != 0) fail(where + "." + std::string(k), "must be a whole number of seconds (accepted units: s, m, h, d)");
  return std::chrono::duration_cast<std::chrono::seconds>(*d);
}

std::vector<std::string> Reader::strings(const toml::table& t, const std::string& where, std::string_view k) const {
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

std::optional<std::string> Reader::id_name(const toml::table& t, const std::string& where, std::string_view k) const {
  const toml::node* n = t.get(k);
  if (!n) return std::nullopt;
  if (n->is_string() && !n->as_string()->get().empty()) return std::string(n->as_string()->get());
  if (n->is_integer() && n->as_integer()->get() >= 0) return std::to_string(n->as_integer()->get());
  fail(where + "." + std::string(k), "must be a name or a numeric id");
}

uid_t Reader::user(const std::string& key, const std::string& name) const {
  uid_t id;
  if (numeric(name, id)) return id;
  const passwd* pw = getpwnam(name.c_str());
  if (!pw) fail(key, "no such user '" + name + "' (accepted: user names or numeric uids)");
  return pw->pw_uid;
}

gid_t Reader::group(const std::string& key, const std::string& name) const {
  gid_t id;
  if (numeric(name, id)) return id;
  const ::group* gr = getgrnam(name.c_str());
  if (!gr) fail(key, "no such group '" + name + "' (accepted: group names or numeric gids)");
  return gr->gr_gid;
}

std::vector<uid_t> Reader::users(const toml::table& t, const std::string& where, std::string_view k) const {
  std::vector<uid_t> out;
  for (const std::string& name : names(t, where, k)) out.push_back(user(where + "." + std::string(k), name));
  return out;
}

std::vector<gid_t> Reader::groups(const toml::table& t, const std::string& where, std::string_view k) const {
  std::vector<gid_t> out;
  for (const std::string& name : names(t, where, k)) out.push_back(group(where + "." + std::string(k), name));
  return out;
}

// A list of names or numbers.
std::vector<std::string> Reader::names(const toml::table& t, const std::string& where, std::string_view k) const {
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

// "0660", "644": an octal permission string of at most 0777.
std::optional<mode_t> octal_mode(std::string_view s) {
  unsigned mode = 0;
  auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), mode, 8);
  if (ec != std::errc() || p == s.data() || p != s.data() + s.size() || mode > 0777) return std::nullopt;
  return static_cast<mode_t>(mode);
}

bool has_control_char(std::string_view s) {
  return std::any_of(s.begin(), s.end(), [](char c) { return static_cast<unsigned char>(c) < 0x20 || c == 0x7f; });
}

bool absolute_path(std::string_view s) { return !s.empty() && s[0] == '/' && !has_control_char(s); }

}  // namespace config_detail

using config_detail::Reader;

namespace {

const toml::table* subtable(const Reader& r, const toml::table& root, std::string_view k) {
  const toml::node* n = root.get(k);
  if (!n) return nullptr;
  if (!n->is_table()) r.fail(std::string(k), "must be a table");
  return n->as_table();
}

void read_daemon(const Reader& r, const toml::table& t, DaemonConfig& d) {
  const std::string w = "daemon";
  r.only(t, w, {"socket", "socket_mode", "socket_group", "state_directory", "max_connections",
                "max_connections_per_peer", "idle_timeout_ms", "busy_poll_us", "log_level", "max_buffered_bytes",
                "max_buffered_bytes_per_peer", "audit_file", "audit_queue", "audit_wait_ms"});
  if (auto s = r.string(t, w, "socket")) {
    if (s->empty() || (*s)[0] != '/') r.fail(w + ".socket", "must be an absolute path");
    if (s->size() >= 108) r.fail(w + ".socket", "is longer than a Unix socket path may be (107 bytes)");
    d.socket = *s;
  }
  if (auto s = r.string(t, w, "socket_mode")) {
    const std::optional<mode_t> mode = config_detail::octal_mode(*s);
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
  // A peer must be able to buffer one message of the largest size.
  constexpr long long kOneMessage = (2 << 20) + (64 << 10);
  if (auto v = r.integer(t, w, "max_buffered_bytes_per_peer", kOneMessage, 1LL << 34)) d.max_buffered_bytes_per_peer = *v;
  if (auto v = r.integer(t, w, "max_buffered_bytes", kOneMessage, 1LL << 36)) d.max_buffered_bytes = *v;
  if (d.max_buffered_bytes < d.max_buffered_bytes_per_peer)
    r.fail(w + ".max_buffered_bytes", "must be at least max_buffered_bytes_per_peer");
  if (auto s = r.string(t, w, "audit_file")) {
    if (*s != "-" && (s->empty() || (*s)[0] != '/')) r.fail(w + ".audit_file", "must be an absolute path, or \"-\" for stderr");
    d.audit_file = *s;
  }
  if (auto v = r.integer(t, w, "audit_queue", 16, 1 << 22)) d.audit_queue = *v;
  if (auto v = r.integer(t, w, "audit_wait_ms", 0, 600000)) d.audit_wait = std::chrono::milliseconds(*v);
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

KeyConfig read_key(const Reader& r, std::string alias, const toml::table& t) {
  const std::string w = "keys." + alias;
  r.only(t, w, {"token", "uri", "allow_users", "allow_groups", "npie", "registro_patronal", "role", "renewal",
                  "pin_per_signature", "allow_sha1"});
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
  k.pin_per_signature = r.boolean(t, w, "pin_per_signature").value_or(false);
  k.allow_sha1 = r.boolean(t, w, "allow_sha1").value_or(false);
  if (k.role != "principal" && k.role != "additional") r.fail(w + ".role", "accepted: \"principal\", \"additional\"");
  for (const auto* field : {&k.npie, &k.registro_patronal}) {
    if (field->size() > 64 || field->find_first_of("\n\r\t") != std::string::npos)
      r.fail(w + "." + (field == &k.npie ? "npie" : "registro_patronal"), "must be a single line of at most 64 characters");
  }
  if (const toml::node* n = t.get("renewal")) {
    if (!n->is_table()) r.fail(w + ".renewal", "must be a table");
    k.renewal = config_detail::read_renewal(r, w + ".renewal", *n->as_table());
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
  // admin_users is root unless set (admin_users = [] means no user by name),
  // whatever else [access] holds.
  cfg.admins.users = {0};
  if (const toml::table* a = subtable(r, root, "access")) {
    r.only(*a, "access", {"admin_users", "admin_groups"});
    if (a->contains("admin_users")) cfg.admins.users = r.users(*a, "access", "admin_users");
    cfg.admins.groups = r.groups(*a, "access", "admin_groups");
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
