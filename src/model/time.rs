//! The clock as kiln writes it: RFC 3339 for records people read, milliseconds for the store.

use std::time::{SystemTime, UNIX_EPOCH};

/// The current time as RFC 3339, UTC, seconds.
pub fn now() -> String {
    humantime::format_rfc3339_seconds(SystemTime::now()).to_string()
}

/// Milliseconds since the Unix epoch (0 on a clock set before it).
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
