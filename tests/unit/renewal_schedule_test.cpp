// Unit tests of renewal scheduling: due times, retry backoff and expiry warnings at fixed time points.
#include <gtest/gtest.h>

#include <chrono>
#include <climits>
#include <cmath>
#include <limits>
#include <optional>
#include <vector>

#include "daemon/renewal/schedule.hpp"

namespace firmad::renewal {
namespace {

using namespace std::chrono_literals;
using std::chrono::days;
using std::chrono::hours;
using std::chrono::seconds;

const Clock::time_point kNotBefore = std::chrono::sys_days{std::chrono::year(2026) / 1 / 15} + 10h;
const double kAlmostOne = std::nextafter(1.0, 0.0);

RenewalConfig no_jitter() {
  RenewalConfig c;
  c.jitter = 0s;
  return c;
}

TEST(RenewalScheduleTest, DueAtTwoThirdsOfA365DayCertificate) {
  const RenewalConfig c = no_jitter();
  const Clock::time_point due = due_time(kNotBefore, kNotBefore + days(365), c, 0.5);
  // 2/3 of 365 days is 243 days 8 hours; the one-second resolution may round it down.
  EXPECT_LE(due, kNotBefore + days(243) + 8h);
  EXPECT_GE(due, kNotBefore + days(243) + 8h - 1s);
}

TEST(RenewalScheduleTest, DueAtTheConfiguredLifetimeFraction) {
  RenewalConfig c = no_jitter();
  c.lifetime_fraction = 0.75;
  EXPECT_EQ(due_time(kNotBefore, kNotBefore + days(400), c, 0), kNotBefore + days(300));
}

TEST(RenewalScheduleTest, BeforeDaysCountsBackFromNotAfterInsteadOfTheFraction) {
  RenewalConfig c = no_jitter();
  c.before_days = 30;
  c.lifetime_fraction = 0.1;  // ignored when before_days is set
  const Clock::time_point not_after = kNotBefore + days(730);
  EXPECT_EQ(due_time(kNotBefore, not_after, c, 0), not_after - days(30));
}

TEST(RenewalScheduleTest, JitterAddsUpToButNeverTheWholeJitter) {
  RenewalConfig c;
  c.lifetime_fraction = 0.5;
  c.jitter = 12h;
  const Clock::time_point not_after = kNotBefore + days(360);
  const Clock::time_point base = kNotBefore + days(180);
  EXPECT_EQ(due_time(kNotBefore, not_after, c, 0), base);
  EXPECT_EQ(due_time(kNotBefore, not_after, c, 0.5), base + 6h);
  const Clock::time_point late = due_time(kNotBefore, not_after, c, kAlmostOne);
  EXPECT_LT(late, base + 12h);
  EXPECT_GE(late, base + 12h - 1s);
}

TEST(RenewalScheduleTest, ARandomNumberOutsideTheUnitIntervalIsClampedIntoIt) {
  RenewalConfig c;
  c.lifetime_fraction = 0.5;
  c.jitter = 12h;
  const Clock::time_point not_after = kNotBefore + days(360);
  const Clock::time_point base = kNotBefore + days(180);
  EXPECT_EQ(due_time(kNotBefore, not_after, c, -3), base);
  EXPECT_EQ(due_time(kNotBefore, not_after, c, std::numeric_limits<double>::quiet_NaN()), base);
  EXPECT_LT(due_time(kNotBefore, not_after, c, 1.0), base + 12h);
  EXPECT_LT(due_time(kNotBefore, not_after, c, 1e300), base + 12h);
}

TEST(RenewalScheduleTest, JitterNeverPushesTheDueTimeIntoTheLastDay) {
  RenewalConfig c;
  c.before_days = 1;
  c.jitter = days(30);
  const Clock::time_point not_after = kNotBefore + days(365);
  EXPECT_EQ(due_time(kNotBefore, not_after, c, 0), not_after - days(1));
  EXPECT_EQ(due_time(kNotBefore, not_after, c, kAlmostOne), not_after - days(1));
}

TEST(RenewalScheduleTest, AShortCertificateKeepsATenthOfItsLifetimeInReserve) {
  RenewalConfig c;
  c.lifetime_fraction = 0.95;
  c.jitter = 12h;
  const Clock::time_point not_after = kNotBefore + days(5);  // a tenth: 12 hours, less than a day
  EXPECT_EQ(due_time(kNotBefore, not_after, c, kAlmostOne), not_after - 12h);
  EXPECT_EQ(due_time(kNotBefore, not_after, c, 0), not_after - 12h);
  c.lifetime_fraction = 0.5;
  EXPECT_EQ(due_time(kNotBefore, not_after, c, 0), kNotBefore + 60h);
}

TEST(RenewalScheduleTest, BeforeDaysLongerThanTheLifetimeIsDueAtNotBefore) {
  RenewalConfig c = no_jitter();
  c.before_days = 365;
  EXPECT_EQ(due_time(kNotBefore, kNotBefore + days(90), c, 0), kNotBefore);
}

TEST(RenewalScheduleTest, ACertificateWithoutValidityIsDueAtNotBefore) {
  const RenewalConfig c;
  EXPECT_EQ(due_time(kNotBefore, kNotBefore, c, 0.5), kNotBefore);
  EXPECT_EQ(due_time(kNotBefore, kNotBefore - days(1), c, 0.5), kNotBefore);
}

TEST(RenewalScheduleTest, ADueTimeIsNeverBeforeASubSecondNotBefore) {
  const RenewalConfig c = no_jitter();
  const Clock::time_point not_before = kNotBefore + 400ms;
  EXPECT_GE(due_time(not_before, not_before + 1s, c, 0), not_before);
  EXPECT_GE(due_time(not_before, not_before + days(10), c, 0), not_before);
}

RenewalConfig backoff(seconds initial, seconds max) {
  RenewalConfig c;
  c.retry_initial = initial;
  c.retry_max = max;
  return c;
}

TEST(RenewalScheduleTest, RetryDelayDoublesWithEachAttempt) {
  const RenewalConfig c = backoff(60s, 6h);
  // u = 0: the fixed half; u -> 1: just under the whole.
  EXPECT_EQ(retry_delay(1, c, 0), 30s);
  EXPECT_EQ(retry_delay(2, c, 0), 60s);
  EXPECT_EQ(retry_delay(3, c, 0), 120s);
  EXPECT_EQ(retry_delay(1, c, kAlmostOne), 59s);
  EXPECT_EQ(retry_delay(2, c, kAlmostOne), 119s);
  EXPECT_EQ(retry_delay(3, c, 0.5), 180s);
}

TEST(RenewalScheduleTest, RetryDelayStopsAtRetryMax) {
  const RenewalConfig c = backoff(60s, 6h);
  // 60 s * 2^8 = 15360 s is still under 6 h; 2^9 is over.
  EXPECT_EQ(retry_delay(9, c, kAlmostOne), 15359s);
  EXPECT_EQ(retry_delay(10, c, 0), 3h);
  EXPECT_EQ(retry_delay(10, c, kAlmostOne), 6h - 1s);
  EXPECT_EQ(retry_delay(11, c, 0), 3h);
  EXPECT_LE(retry_delay(11, c, 1.0), 6h);
}

TEST(RenewalScheduleTest, RetryDelayDoesNotOverflowForHugeAttempts) {
  const RenewalConfig c = backoff(60s, 6h);
  for (unsigned attempt : {64u, 65u, 1000u, UINT_MAX}) {
    SCOPED_TRACE(attempt);
    EXPECT_EQ(retry_delay(attempt, c, 0), 3h);
    EXPECT_EQ(retry_delay(attempt, c, kAlmostOne), 6h - 1s);
  }
  const RenewalConfig wide = backoff(1s, seconds(std::numeric_limits<seconds::rep>::max()));
  const seconds d = retry_delay(1000, wide, kAlmostOne);
  EXPECT_GT(d, seconds(std::numeric_limits<seconds::rep>::max() / 4));
  EXPECT_LE(d, wide.retry_max);
}

TEST(RenewalScheduleTest, RetryDelayIsNeverUnderOneSecond) {
  EXPECT_EQ(retry_delay(1, backoff(1s, 1s), 0), 1s);
  EXPECT_EQ(retry_delay(1, backoff(1s, 1s), kAlmostOne), 1s);
  EXPECT_EQ(retry_delay(5, backoff(0s, 0s), 0), 1s);
  EXPECT_EQ(retry_delay(1, backoff(1s, 6h), 0), 1s);
}

TEST(RenewalScheduleTest, AttemptZeroCountsAsTheFirst) {
  const RenewalConfig c = backoff(60s, 6h);
  EXPECT_EQ(retry_delay(0, c, 0), retry_delay(1, c, 0));
}

TEST(RenewalScheduleTest, RetryInitialLongerThanRetryMaxIsCapped) {
  EXPECT_EQ(retry_delay(1, backoff(10h, 6h), kAlmostOne), 6h - 1s);
}

TEST(RenewalScheduleTest, WarningThresholdIsTheSmallestOneCrossed) {
  const Clock::time_point not_after = kNotBefore + days(365);
  const std::vector<int> warn{30, 7, 1};
  EXPECT_EQ(warning_threshold(not_after, not_after - days(40), warn), std::nullopt);
  EXPECT_EQ(warning_threshold(not_after, not_after - days(30) - 1s, warn), std::nullopt);
  EXPECT_EQ(warning_threshold(not_after, not_after - days(30), warn), 30);
  EXPECT_EQ(warning_threshold(not_after, not_after - days(8), warn), 30);
  EXPECT_EQ(warning_threshold(not_after, not_after - days(5), warn), 7);
  EXPECT_EQ(warning_threshold(not_after, not_after - 12h, warn), 1);
  EXPECT_EQ(warning_threshold(not_after, not_after - 1ms, warn), 1);
}

TEST(RenewalScheduleTest, WarningThresholdsMayComeInAnyOrder) {
  const Clock::time_point not_after = kNotBefore + days(365);
  EXPECT_EQ(warning_threshold(not_after, not_after - days(5), {1, 30, 7}), 7);
}

TEST(RenewalScheduleTest, AnExpiredCertificateWarnsWithZero) {
  const Clock::time_point not_after = kNotBefore + days(365);
  EXPECT_EQ(warning_threshold(not_after, not_after, {30, 7, 1}), 0);
  EXPECT_EQ(warning_threshold(not_after, not_after + days(3), {30, 7, 1}), 0);
  EXPECT_EQ(warning_threshold(not_after, not_after + 1s, {}), 0);
}

TEST(RenewalScheduleTest, NoWarningThresholdsMeansNoWarningBeforeExpiry) {
  const Clock::time_point not_after = kNotBefore + days(365);
  EXPECT_EQ(warning_threshold(not_after, not_after - 1s, {}), std::nullopt);
}

TEST(RenewalScheduleTest, AHugeWarningThresholdDoesNotOverflow) {
  const Clock::time_point not_after = kNotBefore + days(365);
  EXPECT_EQ(warning_threshold(not_after, kNotBefore, {INT_MAX}), INT_MAX);
}

TEST(RenewalScheduleTest, RandomUnitStaysInTheUnitIntervalAndVaries) {
  double lo = 1, hi = 0;
  for (int i = 0; i < 1000; ++i) {
    const double u = random_unit();
    ASSERT_GE(u, 0.0);
    ASSERT_LT(u, 1.0);
    lo = std::min(lo, u);
    hi = std::max(hi, u);
  }
  EXPECT_LT(lo, 0.1);
  EXPECT_GT(hi, 0.9);
}

}  // namespace
}  // namespace firmad::renewal
