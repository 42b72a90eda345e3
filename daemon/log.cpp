// key=value log lines on stderr, journald-aware; a writer thread and a per-event, per-uid throttle.
#include "daemon/log.hpp"

#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <unistd.h>

#include <atomic>
#include <exception>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstdlib>
#include <map>
#include <mutex>
#include <thread>
#include <utility>
#include <vector>

#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#include <sanitizer/common_interface_defs.h>
#endif

namespace firmad::log {
namespace {

using Clock = std::chrono::steady_clock;

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

std::string format(Level level, std::string_view event, std::initializer_list<Field> fields, const Field* extra) {
  std::string line;
  line.reserve(160);
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
  auto put = [&line](const Field& f) {
    line += ' ';
    line += f.key;
    line += '=';
    append_value(line, f.value);
  };
  for (const auto& f : fields) put(f);
  if (extra) put(*extra);
  line += '\n';
  return line;
}

// Where log lines go: stderr, or the copy of it kept when capture_stderr()
// took stderr over for the modules' own output.
std::atomic<int> out_fd{STDERR_FILENO};

void write_all(int fd, std::string_view data) {
  while (!data.empty()) {
    const ssize_t n = ::write(fd, data.data(), data.size());
    if (n <= 0) return;  // stderr gone: nothing better to do with a log line
    data.remove_prefix(static_cast<std::size_t>(n));
  }
}

// Per (event, uid): lines written in the current second, lines left out since the last one written.
class Throttle {
 public:
  // Whether to write now; `left_out` is then the count to report.
  bool admit(std::string_view event, unsigned uid, std::size_t& left_out) {
    const auto now = Clock::now();
    std::lock_guard lock(mu_);
    std::string key(event);
    key += ' ';
    key += std::to_string(uid);
    auto it = windows_.find(key);
    if (it == windows_.end()) {
      if (windows_.size() >= kMaxKeys) forget_quiet(now);
      if (windows_.size() >= kMaxKeys) {
        key = "(too many peers)";  // one shared window until some go quiet
        it = windows_.try_emplace(key, Window{{}, 0, 0, "(too many peers)", kNoUid}).first;
      } else {
        it = windows_.try_emplace(key, Window{{}, 0, 0, std::string(event), uid}).first;
      }
    }
    Window& w = it->second;
    if (now >= w.end) {
      w.end = now + std::chrono::seconds(1);
      w.written = 0;
    }
    if (w.written == kThrottledPerSecond) {
      ++w.left_out;
      return false;
    }
    ++w.written;
    left_out = std::exchange(w.left_out, 0);
    return true;
  }

  // Lines left out in windows that have ended with no line after them: the
  // writer reports these itself (event=log-throttled), so a flood that
  // stops still has its count written.
  struct Due {
    std::string event;
    unsigned uid;
    std::size_t left_out;
  };
  std::vector<Due> due(bool all = false) {
    const auto now = Clock::now();
    std::vector<Due> out;
    std::lock_guard lock(mu_);
    for (auto& [key, w] : windows_)
      if (w.left_out > 0 && (all || now >= w.end)) out.push_back({w.event, w.uid, std::exchange(w.left_out, 0)});
    return out;
  }

 private:
  struct Window {
    Clock::time_point end{};
    std::size_t written = 0, left_out = 0;
    std::string event;
    unsigned uid = kNoUid;
  };
  static constexpr std::size_t kMaxKeys = 4096;

  // Drops the keys idle for a minute with nothing left to report.
  void forget_quiet(Clock::time_point now) {
    std::erase_if(windows_, [now](const auto& kv) {
      return kv.second.left_out == 0 && kv.second.end + std::chrono::minutes(1) < now;
    });
  }

  std::mutex mu_;
  std::map<std::string, Window> windows_;  // "<event> <uid>"
};

Throttle throttle;

// The writer thread's queue. Lines are whole strings, written in batches.
class Writer {
 public:
  // False when no writer runs (the line is left to the caller to write).
  bool queue(std::string& line) {
    std::lock_guard lock(mu_);
    if (!running_) return false;
    if (queued_bytes_ + line.size() > kQueueBytes) {
      ++dropped_;
      return true;
    }
    queued_bytes_ += line.size();
    lines_.push_back(std::move(line));
    wake_.notify_one();
    return true;
  }

  void start() {
    std::lock_guard lock(mu_);
    if (running_) return;
    running_ = true;
    thread_ = std::thread([this] { run(); });
  }

  void stop() {
    {
      std::lock_guard lock(mu_);
      if (!running_) return;
      running_ = false;
      wake_.notify_one();
    }
    thread_.join();
  }

 private:
  void run() {
    ::pthread_setname_np(::pthread_self(), "firmad-log");
    std::vector<std::string> batch;
    std::string out;
    for (;;) {
      std::size_t dropped = 0;
      bool last = false;
      {
        std::unique_lock lock(mu_);
        wake_.wait_for(lock, std::chrono::seconds(1), [this] { return !lines_.empty() || !running_; });
        batch.swap(lines_);
        queued_bytes_ = 0;
        dropped = std::exchange(dropped_, 0);
        last = !running_;
      }
      out.clear();
      for (auto& l : batch) out += l;
      batch.clear();
      if (dropped) {
        const Field count("count", dropped);
        out += format(Level::Warning, "log-lines-dropped", {}, &count);
      }
      for (const auto& d : throttle.due(last)) {  // at the end, every count still open
        const Field count("not_logged_before", d.left_out);
        if (d.uid == kNoUid) out += format(Level::Warning, "log-throttled", {{"of", d.event}}, &count);
        else out += format(Level::Warning, "log-throttled", {{"of", d.event}, {"uid", d.uid}}, &count);
      }
      write_all(out_fd.load(), out);
      if (last) return;
    }
  }

