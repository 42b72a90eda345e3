// Renewal scheduling: pure arithmetic on time points, clock and randomness injected.
#include "daemon/renewal/schedule.hpp"

#include <sys/random.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cmath>
#include <cstdint>
#include <random>
#include <system_error>

namespace firmad::renewal {
namespace {

constexpr std::int64_t kDay = 86400;  // seconds

// u as promised to the callers: NaN and anything below 0 become 0, anything from 1 up the largest double below 1.
double unit_interval(double u) {
  if (!(u >= 0)) return 0;
  return std::min(u, std::nextafter(1.0, 0.0));
}

}  // namespace

Clock::time_point due_time(Clock::time_point not_before, Clock::time_point not_after, const RenewalConfig& config,
                           double u) {
  using std::chrono::seconds;
  if (not_after <= not_before) return not_before;
  // Whole seconds since the epoch: their difference cannot overflow, whatever the certificate says.
  const std::int64_t start = std::chrono::floor<seconds>(not_before.time_since_epoch()).count();
  const std::int64_t end = std::chrono::floor<seconds>(not_after.time_since_epoch()).count();
  const std::int64_t lifetime = end - start;
  const std::int64_t margin = std::min(kDay, lifetime / 10);
  const std::int64_t latest = lifetime - margin;

  // Offsets from `start` in whole seconds, each kept in range before they are added.
  std::int64_t offset = 0;
  if (config.before_days) {
    offset = lifetime - static_cast<std::int64_t>(*config.before_days) * kDay;
  } else {
    const double f = config.lifetime_fraction * static_cast<double>(lifetime);
    if (f > 0) offset = static_cast<std::int64_t>(std::min(f, static_cast<double>(lifetime)));  // also turns NaN into 0
  }
  offset = std::clamp<std::int64_t>(offset, 0, latest);
  // Strictly less than the jitter, even where u * jitter rounds up to it.
  const std::int64_t jitter = std::max<std::int64_t>(config.jitter.count(), 0);
  const std::int64_t extra =
      jitter == 0 ? 0 : std::min(static_cast<std::int64_t>(static_cast<double>(jitter) * unit_interval(u)), jitter - 1);
  const std::int64_t whole = extra > latest - offset ? latest : offset + extra;

  const Clock::time_point due{std::chrono::duration_cast<Clock::duration>(seconds(start + whole))};
  return std::max(due, not_before);
}

std::chrono::seconds retry_delay(unsigned attempt, const RenewalConfig& config, double u) {
  using std::chrono::seconds;
  const seconds cap = std::max(config.retry_max, seconds(0));
  seconds base = std::clamp(config.retry_initial, seconds(1), std::max(cap, seconds(1)));
  // Doubling stops at the cap, so this runs at most ~63 times whatever `attempt` is.
  for (unsigned i = 1; i < attempt && base < cap; ++i) base = base > cap / 2 ? cap : base * 2;
  base = std::min(base, cap);
  const seconds half = base / 2;
  // Rounding to double may overshoot `half` for huge values; the min keeps the sum within base.
  const auto spread = std::min(static_cast<seconds::rep>(static_cast<double>(half.count()) * unit_interval(u)), half.count());
  return std::max(base - half + seconds(spread), seconds(1));
}

std::optional<int> warning_threshold(Clock::time_point not_after, Clock::time_point now,
                                     const std::vector<int>& warn_days) {
  if (now >= not_after) return 0;
  // Compared in seconds rounded up: days(d) in the clock's nanoseconds could overflow for a large d.
  const std::int64_t left = std::chrono::ceil<std::chrono::seconds>(not_after - now).count();
  std::optional<int> crossed;
  for (int d : warn_days)
    if (left <= static_cast<std::int64_t>(d) * kDay && (!crossed || d < *crossed)) crossed = d;
  return crossed;
}

double random_unit() {
  thread_local std::mt19937_64 engine = [] {
    std::array<std::uint32_t, 8> seed{};
    auto* p = reinterpret_cast<unsigned char*>(seed.data());
    std::size_t filled = 0;
    while (filled < sizeof seed) {
      const ssize_t n = getrandom(p + filled, sizeof seed - filled, 0);
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) throw std::system_error(errno, std::generic_category(), "getrandom");
      filled += static_cast<std::size_t>(n);
    }
    std::seed_seq seq(seed.begin(), seed.end());
    return std::mt19937_64(seq);
  }();
  // The top 53 bits scaled by 2^-53: exactly representable, so never 1.0
  // (uniform_real_distribution may round up to 1 on some implementations).
  return static_cast<double>(engine() >> 11) * 0x1.0p-53;
}

}  // namespace firmad::renewal
