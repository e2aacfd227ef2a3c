//! Apple Push Notification service client over Volley's own HTTP/2 pool.
//!
//! - [`config`]: endpoint presets, token or certificate auth, pool size and timeouts.
//! - [`payload`]: a [`Notification`] is encoded once into a [`PreparedNotification`] (body and
//!   headers) and shared by every request of a broadcast; [`validate_token`] checks device tokens.
//! - [`jwt`]: provider tokens and the refresh rule (reuse under 50 minutes, never mint twice
//!   within 20 minutes, one re-mint per burst of `ExpiredProviderToken`).
//! - [`classify()`]: APNs status and reason to Volley's [`Outcome`].
//! - [`ApnsClient`]: `POST /3/device/{token}` over a `volley_provider::Pool`.
//!
//! See `docs/apns.md` for how the pieces fit together.

pub mod classify;
mod client;
pub mod config;
pub mod jwt;
pub mod payload;

pub use classify::classify;
pub use client::{ApnsClient, ApnsError, Sent, MAX_RESENDS};
pub use config::{ApnsAuth, ApnsConfig, ApnsEndpoint};
pub use jwt::{Clock, SystemClock, TestClock};
pub use payload::{
    validate_token, Alert, Notification, PayloadError, PreparedNotification, Priority, PushType,
    TokenError,
};
pub use volley_provider::{Outcome, Reason};
