//! Test support: real services started for a test and stopped with it.
