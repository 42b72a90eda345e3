// Rounds of turns per uid, strikes and penalties, and the buffered-bytes ceilings.
#include "daemon/server/fair_share.hpp"

#include <algorithm>
#include <cmath>

namespace firmad {

FairShare::FairShare(asio::io_context& io, std::size_t buffered_limit, std::size_t buffered_per_uid_limit)
    : io_(io), buffered_limit_(buffered_limit), buffered_per_uid_limit_(buffered_per_uid_limit) {}

FairShare::Account& FairShare::account(uid_t uid) {
  if (accounts_.size() >= 4096 && !accounts_.contains(uid)) forget_idle_accounts();
  return accounts_[uid];
}

void FairShare::forget_idle_accounts() {
  const auto now = Clock::now();
  for (auto it = accounts_.begin(); it != accounts_.end();) {
    Account& a = it->second;
    decay(a, now);
    const bool idle = a.waiting.empty() && a.buffered == 0 && a.strikes < 0.5 && a.held_until <= now;
    it = idle ? accounts_.erase(it) : std::next(it);
  }
}

void FairShare::decay(Account& a, Clock::time_point now) const {
  if (a.strikes > 0) {
    const double halves = std::chrono::duration<double>(now - a.updated) / std::chrono::duration<double>(kHalfLife);
    a.strikes *= std::exp2(-halves);
  }
  a.updated = now;
}

asio::awaitable<void> FairShare::turn(uid_t uid, asio::steady_timer& timer) {
  boost::system::error_code ec;
  // The uid's penalty: all its connections wait it out (another of them may
  // take the next unit and push it further).
  for (auto held = account(uid).held_until; held > Clock::now(); held = account(uid).held_until) {
    timer.expires_at(held);
    co_await timer.async_wait(asio::redirect_error(asio::use_awaitable, ec));
  }
  const auto now = Clock::now();
  Account& a = account(uid);
  decay(a, now);
  // Past its free strikes, a uid's units are spaced by its delay, whatever
  // number of connections it has.
  if (a.strikes > kFreeStrikes) a.held_until = now + delay(a.strikes);
  timer.expires_at(Clock::time_point::max());
  if (a.waiting.empty()) ring_.push_back(uid);
  a.waiting.push_back(&timer);
  schedule_round();
  co_await timer.async_wait(asio::redirect_error(asio::use_awaitable, ec));  // round() cancels it: our turn
}

FairShare::Clock::duration FairShare::delay(double strikes) {
  if (strikes <= kFreeStrikes) return Clock::duration::zero();
  return std::min<Clock::duration>(
      kMaxDelay, std::chrono::duration_cast<Clock::duration>(
                     std::chrono::duration<double, std::milli>(kDelayPerStrike.count() * (strikes - kFreeStrikes))));
}

void FairShare::schedule_round() {
  if (round_scheduled_) return;
  round_scheduled_ = true;
  asio::post(io_, [this] { round(); });
}

// One unit for each uid waiting, in ring order. The units run after this
// handler (the timers' completions are queued now); the next round is
// queued after them, behind whatever else became ready meanwhile.
void FairShare::round() {
  round_scheduled_ = false;
  for (std::size_t n = ring_.size(); n > 0; --n) {
    const uid_t uid = ring_.front();
    ring_.pop_front();
    auto it = accounts_.find(uid);
    if (it == accounts_.end() || it->second.waiting.empty()) continue;
    Account& a = it->second;
    a.waiting.front()->cancel();
    a.waiting.pop_front();
    if (!a.waiting.empty()) ring_.push_back(uid);
  }
  if (!ring_.empty()) schedule_round();
}

void FairShare::offence(uid_t uid) {
  const auto now = Clock::now();
  Account& a = account(uid);
  decay(a, now);
  a.strikes += 1;
  if (a.strikes > kFreeStrikes) a.held_until = std::max(a.held_until, now + delay(a.strikes));
}

FairShare::Room FairShare::take_bytes(uid_t uid, std::size_t bytes) {
  Account& a = account(uid);
  if (a.buffered + bytes > buffered_per_uid_limit_) return Room::UidFull;
  if (buffered_ + bytes > buffered_limit_) return Room::DaemonFull;
  buffered_ += bytes;
  a.buffered += bytes;
  return Room::Taken;
}

void FairShare::force_bytes(uid_t uid, std::size_t bytes) {
  buffered_ += bytes;
  account(uid).buffered += bytes;
}

void FairShare::give_bytes(uid_t uid, std::size_t bytes) {
  if (bytes == 0) return;
  Account& a = account(uid);
  bytes = std::min({bytes, a.buffered, buffered_});
  a.buffered -= bytes;
  buffered_ -= bytes;
}

protocol::Json FairShare::peers_json() const {
  const auto now = Clock::now();
  protocol::Json out = protocol::Json::array();
  for (const auto& [uid, account] : accounts_) {
    Account a = account;
    a.waiting.clear();
    decay(a, now);
    const auto held = std::chrono::duration_cast<std::chrono::milliseconds>(std::max(a.held_until - now, Clock::duration::zero()));
    if (a.strikes < 0.5 && a.buffered == 0 && held.count() == 0) continue;
    out.push_back({{"uid", uid},
                   {"strikes", std::round(a.strikes * 10) / 10},
                   {"heldMs", held.count()},
                   {"bufferedBytes", a.buffered}});
  }
  return out;
}

}  // namespace firmad
