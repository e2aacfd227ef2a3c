//! Web Push: delivery to browsers through their push services (RFC 8030), with the payload
//! encrypted per subscription (RFC 8291, `aes128gcm`) and the sender identified by VAPID
//! (RFC 8292).
//!
//! - [`subscription`]: a browser's `PushSubscription` as one token string,
//!   `"{endpoint} {p256dh} {auth}"`, validated once and split per message without allocating.
//! - [`ece`]: the payload encryption, one record per message, a fresh ECDH key per message.
//! - [`vapid`]: VAPID keys, the per-origin signed `Authorization` header, and its verifier
//!   (for the fake push service).
//! - [`guard`]: the SSRF guard: which endpoint hosts and addresses may be contacted.
//! - [`classify()`]: a push service's status to Volley's [`Outcome`].
//!
//! See `docs/webpush.md` for subscriptions, VAPID keys and the SSRF rules.

#![forbid(unsafe_code)]

pub mod classify;
pub mod ece;
pub mod guard;
pub mod subscription;
pub mod vapid;

pub use classify::classify;
pub use volley_provider::{Outcome, Reason};
