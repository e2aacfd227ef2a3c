//! The subscription token: how a browser's `PushSubscription` travels through Volley.
//!
//! Volley's engine moves device tokens as single strings, so a Web Push subscription becomes
//! one too: `"{endpoint} {p256dh} {auth}"`, single spaces, both keys as unpadded base64url.
//! A valid endpoint URL never contains a space, so the first space ends it.
//!
//! [`encode`] validates everything once, when the app registers a subscription; [`decode`]
//! runs per message and only checks what it must to use the parts (lengths, the https
//! scheme); ECDH then refuses a key that is not a curve point.
//!
//! Endpoint paths and keys are secrets of the user's subscription (anyone holding them can
//! push to the browser), so no error here repeats them.

use base64::alphabet;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, URL_SAFE_NO_PAD};
use base64::engine::DecodePaddingMode;
use base64::Engine;

/// The longest endpoint accepted, in bytes; real push services use a few hundred.
pub const MAX_ENDPOINT_LEN: usize = 2048;

const LENIENT: GeneralPurposeConfig = GeneralPurposeConfig::new()
    .with_encode_padding(false)
    .with_decode_padding_mode(DecodePaddingMode::Indifferent)
    // Bits past the last byte are ignored rather than refused, as browsers' and web-push
    // libraries' decoders do.
    .with_decode_allow_trailing_bits(true);
/// Base64url with or without padding: what browsers hand out (`getKey` output encoded by
/// the page) and what web-push tools print.
const URL_SAFE_LENIENT: GeneralPurpose = GeneralPurpose::new(&alphabet::URL_SAFE, LENIENT);
/// Standard base64, which some server-side libraries store keys in.
const STANDARD_LENIENT: GeneralPurpose = GeneralPurpose::new(&alphabet::STANDARD, LENIENT);

/// Why a subscription (or a token made from one) is unusable. Messages name the field and
/// the problem, never the key or the endpoint's path.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubscriptionError {
    /// The token is not three parts separated by single spaces.
    #[error("subscription token is not \"endpoint p256dh auth\" (three parts separated by single spaces)")]
    TokenShape,
    /// The endpoint is longer than [`MAX_ENDPOINT_LEN`].
    #[error("endpoint is {0} bytes: at most 2048 are allowed")]
    EndpointTooLong(usize),
    /// The endpoint contains whitespace or control characters.
    #[error("endpoint contains whitespace or control characters")]
    EndpointWhitespace,
    /// The endpoint does not parse as a URL.
    #[error("endpoint is not a valid url: {0}")]
    EndpointNotUrl(url::ParseError),
    /// The endpoint's scheme is not https.
    #[error("endpoint scheme is {0}: push endpoints must be https")]
    EndpointScheme(String),
    /// The endpoint has no host.
    #[error("endpoint has no host")]
    EndpointNoHost,
    /// The endpoint carries a user name or password.
    #[error("endpoint has user information: push endpoints never carry credentials")]
    EndpointUserinfo,
    /// The endpoint has a `#fragment`.
    #[error("endpoint has a fragment: push endpoints never do")]
    EndpointFragment,
    /// `keys.p256dh` is not base64.
    #[error("keys.p256dh is not base64url")]
    P256dhEncoding,
    /// `keys.p256dh` decodes to the wrong length.
    #[error("keys.p256dh is {0} bytes, not a 65-byte uncompressed P-256 point")]
    P256dhLength(usize),
    /// `keys.p256dh` does not start with the uncompressed-point marker 0x04.
    #[error("keys.p256dh starts with {0:#04x}, not 0x04: it must be an uncompressed P-256 point")]
    P256dhNotUncompressed(u8),
    /// `keys.auth` is not base64.
    #[error("keys.auth is not base64url")]
    AuthEncoding,
    /// `keys.auth` decodes to the wrong length.
    #[error("keys.auth is {0} bytes, not 16")]
    AuthLength(usize),
}

