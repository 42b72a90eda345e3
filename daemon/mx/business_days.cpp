// Calendar arithmetic, LFT Art. 74 holidays and the in-person request deadline.
#include "daemon/mx/business_days.hpp"

#include <algorithm>
#include <cstdio>
#include <stdexcept>
#include <utility>

namespace firmad {
namespace {

bool is_leap(int y) { return (y % 4 == 0 && y % 100 != 0) || y % 400 == 0; }

int days_in_month(int y, int m) {
  static constexpr int kDays[] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
  return m == 2 && is_leap(y) ? 29 : kDays[m - 1];
}

// The day of month of the n-th Monday (n >= 1) of a month.
int nth_monday(int year, int month, int n) {
  const int first = Date{year, month, 1}.weekday();  // 0 = Sunday
  const int first_monday = 1 + (8 - first) % 7;
  return first_monday + 7 * (n - 1);
}

// The sexenio now begins on 1 October (2024 constitutional reform); 2024 was the first.
bool is_change_of_government_year(int year) { return year >= 2024 && (year - 2024) % 6 == 0; }

// Reads exactly `n` ASCII digits; the caller has checked the length.
std::optional<int> digits(std::string_view s) {
  int v = 0;
  for (char c : s) {
    if (c < '0' || c > '9') return std::nullopt;
    v = v * 10 + (c - '0');
  }
  return v;
}

}  // namespace

bool Date::valid() const {
  return year >= 1 && year <= 9999 && month >= 1 && month <= 12 && day >= 1 &&
         day <= days_in_month(year, month);
}

std::string Date::iso() const {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%04d-%02d-%02d", year, month, day);
  return buf;
}

std::optional<Date> Date::parse(std::string_view text) {
  if (text.size() != 10 || text[4] != '-' || text[7] != '-') return std::nullopt;
  const auto y = digits(text.substr(0, 4));
  const auto m = digits(text.substr(5, 2));
  const auto d = digits(text.substr(8, 2));
  if (!y || !m || !d) return std::nullopt;
  const Date out{*y, *m, *d};
  if (!out.valid()) return std::nullopt;
  return out;
}

// Howard Hinnant's days_from_civil: exact for the proleptic Gregorian calendar.
std::int64_t Date::days_since_epoch() const {
  const std::int64_t y = static_cast<std::int64_t>(year) - (month <= 2 ? 1 : 0);
  const std::int64_t era = (y >= 0 ? y : y - 399) / 400;
  const std::int64_t yoe = y - era * 400;                                      // [0, 399]
  const std::int64_t mp = (month + 9) % 12;                                    // March = 0
  const std::int64_t doy = (153 * mp + 2) / 5 + day - 1;                       // [0, 365]
  const std::int64_t doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;              // [0, 146096]
  return era * 146097 + doe - 719468;
}

// Howard Hinnant's civil_from_days, the inverse of days_since_epoch().
Date Date::from_days_since_epoch(std::int64_t days) {
  const std::int64_t z = days + 719468;
  const std::int64_t era = (z >= 0 ? z : z - 146096) / 146097;
  const std::int64_t doe = z - era * 146097;                                   // [0, 146096]
  const std::int64_t yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;  // [0, 399]
  const std::int64_t doy = doe - (365 * yoe + yoe / 4 - yoe / 100);            // [0, 365]
  const std::int64_t mp = (5 * doy + 2) / 153;                                 // [0, 11]
  const std::int64_t d = doy - (153 * mp + 2) / 5 + 1;                         // [1, 31]
  const std::int64_t m = mp < 10 ? mp + 3 : mp - 9;                            // [1, 12]
  const std::int64_t y = yoe + era * 400 + (m <= 2 ? 1 : 0);
  return Date{static_cast<int>(y), static_cast<int>(m), static_cast<int>(d)};
}

Date Date::plus_days(std::int64_t n) const { return from_days_since_epoch(days_since_epoch() + n); }

int Date::weekday() const {
  // 1970-01-01 was a Thursday (4).
  const std::int64_t z = days_since_epoch();
  return static_cast<int>(z >= -4 ? (z + 4) % 7 : (z + 5) % 7 + 6);
}

bool is_federal_holiday(Date d) {
  switch (d.month) {
    case 1: return d.day == 1;
    case 2: return d.day == nth_monday(d.year, 2, 1);
    case 3: return d.day == nth_monday(d.year, 3, 3);
    case 5: return d.day == 1;
    case 9: return d.day == 16;
    case 10: return d.day == 1 && is_change_of_government_year(d.year);
    case 11: return d.day == nth_monday(d.year, 11, 3);
    case 12: return d.day == 25;
    default: return false;
  }
}

BusinessCalendar::BusinessCalendar(std::vector<Date> extra_non_working) : extra_(std::move(extra_non_working)) {
  for (const Date& d : extra_)
    if (!d.valid()) throw std::invalid_argument("extra non-working day is not a valid date: " + d.iso());
  std::sort(extra_.begin(), extra_.end());
  extra_.erase(std::unique(extra_.begin(), extra_.end()), extra_.end());
}

bool BusinessCalendar::is_business_day(Date d) const {
  const int wd = d.weekday();
  if (wd == 0 || wd == 6) return false;
  if (is_federal_holiday(d)) return false;
  return !std::binary_search(extra_.begin(), extra_.end(), d);
}

Date BusinessCalendar::add_business_days(Date start, int n) const {
  if (!start.valid()) throw std::invalid_argument("start date is not a valid date: " + start.iso());
  if (n < 0) throw std::invalid_argument("number of business days is negative: " + std::to_string(n));
  // Every week has at least one business day unless the caller marked whole
  // weeks as extra non-working days, and those are finitely many: this ends.
  Date d = start;
  for (int counted = 0; counted < n;) {
    d = d.plus_days(1);
    if (is_business_day(d)) ++counted;
  }
  return d;
}

int BusinessCalendar::business_days_between(Date from, Date to) const {
  // Day by day: deadlines are a few weeks away, so this stays a handful of steps.
  int count = 0;
  const std::int64_t last = to.days_since_epoch();
  for (std::int64_t day = from.days_since_epoch() + 1; day <= last; ++day)
    if (is_business_day(Date::from_days_since_epoch(day))) ++count;
  return count;
}

RequestDeadline request_deadline(const BusinessCalendar& calendar, Date submitted, Date today, int business_days) {
  if (!today.valid()) throw std::invalid_argument("today is not a valid date: " + today.iso());
  RequestDeadline r;
  r.submitted = submitted;
  r.deadline = calendar.add_business_days(submitted, business_days);
  r.cancelled = today > r.deadline;
  r.business_days_left = r.cancelled ? 0 : calendar.business_days_between(today, r.deadline);
  return r;
}

}  // namespace firmad
