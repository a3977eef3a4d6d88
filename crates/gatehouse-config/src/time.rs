//! Points in time in the config (`users[].expires`, a key's `expiry-time`) and in AWS tags
//! (`gatehouse:expires`): parsed with the `time` crate, kept as `SystemTime`.

use std::time::SystemTime;

use time::format_description::well_known::Rfc3339;
use time::{Date, Month, OffsetDateTime, PrimitiveDateTime, Time};

/// The instant of a UTC calendar date and time, if it exists.
pub(crate) fn utc(
    year: u32,
    month: u32,
    day: u32,
    hour: u32,
    minute: u32,
    second: u32,
) -> Option<SystemTime> {
    let month = Month::try_from(u8::try_from(month).ok()?).ok()?;
    let date =
        Date::from_calendar_date(i32::try_from(year).ok()?, month, u8::try_from(day).ok()?).ok()?;
    let time = Time::from_hms(
        u8::try_from(hour).ok()?,
        u8::try_from(minute).ok()?,
        u8::try_from(second).ok()?,
    )
    .ok()?;
    Some(PrimitiveDateTime::new(date, time).assume_utc().into())
}

/// Parses an RFC 3339 date-time with its offset (`2026-12-31T18:00:00Z`,
/// `2026-12-31T19:00:00+01:00`). A time without an offset is refused: it would mean a
/// different instant on every machine.
///
/// # Errors
/// Why the text is not such a date-time.
pub fn parse_rfc3339(text: &str) -> Result<SystemTime, String> {
    let text = text.trim();
    let shown: String = text.chars().take(40).collect();
    OffsetDateTime::parse(text, &Rfc3339)
        .map(SystemTime::from)
        .map_err(|e| {
            format!(
                "`{shown}` is not an RFC 3339 date-time with a time zone ({e}); write e.g. \
                 \"2026-12-31T18:00:00Z\""
            )
        })
}

/// `2026-12-31T18:00:00Z`: how gatehouse shows an instant (messages, audit lines, hints).
#[must_use]
pub fn show_time(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn rfc3339_with_offsets_and_refusals() {
        let z = parse_rfc3339("2026-12-31T18:00:00Z").unwrap();
        assert_eq!(z, UNIX_EPOCH + Duration::from_secs(1_798_740_000));
        assert_eq!(parse_rfc3339("2026-12-31T19:00:00+01:00").unwrap(), z);
        assert_eq!(show_time(z), "2026-12-31T18:00:00Z");
        for bad in [
            "2026-12-31",
            "2026-12-31T18:00:00",
            "tomorrow",
            "",
            "2026-13-01T00:00:00Z",
        ] {
            assert!(parse_rfc3339(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn calendar_dates_are_checked() {
        assert!(utc(2026, 2, 29, 0, 0, 0).is_none());
        assert!(utc(2028, 2, 29, 0, 0, 0).is_some());
        assert!(utc(2026, 12, 31, 24, 0, 0).is_none());
        assert_eq!(
            utc(1970, 1, 1, 0, 0, 1),
            Some(UNIX_EPOCH + Duration::from_secs(1))
        );
    }
}
