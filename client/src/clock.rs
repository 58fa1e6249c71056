//! The wall clock as Unix time, for the timestamps Tally writes (an event's
//! client time, a bundle's export time, a gap acknowledgement's review time).
//! A clock set before 1970 reads as 0; a value the type cannot hold saturates
//! at its maximum (i64 nanoseconds run out in 2262).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Now, in nanoseconds since the Unix epoch.
pub fn now_unix_nanos() -> i64 {
    unix_nanos(SystemTime::now())
}

/// Now, in whole seconds since the Unix epoch.
pub fn now_unix_secs() -> u64 {
    since_epoch(SystemTime::now()).as_secs()
}

/// `time` in nanoseconds since the Unix epoch: 0 before it, `i64::MAX` past
/// what an i64 holds.
pub fn unix_nanos(time: SystemTime) -> i64 {
    i64::try_from(since_epoch(time).as_nanos()).unwrap_or(i64::MAX)
}

fn since_epoch(time: SystemTime) -> Duration {
    time.duration_since(UNIX_EPOCH).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn before_the_epoch_reads_as_zero() {
        let before = UNIX_EPOCH - Duration::from_secs(1);
        assert_eq!(unix_nanos(before), 0);
        assert_eq!(since_epoch(before).as_secs(), 0);
    }

    #[test]
    fn past_what_an_i64_holds_saturates() {
        // About 300 years after 1970, past 2262.
        let far = UNIX_EPOCH + Duration::from_secs(300 * 365 * 86_400);
        assert_eq!(unix_nanos(far), i64::MAX);
    }

    #[test]
    fn now_is_after_2020() {
        assert!(now_unix_secs() > 1_577_836_800);
        assert!(now_unix_nanos() / 1_000_000_000 >= 1_577_836_800);
    }
}
