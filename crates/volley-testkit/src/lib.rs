//! Volley's test kit: one crate for what the tests of every crate share.
//!
//! - [`cluster`]: a whole cluster in one process (front, controller, N agents, fake APNs and
//!   FCM) on ephemeral ports, each role on its own thread ([`role`]); `volley demo` and
//!   `volley bench` run on it too.
//! - [`procs`]: the same cluster as real `volley` processes, for tests about processes (kill -9,
//!   SIGSTOP, restart). The binary's path is a parameter: only the binary's own tests know it.
//! - [`hosts`]: several hosts on one machine (network namespaces on a bridge) whose links a
//!   test can cut or partition; [`procs`] places its processes on them. A test that makes
//!   them starts with [`needs_namespaces!`].
//! - [`controller`]: a controller alone, with agents scripted in the test.
//! - [`relay`]: a user-space TCP (or unix socket) relay, for hosts to reach a server on
//!   loopback.
//! - [`jobs`]: submitting jobs through a front and checking the counts they must keep.
//! - [`http`]: a small JSON client of a front.
//! - [`wait`]: bounded polling, the only way a test waits.
//! - [`tokens`]: distinct, valid APNs and FCM device tokens.
//!
//! The model is quickwit's `ClusterSandboxBuilder`: tests ask what a user would check, through
//! the public API of each role.

#![forbid(unsafe_code)]

pub mod cluster;
pub mod controller;
pub mod hosts;
pub mod http;
pub mod jobs;
pub mod pg;
pub mod procs;
pub mod relay;
pub mod role;
pub mod tokens;
pub mod wait;

/// At the top of a test that makes [`hosts::Hosts`] (a [`procs::HostCluster`]) — after the lock
/// that runs such tests one at a time, if any, so that their children do too: as root (or with
/// `CAP_SYS_ADMIN` and `CAP_NET_ADMIN`) the test goes on; as any other user it re-runs itself
/// in user, network and mount namespaces of its own (`unshare -Urnm`), and returns once that
/// run has passed — or panics, with its output, when it failed or user namespaces cannot be
/// had. See [`hosts::in_namespaces`]; the test's name comes from its path.
#[macro_export]
macro_rules! needs_namespaces {
    () => {
        if $crate::hosts::in_namespaces($crate::hosts::test_name({
            fn here() {}
            ::std::any::type_name_of_val(&here)
        })) {
            return;
        }
    };
}
