//! The HTTP layer: the TCP listener, hyper HTTP/1.1 connections, and the per-request pipeline
//! between them and the s3s service.
//!
//! Per request ([`handle`]): ask the [`FaultPlan`] (stall / synthetic error / reset later), run
//! the s3s service (host parsing, SigV4, access checks, the handlers of [`crate::s3impl`]), then
//! post-process the response: 206 for a ranged HEAD, count 403s as auth failures, strip the body
//! of 304s, escape
//! carriage returns in XML so keys containing them survive XML parsing, and apply a pending
//! reset-after-N-bytes fault to the body.
//!
//! Also owns [`VirtualHosts`], the `Host` header parser: `BUCKET.DOMAIN[:PORT]` is
//! virtual-hosted style, anything else (an IP address, `DOMAIN` itself, other names) path style.

use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use bytes::Bytes;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_LENGTH, CONTENT_TYPE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use s3s::host::{S3Host, VirtualHost};
use s3s::service::S3Service;
use s3s::{Body, S3Result};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

use crate::faults::{FaultAction, FaultPlan, RequestInfo, ResetAfter};
use crate::StatsInner;

/// `Host` header parser for virtual-hosted-style requests under one base domain.
#[derive(Debug, Clone)]
pub struct VirtualHosts {
    domain: String,
}

impl VirtualHosts {
    /// Buckets are addressed as `BUCKET.domain` (any port).
    pub fn new(domain: &str) -> VirtualHosts {
        VirtualHosts {
            domain: domain.to_ascii_lowercase(),
        }
    }

    /// The bucket a `Host` header names, if it is virtual-hosted style.
    pub fn bucket_of(&self, host: &str) -> Option<String> {
        let name = strip_port(host).to_ascii_lowercase();
        let bucket = name.strip_suffix(&self.domain)?.strip_suffix('.')?;
        (!bucket.is_empty()).then(|| bucket.to_owned())
    }
}

fn strip_port(host: &str) -> &str {
    match host.rsplit_once(':') {
        Some((h, port)) if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => host,
    }
}

impl S3Host for VirtualHosts {
    fn parse_host_header<'a>(&'a self, host: &'a str) -> S3Result<VirtualHost<'a>> {
        match self.bucket_of(host) {
            Some(bucket) => Ok(VirtualHost::new(self.domain.as_str()).with_bucket(bucket)),
            None => Ok(VirtualHost::new(strip_port(host))),
        }
    }
}

/// State shared by all connections.
pub(crate) struct Shared {
    pub(crate) s3: S3Service,
    pub(crate) stats: Arc<StatsInner>,
    pub(crate) faults: RwLock<Arc<dyn FaultPlan>>,
    pub(crate) seq: AtomicU64,
}

/// Accepts connections until `shutdown` fires.
pub(crate) async fn serve(
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    shared: Arc<Shared>,
    mut shutdown: oneshot::Receiver<()>,
) {
    let mut http = http1::Builder::new();
    http.keep_alive(true).writev(true).max_buf_size(4 << 20);
    let http = Arc::new(http);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else {
                    // e.g. EMFILE: back off instead of spinning.
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                    continue;
                };
                let _ = stream.set_nodelay(true);
                let shared = Arc::clone(&shared);
                let http = Arc::clone(&http);
                let tls = tls.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req| handle(Arc::clone(&shared), req));
                    match tls {
                        None => {
                            let _ = http.serve_connection(TokioIo::new(stream), svc).await;
                        }
                        Some(tls) => {
                            // A failed handshake (e.g. the client does not
                            // trust the certificate) just ends the connection.
                            if let Ok(stream) = tls.accept(stream).await {
                                let _ = http.serve_connection(TokioIo::new(stream), svc).await;
                            }
                        }
                    }
                });
            }
        }
    }
}

fn error_response(status: StatusCode, code: &str, message: &str) -> Response<Body> {
    let xml = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{code}</Code><Message>{message}</Message><RequestId>cwfs-testserver</RequestId></Error>"
    );
    let mut resp = Response::new(Body::from(xml));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/xml"));
    resp
}

/// Escapes `\r` in an XML document as `&#xD;` (XML parsers may normalise a raw CR away).
fn escape_cr(xml: &[u8]) -> Option<Bytes> {
    if !xml.contains(&b'\r') {
        return None;
    }
    let mut out = Vec::with_capacity(xml.len() + 16);
    for &b in xml {
        if b == b'\r' {
            out.extend_from_slice(b"&#xD;");
        } else {
            out.push(b);
        }
    }
    Some(Bytes::from(out))
}

