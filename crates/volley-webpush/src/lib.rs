//! Web Push: delivery to browsers through their push services (RFC 8030), with the payload
//! encrypted per subscription (RFC 8291, `aes128gcm`) and the sender identified by VAPID
//! (RFC 8292).
//!
//! See `docs/webpush.md` for subscriptions, VAPID keys and the SSRF rules.
