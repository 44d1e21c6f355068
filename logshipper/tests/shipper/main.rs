//! The shipper as operators run it: a real process on real files, killed,
//! restarted, rotated under, and delivering to real sockets.

mod common;
mod kill;
mod rotation;
mod http_server;
mod sink_down;
mod formats;
mod model;
