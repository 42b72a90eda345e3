// Structured logging: one event per line, key=value fields, journald priority prefix.
#pragma once
#include <initializer_list>
#include <string>
#include <string_view>

namespace firmad::log {

enum class Level { Error = 3, Warning = 4, Notice = 5, Info = 6, Debug = 7 };

struct Field {
  std::string_view key;
  std::string value;
  Field(std::string_view k, std::string v) : key(k), value(std::move(v)) {}
  Field(std::string_view k, const char* v) : key(k), value(v ? v : "") {}
  Field(std::string_view k, std::string_view v) : key(k), value(v) {}
  template <typename N, typename = std::enable_if_t<std::is_arithmetic_v<N>>>
  Field(std::string_view k, N n) : key(k), value(std::to_string(n)) {}
};

// Writes "event=<event> k=v ..." to stderr in one write(2). Values with
// spaces, quotes or '=' are quoted. Under systemd (JOURNAL_STREAM set) the
// line starts with "<N>" so journald records the priority; otherwise a
// "level=" field says it. Thread-safe.
void write(Level level, std::string_view event, std::initializer_list<Field> fields = {});

// Lines above this level (less severe) are dropped. Default: Info.
void set_max_level(Level level);
// Parses "error" | "warning" | "notice" | "info" | "debug".
bool parse_level(std::string_view text, Level& out);

inline void error(std::string_view e, std::initializer_list<Field> f = {}) { write(Level::Error, e, f); }
inline void warning(std::string_view e, std::initializer_list<Field> f = {}) { write(Level::Warning, e, f); }
inline void notice(std::string_view e, std::initializer_list<Field> f = {}) { write(Level::Notice, e, f); }
inline void info(std::string_view e, std::initializer_list<Field> f = {}) { write(Level::Info, e, f); }
inline void debug(std::string_view e, std::initializer_list<Field> f = {}) { write(Level::Debug, e, f); }

}  // namespace firmad::log
