//! Volley's agent.
