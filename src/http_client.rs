//! The HTTP client for everything payvisor calls on its own (PagerDuty,
//! merchant webhooks, banks): one hyper client on rustls with ring (the TLS
//! stack the AWS SDK already builds), JSON POSTs and GETs with a timeout and
//! a bounded response. Callers decide what a status means.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::{Method, Request, StatusCode, Uri};
use hyper_rustls::{ConfigBuilderExt, HttpsConnector};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

/// A URL checked for what a POST needs: `http` or `https`, and a host.
pub fn parse_url(url: &str) -> Result<Uri, String> {
    let uri: Uri = url
        .parse()
        .map_err(|e: hyper::http::uri::InvalidUri| e.to_string())?;
    if !matches!(uri.scheme_str(), Some("https" | "http")) {
        return Err("scheme must be https or http".into());
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err("no host".into());
    }
    if uri
        .authority()
        .is_some_and(|authority| authority.as_str().contains('@'))
    {
        // They would not be sent (no Basic auth is added from a URL), and
        // a URL with a password ends up in logs: refused, not dropped.
        return Err(
            "credentials in the URL (user:password@) are not sent: remove them; an endpoint's secret goes in its own field"
                .into(),
        );
    }
    Ok(uri)
}

/// A URL payvisor will call (a bank, a webhook endpoint, PagerDuty):
/// `https`, or `http` to a loopback address or where the operator allowed
/// it (`allow_insecure`): a bank's or merchant's secrets and payment data
/// must not cross a network in the clear by a slip of the scheme.
pub fn outbound_url(url: &str, allow_insecure: bool) -> Result<Uri, String> {
    let uri = parse_url(url)?;
    if uri.scheme_str() == Some("http") && !allow_insecure && !is_loopback_host(&uri) {
        return Err(
            "http:// is accepted for loopback addresses only: use https://, or set allow_insecure for this endpoint"
                .into(),
        );
    }
    Ok(uri)
}

/// Whether `uri`'s host is this machine.
fn is_loopback_host(uri: &Uri) -> bool {
    let host = uri.host().unwrap_or_default();
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Why an exchange did not produce a response.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExchangeError {
    /// Network error, refused connection, or no answer in time: the same
    /// request may be sent again.
    #[error("{0}")]
    Unreachable(String),
    /// The request could not even be built (a bad header value).
    #[error("cannot build request: {0}")]
    Request(String),
}

/// A keep-alive client for JSON POSTs and GETs; cheap to clone.
#[derive(Clone)]
pub struct HttpPoster {
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
}

impl HttpPoster {
    /// `with_roots`: load the system's root certificates (needed for any
    /// `https` target; skipped so that a plain-HTTP receiver works on a host
    /// with no CA bundle).
    pub fn new(with_roots: bool) -> Result<HttpPoster, std::io::Error> {
        // ring, explicitly: without a named provider rustls would look for a
        // process-wide default.
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("ring supports rustls' default protocol versions");
        let tls = if with_roots {
            tls.with_native_roots()?
        } else {
            tls.with_root_certificates(rustls::RootCertStore::empty())
        }
        .with_no_client_auth();
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .build();
        Ok(HttpPoster {
            client: Client::builder(TokioExecutor::new()).build(connector),
        })
    }

    /// POSTs a JSON `body` with extra `headers`; returns the status and at
    /// most `response_bytes_max` of the response body.
    pub async fn post_json(
        &self,
        url: &Uri,
        headers: &[(&str, String)],
        body: Vec<u8>,
        timeout: Duration,
        response_bytes_max: usize,
    ) -> Result<(StatusCode, Bytes), ExchangeError> {
        let mut request = Request::builder()
            .method(Method::POST)
            .uri(url.clone())
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .header(hyper::header::USER_AGENT, "payvisor");
        for (name, value) in headers {
            request = request.header(*name, value);
        }
        let request = request
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| ExchangeError::Request(e.to_string()))?;
        self.exchange(request, timeout, response_bytes_max).await
    }

    /// GETs `url` (expecting JSON) with extra `headers`; returns the status
    /// and at most `response_bytes_max` of the response body.
    pub async fn get_json(
        &self,
        url: &Uri,
        headers: &[(&str, String)],
        timeout: Duration,
        response_bytes_max: usize,
    ) -> Result<(StatusCode, Bytes), ExchangeError> {
        let mut request = Request::builder()
            .method(Method::GET)
            .uri(url.clone())
            .header(hyper::header::ACCEPT, "application/json")
            .header(hyper::header::USER_AGENT, "payvisor");
        for (name, value) in headers {
            request = request.header(*name, value);
        }
        let request = request
            .body(Full::new(Bytes::new()))
            .map_err(|e| ExchangeError::Request(e.to_string()))?;
        self.exchange(request, timeout, response_bytes_max).await
    }

    /// Sends `request`; the whole exchange, connect to last body byte, is
    /// bounded by `timeout`.
    async fn exchange(
        &self,
        request: Request<Full<Bytes>>,
        timeout: Duration,
        response_bytes_max: usize,
    ) -> Result<(StatusCode, Bytes), ExchangeError> {
        let exchange = async {
            let response = self
                .client
                .request(request)
                .await
                .map_err(|e| ExchangeError::Unreachable(error_chain(&e)))?;
            let status = response.status();
            // Read the body even on success, so the connection can be reused.
            let body = Limited::new(response.into_body(), response_bytes_max)
                .collect()
                .await
                .map(|collected| collected.to_bytes())
                .unwrap_or_default();
            Ok((status, body))
        };
        tokio::time::timeout(timeout, exchange)
            .await
            .map_err(|_| ExchangeError::Unreachable(format!("no answer within {timeout:?}")))?
    }
}

/// An error and its causes on one line: hyper's own message ("client error
/// (Connect)") hides the cause that matters ("Connection refused").
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
