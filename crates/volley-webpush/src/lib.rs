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
//! - [`WebPushClient`]: per-origin connections (HTTP/2 through `volley_provider::Pool`, or
//!   HTTP/1.1 keep-alive), all opened through the guard; `send` encrypts and POSTs one
//!   message to one subscription.
//!
//! See `docs/webpush.md` for subscriptions, VAPID keys and the SSRF rules.

#![forbid(unsafe_code)]

pub mod classify;
mod client;
mod connect;
pub mod ece;
pub mod guard;
mod http1;
pub mod subscription;
pub mod vapid;

pub use classify::classify;
pub use client::{
    Prepared, PreparedError, Urgency, UrgencyError, WebPushClient, WebPushConfig, WebPushError,
    REFUSAL_TTL,
};
pub use volley_provider::{Outcome, Reason};