/// A token split into its parts, keys decoded.
#[derive(Clone, PartialEq, Eq)]
pub struct Decoded<'a> {
    /// The push endpoint, as the browser gave it.
    pub endpoint: &'a str,
    /// The user agent's public key (`keys.p256dh`), uncompressed.
    pub ua_public: [u8; 65],
    /// The authentication secret (`keys.auth`).
    pub auth: [u8; 16],
}

impl std::fmt::Debug for Decoded<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The endpoint's path and the auth secret are the subscription's secrets.
        f.debug_struct("Decoded")
            .field("origin", &origin(self.endpoint).ok())
            .finish_non_exhaustive()
    }
}

/// Validates a browser subscription and makes its token. Keys may be base64url or standard
/// base64, padded or not; the token holds them as unpadded base64url. The endpoint is kept
/// as given (trimmed), so that reports of dead subscriptions name it exactly as stored.
pub fn encode(endpoint: &str, p256dh: &str, auth: &str) -> Result<String, SubscriptionError> {
    let mut token = String::with_capacity(endpoint.len() + 2 + 87 + 22);
    encode_into(&mut token, endpoint, p256dh, auth)?;
    Ok(token)
}

/// [`encode`] into `token` (cleared first), so that a caller reading many subscriptions
/// reuses one buffer; on an error `token` holds nothing of use.
pub fn encode_into(
    token: &mut String,
    endpoint: &str,
    p256dh: &str,
    auth: &str,
) -> Result<(), SubscriptionError> {
    token.clear();
    let endpoint = endpoint.trim();
    validate_endpoint(endpoint)?;
    let ua_public = decode_fixed::<65>(p256dh.trim()).map_err(|e| match e {
        FixedError::Encoding => SubscriptionError::P256dhEncoding,
        FixedError::Length(n) => SubscriptionError::P256dhLength(n),
    })?;
    // Whether the point is on the curve is the agent's to find (its ECDH fails, and the
    // subscription is reported invalid): the front checks what a schema can say.
    if ua_public[0] != 0x04 {
        return Err(SubscriptionError::P256dhNotUncompressed(ua_public[0]));
    }
    let auth = decode_fixed::<16>(auth.trim()).map_err(|e| match e {
        FixedError::Encoding => SubscriptionError::AuthEncoding,
        FixedError::Length(n) => SubscriptionError::AuthLength(n),
    })?;
    token.push_str(endpoint);
    token.push(' ');
    URL_SAFE_NO_PAD.encode_string(ua_public, token);
    token.push(' ');
    URL_SAFE_NO_PAD.encode_string(auth, token);
    Ok(())
}

/// Splits a token and decodes its keys, without allocating. Checks the shape, the https
/// scheme and the key lengths; the full validation happened in [`encode`].
pub fn decode(token: &str) -> Result<Decoded<'_>, SubscriptionError> {
    let mut parts = token.split(' ');
    let (Some(endpoint), Some(p256dh), Some(auth), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(SubscriptionError::TokenShape);
    };
    if endpoint.len() > MAX_ENDPOINT_LEN {
        return Err(SubscriptionError::EndpointTooLong(endpoint.len()));
    }
    split_endpoint(endpoint)?;
    let ua_public = decode_fixed::<65>(p256dh).map_err(|e| match e {
        FixedError::Encoding => SubscriptionError::P256dhEncoding,
        FixedError::Length(n) => SubscriptionError::P256dhLength(n),
    })?;
    if ua_public[0] != 0x04 {
        return Err(SubscriptionError::P256dhNotUncompressed(ua_public[0]));
    }
    let auth = decode_fixed::<16>(auth).map_err(|e| match e {
        FixedError::Encoding => SubscriptionError::AuthEncoding,
        FixedError::Length(n) => SubscriptionError::AuthLength(n),
    })?;
    Ok(Decoded {
        endpoint,
        ua_public,
        auth,
    })
}

/// The endpoint of a token: everything before the first space (the whole token when there
/// is none). This is what reports of invalid subscriptions list.
pub fn endpoint_of(token: &str) -> &str {
    token
        .split_once(' ')
        .map_or(token, |(endpoint, _)| endpoint)
}

