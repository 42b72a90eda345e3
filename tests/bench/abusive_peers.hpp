// Load and abuse for firmad: many raw peers of chosen kinds on one epoll thread, each ending recorded.
#pragma once
#include <sys/types.h>

#include <array>
#include <atomic>
#include <chrono>
#include <filesystem>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

namespace firmad::load {

// What a peer does once connected.
enum class Kind {
  Held,        // asks GetInfo once, reads the reply, then stays connected saying nothing
  Silent,      // connects and never sends a byte
  Slow,        // a call's opening, then one byte (a space) every slow interval, never a NUL
  HalfOpen,    // half a frame, then nothing
  HalfClosed,  // half a frame, then shutdown(SHUT_WR)
  Oversize,    // one message of 2 MiB + 64 KiB without a NUL, then reads the answer
  Endless,     // sends without end and without a NUL until the daemon closes
  OverLimit,   // silent, opened once the daemon is at max_connections
  Deny,        // pipelines Sign calls for a key it may not use (set_deny_key), without end
  Violate,     // sends one frame that is not JSON, reads the ProtocolViolation
};
inline constexpr std::array kAllKinds = {Kind::Held,     Kind::Silent,  Kind::Slow,      Kind::HalfOpen, Kind::HalfClosed,
                                         Kind::Oversize, Kind::Endless, Kind::OverLimit, Kind::Deny,     Kind::Violate};
// The kind named by name(), or throws std::invalid_argument.
Kind kind_named(const std::string& name);
const char* name(Kind kind);

// How the connections of one kind went, as the peers saw it. Each connection
// that connected ends in exactly one of protocol_violation, buffers_full,
// closed_after_idle_timeout, closed_early, hung_up.
struct Tally {
  long connections = 0;                // made (repeating kinds reconnect after each ending)
  long replies = 0;                    // non-error reply frames received
  long other_errors = 0;               // error frames other than ProtocolViolation and AccessDenied
  long access_denied = 0;              // AccessDenied error frames
  long protocol_violation = 0;         // answered ProtocolViolation, then closed
  long buffers_full = 0;               // answered BuffersFull (a buffered-bytes ceiling), then closed
  long closed_after_idle_timeout = 0;  // closed without a word once idle_timeout had passed
  long closed_early = 0;               // closed without a word before idle_timeout (refused, or our EOF)
  long hung_up = 0;                    // closed by the peer itself (hang_up, stop) while open
  long connect_failed = 0;             // connect(2) itself failed
  double first_close_s = -1;           // earliest and latest close, seconds after connecting
  double last_close_s = -1;
  long long bytes_sent = 0;
};

// Peers against one Unix socket. add() connects in the caller's thread; one
// thread then drives every peer. The destructor stops it and closes all.
class AbusivePeers {
 public:
  // `idle_timeout` is the daemon's: a close without a word after 0.8 of it
  // counts as closed by the idle timeout.
  AbusivePeers(std::filesystem::path socket, std::chrono::milliseconds idle_timeout,
               std::chrono::milliseconds slow_interval = std::chrono::milliseconds(100));
  AbusivePeers(const AbusivePeers&) = delete;  // owns sockets and a thread
  AbusivePeers& operator=(const AbusivePeers&) = delete;
  ~AbusivePeers();

  // Connects `count` peers of `kind` and hands them to the thread.
  void add(Kind kind, int count);
  // While on, Oversize, Endless, Deny and Violate peers connect again after each ending.
  void set_repeat(bool on) { repeat_ = on; }
  // The key Deny peers ask to sign with. Call before adding them.
  void set_deny_key(const std::string& alias);
  // Waits until every connection has ended (or `limit`); true if all have.
  bool wait_all_ended(std::chrono::milliseconds limit);
  // Waits until the peers of `kind` made at least `count` connections and all have ended.
  bool wait_ended(Kind kind, long count, std::chrono::milliseconds limit);
  long open_connections() const { return open_.load(); }
  // Closes the open peers of `kind` from this side (counted hung_up); returns once done.
  void hang_up(Kind kind);
  // Stops the thread and closes what is still open (counted hung_up).
  void stop();
  // A snapshot; kinds never added are absent.
  std::map<Kind, Tally> tallies() const;

 private:
  struct Peer;
  void run();
  void adopt(std::unique_ptr<Peer> p);
  void end(Peer& p, bool closed_by_daemon);
  void drive_writes(Peer& p);
  void read_all(Peer& p);
  std::unique_ptr<Peer> connect_peer(Kind kind);

  std::filesystem::path socket_;
  std::string deny_frames_;  // Deny: a batch of pipelined Sign calls, sent again and again
  std::chrono::milliseconds idle_timeout_, slow_interval_;
  int epoll_fd_ = -1, wake_fd_ = -1;
  std::atomic<bool> stop_{false}, repeat_{false};
  std::atomic<int> hang_up_{-1};  // a Kind to close, or -1
  std::atomic<long> open_{0};
  mutable std::mutex mu_;  // guards pending_ and tallies_
  std::vector<std::unique_ptr<Peer>> pending_;
  std::map<Kind, Tally> tallies_;
  // The thread's own: every open peer, the slow ones, the ones ended in this round.
  std::map<Peer*, std::unique_ptr<Peer>> peers_;
  std::vector<Peer*> slow_, dead_;
  std::thread thread_;
};

// Raises this process's soft open-file limit to its hard limit; returns the new soft limit.
long raise_open_file_limit();
// A field of /proc/PID/status in KiB (VmRSS, VmHWM, RssAnon), or -1.
long proc_status_kib(pid_t pid, const std::string& field);
// How many of the process's file descriptors are sockets (its listener and connections), or -1.
long socket_fds(pid_t pid);
// The soft "Max open files" of the process, from /proc/PID/limits, or -1 (unlimited: LONG_MAX).
long open_file_limit(pid_t pid);
// How often `event=NAME` happened by the log: its lines, and the lines a
// throttle left out (their `not_logged_before=N` fields summed, with those
// of the `event=log-throttled of=NAME` lines that report a flood's end).
struct EventCount {
  long lines = 0, left_out = 0;
};
EventCount count_events(const std::string& log, const std::string& name);

}  // namespace firmad::load
