//! Timestamps: stored as nanoseconds since the Unix epoch, shown as RFC 3339
//! in UTC (the contract's format), without pulling in a date crate.

use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

/// A point in time, nanoseconds since the Unix epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Timestamp(pub i64);

impl Timestamp {
    pub fn now() -> Self {
        let d = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        Timestamp(d.as_nanos().min(i64::MAX as u128) as i64)
    }

    /// Seconds since the epoch and the nanoseconds past them (0..1e9).
    pub fn split(self) -> (i64, u32) {
        (self.seconds(), self.0.rem_euclid(1_000_000_000) as u32)
    }

    /// Whole seconds since the epoch.
    pub fn seconds(self) -> i64 {
        self.0.div_euclid(1_000_000_000)
    }
}

/// Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

impl Timestamp {
    /// The RFC 3339 text, spelled digit by digit: `ls` and `tree` print one
    /// per row, and `write!` with five padded integers took a quarter of
    /// `ls`'s instructions at 10,000 rows. Nanoseconds in an `i64` span the
    /// years 1677 to 2262, so the year always has four digits.
    fn rfc3339_bytes(self) -> [u8; 20] {
        let secs = self.seconds();
        let (y, m, d) = civil_from_days(secs.div_euclid(86_400));
        let y = y.clamp(0, 9999) as u32;
        let rem = secs.rem_euclid(86_400) as u32;
        let mut out = *b"0000-00-00T00:00:00Z";
        let mut two = |at: usize, v: u32| {
            out[at] = b'0' + (v / 10) as u8;
            out[at + 1] = b'0' + (v % 10) as u8;
        };
        two(0, y / 100);
        two(2, y % 100);
        two(5, m);
        two(8, d);
        two(11, rem / 3600);
        two(14, rem % 3600 / 60);
        two(17, rem % 60);
        out
    }

    /// What `to_string` gives, without the formatting machinery.
    pub fn rfc3339(self) -> String {
        // Only ASCII digits and separators are written.
        std::str::from_utf8(&self.rfc3339_bytes())
            .unwrap_or_default()
            .to_owned()
    }
}

impl fmt::Display for Timestamp {
    /// RFC 3339, UTC, whole seconds: `2026-11-22T18:00:00Z`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Only ASCII digits and separators are written.
        f.write_str(std::str::from_utf8(&self.rfc3339_bytes()).map_err(|_| fmt::Error)?)
    }
}

impl serde::Serialize for Timestamp {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_rfc3339() {
        assert_eq!(Timestamp(0).to_string(), "1970-01-01T00:00:00Z");
        assert_eq!(
            Timestamp(1_795_370_403_123_456_789).to_string(),
            "2026-11-22T18:00:03Z"
        );
        assert_eq!(
            Timestamp(951_782_400 * 1_000_000_000).to_string(),
            "2000-02-29T00:00:00Z"
        );
        // The ends of what the nanoseconds of an i64 can hold.
        assert_eq!(Timestamp(i64::MIN).to_string(), "1677-09-21T00:12:43Z");
        assert_eq!(Timestamp(i64::MAX).to_string(), "2262-04-11T23:47:16Z");
        assert_eq!(Timestamp(-1).to_string(), "1969-12-31T23:59:59Z");
        // Every field's both digits, against `write!`'s padding.
        for secs in (-200 * 366 * 86_400..290 * 365 * 86_400i64).step_by(7_654_321) {
            let t = Timestamp(secs * 1_000_000_000 + 999_999_999);
            let (y, m, d) = civil_from_days(secs.div_euclid(86_400));
            let rem = secs.rem_euclid(86_400);
            let general = format!(
                "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
                rem / 3600,
                rem % 3600 / 60,
                rem % 60
            );
            assert_eq!(t.to_string(), general);
            assert_eq!(t.rfc3339(), general);
        }
    }
}
