//! The shipper as operators run it: a real process on real files, killed,
//! restarted, rotated under, and delivering to real sockets.

mod common;
mod corrupt;
mod deleted;
mod failing_output;
mod formats;
mod http_server;
mod kill;
mod model;
mod rotation;
mod sink_down;
mod stalled;
mod unreadable;
