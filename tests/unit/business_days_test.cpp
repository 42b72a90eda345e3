// Unit tests of Mexican business days: dates, LFT Art. 74 holidays and in-person request deadlines.
#include <gtest/gtest.h>

#include <cstdint>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include "daemon/mx/business_days.hpp"

namespace firmad {
namespace {

using namespace std::string_view_literals;

Date d(std::string_view iso) {
  const auto parsed = Date::parse(iso);
  if (!parsed) ADD_FAILURE() << "test date does not parse: " << iso;
  return parsed.value_or(Date{});
}

// --- Date ------------------------------------------------------------------

TEST(DateParse, AcceptsWellFormedDatesAndPrintsThemBack) {
  for (std::string_view text : {"2025-02-03"sv, "2024-02-29"sv, "2000-02-29"sv, "0001-01-01"sv, "9999-12-31"sv,
                                "2025-04-30"sv, "2025-12-31"sv}) {
    SCOPED_TRACE(std::string(text));
    const auto parsed = Date::parse(text);
    ASSERT_TRUE(parsed.has_value());
    EXPECT_EQ(parsed->iso(), text);
  }
  EXPECT_EQ(Date::parse("2025-02-03"), (Date{2025, 2, 3}));
}

TEST(DateParse, RefusesEmptyTruncatedAndOversizeText) {
  for (std::string_view text : {""sv, "2"sv, "2025"sv, "2025-"sv, "2025-02"sv, "2025-02-"sv, "2025-02-0"sv,
                                "2025-02-031"sv, "2025-02-03 "sv, " 2025-02-03"sv, "2025-02-03T00:00:00Z"sv,
                                std::string_view("2025-02-0\0", 10), std::string_view("2025-02-03\0", 11)}) {
    SCOPED_TRACE("text: \"" + std::string(text) + "\"");
    EXPECT_FALSE(Date::parse(text).has_value());
  }
}

TEST(DateParse, RefusesOtherSeparatorsSignsAndNonDigits) {
  for (std::string_view text : {"2025/02/03"sv, "2025.02.03"sv, "20250203xx"sv, "2025-2-03x"sv, "2025-02-3x"sv,
                                "+025-02-03"sv, "-025-02-03"sv, "2025-+2-03"sv, "2025-02- 3"sv, "2O25-02-03"sv,
                                "03-02-2025"sv, "2025-0x-03"sv}) {
    SCOPED_TRACE(std::string(text));
    EXPECT_FALSE(Date::parse(text).has_value());
  }
}

TEST(DateParse, RefusesMonthsAndDaysThatDoNotExist) {
  for (std::string_view text : {"2025-00-10"sv, "2025-13-01"sv, "2025-99-01"sv, "2025-01-00"sv, "2025-01-32"sv,
                                "2025-04-31"sv, "2025-06-31"sv, "2025-09-31"sv, "2025-11-31"sv, "2025-02-30"sv,
                                "2025-02-29"sv, "1900-02-29"sv, "2100-02-29"sv, "0000-01-01"sv}) {
    SCOPED_TRACE(std::string(text));
    EXPECT_FALSE(Date::parse(text).has_value());
  }
}

TEST(DateParse, AcceptsLeapDayOnlyInLeapYears) {
  EXPECT_TRUE(Date::parse("2024-02-29").has_value());
  EXPECT_TRUE(Date::parse("2000-02-29").has_value());
  EXPECT_FALSE(Date::parse("2025-02-29").has_value());
  EXPECT_FALSE(Date::parse("1900-02-29").has_value());
}

TEST(DateArithmetic, CountsDaysFromTheUnixEpoch) {
  EXPECT_EQ((Date{1970, 1, 1}).days_since_epoch(), 0);
  EXPECT_EQ((Date{1969, 12, 31}).days_since_epoch(), -1);
  EXPECT_EQ((Date{2000, 3, 1}).days_since_epoch(), 11017);
  EXPECT_EQ((Date{1, 1, 1}).days_since_epoch(), -719162);
  EXPECT_EQ((Date{9999, 12, 31}).days_since_epoch(), 2932896);
  EXPECT_EQ(Date::from_days_since_epoch(11017), (Date{2000, 3, 1}));
  EXPECT_EQ(Date::from_days_since_epoch(-1), (Date{1969, 12, 31}));
}

TEST(DateArithmetic, StepsOneDayAtATimeThroughMonthsYearsAndLeapDays) {
  // Walks 1899-12-31 .. 2101-01-01 one day at a time, checking each step
  // against the calendar rules directly.
  Date cur{1899, 12, 31};
  std::int64_t n = cur.days_since_epoch();
  while (cur < Date{2101, 1, 1}) {
    const Date next = cur.plus_days(1);
    ASSERT_TRUE(next.valid()) << next.iso();
    ASSERT_EQ(next.days_since_epoch(), ++n) << next.iso();
    ASSERT_EQ(Date::from_days_since_epoch(n), next);
    ASSERT_EQ(next.weekday(), (cur.weekday() + 1) % 7) << next.iso();
    if (next.day != 1) {
      ASSERT_EQ(next, (Date{cur.year, cur.month, cur.day + 1}));
    } else if (next.month != 1) {
      ASSERT_EQ(next, (Date{cur.year, cur.month + 1, 1}));
      ASSERT_FALSE((Date{cur.year, cur.month, cur.day + 1}).valid()) << cur.iso() << " is not a month's last day";
    } else {
      ASSERT_EQ(cur, (Date{next.year - 1, 12, 31}));
    }
    cur = next;
  }
  EXPECT_EQ((Date{2024, 3, 1}).plus_days(-1), (Date{2024, 2, 29}));
  EXPECT_EQ((Date{2025, 3, 1}).plus_days(-1), (Date{2025, 2, 28}));
}

TEST(DateArithmetic, KnowsTheDayOfTheWeek) {
  EXPECT_EQ((Date{1970, 1, 1}).weekday(), 4);    // Thursday
  EXPECT_EQ((Date{1969, 12, 28}).weekday(), 0);  // Sunday
  EXPECT_EQ((Date{1900, 1, 1}).weekday(), 1);    // Monday
  EXPECT_EQ((Date{2025, 2, 3}).weekday(), 1);    // Monday
  EXPECT_EQ((Date{2024, 10, 1}).weekday(), 2);   // Tuesday
  EXPECT_EQ((Date{2027, 5, 1}).weekday(), 6);    // Saturday
}

TEST(DateCompare, OrdersChronologically) {
  EXPECT_LT(d("2024-12-31"), d("2025-01-01"));
  EXPECT_LT(d("2025-01-31"), d("2025-02-01"));
  EXPECT_LT(d("2025-02-01"), d("2025-02-02"));
  EXPECT_GT(d("2025-10-11"), d("2025-10-10"));
  EXPECT_EQ(d("2025-10-10"), (Date{2025, 10, 10}));
}

// --- Federal holidays --------------------------------------------------------

struct HolidayYear {
  int year;
  std::vector<std::string_view> holidays;
};

// Checked against a calendar (Python's datetime, GNU date) and the official
// announcements: Constitution Day, Benito Juárez and Revolution Day on the
// Mondays below; 1 October only in 2024, the first change of government on
// that date.
const std::vector<HolidayYear> kHolidayYears = {
    {2024, {"2024-01-01", "2024-02-05", "2024-03-18", "2024-05-01", "2024-09-16", "2024-10-01", "2024-11-18",
            "2024-12-25"}},
    {2025, {"2025-01-01", "2025-02-03", "2025-03-17", "2025-05-01", "2025-09-16", "2025-11-17", "2025-12-25"}},
    {2026, {"2026-01-01", "2026-02-02", "2026-03-16", "2026-05-01", "2026-09-16", "2026-11-16", "2026-12-25"}},
    {2027, {"2027-01-01", "2027-02-01", "2027-03-15", "2027-05-01", "2027-09-16", "2027-11-15", "2027-12-25"}},
};

TEST(FederalHoliday, IsExactlyTheLawsDaysIn2024Through2027) {
  for (const HolidayYear& y : kHolidayYears) {
    std::vector<Date> expected;
    for (std::string_view h : y.holidays) expected.push_back(d(h));
    std::vector<Date> found;
    for (Date day{y.year, 1, 1}; day.year == y.year; day = day.plus_days(1))
      if (is_federal_holiday(day)) found.push_back(day);
    std::vector<std::string> found_iso, expected_iso;
    for (const Date& h : found) found_iso.push_back(h.iso());
    for (const Date& h : expected) expected_iso.push_back(h.iso());
    EXPECT_EQ(found_iso, expected_iso) << "year " << y.year;
  }
}

TEST(FederalHoliday, MovableHolidaysFallOnMondays) {
  for (const HolidayYear& y : kHolidayYears) {
    for (std::string_view h : y.holidays) {
      const Date date = d(h);
      if (date.month == 2 || date.month == 3 || date.month == 11) {
        EXPECT_EQ(date.weekday(), 1) << h;
      }
    }
  }
}

TEST(FederalHoliday, OctoberFirstOnlyInChangeOfGovernmentYears) {
  EXPECT_TRUE(is_federal_holiday(d("2024-10-01")));
  EXPECT_FALSE(is_federal_holiday(d("2025-10-01")));
  EXPECT_FALSE(is_federal_holiday(d("2029-10-01")));
  EXPECT_TRUE(is_federal_holiday(d("2030-10-01")));
  EXPECT_FALSE(is_federal_holiday(d("2031-10-01")));
  EXPECT_TRUE(is_federal_holiday(d("2036-10-01")));
  EXPECT_TRUE(is_federal_holiday(d("2042-10-01")));
  // Before the 2024 reform the sexenio began on 1 December, which this rule does not cover.
  EXPECT_FALSE(is_federal_holiday(d("2018-10-01")));
  EXPECT_FALSE(is_federal_holiday(d("2030-10-02")));
}

TEST(FederalHoliday, FirstAndThirdMondaysAreNotConfusedWithOtherMondays) {
  // 2030: February starts on a Friday, so its first Monday is the 4th.
  EXPECT_TRUE(is_federal_holiday(d("2030-02-04")));
  EXPECT_FALSE(is_federal_holiday(d("2030-02-11")));
  // 2028: March 1 is a Wednesday; third Monday is the 20th, not the 13th or 27th.
  EXPECT_TRUE(is_federal_holiday(d("2028-03-20")));
  EXPECT_FALSE(is_federal_holiday(d("2028-03-13")));
  EXPECT_FALSE(is_federal_holiday(d("2028-03-27")));
  // 2027: November starts on a Monday, so its third Monday is the 15th.
  EXPECT_TRUE(is_federal_holiday(d("2027-11-15")));
  EXPECT_FALSE(is_federal_holiday(d("2027-11-22")));
  // Old fixed dates (before the 2006 reform) are ordinary days now.
  EXPECT_FALSE(is_federal_holiday(d("2025-02-05")));
  EXPECT_FALSE(is_federal_holiday(d("2025-03-21")));
  EXPECT_FALSE(is_federal_holiday(d("2025-11-20")));
}

// --- Business days -----------------------------------------------------------

TEST(BusinessCalendar, WeekendsHolidaysAndExtraDaysAreNotBusinessDays) {
  const BusinessCalendar cal({d("2025-04-17"), d("2025-04-18")});
  EXPECT_TRUE(cal.is_business_day(d("2025-04-16")));   // Wednesday
  EXPECT_FALSE(cal.is_business_day(d("2025-04-17")));  // extra (Holy Thursday)
  EXPECT_FALSE(cal.is_business_day(d("2025-04-18")));  // extra (Good Friday)
  EXPECT_FALSE(cal.is_business_day(d("2025-04-19")));  // Saturday
  EXPECT_FALSE(cal.is_business_day(d("2025-04-20")));  // Sunday
  EXPECT_TRUE(cal.is_business_day(d("2025-04-21")));   // Monday
  EXPECT_FALSE(cal.is_business_day(d("2025-02-03")));  // Constitution Day
  EXPECT_FALSE(cal.is_business_day(d("2024-10-01")));  // change of government
  EXPECT_TRUE(cal.is_business_day(d("2025-10-01")));   // an ordinary Wednesday

  const BusinessCalendar plain;
  EXPECT_TRUE(plain.is_business_day(d("2025-04-17")));
  EXPECT_TRUE(plain.is_business_day(d("2025-04-18")));
}

TEST(BusinessCalendar, RefusesAnInvalidExtraDay) {
  EXPECT_THROW(BusinessCalendar({Date{2025, 2, 30}}), std::invalid_argument);
  EXPECT_THROW(BusinessCalendar({Date{}}), std::invalid_argument);
  EXPECT_NO_THROW(BusinessCalendar({d("2025-06-01"), d("2025-06-01")}));  // duplicates are harmless
}

TEST(BusinessCalendar, AddingZeroBusinessDaysStaysOnTheStartDay) {
  const BusinessCalendar cal;
  EXPECT_EQ(cal.add_business_days(d("2025-02-03"), 0), d("2025-02-03"));  // even on a holiday
  EXPECT_EQ(cal.add_business_days(d("2025-02-04"), 1), d("2025-02-05"));
  EXPECT_EQ(cal.add_business_days(d("2025-02-07"), 1), d("2025-02-10"));  // Friday -> Monday
}

TEST(BusinessCalendar, AddingRefusesNegativeCountsAndInvalidStarts) {
  const BusinessCalendar cal;
  EXPECT_THROW(cal.add_business_days(d("2025-02-03"), -1), std::invalid_argument);
  EXPECT_THROW(cal.add_business_days(Date{2025, 2, 29}, 10), std::invalid_argument);
}

TEST(BusinessCalendar, CountsBusinessDaysInAHalfOpenInterval) {
  const BusinessCalendar cal;
  // (Fri 2025-02-07, Fri 2025-02-14]: Mon..Fri = 5; `from` is excluded, `to` included.
  EXPECT_EQ(cal.business_days_between(d("2025-02-07"), d("2025-02-14")), 5);
  // (Fri 2025-01-31, Fri 2025-02-07]: Monday the 3rd is Constitution Day.
  EXPECT_EQ(cal.business_days_between(d("2025-01-31"), d("2025-02-07")), 4);
  EXPECT_EQ(cal.business_days_between(d("2025-02-07"), d("2025-02-07")), 0);
  EXPECT_EQ(cal.business_days_between(d("2025-02-14"), d("2025-02-07")), 0);
  EXPECT_EQ(cal.business_days_between(d("2025-02-08"), d("2025-02-09")), 0);  // a weekend
  // A whole year: 261 weekdays in 2025, less its 7 holidays, all on weekdays.
  EXPECT_EQ(cal.business_days_between(d("2024-12-31"), d("2025-12-31")), 261 - 7);
}

TEST(BusinessCalendar, CountingUndoesAdding) {
  const BusinessCalendar cal({d("2025-04-17"), d("2025-04-18")});
  for (Date start = d("2024-01-01"); start < d("2028-01-01"); start = start.plus_days(1)) {
    for (int n : {0, 1, 5, 10, 23}) {
      const Date end = cal.add_business_days(start, n);
      ASSERT_EQ(cal.business_days_between(start, end), n) << start.iso() << " + " << n;
      if (n > 0) {
        ASSERT_TRUE(cal.is_business_day(end)) << start.iso() << " + " << n;
      }
    }
  }
}

// --- Request deadlines --------------------------------------------------------

struct DeadlineCase {
  std::string_view submitted;
  std::vector<std::string_view> extra;
  std::string_view deadline;
  std::string_view why;
};

// Each deadline worked out by hand, then cross-checked with an independent
// script.
const std::vector<DeadlineCase> kDeadlines = {
    {"2024-09-25", {}, "2024-10-10", "skips 2024-10-01, change of government"},
    {"2025-09-25", {}, "2025-10-09", "2025-10-01 is an ordinary day"},
    {"2030-09-25", {}, "2030-10-10", "skips 2030-10-01, change of government"},
    {"2024-12-20", {}, "2025-01-07", "crosses the year: skips 12-25 and 01-01"},
    {"2026-12-18", {}, "2027-01-05", "crosses the year: 12-25 and 01-01 on Fridays"},
    {"2027-12-17", {}, "2027-12-31", "12-25 on a Saturday costs nothing"},
    {"2025-02-01", {}, "2025-02-17", "submitted on a Saturday before Constitution Day"},
    {"2025-03-17", {}, "2025-03-31", "submitted on a holiday: the day itself does not count"},
    {"2025-04-30", {}, "2025-05-15", "skips 1 May"},
    {"2026-11-13", {}, "2026-11-30", "skips Revolution Day 2026-11-16"},
    {"2028-02-25", {}, "2028-03-10", "leap year: 2028-02-29 is a business day"},
    {"2025-04-10", {}, "2025-04-24", "Holy Week is not a federal holiday"},
    {"2025-04-10", {"2025-04-17", "2025-04-18"}, "2025-04-28", "unless configured as extra days"},
    {"2025-09-26", {}, "2025-10-10", "Friday to Friday"},
};

TEST(RequestDeadline, IsTheTenthBusinessDayAfterSubmission) {
  for (const DeadlineCase& c : kDeadlines) {
    SCOPED_TRACE(std::string(c.submitted) + ": " + std::string(c.why));
    std::vector<Date> extra;
    for (std::string_view e : c.extra) extra.push_back(d(e));
    const BusinessCalendar cal(extra);
    const RequestDeadline r = request_deadline(cal, d(c.submitted), d(c.submitted));
    EXPECT_EQ(r.submitted.iso(), c.submitted);
    EXPECT_EQ(r.deadline.iso(), c.deadline);
    EXPECT_EQ(r.business_days_left, 10);
    EXPECT_FALSE(r.cancelled);
  }
}

TEST(RequestDeadline, CountsDownAndIsCancelledTheDayAfterTheDeadline) {
  const BusinessCalendar cal;
  const Date submitted = d("2024-09-25");  // deadline 2024-10-10
  struct Step {
    std::string_view today;
    int left;
    bool cancelled;
  };
  for (const Step& s : {Step{"2024-09-25", 10, false}, Step{"2024-09-26", 9, false},
                        Step{"2024-09-28", 8, false},  // Saturday: Thursday and Friday used up
                        Step{"2024-09-30", 7, false}, Step{"2024-10-01", 7, false},  // the holiday costs nothing
                        Step{"2024-10-02", 6, false}, Step{"2024-10-09", 1, false},
                        Step{"2024-10-10", 0, false},  // the deadline: still open
                        Step{"2024-10-11", 0, true}, Step{"2025-01-01", 0, true}}) {
    SCOPED_TRACE(std::string(s.today));
    const RequestDeadline r = request_deadline(cal, submitted, d(s.today));
    EXPECT_EQ(r.deadline, d("2024-10-10"));
    EXPECT_EQ(r.business_days_left, s.left);
    EXPECT_EQ(r.cancelled, s.cancelled);
  }
}

TEST(RequestDeadline, IsCancelledOnTheSaturdayAfterAFridayDeadline) {
  const BusinessCalendar cal;
  const RequestDeadline on_friday = request_deadline(cal, d("2025-09-26"), d("2025-10-10"));
  EXPECT_FALSE(on_friday.cancelled);
  const RequestDeadline on_saturday = request_deadline(cal, d("2025-09-26"), d("2025-10-11"));
  EXPECT_TRUE(on_saturday.cancelled);
  EXPECT_EQ(on_saturday.business_days_left, 0);
}

TEST(RequestDeadline, HonoursAnotherNumberOfBusinessDays) {
  const BusinessCalendar cal;
  const RequestDeadline r = request_deadline(cal, d("2024-09-25"), d("2024-09-25"), 3);
  EXPECT_EQ(r.deadline, d("2024-09-30"));
  EXPECT_EQ(r.business_days_left, 3);
}

TEST(RequestDeadline, RefusesInvalidDates) {
  const BusinessCalendar cal;
  EXPECT_THROW(request_deadline(cal, Date{2025, 2, 30}, d("2025-03-01")), std::invalid_argument);
  EXPECT_THROW(request_deadline(cal, d("2025-03-01"), Date{2025, 13, 1}), std::invalid_argument);
  EXPECT_THROW(request_deadline(cal, d("2025-03-01"), d("2025-03-01"), -1), std::invalid_argument);
}

}  // namespace
}  // namespace firmad
