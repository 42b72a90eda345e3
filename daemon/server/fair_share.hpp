// The I/O thread's time and the request buffers' memory, shared between uids.
//
// Every unit of a connection's work on the I/O thread (one read, or one
// call parsed and answered) first takes a turn: the uids with work waiting
// are served in rounds, one unit per uid per round, whatever number of
// connections each has. A round is one handler on the I/O thread, so what
// else is ready (a signature's completion, another epoll result) runs
// between two rounds: a uid with eight busy connections costs a one-call
// peer at most one unit of waiting per step, not eight.
//
// A uid that breaks the framing, is refused (AccessDenied), passes a buffer
// ceiling or reconnects at its connection limit earns strikes, which fade
// with a half-life of kHalfLife. Past kFreeStrikes, the uid gets one unit
// per delay, kDelayPerStrike times the strikes over (at most kMaxDelay),
// across all its connections: its new connections and calls wait; other
// uids do not.
//
// Request bytes buffered beyond each connection's first kFreeBytes are
// charged to their uid and to the whole daemon; a connection whose next read
// would pass a ceiling is answered BuffersFull and closed (waiting instead
// would let connections that each hold part of the room wait on one
// another). Calls under 16 KiB never meet it. doc/architecture.md, "Fair
// share", tells the whole design.
#pragma once
#include "daemon/asio.hpp"

#include <sys/types.h>

#include <chrono>
#include <cstddef>
#include <deque>
#include <map>
#include <vector>

#include "protocol/message.hpp"

namespace firmad {

class FairShare {
 public:
  using Clock = std::chrono::steady_clock;
  static constexpr double kFreeStrikes = 16;
  static constexpr std::chrono::seconds kHalfLife{2};
  static constexpr std::chrono::milliseconds kDelayPerStrike{4};
  static constexpr std::chrono::milliseconds kMaxDelay{1000};
  static constexpr std::size_t kFreeBytes = 16 * 1024;

  FairShare(asio::io_context& io, std::size_t buffered_limit, std::size_t buffered_per_uid_limit);

  // Waits for the uid's next turn (and for its penalty to pass). `timer` is
  // the connection's own, used only for this wait.
  asio::awaitable<void> turn(uid_t uid, asio::steady_timer& timer);
  // The uid broke the framing, was refused, or kept reconnecting at its limit.
  void offence(uid_t uid);

  // Charges `bytes` more to the uid. Nothing is charged if that would pass
  // a ceiling: then returns the ceiling's scope, "uid" or "daemon".
  enum class Room { Taken, UidFull, DaemonFull };
  Room take_bytes(uid_t uid, std::size_t bytes);
  // Charges without a check (a rounding of an allocation; never above a few bytes).
  void force_bytes(uid_t uid, std::size_t bytes);
  void give_bytes(uid_t uid, std::size_t bytes);
  // What a buffer of this capacity costs.
  static std::size_t charge_for(std::size_t capacity) { return capacity > kFreeBytes ? capacity - kFreeBytes : 0; }

  std::size_t buffered() const { return buffered_; }
  std::size_t buffered_limit() const { return buffered_limit_; }
  std::size_t buffered_per_uid_limit() const { return buffered_per_uid_limit_; }
  // For administrators' Status: uids with strikes, a penalty or buffered bytes.
  protocol::Json peers_json() const;

 private:
  struct Account {
    double strikes = 0;
    Clock::time_point updated{}, held_until{};
    std::size_t buffered = 0;
    std::deque<asio::steady_timer*> waiting;  // connections waiting for a turn
  };
  Account& account(uid_t uid);
  void decay(Account& a, Clock::time_point now) const;
  static Clock::duration delay(double strikes);
  void schedule_round();
  void round();
  void forget_idle_accounts();

  asio::io_context& io_;
  const std::size_t buffered_limit_, buffered_per_uid_limit_;
  std::size_t buffered_ = 0;
  std::map<uid_t, Account> accounts_;
  std::deque<uid_t> ring_;  // uids with a connection waiting for a turn, in serving order
  bool round_scheduled_ = false;
};

}  // namespace firmad
