//! Device tokens for tests: distinct, valid, and told apart by a prefix, so that tests (and the
//! fakes' scripted answers) can pick out one group of tokens.

/// APNs token number `i`: 64 hex characters, `prefix` (hex) then `i`, zero-padded.
pub fn apns_token(prefix: &str, i: usize) -> String {
    format!("{prefix}{i:0width$x}", width = 64 - prefix.len())
}

/// `n` distinct valid APNs tokens starting with `prefix`.
pub fn apns_tokens(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| apns_token(prefix, i)).collect()
}

/// FCM token number `i`: `prefix`, `:APA91b`, then `i` in 40 hex digits.
pub fn fcm_token(prefix: &str, i: usize) -> String {
    format!("{prefix}:APA91b{i:040x}")
}

/// `n` distinct valid FCM tokens starting with `prefix`.
pub fn fcm_tokens(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| fcm_token(prefix, i)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_valid_distinct_and_keep_their_prefix() {
        let apns = apns_tokens("dead", 300);
        let fcm = fcm_tokens("abcdef01", 300);
        for token in &apns {
            assert!(token.starts_with("dead"), "{token}");
            volley_apns::validate_token(token).unwrap();
        }
        for token in &fcm {
            assert!(token.starts_with("abcdef01:"), "{token}");
            volley_fcm::validate_token(token).unwrap();
        }
        let distinct = |tokens: &[String]| {
            tokens
                .iter()
                .collect::<std::collections::BTreeSet<_>>()
                .len()
        };
        assert_eq!(distinct(&apns), 300);
        assert_eq!(distinct(&fcm), 300);
        assert_eq!(apns_token("", 255), format!("{:064x}", 255));
    }
}
