//! Client configuration and the service-account file.

use std::fmt;
use std::time::Duration;

use serde_json::{Map, Value};
use volley_provider::tls::TlsOptions;
use volley_provider::{Endpoint, PoolStats};

/// Google's OAuth 2.0 token endpoint, the only `token_uri` trusted without configuration.
pub const GOOGLE_TOKEN_URI: &str = "https://oauth2.googleapis.com/token";

/// The OAuth scope an access token needs to send with FCM HTTP v1.
pub const FCM_SCOPE: &str = "https://www.googleapis.com/auth/firebase.messaging";

/// How an [`FcmClient`](crate::FcmClient) reaches FCM and authenticates.
#[derive(Clone)]
pub struct FcmConfig {
    /// The FCM endpoint; `https://fcm.googleapis.com:443` by default.
    pub base: Endpoint,
    /// The Firebase project; the service account's `project_id` when `None`.
    pub project_id: Option<String>,
    /// The service-account JSON file's contents (it holds a private key: never log it).
    pub service_account_json: String,
    /// Token endpoints trusted besides [`GOOGLE_TOKEN_URI`] (a fake's, for tests).
    pub allowed_token_uris: Vec<String>,
    /// Number of HTTP/2 connections to FCM.
    pub connections: usize,
    /// Time allowed for one request, from sending to the end of the response.
    pub request_timeout: Duration,
    /// TLS options for FCM and the token endpoint.
    pub tls: TlsOptions,
    /// Where the connections, streams and request latencies to FCM are counted (the agent's
    /// metrics); the token endpoint's one request an hour is not.
    pub stats: PoolStats,
}

impl FcmConfig {
    /// A configuration with the defaults for everything but the service account.
    pub fn new(service_account_json: impl Into<String>) -> FcmConfig {
        FcmConfig {
            base: default_base(),
            project_id: None,
            service_account_json: service_account_json.into(),
            allowed_token_uris: Vec::new(),
            connections: 4,
            request_timeout: Duration::from_secs(10),
            tls: TlsOptions::default(),
            stats: PoolStats::default(),
        }
    }
}

/// `https://fcm.googleapis.com:443`.
pub fn default_base() -> Endpoint {
    Endpoint {
        tls: true,
        host: "fcm.googleapis.com".to_owned(),
        port: 443,
    }
}

impl fmt::Debug for FcmConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FcmConfig")
            .field("base", &self.base)
            .field("project_id", &self.project_id)
            .field(
                "service_account_json",
                &format_args!("<redacted, {} bytes>", self.service_account_json.len()),
            )
            .field("allowed_token_uris", &self.allowed_token_uris)
            .field("connections", &self.connections)
            .field("request_timeout", &self.request_timeout)
            .field("tls", &self.tls)
            .field("stats", &self.stats)
            .finish()
    }
}

/// Why a service-account file was refused; names the field, never echoes its value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ServiceAccountError {
    /// The file is not JSON.
    #[error("not valid json (line {line}, column {column})")]
    NotJson {
        /// Line of the syntax error.
        line: usize,
        /// Column of the syntax error.
        column: usize,
    },
    /// The file is JSON but not an object.
    #[error("not a json object")]
    NotAnObject,
    /// A required field is absent.
    #[error("missing field `{0}`")]
    Missing(&'static str),
    /// A field is present but unusable.
    #[error("field `{field}`: {what}")]
    Invalid {
        /// The field.
        field: &'static str,
        /// What is wrong with it.
        what: &'static str,
    },
}

/// The parts of a Google service-account JSON file that FCM needs.
#[derive(Clone, PartialEq, Eq)]
pub struct ServiceAccount {
    /// The project the account belongs to.
    pub project_id: Option<String>,
    /// The key's id, sent as the assertion's `kid`.
    pub private_key_id: Option<String>,
    /// The PEM RSA private key (PKCS#8 or PKCS#1).
    pub private_key: String,
    /// The account's e-mail address, the assertion's issuer.
    pub client_email: String,
    /// Where to exchange the assertion for an access token ([`GOOGLE_TOKEN_URI`] when absent).
    pub token_uri: String,
}

impl ServiceAccount {
    /// Parses a service-account file; `type` must be `service_account`.
    pub fn from_json(json: &str) -> Result<ServiceAccount, ServiceAccountError> {
        // Parsed as a map rather than derived: serde's own messages may quote values, and a
        // value here may be a private key.
        let value: Value =
            serde_json::from_str(json).map_err(|e| ServiceAccountError::NotJson {
                line: e.line(),
                column: e.column(),
            })?;
        let Value::Object(map) = value else {
            return Err(ServiceAccountError::NotAnObject);
        };
        match string_field(&map, "type")? {
            Some("service_account") => {}
            Some(_) => {
                return Err(ServiceAccountError::Invalid {
                    field: "type",
                    what: "must be \"service_account\"",
                })
            }
            None => return Err(ServiceAccountError::Missing("type")),
        }
        let required = |name: &'static str| -> Result<String, ServiceAccountError> {
            match string_field(&map, name)? {
                Some("") => Err(ServiceAccountError::Invalid {
                    field: name,
                    what: "is empty",
                }),
                Some(s) => Ok(s.to_owned()),
                None => Err(ServiceAccountError::Missing(name)),
            }
        };
        let private_key = required("private_key")?;
        if !private_key.contains("-----BEGIN") {
            return Err(ServiceAccountError::Invalid {
                field: "private_key",
                what: "not a pem private key",
            });
        }
        Ok(ServiceAccount {
            project_id: string_field(&map, "project_id")?
                .filter(|s| !s.is_empty())
                .map(str::to_owned),
            private_key_id: string_field(&map, "private_key_id")?
                .filter(|s| !s.is_empty())
                .map(str::to_owned),
            private_key,
            client_email: required("client_email")?,
            token_uri: string_field(&map, "token_uri")?
                .filter(|s| !s.is_empty())
                .unwrap_or(GOOGLE_TOKEN_URI)
                .to_owned(),
        })
    }
}

