// Awaiting work done on a token's threads from a coroutine on the I/O thread.
#pragma once
#include "daemon/asio.hpp"
#include <boost/asio/async_result.hpp>
#include <boost/asio/executor_work_guard.hpp>

#include <exception>
#include <memory>

#include "daemon/token/token_worker.hpp"
#include "protocol/errors.hpp"

namespace firmad {

namespace asio = boost::asio;

// A completion handler waiting for a token thread, with a work guard on the
// executor that will run it.
template <typename Handler, typename Executor>
struct Pending {
  Pending(Handler h, const Executor& ex) : handler(std::move(h)), work(ex) {}
  template <typename... Args>
  void complete(Args&&... args) {
    std::move(handler)(std::forward<Args>(args)...);
    work.reset();
  }
  Handler handler;
  asio::executor_work_guard<Executor> work;
};

// Runs f() on the calling token thread and hands its result, or what it
// threw, to the waiting coroutine on that coroutine's executor.
template <typename T, typename P, typename F>
void settle(const std::shared_ptr<P>& pending, F&& f) {
  std::exception_ptr error;
  T result{};
  try {
    result = f();
  } catch (...) {
    error = std::current_exception();
  }
  auto ex = pending->work.get_executor();
  asio::post(ex, [pending, error, result = std::move(result)]() mutable { pending->complete(error, std::move(result)); });
}

// Runs fn(WorkContext&) -> T on one of the token's signing threads and
// resumes the calling coroutine on its own executor with the result (or
// rethrows what fn threw). Throws QueueFull at once when the queue is full.
//
// GCC 12 destroys temporaries of a co_await full-expression twice in some
// cases, so callers and these helpers name every object with a destructor
// (lambdas, executors) before the co_await instead of creating it inline.
template <typename T, typename Fn>
asio::awaitable<T> on_signing_thread(TokenWorker& worker, Fn fn) {
  auto ex = co_await asio::this_coro::executor;
  auto initiate = [&worker, ex](auto handler, Fn fn) {
    // The pending handler is outstanding work: io_context::run() must not
    // return while a token is still answering (SIGTERM finishes requests).
    auto h = std::make_shared<Pending<decltype(handler), decltype(ex)>>(std::move(handler), ex);
    const bool queued = worker.submit(
        [h, fn = std::move(fn)](WorkContext& ctx) mutable { settle<T>(h, [&] { return fn(ctx); }); });
    if (!queued) {
      settle<T>(h, [&]() -> T {
        throw protocol::VarlinkError(protocol::error::kQueueFull,
                                     {{"token", worker.config().name}, {"limit", worker.config().queue_limit}});
      });
    }
  };
  co_return co_await asio::async_initiate<decltype(asio::use_awaitable), void(std::exception_ptr, T)>(
      initiate, asio::use_awaitable, std::move(fn));
}

// Runs fn() -> T on the token's control thread (login, logout, import,
// cancel), likewise.
template <typename T, typename Fn>
asio::awaitable<T> on_control_thread(TokenWorker& worker, Fn fn) {
  auto ex = co_await asio::this_coro::executor;
  auto initiate = [&worker, ex](auto handler, Fn fn) {
    auto h = std::make_shared<Pending<decltype(handler), decltype(ex)>>(std::move(handler), ex);
    auto f = std::make_shared<Fn>(std::move(fn));
    worker.control([h, f] { settle<T>(h, *f); });
  };
  co_return co_await asio::async_initiate<decltype(asio::use_awaitable), void(std::exception_ptr, T)>(
      initiate, asio::use_awaitable, std::move(fn));
}

}  // namespace firmad
