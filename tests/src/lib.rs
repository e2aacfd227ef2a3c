//! Test kit shared by Volley's end-to-end tests.
