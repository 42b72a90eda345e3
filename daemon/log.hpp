// Structured logging: one event per line, key=value fields, journald priority prefix.
#pragma once
#include <cstddef>
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

// Writes "event=<event> k=v ..." to stderr. Values with spaces, quotes or
// '=' are quoted. Under systemd (JOURNAL_STREAM set) the line starts with
// "<N>" so journald records the priority; otherwise a "level=" field says
// it. Thread-safe. Once start_writer() ran, the line is only queued: no
// caller (the I/O thread above all) ever waits for stderr.
void write(Level level, std::string_view event, std::initializer_list<Field> fields = {});

// Hands writing to a thread of its own ("firmad-log"). Its queue holds at
// most kQueueBytes; lines beyond that are counted, not kept, and the next
// line written is "event=log-lines-dropped count=N" (the audit trail, which
// must lose nothing, has its own writer: daemon/audit.hpp). stop_writer()
// writes what is queued and returns to writing in the caller's thread.
inline constexpr std::size_t kQueueBytes = 4 * 1024 * 1024;
void start_writer();
void stop_writer();

// For events a peer can repeat at will (access-denied, protocol-violation,
// connection-refused, ...) and a token can repeat for as long as it is
// broken: at most kThrottledPerSecond lines a second per event and uid
// (uid -1: the daemon's own). The line that is written carries
// not_logged_before=N, the lines of that event and uid left out before it.
inline constexpr std::size_t kThrottledPerSecond = 5;
inline constexpr unsigned kNoUid = static_cast<unsigned>(-1);
void throttled(Level level, std::string_view event, unsigned uid, std::initializer_list<Field> fields = {});

// Takes stderr over for what others write there: PKCS#11 modules and the
// libraries under them (tpm2-pkcs11 writes a line for every failed TPM
// command, thousands a minute while its TPM is gone). Their lines become
// throttled module-stderr events (line=..., at most 512 bytes each, at most
// kThrottledPerSecond a second, the rest counted); firmad's own lines go to
// the original stderr. release_stderr() gives stderr back.
void capture_stderr();
void release_stderr();
// The process's own stderr: fd 2, or the copy kept while it is captured.
int stderr_fd();

// Appends " key=value" to a line, quoting the value as write() does.
void append_field(std::string& line, std::string_view key, std::string_view value);

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
