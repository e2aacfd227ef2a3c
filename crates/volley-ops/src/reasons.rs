//! Provider reasons as metric labels: a closed set, everything else is `other`.

/// Every reason a label may carry: APNs' and FCM's documented reasons, the Web Push
/// classifier's and SSRF guard's codes, and the engine's own transport and scheduling
/// reasons. Sorted, for [`reason_label`]'s binary search.
pub const KNOWN_REASONS: [&str; 82] = [
    "ASSERTION_SIGNING_FAILED",
    "BadCertificate",
    "BadCertificateEnvironment",
    "BadCollapseId",
    "BadDeviceToken",
    "BadExpirationDate",
    "BadMessageId",
    "BadPath",
    "BadPriority",
    "BadTopic",
    "CircuitOpen",
    "ConnectFailed",
    "ConnectionLost",
    "DeviceTokenNotForTopic",
    "DuplicateHeaders",
    "EndpointHostNotAllowed",
    "EndpointNotHttps",
    "EndpointNotPublic",
    "EndpointPortNotAllowed",
    "EndpointUnresolvable",
    "Expired",
    "ExpiredProviderToken",
    "ExpiredToken",
    "FAILED_PRECONDITION",
    "Forbidden",
    "Gone",
    "HTTP_UNKNOWN",
    "Http400",
    "Http401",
    "Http403",
    "Http404",
    "Http405",
    "Http410",
    "Http413",
    "Http429",
    "Http500",
    "Http502",
    "Http503",
    "Http504",
    "INTERNAL",
    "INVALID_ACCESS_TOKEN",
    "INVALID_ARGUMENT",
    "INVALID_TOKEN_RESPONSE",
    "IdleTimeout",
    "InternalServerError",
    "InvalidKey",
    "InvalidProviderToken",
    "InvalidPushType",
    "MALFORMED_TOKEN",
    "MalformedDeviceToken",
    "MethodNotAllowed",
    "MissingDeviceToken",
    "MissingProviderToken",
    "MissingTopic",
    "NOT_FOUND",
    "NO_ACCESS_TOKEN",
    "NotFound",
    "PERMISSION_DENIED",
    "PayloadEmpty",
    "PayloadTooLarge",
    "QUOTA_EXCEEDED",
    "RESOURCE_EXHAUSTED",
    "RateLimited",
    "Redirect",
    "SENDER_ID_MISMATCH",
    "ServiceUnavailable",
    "Shutdown",
    "THIRD_PARTY_AUTH_ERROR",
    "TOKEN_ENDPOINT_UNAVAILABLE",
    "TOKEN_REQUEST_REFUSED",
    "Timeout",
    "TokenSigningFailed",
    "TooManyProviderTokenUpdates",
    "TooManyRequests",
    "TopicDisallowed",
    "UNAUTHENTICATED",
    "UNAVAILABLE",
    "UNREGISTERED",
    "Unregistered",
    "UnrelatedKeyIdInToken",
    "invalid_grant",
    "unreported",
];

/// `reason` as a metric label: itself when it is one of [`KNOWN_REASONS`], `""` when empty
/// (delivered, cancelled), `other` otherwise.
pub fn reason_label(reason: &str) -> &'static str {
    if reason.is_empty() {
        return "";
    }
    match KNOWN_REASONS.binary_search(&reason) {
        Ok(index) => KNOWN_REASONS[index],
        Err(_) => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_known_reasons_are_sorted_and_unique() {
        assert!(
            KNOWN_REASONS.windows(2).all(|w| w[0] < w[1]),
            "sort KNOWN_REASONS"
        );
    }

    /// Every reason the engine names in its code (`Reason::known("…")`, `given_up("…")`,
    /// `reason: "…".into()`) is a label of its own, not `other`.
    #[test]
    fn every_reason_the_engine_names_is_known() {
        let crates = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let mut missing = Vec::new();
        let mut files = vec![crates];
        while let Some(path) = files.pop() {
            if path.is_dir() {
                if path.ends_with("target") || path.ends_with("tests") {
                    continue;
                }
                for entry in std::fs::read_dir(&path).unwrap() {
                    files.push(entry.unwrap().path());
                }
                continue;
            }
            if path.extension().is_none_or(|ext| ext != "rs") {
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap();
            for opening in ["Reason::known(\"", "given_up(\"", "reason: \""] {
                for (at, _) in text.match_indices(opening) {
                    let rest = &text[at + opening.len()..];
                    let Some(end) = rest.find('"') else { continue };
                    let reason = &rest[..end];
                    let named = !reason.is_empty()
                        && reason
                            .chars()
                            .all(|c| c.is_ascii_alphanumeric() || c == '_');
                    if named && reason_label(reason) == "other" {
                        missing.push(format!("{reason} ({})", path.display()));
                    }
                }
            }
        }
        // Test fixtures that stand for a provider's unknown reasons.
        missing.retain(|m| {
            ![
                "SomethingNew",
                "BrandNewReason",
                "NewAuthThing",
                "SOMETHING_NEW",
                "SOME_AUTH_THING",
                "WHATEVER",
                "DECOY",
            ]
            .iter()
            .any(|f| m.starts_with(f))
        });
        assert!(missing.is_empty(), "add to KNOWN_REASONS: {missing:#?}");
    }

    #[test]
    fn free_text_becomes_other() {
        assert_eq!(reason_label("Unregistered"), "Unregistered");
        assert_eq!(reason_label("UNREGISTERED"), "UNREGISTERED");
        assert_eq!(reason_label("Http410"), "Http410");
        assert_eq!(reason_label(""), "");
        assert_eq!(reason_label("something a provider made up"), "other");
        assert_eq!(reason_label("BrandNewReason"), "other");
    }
}
