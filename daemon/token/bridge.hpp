// The one bridge to a token's threads: hand a job to a lane, get its result back.
//
// Everything that runs on a token thread goes through dispatch(): the I/O
// thread's coroutines through the awaitable run_on(), the renewal thread
// through the blocking run_blocking(). Both are dispatch() with a different
// way of receiving the outcome; neither polls.
#pragma once
#include "daemon/await_outcome.hpp"
#include <boost/asio/async_result.hpp>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/post.hpp>

#include <chrono>
#include <exception>
#include <future>
#include <memory>
#include <type_traits>
#include <utility>
#include <variant>

#include "daemon/token/token_worker.hpp"
#include "protocol/errors.hpp"

namespace firmad {

namespace asio = boost::asio;

// What a job on a token thread ended with: its value, or what it threw.
// (A job of type void gives std::monostate.)
template <typename T>
struct JobOutcome {
  using Value = std::conditional_t<std::is_void_v<T>, std::monostate, T>;
  std::exception_ptr error;
  Value value{};
};

namespace bridge_detail {

// Runs fn with the job's context when it takes one (signing jobs use their
// session), without it otherwise (control jobs call the worker's methods).
template <typename T, typename Fn>
JobOutcome<T> run_job(Fn& fn, WorkContext& ctx) {
  JobOutcome<T> out;
  try {
    if constexpr (std::is_void_v<T>) {
      if constexpr (std::is_invocable_v<Fn&, WorkContext&>) fn(ctx);
      else fn();
    } else {
      if constexpr (std::is_invocable_v<Fn&, WorkContext&>) out.value = fn(ctx);
      else out.value = fn();
    }
  } catch (...) {
    out.error = std::current_exception();
  }
  return out;
}

// A coroutine's completion handler waiting for a token thread, with a work
// guard on the executor that resumes it.
template <typename Handler, typename Executor>
struct Waiting {
  Waiting(Handler h, const Executor& ex) : handler(std::move(h)), work(ex) {}
  Handler handler;
  asio::executor_work_guard<Executor> work;
};

inline std::exception_ptr refusal(const TokenWorker& worker, Admission why) {
  const auto& c = worker.config();
  if (why == Admission::QueueFull)
    return std::make_exception_ptr(
        protocol::VarlinkError(protocol::error::kQueueFull, {{"token", c.name}, {"limit", c.queue_limit}}));
  return std::make_exception_ptr(protocol::VarlinkError(protocol::error::kShuttingDown, nlohmann::json::object()));
}

}  // namespace bridge_detail

// The primitive. Queues fn on `lane` of `worker` and calls deliver(JobOutcome<T>)
// exactly once: on the token thread after fn ran, or at once on the calling
// thread when the job was refused (QueueFull once a signing queue stayed full
// for `wait_for_room`; ShuttingDown once the worker stops). fn takes a
// WorkContext& or nothing and returns T; it may throw.
template <typename T, typename Fn, typename Deliver>
void dispatch(TokenWorker& worker, Lane lane, Fn fn, Deliver deliver,
              std::chrono::milliseconds wait_for_room = std::chrono::milliseconds(0)) {
  // Shared: the worker may drop the job unrun only by refusing it here.
  auto shared = std::make_shared<std::pair<Fn, Deliver>>(std::move(fn), std::move(deliver));
  const Admission admitted = worker.enqueue(
      lane,
      [shared](WorkContext& ctx) noexcept {
        // A job must not throw on a token thread; delivering only allocates
        // (a post, a promise), and running out of memory there is fatal anyway.
        shared->second(bridge_detail::run_job<T>(shared->first, ctx));
      },
      wait_for_room);
  if (admitted != Admission::Queued) shared->second(JobOutcome<T>{bridge_detail::refusal(worker, admitted), {}});
}

// For a coroutine on the I/O thread: runs fn on `lane` and resumes the
// coroutine on its own executor with fn's result, or rethrows what fn threw.
// A full signing queue throws QueueFull at once: the I/O thread never waits
// for room.
//
// GCC 12 destroys temporaries of a co_await full-expression twice in some
// cases, so callers and this helper name every object with a destructor
// (lambdas, executors) before the co_await instead of creating it inline.
template <typename T, typename Fn>
asio::awaitable<T> run_on(TokenWorker& worker, Lane lane, Fn fn) {
  auto ex = co_await asio::this_coro::executor;
  auto initiate = [&worker, lane, ex](auto handler, Fn fn) {
    // The waiting handler is outstanding work: io_context::run() must not
    // return while a token is still answering (SIGTERM finishes requests).
    auto waiting = std::make_shared<bridge_detail::Waiting<decltype(handler), decltype(ex)>>(std::move(handler), ex);
    auto deliver = [waiting](JobOutcome<T> out) {
      auto target = waiting->work.get_executor();
      asio::post(target, [waiting, out = std::move(out)]() mutable {
        std::move(waiting->handler)(out.error, std::move(out.value));
        waiting->work.reset();
      });
    };
    dispatch<T>(worker, lane, std::move(fn), std::move(deliver));
  };
  using Value = typename JobOutcome<T>::Value;
  co_return co_await await_outcome<T, Value>(initiate, fn);
}

// For a thread that may block (the renewal thread): runs fn on `lane` and
// returns its result, or rethrows what fn threw. A signing job waits up to
// `wait_for_room` for a place in a full queue (clients' work comes first),
// then throws QueueFull. Never call it from a token thread or the I/O thread.
template <typename T, typename Fn>
T run_blocking(TokenWorker& worker, Lane lane, Fn fn,
               std::chrono::milliseconds wait_for_room = std::chrono::milliseconds(0)) {
  auto done = std::make_shared<std::promise<JobOutcome<T>>>();
  auto result = done->get_future();
  dispatch<T>(worker, lane, std::move(fn), [done](JobOutcome<T> out) { done->set_value(std::move(out)); },
              wait_for_room);
  JobOutcome<T> out = result.get();
  if (out.error) std::rethrow_exception(out.error);
  if constexpr (!std::is_void_v<T>) return std::move(out.value);
}

}  // namespace firmad
