//! Provider reasons as metric labels: a closed set, everything else is `other`.

/// Every reason a label may carry: APNs' and FCM's documented reasons, the Web Push
/// classifier's and SSRF guard's codes, and the engine's own transport and scheduling
/// reasons. Sorted, for [`reason_label`]'s binary search.
pub const KNOWN_REASONS: [&str; 79] = [
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
