// The audit trail's queue and writer thread.
#include "daemon/audit.hpp"

#include <fcntl.h>
#include <pthread.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <stdexcept>

#include "daemon/log.hpp"
#include "protocol/errors.hpp"

namespace firmad {

namespace {

using Clock = std::chrono::steady_clock;

std::string utc(const timespec& at) {
  std::tm tm{};
  ::gmtime_r(&at.tv_sec, &tm);
  char out[40];
  const std::size_t n = std::strftime(out, sizeof out, "%Y-%m-%dT%H:%M:%S", &tm);
  std::snprintf(out + n, sizeof out - n, ".%06ldZ", static_cast<long>(at.tv_nsec / 1000));
  return out;
}

void format(std::string& out, const AuditRecord& r) {
  out += "time=";
  out += utc(r.at);
  log::append_field(out, "event", r.event);
  log::append_field(out, "method", r.method);
  for (const auto& [k, v] : r.fields) log::append_field(out, k, v);
  log::append_field(out, "uid", std::to_string(r.uid));
  log::append_field(out, "gid", std::to_string(r.gid));
  log::append_field(out, "pid", std::to_string(r.pid));
  log::append_field(out, r.program.key, r.program.value);
  log::append_field(out, "result", r.result);
  out += '\n';
}

}  // namespace

Audit::Audit(const DaemonConfig& config, asio::io_context& io)
    : path_(config.audit_file), capacity_(config.audit_queue), wait_(config.audit_wait), io_(io) {
  open_file();
}

Audit::~Audit() {
  stop();
  if (fd_ >= 0) ::close(fd_);
}

void Audit::open_file() {
  int fd = -1;
  if (path_ == "-") {
    // The real stderr, not the pipe that takes modules' lines (log::capture_stderr).
    fd = ::fcntl(log::stderr_fd(), F_DUPFD_CLOEXEC, 3);
  } else {
    const std::filesystem::path dir = std::filesystem::path(path_).parent_path();
    if (::mkdir(dir.c_str(), 0750) != 0 && errno != EEXIST)
      throw std::runtime_error("cannot create the audit directory " + dir.string() + ": " + std::strerror(errno));
    // Non-blocking to open (a FIFO without a reader fails at once), blocking to write.
    fd = ::open(path_.c_str(), O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC | O_NOCTTY | O_NONBLOCK, 0640);
    if (fd >= 0) ::fcntl(fd, F_SETFL, O_WRONLY | O_APPEND);
  }
  if (fd < 0) throw std::runtime_error("cannot open the audit file " + path_ + ": " + std::strerror(errno));
  if (fd_ >= 0) ::close(fd_);
  fd_ = fd;
}

void Audit::start() {
  std::lock_guard lock(mu_);
  if (thread_.joinable()) return;
  thread_ = std::thread([this] { run(); });
}

void Audit::stop() {
  {
    std::lock_guard lock(mu_);
    if (!thread_.joinable()) return;
    stopping_ = true;
    wake_.notify_one();
  }
  thread_.join();
}

bool Audit::try_take() {
  std::size_t n = taken_.load();
  while (n < capacity_)
    if (taken_.compare_exchange_weak(n, n + 1)) return true;
  return false;
}

void Audit::give_back(std::size_t n) {
  taken_ -= n;
  if (someone_waits_.exchange(false)) asio::post(io_, [this] { wake_waiters(); });
}

void Audit::wake_waiters() {
  for (auto* t : waiters_) t->cancel();
}

asio::awaitable<Audit::Slot> Audit::reserve() {
  if (try_take()) co_return Slot(this);
  const auto start = Clock::now();
  const auto deadline = start + wait_;
  asio::steady_timer timer(co_await asio::this_coro::executor);
  for (;;) {
    if (Clock::now() >= deadline) {
      const auto waited = std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - start).count();
      log::throttled(log::Level::Error, "audit-stalled", log::kNoUid,
                     {{"queued", taken_.load()}, {"waited_ms", waited}, {"file", path_}});
      throw protocol::VarlinkError(protocol::error::kAuditUnavailable, {{"waitedMs", waited}, {"queued", taken_.load()}});
    }
    timer.expires_at(deadline);
    waiters_.push_back(&timer);
    someone_waits_ = true;
    if (try_take()) {  // room made between the first try and the flag
      std::erase(waiters_, &timer);
      co_return Slot(this);
    }
    boost::system::error_code ec;
    co_await timer.async_wait(asio::redirect_error(asio::use_awaitable, ec));
    std::erase(waiters_, &timer);
    if (try_take()) co_return Slot(this);
    if (!waiters_.empty()) someone_waits_ = true;  // the others still wait for the next batch
  }
}

