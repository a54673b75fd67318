//! Timestamps: RFC 3339 on the wire; the seed's `+0300` offset form is also read.

use time::format_description::well_known::Rfc3339;
use time::format_description::BorrowedFormatItem;
use time::macros::format_description;
use time::{OffsetDateTime, UtcOffset};

/// The seed's form: RFC 3339 but with the offset written without a colon (`+0300`).
const SEED_FORM: &[BorrowedFormatItem<'static>] = format_description!(
    version = 2,
    "[year]-[month]-[day]T[hour]:[minute]:[second][optional [.[subsecond]]][offset_hour sign:mandatory][offset_minute]"
);

/// Parses an RFC 3339 timestamp, or the seed's `2018-09-09T14:22:31+0300` form.
pub fn parse(text: &str) -> Option<OffsetDateTime> {
    OffsetDateTime::parse(text, &Rfc3339)
        .or_else(|_| OffsetDateTime::parse(text, SEED_FORM))
        .ok()
}

/// What [`format`] writes: always three fractional digits and `Z` (the `time` crate's own
/// RFC 3339 formatter drops trailing zeros, `…:54.8Z`, which PROTOCOL.md §1.8 does not allow).
const WIRE_FORM: &[BorrowedFormatItem<'static>] = format_description!(
    version = 2,
    "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
);

/// Formats a time as RFC 3339 in UTC, with exactly millisecond precision
/// (`2018-09-09T11:22:31.123Z`, `2018-09-09T11:22:54.800Z`, `2018-09-09T11:22:31.000Z`).
pub fn format(at: OffsetDateTime) -> String {
    let at = at.to_offset(UtcOffset::UTC);
    // Formatting a UTC time with a four-digit year cannot fail; fall back to the unix time.
    at.format(WIRE_FORM)
        .unwrap_or_else(|_| at.unix_timestamp().to_string())
}

/// The current time.
pub fn now() -> OffsetDateTime {
    OffsetDateTime::now_utc()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_rfc3339_and_the_seed_form() {
        let a = parse("2018-09-09T14:22:31+03:00").unwrap();
        let b = parse("2018-09-09T14:22:31+0300").unwrap();
        let c = parse("2018-09-09T11:22:31Z").unwrap();
        assert_eq!(a, b);
        assert_eq!(a, c);
        assert!(parse("2018-09-09T14:22:31.5+0300").is_some());
        assert!(parse("2018-09-09 14:22:31").is_none());
        assert!(parse("yesterday").is_none());
    }

    #[test]
    fn writes_utc_with_z() {
        let t = parse("2018-09-09T14:22:31.123456+03:00").unwrap();
        assert_eq!(format(t), "2018-09-09T11:22:31.123Z");
        assert_eq!(parse(&format(t)).unwrap().millisecond(), 123);
    }

    #[test]
    fn always_writes_three_fractional_digits() {
        // The time crate's RFC 3339 formatter writes `54.8Z` and `31Z` for these.
        let t = parse("2018-09-09T11:22:54.8Z").unwrap();
        assert_eq!(format(t), "2018-09-09T11:22:54.800Z");
        let t = parse("2018-09-09T11:22:31Z").unwrap();
        assert_eq!(format(t), "2018-09-09T11:22:31.000Z");
        let t = parse("2018-09-09T11:22:31.0999Z").unwrap();
        assert_eq!(format(t), "2018-09-09T11:22:31.099Z");
    }
}
