// Sign and SignCms: validate everything, then hand the work to the key's token.
#pragma once
#include "daemon/asio.hpp"

#include "daemon/server/access.hpp"
#include "daemon/config.hpp"
#include "daemon/token/token_worker.hpp"
#include "protocol/message.hpp"

namespace firmad {

// Each validates the parameters, the peer's right to the key and the token's
// state before queueing, so a refusal never waits behind signatures. Returns
// the reply parameters; throws protocol::VarlinkError.
boost::asio::awaitable<protocol::Json> sign(TokenWorker& token, const KeyConfig& key, const protocol::Json& params,
                                            const Peer& peer);
boost::asio::awaitable<protocol::Json> sign_cms(TokenWorker& token, const KeyConfig& key, const protocol::Json& params,
                                                const Peer& peer);

}  // namespace firmad
