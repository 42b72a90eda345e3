// Reading [keys.<alias>.renewal], and the typed TOML reader it shares with config.cpp (internal to the loader).
#pragma once
#include <sys/types.h>

#include <chrono>
#include <cstdint>
#include <initializer_list>
#include <optional>
#include <string>
#include <string_view>
#include <vector>
#include <toml++/toml.h>

#include "daemon/config.hpp"

namespace firmad::config_detail {

// Reads typed values out of one file's tables; every refusal is a ConfigError
// "<file>: <key>: <problem>". `where` is the dotted path of the table read
// ("keys.release.renewal"); absent keys give nullopt (or an empty list).
class Reader {
 public:
  explicit Reader(std::string file) : file_(std::move(file)) {}

  // Throws ConfigError("<file>: <key>: <problem>").
  [[noreturn]] void fail(const std::string& key, const std::string& problem) const;

  // Refuses keys not in `allowed`: a typo must not silently fall back to a default.
  void only(const toml::table& t, const std::string& where, std::initializer_list<std::string_view> allowed) const;

  std::optional<std::string> string(const toml::table& t, const std::string& where, std::string_view k) const;
  // Present and non-empty.
  std::string required_string(const toml::table& t, const std::string& where, std::string_view k) const;
  // An integer from lo to hi.
  std::optional<std::int64_t> integer(const toml::table& t, const std::string& where, std::string_view k,
                                      std::int64_t lo, std::int64_t hi) const;
  std::optional<bool> boolean(const toml::table& t, const std::string& where, std::string_view k) const;
  // A duration written with a unit ("500ms", "60s", "10m", "6h", "2d"), from lo to hi.
  std::optional<std::chrono::milliseconds> duration(const toml::table& t, const std::string& where,
                                                    std::string_view k, std::chrono::milliseconds lo,
                                                    std::chrono::milliseconds hi) const;
  // A duration as above that must also be a whole number of seconds.
  std::optional<std::chrono::seconds> seconds(const toml::table& t, const std::string& where, std::string_view k,
                                              std::chrono::seconds lo, std::chrono::seconds hi) const;
  // An array of strings; absent: empty.
  std::vector<std::string> strings(const toml::table& t, const std::string& where, std::string_view k) const;
  // A user or group given as a name or a numeric id, not yet looked up.
  std::optional<std::string> id_name(const toml::table& t, const std::string& where, std::string_view k) const;
  // A user or group name (or numeric id) looked up; `key` names it in a refusal.
  uid_t user(const std::string& key, const std::string& name) const;
  gid_t group(const std::string& key, const std::string& name) const;
  // Arrays of user or group names or numeric ids, looked up.
  std::vector<uid_t> users(const toml::table& t, const std::string& where, std::string_view k) const;
  std::vector<gid_t> groups(const toml::table& t, const std::string& where, std::string_view k) const;

 private:
  std::vector<std::string> names(const toml::table& t, const std::string& where, std::string_view k) const;

  std::string file_;
};

// The largest unit that writes `d` exactly: "30d", "1h", "100ms".
std::string format_duration(std::chrono::milliseconds d);
// "0660", "644": an octal permission string of at most 0777; nullopt for anything else.
std::optional<mode_t> octal_mode(std::string_view s);
bool has_control_char(std::string_view s);
// Starts with '/' and holds no control character.
bool absolute_path(std::string_view s);

// Returns the renewal table `t` (found at `where`, "keys.<alias>.renewal")
// read and validated. Throws ConfigError as Reader does.
RenewalConfig read_renewal(const Reader& r, const std::string& where, const toml::table& t);

}  // namespace firmad::config_detail
