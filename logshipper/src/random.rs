//! Unpredictable numbers for back-off jitter and forward chunk ids, from
//! the standard library's randomly keyed hasher rather than a dependency.

use std::hash::{BuildHasher as _, Hasher as _, RandomState};
use std::sync::atomic::{AtomicU64, Ordering};

/// A random 64-bit number; not for cryptography.
pub fn random_u64() -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut hasher = RandomState::new().build_hasher();
    hasher.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    hasher.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    hasher.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_differ() {
        let values: std::collections::HashSet<u64> = (0..1000).map(|_| random_u64()).collect();
        assert_eq!(values.len(), 1000);
    }
}
