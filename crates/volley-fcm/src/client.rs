//! The FCM HTTP v1 client.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{AUTHORIZATION, CONTENT_TYPE, RETRY_AFTER};
use http::{HeaderValue, Method, Request, StatusCode, Uri};
use volley_provider::tls::TlsError;
use volley_provider::{Endpoint, Outcome, Pool, PoolConfig, Reason};

use crate::auth::{Clock, OAuthSource, Signer, TokenCache};
use crate::classify::classify;
use crate::config::{FcmConfig, ServiceAccount, ServiceAccountError, GOOGLE_TOKEN_URI};
use crate::message::PreparedMessage;

/// Time allowed to open a connection to FCM or the token endpoint.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Resends of a request the server never processed (refused stream, above a GOAWAY).
const MAX_RESENDS: u32 = 3;

/// Why a client could not be built.
#[derive(Debug, thiserror::Error)]
pub enum FcmError {
    /// The service-account file is unusable.
    #[error("service account: {0}")]
    ServiceAccount(#[from] ServiceAccountError),
    /// The service account's `token_uri` is neither Google's nor allow-listed.
    #[error(
        "service account token_uri {0:?} is neither {GOOGLE_TOKEN_URI} nor in allowed_token_uris"
    )]
    TokenUriNotAllowed(String),
    /// The `token_uri` is not an absolute http(s) URI.
    #[error("service account token_uri {0:?} is not an absolute http or https uri")]
    BadTokenUri(String),
    /// Neither the configuration nor the service account names a project.
    #[error("project_id: not configured and absent from the service account")]
    NoProject,
    /// The project id cannot appear in a request path.
    #[error("project_id {0:?} has characters outside [A-Za-z0-9.:_-]")]
    BadProject(String),
    /// The TLS configuration could not be built.
    #[error("tls: {0}")]
    Tls(#[from] TlsError),
}

/// Sends messages to FCM HTTP v1, one token per request, over a pool of HTTP/2 connections.
///
/// Cheap to clone; clones share connections and the access token. Built for many concurrent
/// [`send`](FcmClient::send)s.
#[derive(Clone)]
pub struct FcmClient {
    inner: Arc<Inner>,
}

struct Inner {
    pool: Pool,
    /// `{origin}/v1/projects/{project}/messages:send`, built once and cloned per request.
    uri: Uri,
    project: String,
    auth: TokenCache<OAuthSource>,
}

impl fmt::Debug for FcmClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FcmClient")
            .field("uri", &self.inner.uri)
            .field("project", &self.inner.project)
            .finish_non_exhaustive()
    }
}

impl FcmClient {
    /// Builds a client; connections and the first access token are made on first send.
    pub fn new(config: FcmConfig) -> Result<FcmClient, FcmError> {
        FcmClient::with_clock(config, Clock::system())
    }

