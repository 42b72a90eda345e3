// The Unix socket server: one coroutine per connection, limits enforced per peer.
#pragma once
#include "daemon/asio.hpp"

#include <chrono>
#include <map>
#include <memory>
#include <set>
#include <vector>

#include "daemon/server/access.hpp"
#include "daemon/config.hpp"
#include "daemon/server/service.hpp"

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
  // A peer can repeat some events at will (reconnecting at the limit,
  // breaking the framing): at most kLinesPerSecond lines a second each, or
  // journald's rate limit would drop other lines, audit lines among them.
  class LogThrottle {
   public:
    static constexpr std::size_t kLinesPerSecond = 10;
    // Whether to log now; `left_out` is then how many lines were not logged before this one.
    bool admit(std::chrono::steady_clock::time_point now, std::size_t& left_out);

   private:
    std::chrono::steady_clock::time_point window_end_{};
    std::size_t in_window_ = 0, left_out_ = 0;
  };
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
  LogThrottle refusals_log_, violations_log_;
  bool stopping_ = false;
  bool created_socket_ = false;
};

}  // namespace firmad
