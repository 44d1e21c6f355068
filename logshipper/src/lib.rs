//! Orca's log shipper: tails container logs and delivers them at least once.
