// Sign and SignCms: validate everything, then hand the work to the key's token.
#pragma once
#include "daemon/asio.hpp"

#include "daemon/audit.hpp"
#include "daemon/server/access.hpp"
#include "daemon/config.hpp"
#include "daemon/token/token_worker.hpp"
#include "protocol/message.hpp"

namespace firmad {

// Each validates the parameters, the peer's right to the key and the token's
// state before queueing, so a refusal never waits behind signatures. Returns
// the reply parameters; throws protocol::VarlinkError. Each adds the scheme
// and the digest to the call's audit record as soon as it knows them.
boost::asio::awaitable<protocol::Json> sign(TokenWorker& token, const KeyConfig& key, const protocol::Json& params,
                                            const Peer& peer, AuditRecord& record);
boost::asio::awaitable<protocol::Json> sign_cms(TokenWorker& token, const KeyConfig& key, const protocol::Json& params,
                                                const Peer& peer, AuditRecord& record);

}  // namespace firmad
