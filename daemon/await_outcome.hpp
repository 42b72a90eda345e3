// The awaitable tail shared by the bridges to firmad's other threads
// (token/bridge.hpp, serial_thread.hpp). Apart from daemon/asio.hpp because
// it needs Boost.Asio's coroutine support, which Boost 1.74 enables for GCC
// only: clang-built parts (the fuzz targets) include asio.hpp but never this.
#pragma once
#include "daemon/asio.hpp"

#include <boost/asio/async_result.hpp>

#include <exception>
#include <type_traits>

namespace firmad {

// Awaits an operation started by `initiate(handler, fn)` whose handler is
// called with (std::exception_ptr, Value): rethrows what it carries, or
// returns the value (nothing for T = void, whose Value is a placeholder).
// The bridges to other threads (token/bridge.hpp, serial_thread.hpp) end here.
// Both are taken by reference, from the awaiting coroutine's frame, which
// outlives this one: no temporary with a destructor in the caller's co_await
// (GCC 12 may destroy those twice).
template <typename T, typename Value, typename Initiate, typename Fn>
asio::awaitable<T> await_outcome(Initiate& initiate, Fn& fn) {
  using Signature = void(std::exception_ptr, Value);
  if constexpr (std::is_void_v<T>) {
    co_await asio::async_initiate<decltype(asio::use_awaitable), Signature>(std::move(initiate), asio::use_awaitable,
                                                                            std::move(fn));
  } else {
    co_return co_await asio::async_initiate<decltype(asio::use_awaitable), Signature>(
        std::move(initiate), asio::use_awaitable, std::move(fn));
  }
}

}  // namespace firmad
