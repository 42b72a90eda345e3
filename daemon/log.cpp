// key=value log lines on stderr, journald-aware.
#include "daemon/log.hpp"

#include <unistd.h>

#include <atomic>
#include <cstdlib>

namespace firmad::log {
namespace {

std::atomic<int> max_level{static_cast<int>(Level::Info)};
const bool under_journal = std::getenv("JOURNAL_STREAM") != nullptr;

const char* level_name(Level l) {
  switch (l) {
    case Level::Error: return "error";
    case Level::Warning: return "warning";
    case Level::Notice: return "notice";
    case Level::Info: return "info";
    case Level::Debug: return "debug";
  }
  return "info";
}

void append_value(std::string& line, std::string_view v) {
  const bool quote = v.empty() || v.find_first_of(" \"=\t\n\\") != std::string_view::npos;
  if (!quote) {
    line += v;
    return;
  }
  line += '"';
  for (char c : v) {
    if (c == '"' || c == '\\') line += '\\';
    if (c == '\n') {
      line += "\\n";
      continue;
    }
    line += c;
  }
  line += '"';
}

}  // namespace

void write(Level level, std::string_view event, std::initializer_list<Field> fields) {
  if (static_cast<int>(level) > max_level.load(std::memory_order_relaxed)) return;
  std::string line;
  line.reserve(128);
  if (under_journal) {
    line += '<';
    line += static_cast<char>('0' + static_cast<int>(level));
    line += '>';
  }
  line += "event=";
  line += event;
  if (!under_journal) {
    line += " level=";
    line += level_name(level);
  }
  for (const auto& f : fields) {
    line += ' ';
    line += f.key;
    line += '=';
    append_value(line, f.value);
  }
  line += '\n';
  // One write(2) per line keeps lines whole across threads.
  std::size_t off = 0;
  while (off < line.size()) {
    const ssize_t n = ::write(STDERR_FILENO, line.data() + off, line.size() - off);
    if (n <= 0) break;
    off += static_cast<std::size_t>(n);
  }
}

void set_max_level(Level level) { max_level.store(static_cast<int>(level)); }

bool parse_level(std::string_view t, Level& out) {
  for (Level l : {Level::Error, Level::Warning, Level::Notice, Level::Info, Level::Debug}) {
    if (t == level_name(l)) {
      out = l;
      return true;
    }
  }
  return false;
}

}  // namespace firmad::log
