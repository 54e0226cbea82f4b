//! A token bucket for byte-rate caps (upload and download), shared by all tasks.

use std::{
    sync::Mutex,
    time::{Duration, Instant},
};

/// Limits a byte rate; a rate of zero means unlimited.
#[derive(Debug)]
pub struct RateLimiter {
    rate: u64,
    burst: f64,
    state: Mutex<(f64, Instant)>,
}

impl RateLimiter {
    /// A limiter of `rate` bytes per second (0: unlimited), with a burst of 1/4 second
    /// (at least 1 MiB) so pieces are not split into stutters.
    pub fn new(rate: u64) -> Self {
        let burst = (rate as f64 / 4.0).max(1024.0 * 1024.0);
        Self {
            rate,
            burst,
            state: Mutex::new((burst, Instant::now())),
        }
    }

    /// The configured rate (0: unlimited).
    pub fn rate(&self) -> u64 {
        self.rate
    }

    /// How long to wait before `n` bytes may pass; takes the tokens.
    fn reserve(&self, n: u64, now: Instant) -> Duration {
        if self.rate == 0 {
            return Duration::ZERO;
        }
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let elapsed = now.saturating_duration_since(s.1).as_secs_f64();
        s.0 = (s.0 + elapsed * self.rate as f64).min(self.burst);
        s.1 = now;
        s.0 -= n as f64;
        if s.0 >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-s.0 / self.rate as f64)
        }
    }

    /// Waits until `n` bytes may pass.
    pub async fn acquire(&self, n: u64) {
        let wait = self.reserve(n, Instant::now());
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unlimited_never_waits() {
        let r = RateLimiter::new(0);
        assert_eq!(r.reserve(u64::MAX / 2, Instant::now()), Duration::ZERO);
    }

    #[test]
    fn waits_in_proportion_to_the_debt() {
        let r = RateLimiter::new(10 << 20);
        let t = Instant::now();
        // The burst (2.5 MiB) passes at once; the next 10 MiB owe one second.
        assert_eq!(r.reserve(5 << 19, t), Duration::ZERO);
        let w = r.reserve(10 << 20, t);
        assert!((w.as_secs_f64() - 1.0).abs() < 0.01, "{w:?}");
        // A second later the debt is paid.
        assert_eq!(r.reserve(0, t + Duration::from_secs(1)), Duration::ZERO);
    }
}
