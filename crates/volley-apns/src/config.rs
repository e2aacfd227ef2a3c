//! How an [`ApnsClient`](crate::ApnsClient) connects and authenticates.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use volley_provider::tls::TlsOptions;
use volley_provider::{Endpoint, PoolStats};

/// One APNs client's configuration: one endpoint, one credential.
#[derive(Clone)]
pub struct ApnsConfig {
    /// Where APNs lives; see [`ApnsEndpoint`] for the presets.
    pub endpoint: Endpoint,
    /// Number of HTTP/2 connections kept open to the endpoint.
    pub connections: usize,
    /// Time allowed for one request, from sending to the end of the response.
    pub request_timeout: Duration,
    /// TLS options; [`ApnsAuth::Certificate`] reads its client certificate from here.
    pub tls: TlsOptions,
    /// How requests are authorised.
    pub auth: ApnsAuth,
    /// Where the connections, streams and request latencies are counted (the agent's metrics).
    pub stats: PoolStats,
}

impl ApnsConfig {
    /// A configuration with the defaults: 4 connections, a 10 s request timeout, public web roots.
    ///
    /// Four connections is where the measured client cost per request is lowest on two cores
    /// (see `push-providers.md`); APNs itself accepts hundreds of streams per connection.
    pub fn new(endpoint: impl Into<Endpoint>, auth: ApnsAuth) -> Self {
        ApnsConfig {
            endpoint: endpoint.into(),
            connections: 4,
            request_timeout: Duration::from_secs(10),
            tls: TlsOptions::default(),
            auth,
            stats: PoolStats::default(),
        }
    }
}

impl fmt::Debug for ApnsConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApnsConfig")
            .field("endpoint", &self.endpoint)
            .field("connections", &self.connections)
            .field("request_timeout", &self.request_timeout)
            .field("tls", &self.tls)
            .field("auth", &self.auth)
            .field("stats", &self.stats)
            .finish()
    }
}

/// How requests to APNs are authorised.
#[derive(Clone)]
pub enum ApnsAuth {
    /// Provider token (JWT) signed with a `.p8` key; one key serves every app of the team.
    Token {
        /// The contents of the `.p8` file: a PKCS#8 PEM P-256 private key.
        key_pem: String,
        /// The key's 10-character identifier (the JWT `kid`).
        key_id: String,
        /// The 10-character Apple team identifier (the JWT `iss`).
        team_id: String,
    },
    /// TLS client certificate, read from [`ApnsConfig::tls`]`.client_identity`.
    Certificate,
}

impl fmt::Debug for ApnsAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ApnsAuth::Token {
                key_pem: _,
                key_id,
                team_id,
            } => f
                .debug_struct("Token")
                .field("key_pem", &"<redacted>")
                .field("key_id", key_id)
                .field("team_id", team_id)
                .finish(),
            ApnsAuth::Certificate => f.write_str("Certificate"),
        }
    }
}

/// The APNs endpoints: Apple's two environments, or any other `https://host:port`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApnsEndpoint {
    /// `https://api.push.apple.com:443`.
    Production,
    /// `https://api.sandbox.push.apple.com:443`, for apps built with a development profile.
    Sandbox,
    /// Another endpoint, such as a fake server in tests (`http://` selects h2c).
    Custom(Endpoint),
}

impl ApnsEndpoint {
    /// Apple's production host.
    pub const PRODUCTION_HOST: &'static str = "api.push.apple.com";
    /// Apple's sandbox host.
    pub const SANDBOX_HOST: &'static str = "api.sandbox.push.apple.com";

    /// The endpoint the pool connects to.
    pub fn endpoint(&self) -> Endpoint {
        let apple = |host: &str| Endpoint {
            tls: true,
            host: host.to_owned(),
            port: 443,
        };
        match self {
            ApnsEndpoint::Production => apple(Self::PRODUCTION_HOST),
            ApnsEndpoint::Sandbox => apple(Self::SANDBOX_HOST),
            ApnsEndpoint::Custom(endpoint) => endpoint.clone(),
        }
    }
}

impl From<ApnsEndpoint> for Endpoint {
    fn from(endpoint: ApnsEndpoint) -> Endpoint {
        endpoint.endpoint()
    }
}

impl FromStr for ApnsEndpoint {
    type Err = String;

    /// Parses `production`, `sandbox` (or `development`), or a URL `https://host:port`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim() {
            "production" => Ok(ApnsEndpoint::Production),
            "sandbox" | "development" => Ok(ApnsEndpoint::Sandbox),
            url => url.parse::<Endpoint>().map(ApnsEndpoint::Custom),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_name_apples_hosts_on_port_443() {
        let production = ApnsEndpoint::Production.endpoint();
        assert_eq!(
            (production.tls, production.host.as_str(), production.port),
            (true, "api.push.apple.com", 443)
        );
        let sandbox: Endpoint = ApnsEndpoint::Sandbox.into();
        assert_eq!(
            (sandbox.tls, sandbox.host.as_str(), sandbox.port),
            (true, "api.sandbox.push.apple.com", 443)
        );
        assert_eq!(
            "production".parse::<ApnsEndpoint>(),
            Ok(ApnsEndpoint::Production)
        );
        assert_eq!("sandbox".parse::<ApnsEndpoint>(), Ok(ApnsEndpoint::Sandbox));
        let custom = "https://127.0.0.1:2197".parse::<ApnsEndpoint>().unwrap();
        assert_eq!(
            custom.endpoint(),
            Endpoint {
                tls: true,
                host: "127.0.0.1".into(),
                port: 2197
            }
        );
        assert!("ftp://example.com".parse::<ApnsEndpoint>().is_err());
    }

    #[test]
    fn debug_redacts_the_signing_key() {
        let config = ApnsConfig::new(
            ApnsEndpoint::Sandbox,
            ApnsAuth::Token {
                key_pem: "-----BEGIN PRIVATE KEY-----\nSECRETSECRET\n-----END PRIVATE KEY-----"
                    .into(),
                key_id: "ABC123DEFG".into(),
                team_id: "TEAM123456".into(),
            },
        );
        let text = format!("{config:?}");
        assert!(!text.contains("SECRETSECRET"), "{text}");
        assert!(!text.contains("BEGIN"), "{text}");
        assert!(text.contains("<redacted>"));
        assert!(text.contains("ABC123DEFG"));
    }
}