fn string_field<'a>(
    map: &'a Map<String, Value>,
    name: &'static str,
) -> Result<Option<&'a str>, ServiceAccountError> {
    match map.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(ServiceAccountError::Invalid {
            field: name,
            what: "must be a string",
        }),
    }
}

impl fmt::Debug for ServiceAccount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServiceAccount")
            .field("project_id", &self.project_id)
            .field("private_key_id", &self.private_key_id)
            .field("private_key", &"<redacted>")
            .field("client_email", &self.client_email)
            .field("token_uri", &self.token_uri)
            .finish()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    const KEY: &str = "-----BEGIN PRIVATE KEY-----\nSECRETSECRET\n-----END PRIVATE KEY-----\n";

    pub(crate) fn account_json(overrides: &[(&str, Value)]) -> String {
        let mut map = Map::new();
        map.insert("type".into(), "service_account".into());
        map.insert("project_id".into(), "demo-project".into());
        map.insert("private_key_id".into(), "kid-1".into());
        map.insert("private_key".into(), KEY.into());
        map.insert(
            "client_email".into(),
            "sender@demo-project.iam.gserviceaccount.com".into(),
        );
        map.insert("token_uri".into(), GOOGLE_TOKEN_URI.into());
        for (k, v) in overrides {
            if v.is_null() {
                map.remove(*k);
            } else {
                map.insert((*k).into(), v.clone());
            }
        }
        Value::Object(map).to_string()
    }

    #[test]
    fn a_complete_file_parses() {
        let sa = ServiceAccount::from_json(&account_json(&[])).unwrap();
        assert_eq!(sa.project_id.as_deref(), Some("demo-project"));
        assert_eq!(sa.private_key_id.as_deref(), Some("kid-1"));
        assert_eq!(
            sa.client_email,
            "sender@demo-project.iam.gserviceaccount.com"
        );
        assert_eq!(sa.token_uri, GOOGLE_TOKEN_URI);
        assert_eq!(sa.private_key, KEY);
    }

    #[test]
    fn optional_fields_default() {
        let json = account_json(&[
            ("token_uri", Value::Null),
            ("project_id", Value::Null),
            ("private_key_id", Value::Null),
        ]);
        let sa = ServiceAccount::from_json(&json).unwrap();
        assert_eq!(sa.token_uri, GOOGLE_TOKEN_URI);
        assert_eq!(sa.project_id, None);
        assert_eq!(sa.private_key_id, None);
    }

    #[test]
    fn bad_files_name_the_field_and_never_echo_the_key() {
        let cases: Vec<(String, &str)> = vec![
            ("{not json".into(), "not valid json"),
            ("[1,2]".into(), "not a json object"),
            (
                account_json(&[("type", Value::Null)]),
                "missing field `type`",
            ),
            (
                account_json(&[("type", "authorized_user".into())]),
                "field `type`",
            ),
            (
                account_json(&[("private_key", Value::Null)]),
                "missing field `private_key`",
            ),
            (
                account_json(&[("private_key", "SECRETSECRET".into())]),
                "field `private_key`: not a pem private key",
            ),
            (
                account_json(&[("private_key", 42.into())]),
                "field `private_key`: must be a string",
            ),
            (
                account_json(&[("client_email", Value::Null)]),
                "missing field `client_email`",
            ),
            (
                account_json(&[("client_email", "".into())]),
                "field `client_email`: is empty",
            ),
            (
                account_json(&[("token_uri", serde_json::json!(["x"]))]),
                "field `token_uri`: must be a string",
            ),
        ];
        for (json, expected) in cases {
            let err = ServiceAccount::from_json(&json).unwrap_err().to_string();
            assert!(
                err.contains(expected),
                "{err:?} should contain {expected:?}"
            );
            assert!(!err.contains("SECRET"), "{err:?} echoes the key");
        }
    }

    #[test]
    fn debug_output_redacts_secrets() {
        let json = account_json(&[]);
        let sa = ServiceAccount::from_json(&json).unwrap();
        assert!(!format!("{sa:?}").contains("SECRET"));
        let config = FcmConfig::new(json);
        let shown = format!("{config:?}");
        assert!(!shown.contains("SECRET"), "{shown}");
        assert!(shown.contains("redacted"));
    }
}
