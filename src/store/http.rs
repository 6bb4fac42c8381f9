//! The HTTP client under the S3 SDK: hyper's pooled HTTP/1.1 client over
//! TCP, with rustls for `https://`, and a hard bound on open sockets.
//!
//! Why not the SDK's own client: it cannot bound sockets. Its pool races a
//! new connection against the next idle one, and a connection that loses
//! the race is kept, so sockets could exceed `--max-connections` by half
//! under load. Here every socket holds a permit of one semaphore from
//! before its TCP connect until it is closed, so at most `max_sockets` are
//! ever open; a connect that finds none free waits (bounded by the connect
//! timeout) while requests reuse the sockets that exist.
//!
//! Failures become [`ConnectorError`]s the store's retry policy classifies:
//! a timeout (no socket, no connection or no response headers in time) or
//! an I/O error.

use std::fmt;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use aws_smithy_runtime_api::client::http::{
    HttpClient, HttpConnector, HttpConnectorFuture, HttpConnectorSettings, SharedHttpClient,
    SharedHttpConnector,
};
use aws_smithy_runtime_api::client::orchestrator::HttpRequest;
use aws_smithy_runtime_api::client::result::ConnectorError;
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_runtime_api::http::Response as HttpResponse;
use aws_smithy_types::body::SdkBody;
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector as TcpConnector};
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// How idle kept-alive sockets are kept before they are closed.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(90);

/// Settings of [`client`].
#[derive(Debug, Clone)]
pub struct HttpSettings {
    /// Most sockets open at once.
    pub max_sockets: usize,
    /// Bound on waiting for a free socket plus the TCP connect.
    pub connect_timeout: Duration,
    /// Bound on the wait for response headers, from the request's start
    /// (it covers the TLS handshake too, and would cover sending a request
    /// body: an upload path must allow for its body's transfer time).
    pub header_timeout: Duration,
    /// PEM file of extra CA certificates to trust besides the system's.
    pub ca_bundle: Option<std::path::PathBuf>,
}

/// Build the SDK's HTTP client. Fails when the CA bundle cannot be read.
pub fn client(settings: &HttpSettings) -> Result<SharedHttpClient, String> {
    let tls = tls_config(settings.ca_bundle.as_deref())?;
    let mut tcp = TcpConnector::new();
    tcp.enforce_http(false);
    tcp.set_nodelay(true);
    let limited = LimitedConnector {
        tcp,
        sockets: Arc::new(Semaphore::new(settings.max_sockets.max(1))),
        connect_timeout: settings.connect_timeout,
    };
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .wrap_connector(limited);
    let hyper = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
        .pool_idle_timeout(POOL_IDLE_TIMEOUT)
        .pool_timer(TokioTimer::new())
        .build(https);
    let connector = Connector {
        hyper,
        header_timeout: settings.header_timeout,
    };
    let client = Client {
        connector: SharedHttpConnector::new(connector),
    };
    Ok(SharedHttpClient::new(client))
}

/// rustls with the system's roots (from the usual places, or
/// `SSL_CERT_FILE` / `SSL_CERT_DIR`), plus the certificates in `ca_bundle`.
fn tls_config(ca_bundle: Option<&Path>) -> Result<rustls::ClientConfig, String> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::CertificateDer;

    let mut roots = rustls::RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    let (added, _ignored) = roots.add_parsable_certificates(native.certs);
    if let Some(path) = ca_bundle {
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
            .map_err(|e| format!("cannot read the CA bundle {}: {e}", path.display()))?
            .collect::<Result<_, _>>()
            .map_err(|e| format!("the CA bundle {} is not valid PEM: {e}", path.display()))?;
        if certs.is_empty() {
            return Err(format!(
                "the CA bundle {} holds no certificate (expected PEM \"BEGIN CERTIFICATE\" blocks)",
                path.display()
            ));
        }
        let (ok, bad) = roots.add_parsable_certificates(certs);
        if ok == 0 {
            return Err(format!(
                "no certificate in the CA bundle {} could be used ({bad} rejected)",
                path.display()
            ));
        }
    } else if added == 0 {
        tracing::warn!(
            "no system CA certificates found (install ca-certificates, or pass --ca-bundle); https endpoints will fail"
        );
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("cannot set up TLS: {e}"))
        .map(|b| b.with_root_certificates(roots).with_no_client_auth())
}

/// The SDK's view of the client: one connector whatever the settings (the
/// store passes its timeouts in [`HttpSettings`]).
#[derive(Debug, Clone)]
struct Client {
    connector: SharedHttpConnector,
}

impl HttpClient for Client {
    fn http_connector(
        &self,
        _settings: &HttpConnectorSettings,
        _components: &RuntimeComponents,
    ) -> SharedHttpConnector {
        self.connector.clone()
    }
}

type Hyper =
    hyper_util::client::legacy::Client<hyper_rustls::HttpsConnector<LimitedConnector>, SdkBody>;

