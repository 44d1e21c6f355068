//! The memory budget shared by readers and outputs: a reader reserves the
//! bytes of a chunk before handing it on and waits while the budget is
//! spent, which is how a slow sink pauses the readers.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::Duration;

use prometheus_client::metrics::gauge::Gauge;

/// How often a waiting reader looks at its stop flag and runs its idle work.
const STOP_CHECK: Duration = Duration::from_millis(50);

/// At most `max` bytes of events in memory at once.
#[derive(Debug)]
pub struct Budget {
    used: Mutex<usize>,
    freed: Condvar,
    max: usize,
    fill: Gauge,
}

/// A share of the budget, given back when dropped.
#[derive(Debug)]
pub struct Reservation {
    budget: Arc<Budget>,
    bytes: usize,
}

impl Budget {
    /// A budget of `max` bytes whose use is reported in `fill`.
    pub fn new(max: usize, fill: Gauge) -> Arc<Self> {
        Arc::new(Self {
            used: Mutex::new(0),
            freed: Condvar::new(),
            max,
            fill,
        })
    }

    /// The budget's size.
    pub const fn max(&self) -> usize {
        self.max
    }

    /// Bytes reserved now.
    pub fn used(&self) -> usize {
        *self.used.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Waits until `bytes` fit and reserves them; `None` once `stop` is set.
    /// While waiting, `idle` runs every few dozen milliseconds (readers keep
    /// discovering files meanwhile).
    ///
    /// A request larger than the whole budget waits for an empty buffer and
    /// then takes all of it, so one oversized chunk cannot block forever.
    pub fn reserve(
        self: &Arc<Self>,
        bytes: usize,
        stop: &AtomicBool,
        idle: &mut dyn FnMut(),
    ) -> Option<Reservation> {
        let bytes = bytes.min(self.max);
        let mut used = self.used.lock().unwrap_or_else(PoisonError::into_inner);
        while *used + bytes > self.max {
            if stop.load(Ordering::Relaxed) {
                return None;
            }
            let (guard, waited) = self
                .freed
                .wait_timeout(used, STOP_CHECK)
                .unwrap_or_else(PoisonError::into_inner);
            used = guard;
            if waited.timed_out() {
                drop(used);
                idle();
                used = self.used.lock().unwrap_or_else(PoisonError::into_inner);
            }
        }
        *used += bytes;
        self.fill.set(*used as i64);
        Some(Reservation {
            budget: Arc::clone(self),
            bytes,
        })
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        let mut used = self
            .budget
            .used
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        *used -= self.bytes;
        self.budget.fill.set(*used as i64);
        drop(used);
        self.budget.freed.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_until_freed() {
        let budget = Budget::new(100, Gauge::default());
        let stop = AtomicBool::new(false);
        let first = budget.reserve(60, &stop, &mut || {}).expect("fits");
        assert_eq!(budget.used(), 60);
        let waiter = {
            let budget = Arc::clone(&budget);
            std::thread::spawn(move || {
                let stop = AtomicBool::new(false);
                budget.reserve(50, &stop, &mut || {}).map(|r| r.bytes)
            })
        };
        drop(first);
        assert_eq!(waiter.join().expect("joins"), Some(50));
        assert_eq!(budget.used(), 0);
    }

    #[test]
    fn stop_ends_the_wait_and_oversized_takes_all() {
        let budget = Budget::new(100, Gauge::default());
        let stop = AtomicBool::new(false);
        let mut idled = 0;
        let all = budget
            .reserve(1000, &stop, &mut || idled += 1)
            .expect("takes the whole budget");
        assert_eq!(budget.used(), 100);
        assert_eq!(idled, 0, "no wait for an empty budget");
        let stopper = {
            let budget = Arc::clone(&budget);
            std::thread::spawn(move || {
                let stop = AtomicBool::new(false);
                let mut idled = 0;
                let reserved = budget.reserve(1, &stop, &mut || {
                    idled += 1;
                    if idled == 2 {
                        stop.store(true, Ordering::Relaxed);
                    }
                });
                (reserved.is_none(), idled)
            })
        };
        assert_eq!(
            stopper.join().expect("joins"),
            (true, 2),
            "idle work runs while waiting"
        );
        drop(all);
        assert_eq!(budget.used(), 0);
    }
}