  std::mutex mu_;
  std::condition_variable wake_;
  std::vector<std::string> lines_;
  std::size_t queued_bytes_ = 0, dropped_ = 0;
  bool running_ = false;
  std::thread thread_;
};

Writer writer;

void emit(std::string line) {
  if (!writer.queue(line)) write_all(out_fd.load(), line);
}


// What PKCS#11 modules (and the libraries under them) write to stderr, read
// from a pipe and logged as throttled module-stderr lines.
class StderrCapture {
 public:
  bool start() {
    if (thread_.joinable()) return true;
    const int keep = ::fcntl(STDERR_FILENO, F_DUPFD_CLOEXEC, 3);
    if (keep < 0) return false;
    int p[2];
    if (::pipe2(p, O_CLOEXEC) != 0) {
      ::close(keep);
      return false;
    }
    out_fd = keep;
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
    // A sanitizer's report goes whole to the real stderr, not through the pipe.
    __sanitizer_set_report_fd(reinterpret_cast<void*>(static_cast<std::uintptr_t>(keep)));
#endif
    ::dup2(p[1], STDERR_FILENO);
    ::close(p[1]);
    read_fd_ = p[0];
    // A dying process says why on the real stderr, not into the pipe that
    // dies with it: std::terminate's message (an uncaught exception).
    previous_terminate_ = std::set_terminate([] {
      ::dup2(out_fd.load(), STDERR_FILENO);
      __gnu_cxx::__verbose_terminate_handler();
    });
    stop_ = false;
    thread_ = std::thread([this] { run(); });
    return true;
  }

  void stop() {
    if (!thread_.joinable()) return;
    ::dup2(out_fd.load(), STDERR_FILENO);  // stderr is stderr again; the pipe's writer is gone
    std::set_terminate(previous_terminate_);
    stop_ = true;
    thread_.join();
    ::close(read_fd_);
    const int keep = out_fd.exchange(STDERR_FILENO);
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
    __sanitizer_set_report_fd(reinterpret_cast<void*>(static_cast<std::uintptr_t>(STDERR_FILENO)));
#endif
    ::close(keep);
  }

 private:
  void run() {
    ::pthread_setname_np(::pthread_self(), "firmad-stderr");
    std::string pending;
    char buf[4096];
    for (;;) {
      pollfd p{read_fd_, POLLIN, 0};
      const int ready = ::poll(&p, 1, 200);
      if (ready <= 0) {
        if (stop_) break;
        continue;
      }
      const ssize_t n = ::read(read_fd_, buf, sizeof buf);
      if (n <= 0) break;  // every writer closed it
      pending.append(buf, static_cast<std::size_t>(n));
      for (std::size_t nl; (nl = pending.find('\n')) != std::string::npos;) {
        emit_line(pending.substr(0, nl));
        pending.erase(0, nl + 1);
      }
      if (pending.size() > kMaxLine) {  // a line without end: logged in pieces
        emit_line(pending.substr(0, kMaxLine));
        pending.erase(0, kMaxLine);
      }
    }
    if (!pending.empty()) emit_line(pending);
  }

  static void emit_line(std::string line) {
    if (line.size() > kMaxLine) line.resize(kMaxLine);
    if (line.empty()) return;
    throttled(Level::Warning, "module-stderr", kNoUid, {{"line", line}});
  }

  static constexpr std::size_t kMaxLine = 512;
  std::terminate_handler previous_terminate_ = nullptr;
  int read_fd_ = -1;
  std::atomic<bool> stop_{false};
  std::thread thread_;
};

StderrCapture capture;

}  // namespace

void capture_stderr() {
  if (!capture.start()) write(Level::Warning, "stderr-not-captured", {{"why", "no pipe"}});
}

void release_stderr() { capture.stop(); }

int stderr_fd() { return out_fd.load(); }

void write(Level level, std::string_view event, std::initializer_list<Field> fields) {
  if (static_cast<int>(level) > max_level.load(std::memory_order_relaxed)) return;
  emit(format(level, event, fields, nullptr));
}

void throttled(Level level, std::string_view event, unsigned uid, std::initializer_list<Field> fields) {
  if (static_cast<int>(level) > max_level.load(std::memory_order_relaxed)) return;
  std::size_t left_out = 0;
  if (!throttle.admit(event, uid, left_out)) return;
  const Field count("not_logged_before", left_out);
  emit(format(level, event, fields, &count));
}

void append_field(std::string& line, std::string_view key, std::string_view value) {
  line += ' ';
  line += key;
  line += '=';
  append_value(line, value);
}

void start_writer() { writer.start(); }
void stop_writer() { writer.stop(); }

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
