// When a certificate's renewal is due, how long to wait between attempts, and which expiry warning applies.
#pragma once

#include <chrono>
#include <optional>
#include <vector>

#include "daemon/config.hpp"

namespace firmad::renewal {

using Clock = std::chrono::system_clock;

// Returns when renewal of a certificate valid from `not_before` to `not_after`
// becomes due: not_after - before_days if set, else not_before + lifetime_fraction
// of the lifetime; plus jitter * u (u is clamped to [0, 1), supplied by the
// caller so tests are deterministic). The result is never later than
// not_after - min(1 day, lifetime / 10) and never before not_before; a
// certificate whose not_after is not after its not_before is due at not_before.
// Resolution is one second. Does not throw.
Clock::time_point due_time(Clock::time_point not_before, Clock::time_point not_after, const RenewalConfig& config,
                           double u);

// Returns the delay before retry number `attempt` (1-based; 0 counts as 1):
// min(retry_max, retry_initial * 2^(attempt-1)) with "equal jitter" (half of
// it fixed, the other half scaled by u in [0, 1)). Never more than retry_max,
// never less than one second (the floor wins if retry_max is shorter), no
// overflow for any attempt. Does not throw.
std::chrono::seconds retry_delay(unsigned attempt, const RenewalConfig& config, double u);

// Returns the smallest of `warn_days` already crossed at `now` (7 when 5 days
// are left of {30, 7, 1}; a threshold is crossed when at most that many days
// are left), 0 once not_after has passed, or nullopt when none is crossed yet.
// `warn_days` may be in any order. Does not throw.
std::optional<int> warning_threshold(Clock::time_point not_after, Clock::time_point now,
                                     const std::vector<int>& warn_days);

// Returns a uniform double in [0, 1) from a per-thread engine seeded by the
// kernel's CSPRNG, for production callers of due_time and retry_delay.
// Throws std::system_error if the kernel gives no random bytes.
double random_unit();

}  // namespace firmad::renewal
