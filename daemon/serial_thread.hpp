// A thread of its own for work that waits on the disk (state.json writes:
// a write and two fsyncs), so the I/O thread never does.
#pragma once
#include "daemon/await_outcome.hpp"
#include <boost/asio/async_result.hpp>
#include <boost/asio/executor_work_guard.hpp>

#include <pthread.h>

#include <condition_variable>
#include <deque>
#include <exception>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <type_traits>
#include <variant>

namespace firmad {

class SerialThread {
 public:
  // `name`: the thread's name in ps and /proc (at most 15 characters).
  explicit SerialThread(std::string name) : name_(std::move(name)), thread_([this] { run(); }) {}
  SerialThread(const SerialThread&) = delete;
  SerialThread& operator=(const SerialThread&) = delete;
  // Runs what is queued, then joins.
  ~SerialThread() {
    {
      std::lock_guard lock(mu_);
      stopping_ = true;
      wake_.notify_one();
    }
    thread_.join();
  }
  // Runs job on the thread, after the jobs posted before it. job must not throw.
  void post(std::function<void()> job) {
    std::lock_guard lock(mu_);
    jobs_.push_back(std::move(job));
    wake_.notify_one();
  }

 private:
  void run() {
    ::pthread_setname_np(::pthread_self(), name_.c_str());
    for (;;) {
      std::function<void()> job;
      {
        std::unique_lock lock(mu_);
        wake_.wait(lock, [this] { return !jobs_.empty() || stopping_; });
        if (jobs_.empty()) return;
        job = std::move(jobs_.front());
        jobs_.pop_front();
      }
      job();
    }
  }

  std::string name_;
  std::mutex mu_;
  std::condition_variable wake_;
  std::deque<std::function<void()>> jobs_;
  bool stopping_ = false;
  std::thread thread_;
};

namespace serial_detail {
template <typename Handler, typename Executor, typename Fn>
struct Waiting {
  Waiting(Handler h, const Executor& ex, Fn f) : handler(std::move(h)), work(ex), fn(std::move(f)) {}
  Handler handler;
  asio::executor_work_guard<Executor> work;
  Fn fn;
};
}  // namespace serial_detail

// For a coroutine on the I/O thread: runs fn on `thread` and resumes on the
// coroutine's executor with fn's result, or rethrows what fn threw. (As with
// the token bridge, name every object with a destructor before co_await.)
template <typename T, typename Fn>
asio::awaitable<T> run_on(SerialThread& thread, Fn fn) {
  using Value = std::conditional_t<std::is_void_v<T>, std::monostate, T>;
  auto ex = co_await asio::this_coro::executor;
  using Executor = decltype(ex);
  auto initiate = [&thread, ex](auto handler, Fn fn) {
    using Waiting = serial_detail::Waiting<decltype(handler), Executor, Fn>;
    auto waiting = std::make_shared<Waiting>(std::move(handler), ex, std::move(fn));
    thread.post([waiting]() noexcept {
      std::exception_ptr error;
      Value value{};
      try {
        if constexpr (std::is_void_v<T>) waiting->fn();
        else value = waiting->fn();
      } catch (...) {
        error = std::current_exception();
      }
      auto target = waiting->work.get_executor();
      asio::post(target, [waiting, error, value = std::move(value)]() mutable {
        std::move(waiting->handler)(error, std::move(value));
        waiting->work.reset();
      });
    });
  };
  co_return co_await await_outcome<T, Value>(initiate, fn);
}

}  // namespace firmad