/// The origin of an endpoint, `https://host[:port]` (the port only when not 443): the
/// audience of the VAPID token for that push service.
pub fn origin(endpoint: &str) -> Result<String, SubscriptionError> {
    let url = validate_endpoint(endpoint.trim())?;
    let host = url.host_str().ok_or(SubscriptionError::EndpointNoHost)?;
    Ok(match url.port() {
        Some(port) => format!("https://{host}:{port}"),
        None => format!("https://{host}"),
    })
}

/// An endpoint's authority (`host[:port]` as written) and its path with query, borrowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct EndpointParts<'a> {
    pub authority: &'a str,
    /// Starts with `/`, or is empty for an endpoint without a path.
    pub path_and_query: &'a str,
}

/// Splits `https://authority/path?query` without parsing or allocating; the hot path's
/// counterpart of the full check in [`encode`].
pub(crate) fn split_endpoint(endpoint: &str) -> Result<EndpointParts<'_>, SubscriptionError> {
    let scheme_end = endpoint
        .find("://")
        .ok_or(SubscriptionError::EndpointNotUrl(
            url::ParseError::RelativeUrlWithoutBase,
        ))?;
    let scheme = &endpoint[..scheme_end];
    if !scheme.eq_ignore_ascii_case("https") {
        return Err(scheme_error(scheme));
    }
    let rest = &endpoint[scheme_end + 3..];
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..end];
    if authority.is_empty() {
        return Err(SubscriptionError::EndpointNoHost);
    }
    if authority.contains('@') {
        return Err(SubscriptionError::EndpointUserinfo);
    }
    let path_and_query = &rest[end..];
    if path_and_query.contains('#') {
        return Err(SubscriptionError::EndpointFragment);
    }
    Ok(EndpointParts {
        authority,
        path_and_query,
    })
}

fn scheme_error(scheme: &str) -> SubscriptionError {
    // A scheme is short and public; cut anything odd rather than echo a whole string.
    let shown: String = scheme
        .chars()
        .take(16)
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
        .collect();
    SubscriptionError::EndpointScheme(shown.to_ascii_lowercase())
}

fn validate_endpoint(endpoint: &str) -> Result<url::Url, SubscriptionError> {
    if endpoint.len() > MAX_ENDPOINT_LEN {
        return Err(SubscriptionError::EndpointTooLong(endpoint.len()));
    }
    if endpoint
        .chars()
        .any(|c| c.is_whitespace() || c.is_control())
    {
        return Err(SubscriptionError::EndpointWhitespace);
    }
    let url = url::Url::parse(endpoint).map_err(SubscriptionError::EndpointNotUrl)?;
    if url.scheme() != "https" {
        return Err(scheme_error(url.scheme()));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(SubscriptionError::EndpointNoHost);
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(SubscriptionError::EndpointUserinfo);
    }
    if url.fragment().is_some() {
        return Err(SubscriptionError::EndpointFragment);
    }
    // The hot path splits the text itself; make sure it would find the same parts.
    split_endpoint(endpoint)?;
    Ok(url)
}

fn engine_for(text: &str) -> &'static GeneralPurpose {
    if text.contains(['+', '/']) {
        &STANDARD_LENIENT
    } else {
        &URL_SAFE_LENIENT
    }
}

enum FixedError {
    Encoding,
    Length(usize),
}

