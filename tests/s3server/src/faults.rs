//! Fault injection: the one place where a test decides, per request, to make the server misbehave.
//!
//! The HTTP layer ([`crate::server`]) asks the installed [`FaultPlan`] about every request before
//! handing it to the S3 handlers, and applies the answer:
//!
//! * [`FaultAction::None`] — serve normally (the default plan, [`NoFaults`], always says this);
//! * [`FaultAction::Stall`] — wait this long, then serve normally;
//! * [`FaultAction::SlowDown`] — answer `503 SlowDown` without running the handler;
//! * [`FaultAction::Status`] — answer any other S3 error status/code without running the handler;
//! * [`FaultAction::ResetAfter`] — serve, but abort the connection after this many response body
//!   bytes (the client sees a truncated body / connection reset).
//!
//! Install a plan with [`crate::TestServer::set_fault_plan`]. Plans see the request line and
//! headers ([`RequestInfo`]) plus a per-server sequence number, so they can fail "the 3rd GET of
//! key K" or "every other request".

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures::Stream;
use hyper::{HeaderMap, Method};
use s3s::stream::{ByteStream, RemainingLength};
use s3s::StdError;

/// What a plan sees of a request.
#[derive(Debug, Clone)]
pub struct RequestInfo {
    /// 0-based sequence number of the request on this server.
    pub seq: u64,
    /// HTTP method.
    pub method: Method,
    /// Raw (still percent-encoded) request path, e.g. `/bucket/some%20key`.
    pub path: String,
    /// Raw query string, if any.
    pub query: Option<String>,
    /// Request headers.
    pub headers: HeaderMap,
}

impl RequestInfo {
    /// Whether this looks like a GET of an object (path-style `/bucket/key`, or any key path
    /// under a virtual host), as opposed to a listing.
    pub fn is_object_get(&self) -> bool {
        self.method == Method::GET
            && self.path.trim_start_matches('/').contains('/')
            && self.query.is_none()
    }
}

/// What to do with one request.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum FaultAction {
    /// Serve normally.
    #[default]
    None,
    /// Sleep this long before serving.
    Stall(Duration),
    /// `503 SlowDown` ("Please reduce your request rate.").
    SlowDown,
    /// An arbitrary S3 error response.
    Status {
        /// HTTP status.
        status: u16,
        /// S3 error code, e.g. `InternalError`.
        code: String,
    },
    /// Abort the connection after sending this many bytes of the response body.
    ResetAfter(u64),
    /// Answer exactly this (status, headers, body) without running the
    /// handler: malformed XML, lying Content-Length, repeated tokens, ...
    Raw {
        /// HTTP status.
        status: u16,
        /// Response headers.
        headers: Vec<(String, String)>,
        /// Response body.
        body: Bytes,
    },
}

/// Decides, per request, whether to inject a fault.
pub trait FaultPlan: Send + Sync + 'static {
    /// The action for `req`.
    fn decide(&self, req: &RequestInfo) -> FaultAction;
}

/// The default plan: never inject anything.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoFaults;

impl FaultPlan for NoFaults {
    fn decide(&self, _req: &RequestInfo) -> FaultAction {
        FaultAction::None
    }
}

impl<F> FaultPlan for F
where
    F: Fn(&RequestInfo) -> FaultAction + Send + Sync + 'static,
{
    fn decide(&self, req: &RequestInfo) -> FaultAction {
        self(req)
    }
}

/// The error a [`ResetAfter`] body yields; hyper then aborts the connection.
#[derive(Debug)]
pub struct InjectedReset;

impl std::fmt::Display for InjectedReset {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("fault injection: connection reset")
    }
}

impl std::error::Error for InjectedReset {}

/// A body that passes `limit` bytes of `inner` through, then fails.
///
/// Before failing it pauses briefly: hyper flushes what it has buffered while the body is
/// pending, so the client really receives the headers and the first `limit` bytes before the
/// connection dies.
pub struct ResetAfter {
    inner: s3s::Body,
    remaining: u64,
    failed: bool,
    pause: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl ResetAfter {
    /// Wraps `inner`.
    pub fn new(inner: s3s::Body, limit: u64) -> ResetAfter {
        ResetAfter {
            inner,
            remaining: limit,
            failed: false,
            pause: None,
        }
    }
}

impl Stream for ResetAfter {
    type Item = Result<Bytes, StdError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.failed {
            return Poll::Ready(None);
        }
        if self.remaining == 0 {
            let pause = self
                .pause
                .get_or_insert_with(|| Box::pin(tokio::time::sleep(Duration::from_millis(20))));
            if pause.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            self.failed = true;
            return Poll::Ready(Some(Err(Box::new(InjectedReset))));
        }
        match Pin::new(&mut self.inner).poll_next(cx) {
            Poll::Ready(Some(Ok(mut chunk))) => {
                if chunk.len() as u64 > self.remaining {
                    chunk.truncate(self.remaining as usize);
                }
                self.remaining -= chunk.len() as u64;
                Poll::Ready(Some(Ok(chunk)))
            }
            other => other,
        }
    }
}

impl ByteStream for ResetAfter {
    fn remaining_length(&self) -> RemainingLength {
        RemainingLength::unknown()
    }
}
