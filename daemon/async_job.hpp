// Awaiting work done on a token's threads from a coroutine on the I/O thread.
#pragma once
#include "daemon/asio.hpp"
#include <boost/asio/async_result.hpp>
#include <boost/asio/executor_work_guard.hpp>

#include <exception>
#include <memory>

#include "daemon/token_worker.hpp"
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
        const bool queued = worker.submit([h, ex, fn = std::move(fn)](WorkContext& ctx) mutable {
          std::exception_ptr error;
          T result{};
          try {
            result = fn(ctx);
          } catch (...) {
            error = std::current_exception();
          }
          asio::post(ex, [h, error, result = std::move(result)]() mutable { h->complete(error, std::move(result)); });
        });
        if (!queued) {
          auto full = std::make_exception_ptr(protocol::VarlinkError(
              protocol::error::kQueueFull,
              {{"token", worker.config().name}, {"limit", worker.config().queue_limit}}));
          asio::post(ex, [h, full]() mutable { h->complete(full, T{}); });
        }
      };
  co_return co_await asio::async_initiate<decltype(asio::use_awaitable), void(std::exception_ptr, T)>(
      initiate, asio::use_awaitable, std::move(fn));
}

// Runs fn() -> T on the token's control thread (login, logout), likewise.
template <typename T, typename Fn>
asio::awaitable<T> on_control_thread(TokenWorker& worker, Fn fn) {
  auto ex = co_await asio::this_coro::executor;
  auto initiate = [&worker, ex](auto handler, Fn fn) {
        auto h = std::make_shared<Pending<decltype(handler), decltype(ex)>>(std::move(handler), ex);
        auto f = std::make_shared<Fn>(std::move(fn));
        worker.control([h, ex, f]() {
          std::exception_ptr error;
          T result{};
          try {
            result = (*f)();
          } catch (...) {
            error = std::current_exception();
          }
          asio::post(ex, [h, error, result = std::move(result)]() mutable { h->complete(error, std::move(result)); });
        });
      };
  co_return co_await asio::async_initiate<decltype(asio::use_awaitable), void(std::exception_ptr, T)>(
      initiate, asio::use_awaitable, std::move(fn));
}

}  // namespace firmad