/// Decodes base64 of exactly `N` bytes into a stack array.
fn decode_fixed<const N: usize>(text: &str) -> Result<[u8; N], FixedError> {
    // Room for any text that could decode to N bytes; longer text is too long for sure.
    let mut buffer = [0u8; 96];
    if text.len() > 128 {
        return Err(FixedError::Length(text.len() / 4 * 3));
    }
    let n = engine_for(text)
        .decode_slice(text, &mut buffer)
        .map_err(|_| FixedError::Encoding)?;
    buffer[..n].try_into().map_err(|_| FixedError::Length(n))
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::engine::general_purpose::{STANDARD, URL_SAFE};

    const P256DH: &str =
        "BCVxsr7N_eNgVRqvHtD0zTZsEc6-VV-JvLexhqUzORcxaOzi6-AYWXvTBHm4bjyPjs7Vd8pZGH6SRpkNtoIAiw4";
    const AUTH: &str = "BTBZMqHH6r4Tts7J_aSIgg";
    const ENDPOINT: &str = "https://fcm.googleapis.com/fcm/send/cJ3k:APA91bSecretPath";

    fn key_bytes() -> Vec<u8> {
        URL_SAFE_NO_PAD.decode(P256DH).unwrap()
    }

    #[test]
    fn a_browser_subscription_round_trips() {
        let token = encode(ENDPOINT, P256DH, AUTH).unwrap();
        assert_eq!(token, format!("{ENDPOINT} {P256DH} {AUTH}"));
        let decoded = decode(&token).unwrap();
        assert_eq!(decoded.endpoint, ENDPOINT);
        assert_eq!(decoded.ua_public.to_vec(), key_bytes());
        assert_eq!(decoded.auth.to_vec(), URL_SAFE_NO_PAD.decode(AUTH).unwrap());
        assert_eq!(endpoint_of(&token), ENDPOINT);
    }

    #[test]
    fn keys_in_any_base64_form_are_normalised() {
        let raw = key_bytes();
        let auth = URL_SAFE_NO_PAD.decode(AUTH).unwrap();
        let expected = encode(ENDPOINT, P256DH, AUTH).unwrap();
        for (p256dh, auth) in [
            (URL_SAFE.encode(&raw), URL_SAFE.encode(&auth)),
            (STANDARD.encode(&raw), STANDARD.encode(&auth)),
            (
                STANDARD.encode(&raw).trim_end_matches('=').to_string(),
                STANDARD.encode(&auth).trim_end_matches('=').to_string(),
            ),
        ] {
            let token = encode(&format!("  {ENDPOINT}\n"), &p256dh, &auth).unwrap();
            assert_eq!(token, expected, "{p256dh}");
        }
    }

    #[test]
    fn bad_subscriptions_are_refused_without_echoing_secrets() {
        let short_key = URL_SAFE_NO_PAD.encode([4u8; 33]);
        // A key off the curve has the right shape: the front takes it, and the agent's ECDH
        // finds it out (the subscription is then reported invalid).
        let mut off_curve = key_bytes();
        off_curve[64] ^= 1;
        assert!(encode(ENDPOINT, &URL_SAFE_NO_PAD.encode(off_curve), AUTH).is_ok());
        let mut compressed = key_bytes();
        compressed[0] = 0x03;
        let compressed = URL_SAFE_NO_PAD.encode(compressed);
        let long = format!("https://push.example.com/{}", "a".repeat(2048));
        let cases: Vec<(String, String, String, &str)> = vec![
            (
                "http://push.example.com/SECRET".into(),
                P256DH.into(),
                AUTH.into(),
                "endpoint scheme is http: push endpoints must be https",
            ),
            (
                "ftp://push.example.com/SECRET".into(),
                P256DH.into(),
                AUTH.into(),
                "endpoint scheme is ftp: push endpoints must be https",
            ),
            (
                "not a url SECRET".into(),
                P256DH.into(),
                AUTH.into(),
                "endpoint contains whitespace or control characters",
            ),
            (
                "push.example.com/SECRET".into(),
                P256DH.into(),
                AUTH.into(),
                "endpoint is not a valid url: relative URL without a base",
            ),
            (
                "https://user:pw@push.example.com/SECRET".into(),
                P256DH.into(),
                AUTH.into(),
                "endpoint has user information: push endpoints never carry credentials",
            ),
            (
                "https://push.example.com/SECRET#frag".into(),
                P256DH.into(),
                AUTH.into(),
                "endpoint has a fragment: push endpoints never do",
            ),
            (
                long.clone(),
                P256DH.into(),
                AUTH.into(),
                "endpoint is 2073 bytes: at most 2048 are allowed",
            ),
            (
                ENDPOINT.into(),
                short_key,
                AUTH.into(),
                "keys.p256dh is 33 bytes, not a 65-byte uncompressed P-256 point",
            ),
            (
                ENDPOINT.into(),
                compressed,
                AUTH.into(),
                "keys.p256dh starts with 0x03, not 0x04: it must be an uncompressed P-256 point",
            ),
            (
                ENDPOINT.into(),
                "SECRET!!".into(),
                AUTH.into(),
                "keys.p256dh is not base64url",
            ),
            (
                ENDPOINT.into(),
                P256DH.into(),
                URL_SAFE_NO_PAD.encode([1u8; 12]),
                "keys.auth is 12 bytes, not 16",
            ),
            (
                ENDPOINT.into(),
                P256DH.into(),
                "SECRET*".into(),
                "keys.auth is not base64url",
            ),
        ];
        for (endpoint, p256dh, auth, expected) in cases {
            let error = encode(&endpoint, &p256dh, &auth).unwrap_err().to_string();
            assert_eq!(error, expected, "{endpoint}");
            assert!(!error.contains("SECRET"), "{error}");
            assert!(!error.contains(&P256DH[..20]), "{error}");
        }
    }

    #[test]
    fn malformed_tokens_are_refused() {
        let good = encode(ENDPOINT, P256DH, AUTH).unwrap();
        let cases = [
            (ENDPOINT.to_string(), SubscriptionError::TokenShape),
            (format!("{good} extra"), SubscriptionError::TokenShape),
            (good.replacen(' ', "  ", 1), SubscriptionError::TokenShape),
            (
                format!("http://x/y {P256DH} {AUTH}"),
                SubscriptionError::EndpointScheme("http".into()),
            ),
            (
                format!("https:///y {P256DH} {AUTH}"),
                SubscriptionError::EndpointNoHost,
            ),
            (
                format!("{ENDPOINT} {} {AUTH}", &P256DH[..40]),
                SubscriptionError::P256dhLength(30),
            ),
            (
                format!("{ENDPOINT} {P256DH} {P256DH}"),
                SubscriptionError::AuthLength(65),
            ),
            (
                format!("{ENDPOINT} {} {AUTH}", "A".repeat(400)),
                SubscriptionError::P256dhLength(300),
            ),
        ];
        for (token, expected) in cases {
            assert_eq!(decode(&token).unwrap_err(), expected, "{token}");
        }
        assert_eq!(endpoint_of("no-spaces"), "no-spaces");
    }

    #[test]
    fn origins_keep_only_non_default_ports() {
        let cases = [
            (ENDPOINT, "https://fcm.googleapis.com"),
            ("https://Push.Example.com:443/x", "https://push.example.com"),
            (
                "https://push.example.com:8443/x?y=1",
                "https://push.example.com:8443",
            ),
            ("https://127.0.0.1:9000/p", "https://127.0.0.1:9000"),
            ("https://[::1]:9000/p", "https://[::1]:9000"),
            ("https://push.example.com", "https://push.example.com"),
        ];
        for (endpoint, expected) in cases {
            assert_eq!(origin(endpoint).unwrap(), expected, "{endpoint}");
        }
        assert!(origin("http://push.example.com/x").is_err());
    }

    #[test]
    fn endpoints_split_into_authority_and_path() {
        let parts = |e| split_endpoint(e).unwrap();
        assert_eq!(
            parts("https://h:8443/a/b?c=d"),
            EndpointParts {
                authority: "h:8443",
                path_and_query: "/a/b?c=d"
            }
        );
        assert_eq!(parts("https://h?x").path_and_query, "?x");
        assert_eq!(parts("HTTPS://h").path_and_query, "");
        assert_eq!(parts("https://[::1]:1/p").authority, "[::1]:1");
    }
}
