//! Logs, metrics and the admin HTTP server.
