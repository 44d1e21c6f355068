//! Retries, the same for both HTTP versions: which requests may be sent
//! again, to which endpoint, and within the upstream's retry budget.
//!
//! As nginx's `proxy_next_upstream error timeout`: a request that never
//! left (its connection could not be made) goes to another endpoint
//! whatever its method and body; once sent, only a replayable request
//! (idempotent, without a body, so a copy can be sent) is tried again.

use std::net::SocketAddr;

use super::upstream::{InFlight, Upstream};
use super::worker::Worker;

/// The attempts of one request at one upstream.
pub struct Attempts<'a> {
    worker: &'a Worker,
    upstream: &'a Upstream,
    /// Retries the policy still allows this request.
    left: u32,
    /// Whether the request may be sent again once it has been sent.
    replayable: bool,
    /// Endpoints that failed this request; retries go elsewhere.
    tried: Vec<SocketAddr>,
}

impl<'a> Attempts<'a> {
    /// Attempts at `upstream`; once sent, only a `replayable` request
    /// (idempotent, its whole body still at hand) is retried.
    pub fn new(worker: &'a Worker, upstream: &'a Upstream, replayable: bool) -> Self {
        Self {
            worker,
            upstream,
            left: upstream.settings.retries.attempts,
            replayable,
            tried: Vec::new(),
        }
    }

    /// The endpoint of the first attempt; `None` when none is available.
    pub fn first(&mut self) -> Option<InFlight> {
        self.upstream.choose(self.worker.roll(), &self.tried)
    }

    /// Whether an attempt may follow one that sent the request, as far as
    /// the policy goes.
    pub fn may_retry(&self) -> bool {
        self.replayable && self.left > 0
    }

    /// After no connection to `addr` could be made (nothing was sent): the
    /// endpoint of the next attempt, when the policy, the budget and an
    /// untried endpoint all allow one.
    pub fn retry_unsent(&mut self, addr: SocketAddr) -> Option<InFlight> {
        self.next(addr, true)
    }

    /// After an attempt at `addr` sent the request and failed before the
    /// client saw anything: the endpoint of the next attempt, for a
    /// replayable request, as [`Attempts::retry_unsent`].
    pub fn retry(&mut self, addr: SocketAddr) -> Option<InFlight> {
        self.next(addr, self.replayable)
    }

    fn next(&mut self, addr: SocketAddr, allowed: bool) -> Option<InFlight> {
        self.tried.push(addr);
        if !allowed || self.left == 0 {
            return None;
        }
        // The endpoint first: budget is not spent on a retry that cannot
        // happen.
        let next = self.upstream.choose(self.worker.roll(), &self.tried)?;
        if !self.upstream.take_retry() {
            return None;
        }
        self.left -= 1;
        self.worker.shared.metrics.retries.inc();
        Some(next)
    }

    /// After `addr` answered `status`: the endpoint to retry on when the
    /// policy retries that status and a retry can happen. Otherwise the
    /// answer stands and goes to the client.
    pub fn retry_status(&mut self, addr: SocketAddr, status: u16) -> Option<InFlight> {
        if !self.may_retry() || !self.upstream.settings.retries.on_status.contains(&status) {
            return None;
        }
        self.retry(addr)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::ingress::config::{LbPolicy, Retries};
    use crate::ingress::upstream::{Endpoint, Settings};

    fn upstream(endpoints: u16, retries: Retries) -> Upstream {
        let endpoints = (1..=endpoints)
            .map(|p| Arc::new(Endpoint::new(([127, 0, 0, 1], p).into())))
            .collect();
        let settings = Settings {
            retries,
            ..Settings::default()
        };
        Upstream::with_endpoints("u", endpoints, LbPolicy::RoundRobin, settings)
    }

    fn port(flight: Option<InFlight>) -> Option<u16> {
        flight.map(|f| f.endpoint().addr.port())
    }

    #[test]
    fn retries_go_to_untried_endpoints_while_the_policy_allows() {
        let worker = Worker::for_tests();
        let u = upstream(3, Retries::default());
        let mut attempts = Attempts::new(&worker, &u, true);
        let first = attempts.first().unwrap().endpoint().addr;
        let second = attempts.retry(first).unwrap().endpoint().addr;
        assert_ne!(first, second);
        assert!(attempts.retry(second).is_none(), "one retry by default");
        assert_eq!(worker.shared.metrics.retries.get(), 1);

        let mut once = Attempts::new(&worker, &u, false);
        let addr = once.first().unwrap().endpoint().addr;
        assert!(once.retry(addr).is_none(), "not replayable");
        assert!(!once.may_retry());
    }

    #[test]
    fn a_request_that_never_left_is_retried_whatever_it_is() {
        let worker = Worker::for_tests();
        let u = upstream(3, Retries::default());
        let mut attempts = Attempts::new(&worker, &u, false);
        let first = attempts.first().unwrap().endpoint().addr;
        let second = attempts.retry_unsent(first).unwrap().endpoint().addr;
        assert_ne!(first, second);
        assert!(
            attempts.retry_unsent(second).is_none(),
            "within the policy's count"
        );

        let none = upstream(
            3,
            Retries {
                attempts: 0,
                ..Retries::default()
            },
        );
        let mut attempts = Attempts::new(&worker, &none, true);
        let addr = attempts.first().unwrap().endpoint().addr;
        assert!(attempts.retry_unsent(addr).is_none(), "retries off");
    }

    #[test]
    fn only_configured_statuses_are_retried_and_only_when_a_retry_can_happen() {
        let worker = Worker::for_tests();
        let retries = Retries {
            on_status: vec![503],
            ..Retries::default()
        };
        let pair = upstream(2, retries.clone());
        let mut attempts = Attempts::new(&worker, &pair, true);
        let addr = attempts.first().unwrap().endpoint().addr;
        assert!(attempts.retry_status(addr, 500).is_none());
        assert_eq!(
            port(attempts.retry_status(addr, 503)),
            Some(3 - addr.port())
        );

        // Alone, the endpoint's answer stands, and no budget is spent.
        let single = upstream(1, retries);
        let mut attempts = Attempts::new(&worker, &single, true);
        let addr = attempts.first().unwrap().endpoint().addr;
        assert!(attempts.retry_status(addr, 503).is_none());
        assert_eq!(worker.shared.metrics.retries.get(), 1);
    }
}
