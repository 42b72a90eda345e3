// Renew and Fetch: start or join a renewal on the renewal thread and stream its steps to the caller.
#include "daemon/asio.hpp"

#include <boost/asio/steady_timer.hpp>

#include <deque>
#include <mutex>

#include "daemon/log.hpp"
#include "daemon/server/service.hpp"
#include "protocol/params.hpp"

namespace firmad {

namespace asio = boost::asio;
using protocol::Json;
using protocol::Params;

namespace {

// Events handed from the renewal thread to the connection's coroutine. The
// renewal thread queues an event and posts a wake-up to the I/O thread; the
// coroutine drains the queue and then waits, with nothing in between that
// could let a wake-up slip past (both run on the one I/O thread).
struct Feed {
  explicit Feed(const asio::any_io_executor& ex) : timer(ex, asio::steady_timer::time_point::max()) {}
  std::mutex mutex;
  std::deque<renewal::Event> events;
  asio::steady_timer timer;
};

}  // namespace

asio::awaitable<Json> Service::renew(const protocol::Call& call, const Peer& peer, const Stream& stream) {
  const bool fetch = call.method.ends_with(".Fetch");
  Params p(call.parameters);
  const std::string alias = p.required_string("key");
  std::string serial, npie;
  const bool abandon = !fetch && p.optional_bool("abandon", false);
  if (fetch) {
    serial = p.optional_string("serial").value_or("");
    npie = p.optional_string("npie").value_or("");
    if (serial.size() > 64) throw protocol::invalid_parameter("serial");
    if (npie.size() > 64) throw protocol::invalid_parameter("npie");
  }
  p.finish();
  require_admin(fetch ? "Fetch" : "Renew", peer);
  log::throttled(log::Level::Notice, fetch ? "admin-fetch" : abandon ? "admin-abandon" : "admin-renew", peer.uid,
              {{"key", alias}, {"uid", peer.uid}, {"pid", peer.pid}, peer.program(), {"serial", serial},
               {"npie", npie}});

  auto ex = co_await asio::this_coro::executor;
  auto feed = std::make_shared<Feed>(ex);
  renewal::Listener listener = [feed](const renewal::Event& e) {
    {
      std::lock_guard lock(feed->mutex);
      feed->events.push_back(e);
    }
    asio::post(feed->timer.get_executor(), [feed] { feed->timer.cancel(); });
  };
  if (fetch) renewals_.fetch(alias, serial, npie, std::move(listener));
  else if (abandon) renewals_.abandon(alias, std::move(listener));
  else renewals_.renew(alias, std::move(listener));

  for (;;) {
    std::deque<renewal::Event> batch;
    {
      std::lock_guard lock(feed->mutex);
      batch.swap(feed->events);
    }
    for (const auto& e : batch) {
      if (e.final) co_return Json{{"event", e.to_json()}};
      if (call.more) {
        std::string frame = protocol::encode_reply({{"event", e.to_json()}}, true);
        co_await stream(std::move(frame));
      }
    }
    {
      // An event may have come while a reply was being written (when the
      // wake-up found nothing to cancel): look again before sleeping.
      std::lock_guard lock(feed->mutex);
      if (!feed->events.empty()) continue;
    }
    boost::system::error_code ec;
    co_await feed->timer.async_wait(asio::redirect_error(asio::use_awaitable, ec));
  }
}

}  // namespace firmad
