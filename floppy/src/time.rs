//! The one timestamp every entry of an image carries.
//!
//! Images are reproducible because no clock is read here: the caller passes a
//! Unix time (usually `SOURCE_DATE_EPOCH`) and every directory entry gets the
//! same date and time. FAT stores local time with two-second resolution
//! between 1980 and 2107; the Unix time is taken as UTC and clamped to that
//! range.

/// Seconds from 1970-01-01 to 1980-01-01, the earliest FAT date.
pub const FAT_EPOCH_START: u64 = 315_532_800;

/// A date and time in the FAT directory-entry encoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DosDateTime {
    /// Date word: bits 15-9 year since 1980, 8-5 month, 4-0 day.
    pub date: u16,
    /// Time word: bits 15-11 hours, 10-5 minutes, 4-0 seconds / 2.
    pub time: u16,
}

impl DosDateTime {
    /// 1980-01-01 00:00:00, the default when no time is given.
    pub const START: DosDateTime = DosDateTime {
        date: (1 << 5) | 1,
        time: 0,
    };

    /// Converts a Unix time (UTC) to FAT fields, clamped to 1980..=2107.
    pub fn from_unix(secs: u64) -> DosDateTime {
        let days = secs / 86_400;
        let (year, month, day) = civil_from_days(days);
        if year < 1980 {
            return DosDateTime::START;
        }
        if year > 2107 {
            return DosDateTime {
                date: (127 << 9) | (12 << 5) | 31,
                time: (23 << 11) | (59 << 5) | 29,
            };
        }
        let rem = secs % 86_400;
        let (h, m, s) = (rem / 3600, rem / 60 % 60, rem % 60);
        DosDateTime {
            date: word(((year - 1980) << 9) | (month << 5) | day),
            time: word((h << 11) | (m << 5) | (s / 2)),
        }
    }

    /// Year, month, day, hour, minute, second (fields are not validated).
    pub fn fields(self) -> (u16, u16, u16, u16, u16, u16) {
        let (d, t) = (self.date, self.time);
        (
            1980 + (d >> 9),
            (d >> 5) & 0xF,
            d & 0x1F,
            t >> 11,
            (t >> 5) & 0x3F,
            (t & 0x1F) * 2,
        )
    }
}

impl std::fmt::Display for DosDateTime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (y, mo, d, h, mi, s) = self.fields();
        write!(f, "{y:04}-{mo:02}-{d:02} {h:02}:{mi:02}:{s:02}")
    }
}

/// Narrows a value already masked to 16 bits by construction.
fn word(v: u64) -> u16 {
    u16::try_from(v & 0xFFFF).unwrap_or(u16::MAX)
}

/// Days since 1970-01-01 to a proleptic Gregorian (year, month, day).
///
/// Works in 400-year eras of 146097 days, with years starting in March so the
/// leap day falls at the end of the year.
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468; // days since 0000-03-01
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153; // month from March = 0
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = era * 400 + yoe + u64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fat_epoch_start_is_first_of_january_1980() {
        assert_eq!(DosDateTime::from_unix(FAT_EPOCH_START), DosDateTime::START);
    }

    #[test]
    fn known_time_converts_to_fields() {
        // 2024-02-29 13:45:17 UTC
        let t = DosDateTime::from_unix(1_709_214_317);
        assert_eq!(t.fields(), (2024, 2, 29, 13, 45, 16));
        assert_eq!(t.to_string(), "2024-02-29 13:45:16");
    }

    #[test]
    fn times_before_1980_clamp_to_start() {
        assert_eq!(DosDateTime::from_unix(0), DosDateTime::START);
        assert_eq!(
            DosDateTime::from_unix(FAT_EPOCH_START - 1),
            DosDateTime::START
        );
    }

    #[test]
    fn times_after_2107_clamp_to_end() {
        let t = DosDateTime::from_unix(u64::from(u32::MAX) * 4);
        assert_eq!(t.fields(), (2107, 12, 31, 23, 59, 58));
    }

    #[test]
    fn end_of_year_and_leap_days_are_right() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(10_956), (1999, 12, 31));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        assert_eq!(civil_from_days(11_017), (2000, 3, 1));
    }
}
