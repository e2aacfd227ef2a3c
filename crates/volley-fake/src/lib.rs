//! Fake APNs and FCM servers, real enough for independent clients.
