//! One log line per interval for events that may come as fast as a client or a full queue
//! makes them (the events themselves are always counted in metrics).

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Counts events and lets a log line about them through at most once per `interval`.
#[derive(Debug)]
pub struct LogThrottle {
    interval: Duration,
    since_line: AtomicU64,
    last_line: Mutex<Option<Instant>>,
}

impl LogThrottle {
    /// A throttle letting one line through per `interval` (usable in a `static`).
    pub const fn new(interval: Duration) -> Self {
        Self {
            interval,
            since_line: AtomicU64::new(0),
            last_line: Mutex::new(None),
        }
    }

    /// Counts `n` events; `Some(events since the last line, these included)` when a line may
    /// be logged now.
    pub fn admit(&self, n: u64) -> Option<u64> {
        self.admit_at(n, Instant::now())
    }

    fn admit_at(&self, n: u64, now: Instant) -> Option<u64> {
        let total = self.since_line.fetch_add(n, Ordering::Relaxed) + n;
        let mut last = self.last_line.lock().unwrap_or_else(|e| e.into_inner());
        if last.is_some_and(|t| now.saturating_duration_since(t) < self.interval) {
            return None;
        }
        *last = Some(now);
        self.since_line.store(0, Ordering::Relaxed);
        Some(total)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_interval_with_the_events_since_the_last() {
        let t = LogThrottle::new(Duration::from_secs(1));
        let t0 = Instant::now();
        assert_eq!(t.admit_at(1, t0), Some(1));
        for _ in 0..1000 {
            assert_eq!(t.admit_at(1, t0 + Duration::from_millis(500)), None);
        }
        assert_eq!(t.admit_at(1, t0 + Duration::from_secs(1)), Some(1001));
        assert_eq!(t.admit_at(3, t0 + Duration::from_millis(1500)), None);
        assert_eq!(t.admit_at(2, t0 + Duration::from_secs(5)), Some(5));
    }
}
