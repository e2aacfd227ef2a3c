//! The log filter every role starts with.
//!
//! tarpc writes several INFO events per RPC (`ReceiveRequest`, `SendResponse`, ...): an idle
//! controller with one agent wrote 500 lines in 150 s from heartbeats alone. Those are quieted
//! to `warn` unless the filter names tarpc itself (`tarpc=debug` asks for them back).

/// The filter directives for `configured` (`log.level`), or for `RUST_LOG` when it is set.
pub fn directives(configured: &str, rust_log: Option<&str>) -> String {
    let asked = rust_log
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .unwrap_or(configured);
    if asked.contains("tarpc") {
        asked.to_owned()
    } else {
        format!("{asked},tarpc=warn")
    }
}

#[cfg(test)]
mod tests {
    use super::directives;

    #[test]
    fn tarpc_is_quiet_unless_asked_for() {
        assert_eq!(directives("info", None), "info,tarpc=warn");
        assert_eq!(directives("info", Some("trace")), "trace,tarpc=warn");
        assert_eq!(directives("info", Some("")), "info,tarpc=warn");
        assert_eq!(
            directives("volley_agent=debug,tarpc=info", None),
            "volley_agent=debug,tarpc=info"
        );
        assert_eq!(directives("warn", Some("tarpc=trace")), "tarpc=trace");
    }
}
