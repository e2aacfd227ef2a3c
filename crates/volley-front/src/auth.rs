//! API keys: `Authorization: Bearer <key>`, each key reaching only its own app. A key is
//! configured in clear (`api_keys`) or as its SHA-256 digest (`api_key_sha256`), so that a
//! configuration file need not hold it.
//!
//! Keys are stored and looked up as SHA-256 digests. Comparing digests instead of keys means
//! the time a lookup takes depends on the digest of what the caller sent, which the caller
//! cannot steer towards a real key byte by byte; that removes the timing side channel that a
//! plain string comparison would open, without a hand-written constant-time loop.

use std::collections::HashMap;

use axum::http::{header, HeaderMap};
use ring::digest::{digest, SHA256};
use volley_config::Config;

use crate::error::{ApiError, Code};

type Digest = [u8; 32];

fn hash(key: &str) -> Digest {
    let mut out = [0u8; 32];
    out.copy_from_slice(digest(&SHA256, key.as_bytes()).as_ref());
    out
}

/// A digest written as 64 hex digits.
fn from_hex(hex: &str) -> Option<Digest> {
    if hex.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (byte, pair) in out.iter_mut().zip(hex.as_bytes().chunks(2)) {
        let pair = std::str::from_utf8(pair).ok()?;
        *byte = u8::from_str_radix(pair, 16).ok()?;
    }
    Some(out)
}

/// Every app's API keys, by digest: the app's index and the key's slot (its rate limiter).
#[derive(Debug, Default)]
pub(crate) struct KeyRing {
    keys: HashMap<Digest, (usize, usize)>,
}

impl KeyRing {
    /// Indexes the keys of `config.apps`; a key shared by two apps is refused (it could not
    /// say which app a request is for).
    pub(crate) fn new(config: &Config) -> Result<KeyRing, String> {
        let mut keys = HashMap::new();
        let mut slot = 0;
        for (index, app) in config.apps.iter().enumerate() {
            let digests = app.api_keys.iter().map(|key| Some(hash(key.expose())));
            let given = app.api_key_sha256.iter().map(|hex| from_hex(hex));
            for digest in digests.chain(given) {
                let digest = digest.ok_or_else(|| {
                    format!("apps[{index}].api_key_sha256: not a 64-hex-digit SHA-256 digest")
                })?;
                slot += 1;
                if let Some((other, _)) = keys.insert(digest, (index, slot - 1)) {
                    if other != index {
                        return Err(format!(
                            "apps[{index}].api_keys: a key of app {:?} is also a key of app {:?}",
                            app.name, config.apps[other].name
                        ));
                    }
                }
            }
        }
        Ok(KeyRing { keys })
    }

    /// The index of the app whose key the request carries.
    #[cfg(test)]
    pub(crate) fn authenticate(&self, headers: &HeaderMap) -> Result<usize, ApiError> {
        self.identify(headers).map(|(app, _)| app)
    }

    /// The app whose key the request carries, and the key's slot (numbered in configuration
    /// order across every app's `api_keys`).
    pub(crate) fn identify(&self, headers: &HeaderMap) -> Result<(usize, usize), ApiError> {
        let value = headers.get(header::AUTHORIZATION).ok_or_else(|| {
            ApiError::new(
                Code::Unauthorized,
                "missing api key: send `Authorization: Bearer <key>`",
            )
        })?;
        let key = value
            .to_str()
            .ok()
            .and_then(|v| {
                let (scheme, key) = v.trim().split_once(' ')?;
                scheme.eq_ignore_ascii_case("bearer").then(|| key.trim())
            })
            .filter(|key| !key.is_empty())
            .ok_or_else(|| {
                ApiError::new(
                    Code::Unauthorized,
                    "malformed authorization header: expected `Bearer <key>`",
                )
            })?;
        self.keys
            .get(&hash(key))
            .copied()
            .ok_or_else(|| ApiError::new(Code::Unauthorized, "unknown api key"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn config() -> Config {
        Config::from_toml(
            r#"
            [[apps]]
            name = "a"
            api_keys = ["key-of-app-a-0123456789"]
            [apps.fcm]
            service_account_file = "sa.json"
            [[apps]]
            name = "b"
            api_keys = ["key-of-app-b-0123456789"]
            [apps.fcm]
            service_account_file = "sa.json"
            "#,
        )
        .unwrap()
    }

    fn headers(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(header::AUTHORIZATION, HeaderValue::from_str(value).unwrap());
        headers
    }

    #[test]
    fn keys_map_to_their_app() {
        let ring = KeyRing::new(&config()).unwrap();
        assert_eq!(
            ring.authenticate(&headers("Bearer key-of-app-b-0123456789"))
                .unwrap(),
            1
        );
        assert_eq!(
            ring.authenticate(&headers("bearer  key-of-app-a-0123456789 "))
                .unwrap(),
            0
        );
        for bad in ["Bearer nope", "Basic key-of-app-a-0123456789", "Bearer", ""] {
            let error = ring.authenticate(&headers(bad)).unwrap_err();
            assert_eq!(error.code, Code::Unauthorized);
            assert!(!error.message.contains("key-of"), "{}", error.message);
        }
        assert!(ring.authenticate(&HeaderMap::new()).is_err());
    }

    #[test]
    fn a_key_shared_by_two_apps_is_refused() {
        let mut config = config();
        config.apps[1].api_keys = config.apps[0].api_keys.clone();
        let error = KeyRing::new(&config).unwrap_err();
        assert!(!error.contains("key-of"), "{error}");
    }

    #[test]
    fn a_key_given_by_its_digest_reaches_its_app() {
        let mut config = config();
        let key = "key-known-only-by-digest-42";
        let hex: String = hash(key).iter().map(|b| format!("{b:02x}")).collect();
        config.apps[1].api_key_sha256 = vec![hex.to_uppercase()];
        let ring = KeyRing::new(&config).unwrap();
        assert_eq!(
            ring.authenticate(&headers(&format!("Bearer {key}")))
                .unwrap(),
            1
        );
        assert_eq!(
            ring.authenticate(&headers("Bearer key-of-app-b-0123456789"))
                .unwrap(),
            1
        );
        // A digest of another app's key is that key given twice: refused.
        let shared: String = hash("key-of-app-a-0123456789")
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        config.apps[1].api_key_sha256 = vec![shared];
        assert!(KeyRing::new(&config).is_err());
        config.apps[1].api_key_sha256 = vec!["abc".into()];
        assert!(KeyRing::new(&config)
            .unwrap_err()
            .contains("api_key_sha256"));
    }
}
