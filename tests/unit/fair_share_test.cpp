// FairShare: turns shared per uid, strikes and their hold, the buffer ceilings.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "daemon/server/fair_share.hpp"

namespace firmad {
namespace {

namespace asio = boost::asio;

// `units` turns for `uid` on one "connection", each recorded in `order`.
asio::awaitable<void> worker(FairShare& share, uid_t uid, int units, std::vector<uid_t>& order) {
  asio::steady_timer timer(co_await asio::this_coro::executor);
  for (int i = 0; i < units; ++i) {
    co_await share.turn(uid, timer);
    order.push_back(uid);
  }
}

TEST(FairShare, EachUidGetsOneUnitPerRoundWhateverItsConnections) {
  asio::io_context io;
  FairShare share(io, 24u << 20, 8u << 20);
  std::vector<uid_t> order;
  for (int c = 0; c < 8; ++c) asio::co_spawn(io, worker(share, 1000, 20, order), asio::detached);  // 8 busy connections
  asio::co_spawn(io, worker(share, 2000, 20, order), asio::detached);                             // one
  io.run();
  ASSERT_EQ(order.size(), 180u);
  // While uid 2000 has work, no two of its units have more than one of uid 1000's between them.
  std::size_t last = 0, seen = 0;
  for (std::size_t i = 0; i < order.size() && seen < 20; ++i) {
    if (order[i] != 2000) continue;
    if (seen++ > 0) EXPECT_LE(i - last - 1, 1u) << "at unit " << i;
    last = i;
  }
  EXPECT_EQ(seen, 20u);
  EXPECT_LE(last, 41u) << "uid 2000 finished within 2 x its units, though uid 1000 had 160 waiting";
}

TEST(FairShare, StrikesPastTheFreeOnesHoldTheUidBackAndNoOneElse) {
  asio::io_context io;
  FairShare share(io, 24u << 20, 8u << 20);
  for (int i = 0; i < 16; ++i) share.offence(7);
  EXPECT_EQ(share.peers_json()[0]["heldMs"], 0) << "16 strikes are free";
  for (int i = 0; i < 40; ++i) share.offence(7);
  const auto report = share.peers_json();
  ASSERT_EQ(report.size(), 1u);
  EXPECT_EQ(report[0]["uid"], 7);
  EXPECT_GT(report[0]["strikes"].get<double>(), 50);
  EXPECT_GT(report[0]["heldMs"].get<long>(), 100);  // 4 ms a strike over 16

  // A uid with no strikes takes its turn while uid 7 is held.
  std::vector<uid_t> order;
  asio::co_spawn(io, worker(share, 7, 1, order), asio::detached);
  asio::co_spawn(io, worker(share, 8, 3, order), asio::detached);
  io.run();
  ASSERT_EQ(order.size(), 4u);
  EXPECT_EQ(order.back(), 7u) << "uid 7 came last, after its hold";
}

TEST(FairShare, BufferCeilingsPerUidAndForTheDaemon) {
  asio::io_context io;
  FairShare share(io, 10 << 20, 4 << 20);
  EXPECT_EQ(FairShare::charge_for(16 * 1024), 0u) << "the first 16 KiB of a connection are free";
  EXPECT_EQ(FairShare::charge_for(64 * 1024), 48u * 1024);
  EXPECT_EQ(share.take_bytes(1, 4 << 20), FairShare::Room::Taken);
  EXPECT_EQ(share.take_bytes(1, 1), FairShare::Room::UidFull);
  EXPECT_EQ(share.take_bytes(2, 4 << 20), FairShare::Room::Taken);
  EXPECT_EQ(share.take_bytes(3, 3 << 20), FairShare::Room::DaemonFull) << "8 of 10 MiB taken";
  EXPECT_EQ(share.buffered(), 8u << 20);
  share.give_bytes(1, 4 << 20);
  EXPECT_EQ(share.take_bytes(3, 3 << 20), FairShare::Room::Taken);
  share.give_bytes(2, 100u << 20);  // never below zero
  share.give_bytes(3, 3 << 20);
  EXPECT_EQ(share.buffered(), 0u);
}

}  // namespace
}  // namespace firmad
