//! Apple Push Notification service client over Volley's own HTTP/2 pool.
