// The Varlink methods firmad answers, and who may call them.
#pragma once
#include "daemon/asio.hpp"

#include <memory>
#include <string>
#include <vector>

#include "daemon/access.hpp"
#include "daemon/config.hpp"
#include "daemon/token_worker.hpp"
#include "protocol/message.hpp"

namespace firmad {

class Service {
 public:
  // tokens: one worker per [tokens.<name>], in configuration order.
  Service(const Config& config, std::vector<std::unique_ptr<TokenWorker>>& tokens);

  // Answers one call: returns the encoded reply or error (with its NUL), or
  // an empty string for a oneway call. Never throws.
  boost::asio::awaitable<std::string> handle(const protocol::Call& call, const Peer& peer);

  // The Status reply's parameters, from cached state only.
  protocol::Json status() const;
  protocol::Json list_keys() const;

 private:
  boost::asio::awaitable<protocol::Json> dispatch(const protocol::Call& call, const Peer& peer);
  boost::asio::awaitable<protocol::Json> login(const protocol::Json& params, const Peer& peer);
  boost::asio::awaitable<protocol::Json> logout(const protocol::Json& params, const Peer& peer);
  TokenWorker& token_named(const std::string& name) const;
  void require_admin(const char* method, const Peer& peer) const;

  const Config& config_;
  std::vector<std::unique_ptr<TokenWorker>>& tokens_;
};

// Returns the JSON of one key as Status and ListKeys show it.
protocol::Json key_json(const KeyState& key, const std::string& token, std::time_t now);

}  // namespace firmad
