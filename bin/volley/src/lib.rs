//! The `volley` binary's library: the command implementations that a thin `main` wraps, and the
//! in-process cluster that the demo and the end-to-end tests run on.

pub mod bench;
pub mod cluster;
pub mod demo;
pub mod http;
pub mod push;
pub mod role;
pub mod signal;