void Audit::Slot::commit(AuditRecord record) {
  if (!audit_) return;
  ::clock_gettime(CLOCK_REALTIME, &record.at);
  std::exchange(audit_, nullptr)->push(std::move(record));
}

void Audit::Slot::release() {
  if (audit_) std::exchange(audit_, nullptr)->give_back(1);
}

void Audit::record(AuditRecord record) {
  ::clock_gettime(CLOCK_REALTIME, &record.at);
  ++taken_;  // given back when written, like a reserved place
  push(std::move(record));
}

void Audit::push(AuditRecord record) {
  std::lock_guard lock(mu_);
  queue_.push_back(std::move(record));
  wake_.notify_one();
}

bool Audit::write_batch(std::string_view& rest) {
  while (!rest.empty()) {
    const ssize_t n = ::write(fd_, rest.data(), rest.size());
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      log::throttled(log::Level::Error, "audit-write-failed", log::kNoUid,
                     {{"file", path_}, {"error", std::strerror(n < 0 ? errno : EIO)}});
      return false;
    }
    rest.remove_prefix(static_cast<std::size_t>(n));
  }
  return true;
}

void Audit::maybe_reopen(Clock::time_point& checked, bool force) {
  if (path_ == "-") return;
  if (!reopen_.exchange(false) && !force && Clock::now() - checked < std::chrono::seconds(1)) return;
  checked = Clock::now();
  struct stat on_disk{}, open_one{};
  if (::stat(path_.c_str(), &on_disk) == 0 && ::fstat(fd_, &open_one) == 0 && on_disk.st_ino == open_one.st_ino &&
      on_disk.st_dev == open_one.st_dev)
    return;
  try {
    open_file();
    log::notice("audit-reopened", {{"file", path_}});
  } catch (const std::exception& e) {
    log::throttled(log::Level::Error, "audit-reopen-failed", log::kNoUid, {{"error", e.what()}});
  }
}

void Audit::run() {
  ::pthread_setname_np(::pthread_self(), "firmad-audit");
  std::vector<AuditRecord> batch;
  std::string text;
  auto checked = Clock::now();
  for (;;) {
    bool last = false;
    {
      std::unique_lock lock(mu_);
      wake_.wait_for(lock, std::chrono::seconds(1), [this] { return !queue_.empty() || stopping_; });
      batch.swap(queue_);
      last = stopping_ && batch.empty();
    }
    maybe_reopen(checked, false);  // logrotate moved the file, or SIGHUP asked
    if (last) return;
    if (batch.empty()) continue;
    text.clear();
    for (const auto& r : batch) format(text, r);
    // A record is never dropped while firmad runs: a failing file is tried
    // again each second (opened again if it was replaced: a FIFO whose
    // reader came back, a file put back at its path) while the queue fills
    // and new calls wait, then fail AuditUnavailable.
    std::string_view rest(text);
    bool written = true;
    for (bool stopping = false; !write_batch(rest);) {
      if (stopping) {  // one last try after the stop was asked: then say what is lost
        log::error("audit-records-lost", {{"count", batch.size()}, {"file", path_}, {"why", "stopping with the file failing"}});
        written = false;
        break;
      }
      {
        std::unique_lock lock(mu_);
        wake_.wait_for(lock, std::chrono::seconds(1), [this] { return stopping_; });
        stopping = stopping_;
      }
      maybe_reopen(checked, true);
    }
    if (written) written_ += batch.size();
    give_back(batch.size());
    batch.clear();
  }
}

}  // namespace firmad
