//! Budget periods: calendar months in a configured IANA time zone, reported as
//! half-open UTC intervals `[start, end)`.
//!
//! A month starts at local midnight on its first day, so its UTC length varies
//! with the zone's offset and with daylight-saving changes; "monthly" never
//! means 30 days.

use chrono::{DateTime, Datelike, LocalResult, NaiveDate, TimeZone, Utc};
use chrono_tz::Tz;
use serde::Serialize;

/// One calendar month of the budget time zone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Period {
    /// The month as `YYYY-MM` in the budget time zone.
    pub month: String,
    /// First instant of the month, in UTC.
    pub start: DateTime<Utc>,
    /// First instant of the next month, in UTC (excluded).
    pub end: DateTime<Utc>,
}

/// Returns the month a cost counts towards. Under `submission` it is the
/// budget month the scheduler received the job in (`submission_month`).
/// Under `completion` it is the month containing the instant the batch ended.
pub fn accrual_period(
    periods: &Periods,
    convention: crate::config::Accrual,
    submission_month: &str,
    ended_at: DateTime<Utc>,
) -> Period {
    match convention {
        crate::config::Accrual::Submission => periods
            .parse(submission_month)
            .unwrap_or_else(|| periods.containing(ended_at)),
        crate::config::Accrual::Completion => periods.containing(ended_at),
    }
}

/// Maps instants to budget months in one time zone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Periods {
    zone: Tz,
}

impl Default for Periods {
    fn default() -> Self {
        Periods { zone: Tz::UTC }
    }
}

impl Periods {
    /// Parses an IANA zone name such as `Europe/Berlin` or `UTC`.
    pub fn new(zone: &str) -> Result<Periods, String> {
        let zone: Tz = zone.parse().map_err(|_| {
            format!("unknown time zone {zone:?}: use an IANA name such as UTC or America/New_York")
        })?;
        Ok(Periods { zone })
    }

    pub fn zone(&self) -> Tz {
        self.zone
    }

    /// Returns the month that contains `instant`.
    pub fn containing(&self, instant: DateTime<Utc>) -> Period {
        let local = instant.with_timezone(&self.zone);
        self.month(local.year(), local.month())
            .expect("a month of a valid date exists")
    }

    /// Returns the month `YYYY-MM`, or `None` when the text is not a month.
    pub fn parse(&self, month: &str) -> Option<Period> {
        let date = NaiveDate::parse_from_str(&format!("{month}-01"), "%Y-%m-%d").ok()?;
        if month.len() != 7 {
            return None;
        }
        self.month(date.year(), date.month())
    }

    fn month(&self, year: i32, month: u32) -> Option<Period> {
        let first = NaiveDate::from_ymd_opt(year, month, 1)?;
        let next = if month == 12 {
            NaiveDate::from_ymd_opt(year + 1, 1, 1)?
        } else {
            NaiveDate::from_ymd_opt(year, month + 1, 1)?
        };
        Some(Period {
            month: format!("{year:04}-{month:02}"),
            start: self.local_midnight(first),
            end: self.local_midnight(next),
        })
    }