/// One request through faults, s3s and post-processing.
async fn handle(shared: Arc<Shared>, req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    let seq = shared.seq.fetch_add(1, Ordering::Relaxed);
    let plan = Arc::clone(&shared.faults.read().unwrap());
    let info = RequestInfo {
        seq,
        method: req.method().clone(),
        path: req.uri().path().to_owned(),
        query: req.uri().query().map(str::to_owned),
        headers: req.headers().clone(),
    };
    let mut reset_after = None;
    match plan.decide(&info) {
        FaultAction::None => {}
        FaultAction::Stall(d) => tokio::time::sleep(d).await,
        FaultAction::SlowDown => {
            return Ok(error_response(
                StatusCode::SERVICE_UNAVAILABLE,
                "SlowDown",
                "Please reduce your request rate.",
            ))
        }
        FaultAction::Status { status, code } => {
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            return Ok(error_response(status, &code, "Injected fault."));
        }
        FaultAction::ResetAfter(n) => reset_after = Some(n),
        FaultAction::Raw {
            status,
            headers,
            body,
        } => {
            let mut resp = Response::new(Body::from(body));
            *resp.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
            for (k, v) in headers {
                if let (Ok(k), Ok(v)) = (
                    hyper::header::HeaderName::from_bytes(k.as_bytes()),
                    hyper::header::HeaderValue::from_str(&v),
                ) {
                    resp.headers_mut().insert(k, v);
                }
            }
            return Ok(resp);
        }
    }

    let req = req.map(Body::from);
    let mut resp = match shared.s3.call(req).await {
        Ok(r) => r,
        Err(_) => {
            return Ok(error_response(
                StatusCode::INTERNAL_SERVER_ERROR,
                "InternalError",
                "We encountered an internal error. Please try again.",
            ))
        }
    };

    // s3s ignores the handler's status for HeadObject; S3 answers a ranged HEAD with 206.
    if info.method == hyper::Method::HEAD
        && resp.status() == StatusCode::OK
        && resp.headers().contains_key(hyper::header::CONTENT_RANGE)
    {
        *resp.status_mut() = StatusCode::PARTIAL_CONTENT;
    }
    if resp.status() == StatusCode::FORBIDDEN {
        shared.stats.auth_failures.fetch_add(1, Ordering::Relaxed);
    }
    if resp.status() == StatusCode::NOT_MODIFIED {
        *resp.body_mut() = Body::empty();
        resp.headers_mut().remove(CONTENT_TYPE);
        resp.headers_mut().remove(CONTENT_LENGTH);
    } else if resp
        .headers()
        .get(CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/xml"))
    {
        if let Some(escaped) = resp.body().bytes().as_deref().and_then(escape_cr) {
            resp.headers_mut().remove(CONTENT_LENGTH);
            *resp.body_mut() = Body::from(escaped);
        }
    }
    if let Some(n) = reset_after {
        let body = std::mem::take(resp.body_mut());
        let stream: s3s::stream::DynByteStream = Box::pin(ResetAfter::new(body, n));
        *resp.body_mut() = Body::from(stream);
    }
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn virtual_hosts() {
        let v = VirtualHosts::new("localhost");
        assert_eq!(
            v.bucket_of("bucket.localhost:9000").as_deref(),
            Some("bucket")
        );
        assert_eq!(
            v.bucket_of("my.dotted.bucket.localhost").as_deref(),
            Some("my.dotted.bucket")
        );
        assert_eq!(v.bucket_of("Bucket.LOCALHOST:1").as_deref(), Some("bucket"));
        assert_eq!(v.bucket_of("localhost:9000"), None);
        assert_eq!(v.bucket_of("localhost"), None);
        assert_eq!(v.bucket_of(".localhost"), None);
        assert_eq!(v.bucket_of("xlocalhost:80"), None);
        assert_eq!(v.bucket_of("127.0.0.1:9000"), None);
        let vh = v.parse_host_header("b1.localhost:9000").unwrap();
        assert_eq!(vh.bucket(), Some("b1"));
        let vh = v.parse_host_header("localhost:9000").unwrap();
        assert_eq!(vh.bucket(), None);
        let vh = v.parse_host_header("example.com").unwrap();
        assert_eq!(vh.bucket(), None);
    }

    #[test]
    fn cr_escaping() {
        assert_eq!(escape_cr(b"<Key>a</Key>"), None);
        assert_eq!(
            escape_cr(b"<Key>a\rb</Key>").unwrap(),
            Bytes::from_static(b"<Key>a&#xD;b</Key>")
        );
    }
}
