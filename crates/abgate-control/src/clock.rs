//! The one clock of the control plane.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Unix milliseconds, read as the wall time at the clock's start plus the time tokio's
/// clock has moved since: monotonic, and paused and advanced with tokio's in tests.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    started: tokio::time::Instant,
    started_ms: u64,
}

impl Clock {
    /// A clock reading the wall time now. Inside a runtime (tokio's clock is read).
    pub fn start() -> Self {
        let started_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        Self::starting_at(started_ms)
    }

    /// A clock that reads `unix_ms` now (tests pick their epoch).
    pub fn starting_at(unix_ms: u64) -> Self {
        Self {
            started: tokio::time::Instant::now(),
            started_ms: unix_ms,
        }
    }

    /// Unix milliseconds now.
    pub fn now_ms(&self) -> u64 {
        self.started_ms + self.started.elapsed().as_millis() as u64
    }

    /// The unix milliseconds the clock started at: nothing before it was seen.
    pub fn started_ms(&self) -> u64 {
        self.started_ms
    }

    /// The monotonic instant of unix time `ms` (the per-variant store's windows are
    /// counted in instants); a time before the start is the start.
    pub fn instant_of(&self, ms: u64) -> std::time::Instant {
        let offset = Duration::from_millis(ms.saturating_sub(self.started_ms));
        (self.started + offset).into_std()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn moves_with_tokio_time() {
        let clock = Clock::starting_at(1_000_000);
        assert_eq!(clock.now_ms(), 1_000_000);
        tokio::time::advance(Duration::from_secs(90)).await;
        assert_eq!(clock.now_ms(), 1_090_000);
        assert_eq!(
            clock.instant_of(1_030_000) - clock.instant_of(1_000_000),
            Duration::from_secs(30)
        );
        assert_eq!(clock.instant_of(5), clock.instant_of(1_000_000));
    }
}