    /// Returns the first instant of a local day. Where a daylight-saving change
    /// skips midnight, the day starts at the first local time that exists.
    fn local_midnight(&self, day: NaiveDate) -> DateTime<Utc> {
        let mut time = day.and_hms_opt(0, 0, 0).expect("midnight is a valid time");
        for _ in 0..=24 * 4 {
            match self.zone.from_local_datetime(&time) {
                LocalResult::Single(at) => return at.with_timezone(&Utc),
                LocalResult::Ambiguous(earliest, _) => return earliest.with_timezone(&Utc),
                LocalResult::None => time += chrono::Duration::minutes(15),
            }
        }
        Utc.from_utc_datetime(&day.and_hms_opt(0, 0, 0).expect("midnight is a valid time"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text)
            .unwrap()
            .with_timezone(&Utc)
    }

    /// Local wall-clock time in `zone`, as a UTC instant.
    fn local(zone: &str, text: &str) -> DateTime<Utc> {
        let zone: Tz = zone.parse().unwrap();
        let naive = chrono::NaiveDateTime::parse_from_str(text, "%Y-%m-%d %H:%M").unwrap();
        zone.from_local_datetime(&naive)
            .earliest()
            .unwrap()
            .with_timezone(&Utc)
    }

    #[test]
    fn month_edges_in_every_zone() {
        for zone in [
            "UTC",
            "America/Los_Angeles",
            "Pacific/Pago_Pago",
            "Europe/Berlin",
            "Asia/Kolkata",
            "Pacific/Kiritimati",
        ] {
            let periods = Periods::new(zone).unwrap();
            let last_minute = local(zone, "2026-11-30 23:59");
            let first_minute = local(zone, "2026-12-01 00:01");
            assert_eq!(periods.containing(last_minute).month, "2026-11", "{zone}");
            assert_eq!(periods.containing(first_minute).month, "2026-12", "{zone}");
        }
    }

    #[test]
    fn intervals_are_half_open_and_adjacent() {
        let periods = Periods::new("America/New_York").unwrap();
        let november = periods.parse("2026-11").unwrap();
        let december = periods.parse("2026-12").unwrap();
        assert_eq!(november.end, december.start);
        assert_eq!(periods.containing(november.end).month, "2026-12");
        assert_eq!(
            periods
                .containing(november.end - chrono::Duration::seconds(1))
                .month,
            "2026-11"
        );
        assert_eq!(november.start, at("2026-11-01T04:00:00Z"));
        assert_eq!(december.start, at("2026-12-01T05:00:00Z"));
    }

    #[test]
    fn daylight_saving_month_is_not_30_days() {
        // New York leaves daylight-saving time on 2026-11-01, so November is 30 days and 1 hour.
        let periods = Periods::new("America/New_York").unwrap();
        let november = periods.parse("2026-11").unwrap();
        assert_eq!(
            november.end - november.start,
            chrono::Duration::hours(30 * 24 + 1)
        );
        // Berlin enters daylight-saving time on 2026-03-29, so March is 31 days less 1 hour.
        let berlin = Periods::new("Europe/Berlin")
            .unwrap()
            .parse("2026-03")
            .unwrap();
        assert_eq!(
            berlin.end - berlin.start,
            chrono::Duration::hours(31 * 24 - 1)
        );
    }

    #[test]
    fn day_starts_after_a_skipped_midnight() {
        // Sao Paulo moved its clocks from 00:00 to 01:00 on 2018-11-04, so that day
        // began at 01:00 local time, 03:00 UTC.
        let periods = Periods::new("America/Sao_Paulo").unwrap();
        let day = NaiveDate::from_ymd_opt(2018, 11, 4).unwrap();
        assert_eq!(periods.local_midnight(day), at("2018-11-04T03:00:00Z"));
    }

    #[test]
    fn rejects_unknown_zone_and_bad_month() {
        assert!(
            Periods::new("Mars/Olympus")
                .unwrap_err()
                .contains("Mars/Olympus")
        );
        let periods = Periods::default();
        assert!(periods.parse("2026-13").is_none());
        assert!(periods.parse("2026-1").is_none());
    }
}

#[cfg(test)]
mod accrual_tests {
    use super::*;
    use crate::config::Accrual;

    fn at(text: &str) -> DateTime<Utc> {
        text.parse().unwrap()
    }

    #[test]
    fn accrual_boundary_follows_convention() {
        // Submitted 2026-11-30T23:50Z, so the scheduler's budget month is November;
        // the provider batch ended 2026-12-01T02:00Z.
        let utc = Periods::new("UTC").unwrap();
        let submitted = utc.containing(at("2026-11-30T23:50:00Z")).month;
        let ended = at("2026-12-01T02:00:00Z");
        let submission = accrual_period(&utc, Accrual::Submission, &submitted, ended);
        assert_eq!(submission.month, "2026-11");
        assert_eq!(submission.start, at("2026-11-01T00:00:00Z"));
        assert_eq!(submission.end, at("2026-12-01T00:00:00Z"));
        let completion = accrual_period(&utc, Accrual::Completion, &submitted, ended);
        assert_eq!(completion.month, "2026-12");
        assert_eq!(completion.start, at("2026-12-01T00:00:00Z"));
    }

    #[test]
    fn completion_month_uses_budget_zone() {
        // 02:00 UTC on 1 December is still 30 November in New York.
        let new_york = Periods::new("America/New_York").unwrap();
        let ended = at("2026-12-01T02:00:00Z");
        let completion = accrual_period(&new_york, Accrual::Completion, "2026-11", ended);
        assert_eq!(completion.month, "2026-11");
        assert_eq!(completion.end, at("2026-12-01T05:00:00Z"));
    }
}