    /// Builds a client whose access-token lifetimes follow `clock` (tests use a manual one).
    pub fn with_clock(config: FcmConfig, clock: Clock) -> Result<FcmClient, FcmError> {
        let account = ServiceAccount::from_json(&config.service_account_json)?;
        if account.token_uri != GOOGLE_TOKEN_URI
            && !config.allowed_token_uris.contains(&account.token_uri)
        {
            return Err(FcmError::TokenUriNotAllowed(account.token_uri));
        }
        let (token_uri, token_endpoint) = parse_token_uri(&account.token_uri)?;
        let project = config
            .project_id
            .clone()
            .or(account.project_id.clone())
            .ok_or(FcmError::NoProject)?;
        if project.is_empty()
            || !project
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b':' | b'_' | b'-'))
        {
            return Err(FcmError::BadProject(project));
        }
        let signer = Signer::new(
            &account.private_key,
            account.private_key_id.as_deref(),
            &account.client_email,
            &account.token_uri,
        )
        .ok_or(ServiceAccountError::Invalid {
            field: "private_key",
            what: "not a usable rsa private key",
        })?;
        let uri = Uri::try_from(format!(
            "{}/v1/projects/{project}/messages:send",
            origin(&config.base)
        ))
        .map_err(|_| FcmError::BadProject(project.clone()))?;
        let pool = Pool::new(PoolConfig {
            endpoint: config.base.clone(),
            connections: config.connections.max(1),
            request_timeout: config.request_timeout,
            connect_timeout: CONNECT_TIMEOUT,
            tls: config.tls.clone(),
            max_resends: MAX_RESENDS,
            resolver: None,
            stats: config.stats,
        })?;
        // The token endpoint gets its own single connection: one request an hour.
        let token_pool = Pool::new(PoolConfig {
            endpoint: token_endpoint,
            connections: 1,
            request_timeout: config.request_timeout,
            connect_timeout: CONNECT_TIMEOUT,
            tls: config.tls,
            max_resends: MAX_RESENDS,
            resolver: None,
            stats: volley_provider::PoolStats::default(),
        })?;
        let source = OAuthSource {
            signer,
            pool: token_pool,
            uri: token_uri,
        };
        Ok(FcmClient {
            inner: Arc::new(Inner {
                pool,
                uri,
                project,
                auth: TokenCache::new(source, clock),
            }),
        })
    }

    /// The project messages are sent to.
    pub fn project(&self) -> &str {
        &self.inner.project
    }

    /// Sends `message` to one registration token.
    ///
    /// `token` is a topic's name or a condition when the message was prepared
    /// [`to`](PreparedMessage::to) one. A token that fails [`validate_token`](crate::validate_token) (a topic or a
    /// condition that fails [`Target::validate`](crate::Target::validate)) is reported as an invalid token without being
    /// sent. A 401 (other than `THIRD_PARTY_AUTH_ERROR`) refreshes the access token, shared
    /// with every concurrent sender, and resends once.
    pub async fn send(&self, token: &str, message: &PreparedMessage) -> Outcome {
        if message.target().validate(token).is_err() {
            return Outcome::InvalidToken {
                reason: Reason::known("MALFORMED_TOKEN"),
                timestamp_ms: None,
            };
        }
        let body = message.body_for(token);
        let access = match self.inner.auth.token().await {
            Ok(access) => access,
            Err(outcome) => return outcome,
        };
        let (status, outcome) = self.send_once(&access.header, body.clone()).await;
        let refused = status == Some(StatusCode::UNAUTHORIZED)
            && matches!(&outcome, Outcome::Credential { reason } if reason.as_str() != "THIRD_PARTY_AUTH_ERROR");
        if !refused {
            return outcome;
        }
        tracing::debug!(
            generation = access.generation,
            "access token refused, refreshing"
        );
        let access = match self.inner.auth.refresh_after(access.generation).await {
            Ok(access) => access,
            Err(outcome) => return outcome,
        };
        self.send_once(&access.header, body).await.1
    }

    async fn send_once(
        &self,
        authorization: &HeaderValue,
        body: Bytes,
    ) -> (Option<StatusCode>, Outcome) {
        let make = || {
            let mut request = Request::new(());
            *request.method_mut() = Method::POST;
            *request.uri_mut() = self.inner.uri.clone();
            let headers = request.headers_mut();
            headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
            headers.insert(AUTHORIZATION, authorization.clone());
            request
        };
        match self.inner.pool.send(make, body).await {
            Ok(response) => (
                Some(response.status),
                classify(
                    response.status,
                    response.headers.get(RETRY_AFTER),
                    &response.body,
                ),
            ),
            Err(error) => (None, error.into_outcome()),
        }
    }
}

/// `scheme://host[:port]`, the port left out when it is the scheme's default (as the pool
/// does for path-only URIs, so `:authority` reads as it would from any other client).
fn origin(endpoint: &Endpoint) -> String {
    let scheme = if endpoint.tls { "https" } else { "http" };
    let host = if endpoint.host.contains(':') {
        format!("[{}]", endpoint.host)
    } else {
        endpoint.host.clone()
    };
    match (endpoint.tls, endpoint.port) {
        (true, 443) | (false, 80) => format!("{scheme}://{host}"),
        (_, port) => format!("{scheme}://{host}:{port}"),
    }
}

/// Splits an allowed `token_uri` into the URI to post to and the endpoint to pool.
fn parse_token_uri(token_uri: &str) -> Result<(Uri, Endpoint), FcmError> {
    let bad = || FcmError::BadTokenUri(token_uri.to_owned());
    let uri: Uri = token_uri.parse().map_err(|_| bad())?;
    let tls = match uri.scheme_str() {
        Some("https") => true,
        Some("http") => false,
        _ => return Err(bad()),
    };
    let host = uri.host().ok_or_else(bad)?;
    let endpoint = Endpoint {
        tls,
        host: host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned(),
        port: uri.port_u16().unwrap_or(if tls { 443 } else { 80 }),
    };
    Ok((uri, endpoint))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_leave_out_default_ports() {
        let endpoint = |tls, host: &str, port| Endpoint {
            tls,
            host: host.into(),
            port,
        };
        assert_eq!(
            origin(&endpoint(true, "fcm.googleapis.com", 443)),
            "https://fcm.googleapis.com"
        );
        assert_eq!(
            origin(&endpoint(true, "127.0.0.1", 8443)),
            "https://127.0.0.1:8443"
        );
        assert_eq!(origin(&endpoint(false, "::1", 80)), "http://[::1]");
    }

    #[test]
    fn token_uris_become_endpoints() {
        let (uri, endpoint) = parse_token_uri(GOOGLE_TOKEN_URI).unwrap();
        assert_eq!(uri.path(), "/token");
        assert_eq!(
            endpoint,
            Endpoint {
                tls: true,
                host: "oauth2.googleapis.com".into(),
                port: 443
            }
        );
        let (_, endpoint) = parse_token_uri("http://127.0.0.1:8080/token").unwrap();
        assert_eq!((endpoint.tls, endpoint.port), (false, 8080));
        for bad in ["/token", "ftp://x/token", "not a uri"] {
            assert!(matches!(
                parse_token_uri(bad),
                Err(FcmError::BadTokenUri(_))
            ));
        }
    }
}
