//! Firebase Cloud Messaging HTTP v1 client over Volley's own HTTP/2 pool.
