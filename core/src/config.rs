//! One config loader for every component.
