//! Wall-clock time as the log records it: nanoseconds since the Unix epoch.

use std::time::{SystemTime, UNIX_EPOCH};

/// `time` as nanoseconds since the Unix epoch: 0 for a time before the epoch,
/// `i64::MAX` for one past 2262 (saturating, never wrapping).
pub fn unix_nanos(time: SystemTime) -> i64 {
    time.duration_since(UNIX_EPOCH)
        .map(|elapsed| i64::try_from(elapsed.as_nanos()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// The current time as [`unix_nanos`] gives it.
pub fn now_unix_nanos() -> i64 {
    unix_nanos(SystemTime::now())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn before_the_epoch_is_zero_and_past_i64_saturates() {
        assert_eq!(unix_nanos(UNIX_EPOCH), 0);
        assert_eq!(unix_nanos(UNIX_EPOCH + Duration::from_nanos(7)), 7);
        assert_eq!(unix_nanos(UNIX_EPOCH - Duration::from_secs(1)), 0);
        assert_eq!(
            unix_nanos(UNIX_EPOCH + Duration::from_secs(300 * 365 * 86_400)),
            i64::MAX
        );
    }
}
