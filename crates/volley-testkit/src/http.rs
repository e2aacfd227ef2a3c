//! A small HTTP/1.1 JSON client for talking to a front (`volley push`, the demo, tests).

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

/// A client of one front.
#[derive(Clone, Debug)]
pub struct FrontClient {
    base: String,
    api_key: Option<String>,
    client: Client<HttpConnector, Full<Bytes>>,
}

/// A response: status, headers and parsed JSON (or `null` for an empty or non-JSON body).
#[derive(Debug, Clone)]
pub struct JsonResponse {
    /// The HTTP status.
    pub status: StatusCode,
    /// The response headers.
    pub headers: http::HeaderMap,
    /// The body as JSON.
    pub body: serde_json::Value,
}

impl FrontClient {
    /// A client of the front at `base` (`http://host:port`), presenting `api_key`.
    pub fn new(base: impl Into<String>, api_key: Option<String>) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        FrontClient {
            base: base.into().trim_end_matches('/').to_owned(),
            api_key,
            client: Client::builder(TokioExecutor::new()).build(connector),
        }
    }

    /// Sends a request with an optional JSON body and reads the JSON answer.
    pub async fn request(
        &self,
        method: Method,
        path: &str,
        body: Option<Bytes>,
    ) -> anyhow::Result<JsonResponse> {
        self.request_with(method, path, body, &[]).await
    }

    /// Like [`FrontClient::request`], with extra headers (`Idempotency-Key`, ...).
    pub async fn request_with(
        &self,
        method: Method,
        path: &str,
        body: Option<Bytes>,
        headers: &[(&str, &str)],
    ) -> anyhow::Result<JsonResponse> {
        let mut request = Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base));
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        if let Some(key) = &self.api_key {
            request = request.header(http::header::AUTHORIZATION, format!("Bearer {key}"));
        }
        if body.is_some() {
            request = request.header(http::header::CONTENT_TYPE, "application/json");
        }
        let request = request.body(Full::new(body.unwrap_or_default()))?;
        let response = self.client.request(request).await?;
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = response.into_body().collect().await?.to_bytes();
        let body = serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null);
        Ok(JsonResponse {
            status,
            headers,
            body,
        })
    }

    /// `GET path`.
    pub async fn get(&self, path: &str) -> anyhow::Result<JsonResponse> {
        self.request(Method::GET, path, None).await
    }

    /// `GET path`, the body as text (`/metrics`).
    pub async fn get_text(&self, path: &str) -> anyhow::Result<String> {
        let mut request = Request::builder().uri(format!("{}{path}", self.base));
        if let Some(key) = &self.api_key {
            request = request.header(http::header::AUTHORIZATION, format!("Bearer {key}"));
        }
        let response = self.client.request(request.body(Full::default())?).await?;
        anyhow::ensure!(
            response.status().is_success(),
            "GET {path}: {}",
            response.status()
        );
        let bytes = response.into_body().collect().await?.to_bytes();
        Ok(String::from_utf8(bytes.to_vec())?)
    }

    /// `POST path` with a JSON body.
    pub async fn post(&self, path: &str, body: impl Into<Bytes>) -> anyhow::Result<JsonResponse> {
        self.request(Method::POST, path, Some(body.into())).await
    }
}