#[derive(Clone)]
struct Connector {
    hyper: Hyper,
    header_timeout: Duration,
}

impl fmt::Debug for Connector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connector")
            .field("header_timeout", &self.header_timeout)
            .finish_non_exhaustive()
    }
}

impl HttpConnector for Connector {
    fn call(&self, request: HttpRequest) -> HttpConnectorFuture {
        let request = match request.try_into_http1x() {
            Ok(r) => r,
            Err(e) => return HttpConnectorFuture::ready(Err(ConnectorError::user(e.into()))),
        };
        let hyper = self.hyper.clone();
        let timeout = self.header_timeout;
        HttpConnectorFuture::new(async move {
            let response = match tokio::time::timeout(timeout, hyper.request(request)).await {
                Err(_) => {
                    return Err(ConnectorError::timeout(
                        format!("no response headers within {timeout:?}").into(),
                    ))
                }
                Ok(Err(e)) => return Err(connector_error(e)),
                Ok(Ok(r)) => r,
            };
            HttpResponse::try_from(response.map(SdkBody::from_body_1_x))
                .map_err(|e| ConnectorError::other(e.into(), None))
        })
    }
}

/// A connect that timed out (waiting for a socket, or in TCP).
#[derive(Debug)]
struct ConnectTimedOut(String);

impl fmt::Display for ConnectTimedOut {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConnectTimedOut {}

/// Timeouts, TLS failures (not worth retrying: a certificate will not
/// change), and I/O errors (refused, reset, closed early: retried).
fn connector_error(e: hyper_util::client::legacy::Error) -> ConnectorError {
    if find_in_chain(&e, &|s| s.is::<ConnectTimedOut>().then(String::new)).is_some() {
        ConnectorError::timeout(Box::new(e))
    } else if tls_failure(&e).is_some() {
        ConnectorError::other(Box::new(e), None)
    } else {
        ConnectorError::io(Box::new(e))
    }
}

/// What rustls said, when a failed handshake is in the chain of `err`
/// (e.g. "invalid peer certificate: UnknownIssuer").
pub(crate) fn tls_failure(err: &(dyn std::error::Error + 'static)) -> Option<String> {
    find_in_chain(err, &|s| {
        s.downcast_ref::<rustls::Error>().map(ToString::to_string)
    })
}

type Probe<'a> = &'a dyn Fn(&(dyn std::error::Error + 'static)) -> Option<String>;

/// The first answer of `probe` for `err` or an error in its chain. An
/// `io::Error` hides the error it wraps from `source()`, so that one is
/// looked into.
fn find_in_chain(err: &(dyn std::error::Error + 'static), probe: Probe<'_>) -> Option<String> {
    let mut source = Some(err);
    while let Some(s) = source {
        if let Some(found) = probe(s) {
            return Some(found);
        }
        if let Some(inner) = s
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            let inner: &(dyn std::error::Error + 'static) = inner;
            if let Some(found) = find_in_chain(inner, probe) {
                return Some(found);
            }
        }
        source = s.source();
    }
    None
}

/// TCP connects that each take a socket permit first.
#[derive(Clone)]
struct LimitedConnector {
    tcp: TcpConnector,
    sockets: Arc<Semaphore>,
    connect_timeout: Duration,
}

impl tower_service::Service<http::Uri> for LimitedConnector {
    type Response = Limited;
    type Error = BoxError;
    type Future = Pin<Box<dyn std::future::Future<Output = Result<Limited, BoxError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        // The TCP connector is always ready; the limit applies in `call`.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        let mut tcp = self.tcp.clone();
        let sockets = self.sockets.clone();
        let timeout = self.connect_timeout;
        Box::pin(async move {
            let deadline = tokio::time::Instant::now() + timeout;
            let permit = tokio::time::timeout_at(deadline, sockets.acquire_owned())
                .await
                .map_err(|_| {
                    ConnectTimedOut(format!(
                        "no free connection within {timeout:?} (all --max-connections in use)"
                    ))
                })?
                .map_err(|_| ConnectTimedOut("the connection limit was closed".into()))?;
            let io = tokio::time::timeout_at(deadline, tcp.call(uri.clone()))
                .await
                .map_err(|_| {
                    ConnectTimedOut(format!(
                        "connecting to {} took over {timeout:?}",
                        uri.authority().map_or("?", |a| a.as_str())
                    ))
                })??;
            Ok(Limited {
                io,
                _permit: permit,
            })
        })
    }
}

/// A TCP stream holding its socket permit until it is dropped.
struct Limited {
    io: hyper_util::rt::TokioIo<tokio::net::TcpStream>,
    _permit: OwnedSemaphorePermit,
}

impl Connection for Limited {
    fn connected(&self) -> Connected {
        self.io.connected()
    }
}

impl hyper::rt::Read for Limited {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl hyper::rt::Write for Limited {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }
}
