// Bounded spinning before sleeping: a thread-to-thread wakeup costs tens of
// microseconds on virtual machines, a yield loop a fraction of one.
#pragma once
#include <sched.h>

#include <chrono>

namespace firmad {

// Returns true as soon as ready() holds, false once `limit` has passed.
// Yields the CPU between checks so a thread with real work runs first.
template <typename Ready>
bool spin_until(Ready&& ready, std::chrono::microseconds limit) {
  if (limit.count() <= 0) return ready();
  const auto end = std::chrono::steady_clock::now() + limit;
  do {
    if (ready()) return true;
    ::sched_yield();
  } while (std::chrono::steady_clock::now() < end);
  return ready();
}

}  // namespace firmad
