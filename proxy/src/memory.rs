//! Giving freed memory back to the system.

/// Returns the allocator's free pages to the kernel. glibc keeps memory
/// freed inside its heaps mapped, so after a burst (a node proxy full sync,
/// an ingress load spike) the peak would otherwise stay in the RSS for good.
#[allow(unsafe_code)]
pub fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim takes no pointer; it only returns pages of free
    // chunks to the kernel.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Tells, tick by tick, when activity has stopped: true once per quiet
/// spell, at the first tick that saw no new work after some.
#[derive(Debug, Default)]
pub struct QuietAfterWork {
    seen: u64,
    released: bool,
}

impl QuietAfterWork {
    /// `done` counts the work done so far (a monotonic counter).
    pub fn tick(&mut self, done: u64) -> bool {
        if done != self.seen {
            self.seen = done;
            self.released = false;
            return false;
        }
        !std::mem::replace(&mut self.released, true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quiet_is_reported_once_per_spell_after_work() {
        let mut q = QuietAfterWork::default();
        // Idle from the start: one release (the start-up's own garbage).
        assert!(q.tick(0));
        assert!(!q.tick(0));
        // Busy, then quiet: once.
        assert!(!q.tick(10));
        assert!(!q.tick(25));
        assert!(q.tick(25));
        assert!(!q.tick(25));
        assert!(!q.tick(26));
        assert!(q.tick(26));
    }
}
