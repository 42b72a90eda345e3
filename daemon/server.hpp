// The Unix socket server: one coroutine per connection, limits enforced per peer.
#pragma once
#include "daemon/asio.hpp"

#include <map>
#include <memory>
#include <set>
#include <vector>

#include "daemon/access.hpp"
#include "daemon/config.hpp"
#include "daemon/service.hpp"

namespace firmad {

class Server {
 public:
  Server(boost::asio::io_context& io, const Config& config, Service& service);

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
  boost::asio::awaitable<void> watchdog(std::shared_ptr<Connection> c);
  void forget(const std::shared_ptr<Connection>& c);

  boost::asio::io_context& io_;
  const Config& config_;
  Service& service_;
  std::vector<std::unique_ptr<boost::asio::local::stream_protocol::acceptor>> acceptors_;
  std::set<std::shared_ptr<Connection>> connections_;
  std::map<uid_t, std::size_t> per_uid_;
  bool stopping_ = false;
  bool created_socket_ = false;
};

}  // namespace firmad
