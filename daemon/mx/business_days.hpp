// Mexican business days (LFT Art. 74) and the 10-business-day deadline of an in-person IMSS request.
#pragma once
#include <compare>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace firmad {

// A day of the proleptic Gregorian calendar; no time of day, no time zone.
// Members declared year, month, day so the defaulted comparison is chronological.
struct Date {
  int year = 0;
  int month = 0;  // 1..12
  int day = 0;    // 1..31

  friend auto operator<=>(const Date&, const Date&) = default;

  // Returns true if year is 1..9999 and month/day name a day that exists
  // (so 2024-02-29 is valid, 2025-02-29 and 2025-04-31 are not).
  bool valid() const;

  // Returns "YYYY-MM-DD" (zero-padded). Meant for valid dates.
  std::string iso() const;

  // Returns the date written exactly as "YYYY-MM-DD" (ASCII digits, no sign,
  // no spaces, nothing before or after), or nullopt for anything else,
  // including days that do not exist such as 2025-02-30.
  static std::optional<Date> parse(std::string_view text);

  // Returns the number of days since 1970-01-01 (negative before it).
  // Meant for valid dates; an invalid one is normalised arithmetically.
  std::int64_t days_since_epoch() const;

  // Returns the date `days` days after 1970-01-01 (before it when negative).
  static Date from_days_since_epoch(std::int64_t days);

  // Returns the date `n` calendar days later (earlier when n is negative).
  Date plus_days(std::int64_t n) const;

  // Returns the day of the week, 0 = Sunday … 6 = Saturday.
  int weekday() const;
};

// Returns true if `d` is a mandatory rest day of Ley Federal del Trabajo
// Art. 74: 1 January; first Monday of February; third Monday of March; 1 May;
// 16 September; 1 October of each change-of-federal-government year (2024,
// 2030, 2036, … every 6 years from 2024); third Monday of November;
// 25 December. Holidays are not moved off weekends (the law does not move
// them). Election days, also in Art. 74, are not known here: pass them to
// BusinessCalendar as extra non-working days.
bool is_federal_holiday(Date d);

// Which days count as business days: every day except Saturdays, Sundays,
// federal holidays and the extra non-working days given (e.g. election days,
// or days IMSS announces as closed).
class BusinessCalendar {
 public:
  // Throws std::invalid_argument naming the date if an extra day is not valid().
  explicit BusinessCalendar(std::vector<Date> extra_non_working = {});

  // Returns true if `d` is a weekday that is neither a federal holiday nor an
  // extra non-working day. Does not throw.
  bool is_business_day(Date d) const;

  // Returns the n-th business day strictly after `start`: `start` itself never
  // counts, even when it is a business day, so add_business_days(D, 0) == D.
  // Throws std::invalid_argument if `start` is not valid() or n < 0.
  Date add_business_days(Date start, int n) const;

  // Returns the number of business days in (from, to]: `from` excluded, `to`
  // included; 0 when to <= from. So business_days_between(D,
  // add_business_days(D, n)) == n. Does not throw (an invalid date is
  // normalised arithmetically, as by days_since_epoch()).
  int business_days_between(Date from, Date to) const;

 private:
  std::vector<Date> extra_;  // sorted, unique
};

// Where an in-person request stands on a given day.
struct RequestDeadline {
  Date submitted;
  Date deadline;               // the last day the request may still be completed
  int business_days_left = 0;  // business days in (today, deadline]; 0 when cancelled
  bool cancelled = false;      // today > deadline
};

// Returns the state on `today` of a request submitted on `submitted`: the
// deadline is the `business_days`-th business day after the submission day
// (the submission day does not count); on the deadline itself the request is
// still open with 0 days left, and from the next calendar day on it is
// cancelled. If `today` is before `submitted` the days left are still counted
// from `today`, so they can exceed `business_days`.
// Throws std::invalid_argument if `submitted` or `today` is not valid(), or
// business_days < 0.
RequestDeadline request_deadline(const BusinessCalendar& calendar, Date submitted, Date today,
                                 int business_days = 10);

}  // namespace firmad
