// The Unix socket server: one coroutine per connection, limits enforced per
// peer, the I/O thread's time and the buffers' memory shared per uid (fair_share.hpp).
#pragma once
#include "daemon/asio.hpp"

#include <chrono>
#include <map>
#include <memory>
#include <set>
#include <vector>

#include "daemon/server/access.hpp"
#include "daemon/server/fair_share.hpp"
#include "daemon/config.hpp"
#include "daemon/server/service.hpp"

namespace firmad {

class Server {
 public:
  Server(boost::asio::io_context& io, const Config& config, Service& service, FairShare& share);

  // Takes the sockets systemd passed (LISTEN_FDS), or else creates the
  // configured socket (its directory 0750 if missing, the socket with the
  // configured mode and group). Throws std::runtime_error naming the path.
  void open();
  // Starts accepting on the I/O thread.
  void start();
  // Stops accepting and closes idle connections; a connection waiting for
  // the token closes after its reply is written.
  void shutdown();

 private:
  struct Connection;
  boost::asio::awaitable<void> listen(boost::asio::local::stream_protocol::acceptor& acceptor);
  boost::asio::awaitable<void> serve(std::shared_ptr<Connection> c);
  // Reads until the buffer holds a whole frame; returns its length with the
  // NUL, or 0 once the connection is to end (`last_words` then says why, if
  // the peer is to be told).
  boost::asio::awaitable<std::size_t> read_frame(Connection& c, std::string& last_words);
  // Grows the connection's buffer to hold `needed` bytes, charging them to
  // its uid; past a ceiling, sets `last_words` (BuffersFull) and returns false.
  bool make_room(Connection& c, std::size_t needed, std::string& last_words);
  void settle_charge(Connection& c);
  boost::asio::awaitable<void> watchdog(std::shared_ptr<Connection> c);
  void forget(const std::shared_ptr<Connection>& c);

  boost::asio::io_context& io_;
  const Config& config_;
  Service& service_;
  FairShare& share_;
  std::vector<std::unique_ptr<boost::asio::local::stream_protocol::acceptor>> acceptors_;
  std::set<std::shared_ptr<Connection>> connections_;
  std::map<uid_t, std::size_t> per_uid_;
  bool stopping_ = false;
  bool created_socket_ = false;
};

}  // namespace firmad
