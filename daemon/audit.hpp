// The audit trail: a record of every signature and of every refused or
// administrative call, none lost, written by a thread of its own.
//
// The I/O thread never waits for the disk: it takes a place in a bounded
// queue before it acts (reserve()), fills it when the outcome is known
// (Slot::commit), and the writer thread ("firmad-audit") appends batches to
// an append-only file. If the file stalls, the queue fills and new calls
// wait for a place, at most `audit_wait_ms`, then fail with AuditUnavailable:
// nothing is signed that is not audited. Calls that are not audited (Status,
// GetInfo) never wait. doc/architecture.md tells why a file and not journald.
#pragma once
#include "daemon/asio.hpp"
#include "daemon/log.hpp"

#include <sys/types.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <ctime>
#include <mutex>
#include <string>
#include <string_view>
#include <thread>
#include <utility>
#include <vector>

#include "daemon/config.hpp"

namespace firmad {

struct AuditRecord {
  std::string event;   // "sign" (Sign, SignCms, a renewal's signatures) or "call"
  std::string method;  // the Varlink method, without its interface
  uid_t uid = 0;
  gid_t gid = 0;
  pid_t pid = 0;
  log::Field program{"program", "unreadable"};  // Peer::program(): exe=, comm= or program=unreadable
  std::vector<std::pair<const char*, std::string>> fields;  // key, token, scheme, digest, ...
  std::string result;  // "ok", or the error's name
  timespec at{};       // set by commit()
  void add(const char* name, std::string value) { fields.emplace_back(name, std::move(value)); }
};

class Audit {
 public:
  // Opens the file (creating it 0640 and its directory 0750 if missing, less the umask: 0600 and 0700 under the shipped unit's UMask=0077, as logrotate creates it);
  // throws std::runtime_error naming the path if it cannot. A FIFO must
  // already have a reader.
  Audit(const DaemonConfig& config, asio::io_context& io);
  Audit(const Audit&) = delete;
  Audit& operator=(const Audit&) = delete;
  ~Audit();

  // A place in the queue; commit() fills it, or the destructor gives it back.
  class Slot {
   public:
    Slot() = default;
    explicit Slot(Audit* a) : audit_(a) {}
    Slot(Slot&& o) noexcept : audit_(std::exchange(o.audit_, nullptr)) {}
    Slot& operator=(Slot&& o) noexcept {
      release();
      audit_ = std::exchange(o.audit_, nullptr);
      return *this;
    }
    ~Slot() { release(); }
    explicit operator bool() const { return audit_ != nullptr; }
    void commit(AuditRecord record);

   private:
    void release();
    Audit* audit_ = nullptr;
  };

  // Starts the writer thread.
  void start();
  // Writes what is queued and stops the writer.
  void stop();
  // On the I/O thread: a place for one record, at once if there is room;
  // otherwise waits up to audit_wait, then throws VarlinkError AuditUnavailable.
  asio::awaitable<Slot> reserve();
  // For the renewal thread's own signatures (a CSR, an acceptance, a
  // self-test), made without a client: queues the record at once, past the
  // queue's size if need be (they are few), so it is never lost. Any thread.
  void record(AuditRecord record);
  // Opens the file again at its path (after logrotate moved it). Any thread.
  void reopen() { reopen_ = true; }
  // On the I/O thread: records waiting for the file, and calls waiting for a place.
  std::size_t queued() const { return taken_.load(); }
  std::size_t waiting() const { return waiters_.size(); }
  const std::string& file() const { return path_; }
  // Records written so far.
  std::uint64_t written() const { return written_.load(); }

 private:
  bool try_take();
  void give_back(std::size_t n);
  void push(AuditRecord record);
  void run();
  void open_file();
  // Opens the file again if asked (SIGHUP), or if `checked` is a second old
  // and the path names another file (logrotate moved it).
  void maybe_reopen(std::chrono::steady_clock::time_point& checked, bool force);
  // Writes what is left of a batch; on an error keeps the unwritten rest in `rest`.
  bool write_batch(std::string_view& rest);
  void wake_waiters();

  const std::string path_;
  const std::size_t capacity_;
  const std::chrono::milliseconds wait_;
  asio::io_context& io_;
  int fd_ = -1;
  std::atomic<std::size_t> taken_{0};  // places reserved or queued, not yet written
  std::atomic<std::uint64_t> written_{0};
  std::atomic<bool> reopen_{false};
  std::atomic<bool> someone_waits_{false};
  std::vector<asio::steady_timer*> waiters_;  // I/O thread only

  std::mutex mu_;
  std::condition_variable wake_;
  std::vector<AuditRecord> queue_;
  bool stopping_ = false;
  std::thread thread_;
};

}  // namespace firmad
