//! The `volley` binary's library: the command implementations that a thin `main` wraps. The
//! in-process cluster that the demo and the bench run on, the role runner and the front client
//! are in `volley-testkit`.

pub mod bench;
pub mod certs;
pub mod demo;
pub mod links;
pub mod logging;
pub mod memory;
pub mod push;
pub mod signal;
pub mod vapid;
