//! Firebase Cloud Messaging HTTP v1 client over Volley's own HTTP/2 pool.
//!
//! - [`config`]: [`FcmConfig`] and the service-account file; the account's `token_uri` is
//!   used only when it is Google's or allow-listed, so a crafted file cannot send the signed
//!   assertion elsewhere.
//! - [`auth`]: OAuth 2.0 access tokens from an RS256 JWT assertion, cached lock-free,
//!   refreshed in the background before expiry and once (for all senders) on a 401.
//! - [`message`]: [`FcmMessage`], serialised once into a [`PreparedMessage`] that every
//!   request stamps with its token; [`validate_token`].
//! - [`classify()`]: FCM responses mapped onto [`Outcome`](volley_provider::Outcome).
//! - [`FcmClient`]: `send(token, &prepared) -> Outcome`, one request per token.

pub mod auth;
pub mod classify;
mod client;
pub mod config;
pub mod message;

pub use auth::Clock;
pub use classify::classify;
pub use client::{FcmClient, FcmError};
pub use config::{FcmConfig, ServiceAccount, ServiceAccountError};
pub use message::{
    topic_name, validate_condition, validate_token, validate_topic, AndroidConfig,
    AndroidNotification, AndroidPriority, ApnsConfig, FcmMessage, MessageError, Notification,
    PreparedMessage, Target, TokenError, WebpushConfig,
};
