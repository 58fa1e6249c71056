//! Times on the command line (`--since`, `--until`), as journalctl takes
//! them: RFC 3339 (`2026-12-01T10:00:00Z`, `...+01:00`), a local date and
//! time without offset (`2026-12-01 10:00`, `2026-12-01`), `now`, `today`,
//! `yesterday`, `tomorrow` (local midnight), a relative time (`-1h`, `+30m`,
//! `-1h30m`, `2 days ago`), or `@` Unix seconds (`@1764583200`). Local means
//! the system time zone, or `TZ`.

use jiff::civil::DateTime;
use jiff::tz::TimeZone;
use jiff::{Span, Timestamp, ZonedDateTime as Zoned};

/// Why a time on the command line was not understood.
#[derive(Debug, thiserror::Error)]
#[error(
    "{text:?} is not a time: use RFC 3339 (2026-12-01T10:00:00Z), a local \
     date and time (2026-12-01 10:00), now, today, yesterday, tomorrow, a \
     relative time (-1h, -30m, \"2 days ago\") or @UNIX_SECONDS"
)]
pub struct TimeError {
    text: String,
}

/// The time `text` names, as Unix nanoseconds, relative to `now` (whose
/// time zone is the local one).
pub fn parse_time(text: &str, now: &Zoned) -> Result<i64, TimeError> {
    let error = || TimeError {
        text: text.to_owned(),
    };
    let trimmed = text.trim();
    let instant = match trimmed {
        "now" => now.timestamp(),
        "today" => midnight(now, 0).ok_or_else(error)?,
        "yesterday" => midnight(now, -1).ok_or_else(error)?,
        "tomorrow" => midnight(now, 1).ok_or_else(error)?,
        _ => absolute(trimmed, now.time_zone())
            .or_else(|| relative(trimmed, now))
            .ok_or_else(error)?,
    };
    i64::try_from(instant.as_nanosecond()).map_err(|_| error())
}

/// The current time in the local time zone (`TZ`, else the system's; UTC
/// when neither can be read).
pub fn now() -> Zoned {
    Timestamp::now().to_zoned_datetime(TimeZone::try_system().unwrap_or(TimeZone::UTC))
}

fn midnight(now: &Zoned, days: i64) -> Option<Timestamp> {
    let day = now.date().checked_add(Span::new().days(days)).ok()?;
    Some(
        day.to_zoned_datetime(now.time_zone().clone())
            .ok()?
            .timestamp(),
    )
}

fn absolute(text: &str, zone: &TimeZone) -> Option<Timestamp> {
    if let Some(seconds) = text.strip_prefix('@') {
        return Timestamp::from_second(seconds.parse().ok()?).ok();
    }
    if let Ok(instant) = text.parse::<Timestamp>() {
        return Some(instant);
    }
    let civil = text.parse::<DateTime>().ok().or_else(|| {
        text.parse::<jiff::civil::Date>()
            .ok()
            .map(|date| date.to_datetime(jiff::civil::Time::midnight()))
    })?;
    Some(civil.to_zoned_datetime(zone.clone()).ok()?.timestamp())
}

fn relative(text: &str, now: &Zoned) -> Option<Timestamp> {
    let (sign, rest) = match text.as_bytes().first()? {
        b'-' => (-1, &text[1..]),
        b'+' => (1, &text[1..]),
        // "2 days ago" parses as a negative span on its own.
        _ if text.ends_with("ago") => (1, text),
        _ => return None,
    };
    let span: Span = rest.trim().parse().ok()?;
    let span = if sign < 0 { span.negate() } else { span };
    Some(now.checked_add(span).ok()?.timestamp())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> Result<i64, TimeError> {
        // 2026-12-01T10:30:00 in Berlin (UTC+1 in winter).
        let now: Zoned = "2026-12-01T10:30:00+01:00[Europe/Berlin]".parse().unwrap();
        parse_time(text, &now)
    }

    fn utc(text: &str) -> i64 {
        i64::try_from(text.parse::<Timestamp>().unwrap().as_nanosecond()).unwrap()
    }

    #[test]
    fn absolute_times_with_and_without_offset() {
        assert_eq!(
            at("2026-12-01T09:00:00Z").unwrap(),
            utc("2026-12-01T09:00:00Z")
        );
        assert_eq!(
            at("2026-12-01T09:00:00.5+02:00").unwrap(),
            utc("2026-12-01T07:00:00.5Z")
        );
        // Without an offset: the local zone (Berlin, UTC+1 on that day).
        assert_eq!(at("2026-12-01 09:00").unwrap(), utc("2026-12-01T08:00:00Z"));
        assert_eq!(at("2026-12-01").unwrap(), utc("2026-11-30T23:00:00Z"));
        assert_eq!(at("@1764583200").unwrap(), 1_764_583_200_000_000_000);
    }

    #[test]
    fn keywords_are_local_midnights_and_now() {
        assert_eq!(at("now").unwrap(), utc("2026-12-01T09:30:00Z"));
        assert_eq!(at("today").unwrap(), utc("2026-11-30T23:00:00Z"));
        assert_eq!(at("yesterday").unwrap(), utc("2026-11-29T23:00:00Z"));
        assert_eq!(at("tomorrow").unwrap(), utc("2026-12-01T23:00:00Z"));
    }

    #[test]
    fn relative_times() {
        assert_eq!(at("-1h").unwrap(), utc("2026-12-01T08:30:00Z"));
        assert_eq!(at("+30m").unwrap(), utc("2026-12-01T10:00:00Z"));
        assert_eq!(at("-1h30m").unwrap(), utc("2026-12-01T08:00:00Z"));
        assert_eq!(at("2 days ago").unwrap(), utc("2026-11-29T09:30:00Z"));
    }

    #[test]
    fn nonsense_is_refused_with_the_forms_that_work() {
        for text in ["", "soon", "-", "-1 fortnight", "2026-13-01", "@x"] {
            let err = at(text).unwrap_err();
            assert!(err.to_string().contains("RFC 3339"), "{text}: {err}");
        }
    }
}
