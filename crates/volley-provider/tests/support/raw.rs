//! A raw HTTP/2 server speaking frames directly, for what an `h2` server will not do on
//! request: a GOAWAY whose last-stream-id is below streams already in flight.
