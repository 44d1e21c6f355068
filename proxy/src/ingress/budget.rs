//! The retry budget: retries at an upstream may be at most a share of its
//! requests over a sliding time window, as Envoy's and linkerd's budgets,
//! so retries cannot multiply the load on a failing upstream, and a burst
//! of failures long ago does not forbid retries now.
//!
//! The window is estimated from two fixed periods of its length, the
//! current one and the one before it; the one before counts in proportion
//! to how much of it the sliding window still covers (the estimate a
//! sliding-window rate limiter uses). All state is atomic: every worker thread shares it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Retries allowed in every window whatever the request count, so a quiet
/// upstream can still retry.
const FLOOR: u64 = 10;

/// Requests and retries counted over a sliding window.
#[derive(Debug)]
pub struct RetryBudget {
    percent: u64,
    window_ms: u64,
    /// The period (`now / window`) that `current` counts.
    period: AtomicU64,
    current: Counts,
    previous: Counts,
}

#[derive(Debug, Default)]
struct Counts {
    requests: AtomicU64,
    retries: AtomicU64,
}

impl RetryBudget {
    /// Retries up to `percent` of requests (plus a small floor) over the
    /// last `window`.
    pub fn new(percent: u32, window: Duration) -> Self {
        Self {
            percent: u64::from(percent),
            window_ms: u64::try_from(window.as_millis()).unwrap_or(u64::MAX).max(1),
            period: AtomicU64::new(0),
            current: Counts::default(),
            previous: Counts::default(),
        }
    }

    /// Counts a request, at `now_ms` (milliseconds on a monotonic clock).
    pub fn count_request(&self, now_ms: u64) {
        self.roll(now_ms);
        self.current.requests.fetch_add(1, Ordering::Relaxed);
    }

    /// Takes a retry at `now_ms` when the window allows one more.
    pub fn take_retry(&self, now_ms: u64) -> bool {
        self.roll(now_ms);
        // How much of the previous period the window still covers, in
        // thousandths.
        let covered = 1000 - (now_ms % self.window_ms) * 1000 / self.window_ms;
        let weigh = |c: &AtomicU64, p: &AtomicU64| {
            c.load(Ordering::Relaxed) + p.load(Ordering::Relaxed) * covered / 1000
        };
        let requests = weigh(&self.current.requests, &self.previous.requests);
        let retries = weigh(&self.current.retries, &self.previous.retries);
        if retries >= FLOOR + requests * self.percent / 100 {
            return false;
        }
        self.current.retries.fetch_add(1, Ordering::Relaxed);
        true
    }

    /// Moves to the period of `now_ms`. One thread wins the move; counts
    /// that race with it land in either period, which only blurs the
    /// estimate by a request or two.
    fn roll(&self, now_ms: u64) {
        let period = now_ms / self.window_ms;
        let seen = self.period.load(Ordering::Relaxed);
        if period <= seen
            || self
                .period
                .compare_exchange(seen, period, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        {
            return;
        }
        let adjacent = period == seen + 1;
        for (current, previous) in [
            (&self.current.requests, &self.previous.requests),
            (&self.current.retries, &self.previous.retries),
        ] {
            let counted = current.swap(0, Ordering::Relaxed);
            previous.store(if adjacent { counted } else { 0 }, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn granted(budget: &RetryBudget, now_ms: u64, tries: usize) -> usize {
        (0..tries).filter(|_| budget.take_retry(now_ms)).count()
    }

    #[test]
    fn retries_are_a_share_of_requests() {
        let budget = RetryBudget::new(20, Duration::from_secs(10));
        for _ in 0..100 {
            budget.count_request(0);
        }
        assert_eq!(granted(&budget, 0, 100), 10 + 20);
    }

    #[test]
    fn the_budget_refills_as_the_window_slides() {
        let budget = RetryBudget::new(20, Duration::from_secs(10));
        assert_eq!(granted(&budget, 1_000, 100), 10, "only the floor");
        // Half a window on, the spent period still half counts.
        assert_eq!(granted(&budget, 15_000, 100), 5);
        // Two windows on, the failures of the past are forgotten.
        assert_eq!(granted(&budget, 30_000, 100), 10);
    }

    #[test]
    fn old_requests_stop_earning_retries() {
        let budget = RetryBudget::new(50, Duration::from_secs(1));
        for _ in 0..1000 {
            budget.count_request(0);
        }
        assert_eq!(granted(&budget, 5_000, 1000), 10, "the floor alone");
    }
}
