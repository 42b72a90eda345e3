// The Varlink methods firmad answers, and who may call them.
#pragma once
#include "daemon/asio.hpp"

#include <deque>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "daemon/audit.hpp"
#include "daemon/serial_thread.hpp"
#include "daemon/server/access.hpp"
#include "daemon/mx/business_days.hpp"
#include "daemon/config.hpp"
#include "daemon/renewal/manager.hpp"
#include "daemon/state.hpp"
#include "daemon/token/token_worker.hpp"
#include "protocol/message.hpp"

namespace firmad {

// Today's date on this machine's clock and time zone.
Date local_today();

// Writes one intermediate reply (a streamed call's "continues" frame).
using Stream = std::function<boost::asio::awaitable<void>(std::string frame)>;

class Service {
 public:
  // tokens: one worker per [tokens.<name>], in configuration order; state:
  // where imports, cancellations and tracked requests are kept (written on
  // `disk`, never on the I/O thread); audit: where every call but Status,
  // ListKeys and the org.varlink.service ones leaves its record.
  Service(const Config& config, std::vector<std::unique_ptr<TokenWorker>>& tokens, StateStore& state,
          BusinessCalendar calendar, renewal::Manager& renewals, Audit& audit, SerialThread& disk);

  // Answers one call: returns the encoded (last) reply or error (with its
  // NUL), or an empty string for a oneway call; a call with "more" may write
  // replies before it through `stream`. Never throws. An audited call first
  // takes its place in the audit queue (or is refused AuditUnavailable), and
  // its record is queued with the outcome.
  struct Answer {
    std::string frame;
    bool refused = false;  // AccessDenied: the server counts it against the peer's uid
  };
  boost::asio::awaitable<Answer> handle(const protocol::Call& call, const Peer& peer, const Stream& stream);

  // Administrators' Status also shows the uids the server holds back (FairShare::peers_json).
  void set_peers_report(std::function<protocol::Json()> report) { peers_report_ = std::move(report); }

  // The Status and ListKeys replies, from cached state only. Administrators
  // see every token and key, and the server's and audit's state; any other
  // peer only the keys it may sign with and the tokens that hold them (a
  // key's holder, RFC, CURP, NPIE and registro patronal are nobody else's).
  protocol::Json status(const Peer& peer) const;
  protocol::Json list_keys(const Peer& peer) const;

 private:
  boost::asio::awaitable<protocol::Json> dispatch(const protocol::Call& call, const Peer& peer, const Stream& stream,
                                                  AuditRecord& record);
  // Applies `change` to state.json on the disk thread; throws StateError.
  boost::asio::awaitable<void> update_state(std::function<void(protocol::Json&)> change);
  // Renew and Fetch (server/renewal_service.cpp).
  boost::asio::awaitable<protocol::Json> renew(const protocol::Call& call, const Peer& peer, const Stream& stream);
  boost::asio::awaitable<protocol::Json> login(const protocol::Json& params, const Peer& peer);
  boost::asio::awaitable<protocol::Json> logout(const protocol::Json& params, const Peer& peer);
  // Credential lifecycle (server/lifecycle.cpp).
  boost::asio::awaitable<protocol::Json> import_credential(const protocol::Json& params, const Peer& peer);
  boost::asio::awaitable<protocol::Json> cancel(const protocol::Json& params, const Peer& peer);
  boost::asio::awaitable<protocol::Json> track_request(const protocol::Json& params, const Peer& peer);
  // The tracked request of a key as Status shows it, or null.
  protocol::Json request_json(const std::string& alias, const Date& today) const;

  protocol::Json key_json(const KeyState& key, const std::string& token, std::time_t now) const;
  const KeyConfig* find_key(const std::string& alias) const;
  TokenWorker& token_named(const std::string& name) const;
  void require_admin(const char* method, const Peer& peer) const;

  const Config& config_;
  std::vector<std::unique_ptr<TokenWorker>>& tokens_;
  StateStore& state_;
  BusinessCalendar calendar_;
  renewal::Manager& renewals_;
  Audit& audit_;
  SerialThread& disk_;
  std::function<protocol::Json()> peers_report_;
  std::deque<KeyConfig> imported_;                 // keys imported since start (stable addresses)
  std::map<std::string, std::string> requests_;    // alias -> submitted "YYYY-MM-DD"
  std::map<std::string, protocol::Json> history_;  // alias -> earlier credentials' cancellations (state.json "history")
  std::set<std::string> importing_;                // aliases of imports under way
};

}  // namespace firmad
