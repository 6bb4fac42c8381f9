//! `cwfs-testserver`: a fast in-memory S3 server on 127.0.0.1 for cwfs' integration tests, demo
//! and benchmarks.
//!
//! This module owns the public API: [`ServerConfig`], [`TestServer`] (start/stop, direct object
//! and credential manipulation without HTTP) and [`Stats`]. The pieces live in:
//!
//! * [`server`] — TCP listener, HTTP/1.1 connections, per-request pipeline, virtual hosts;
//! * [`faults`] — the fault-injection hook consulted by the pipeline (no-op by default);
//! * [`auth`] — the credential table and SigV4/session-token/expiry checks;
//! * [`s3impl`] — the S3 operation handlers;
//! * [`store`] — buckets, objects, multipart uploads in memory;
//! * [`listing`], [`conditional`] — pure listing, range and conditional-request logic;
//! * [`datagen`] — deterministic sample data (demo dataset, benchmark objects, loading a dir).
//!
//! ```no_run
//! use cwfs_testserver::{ServerConfig, TestServer};
//! let server = TestServer::start(ServerConfig::default()).unwrap();
//! server.add_credentials("AKID", "SECRET", None, None);
//! server.create_bucket("bucket");
//! server.put_object("bucket", "dir/file", b"hello".to_vec());
//! println!("{}", server.endpoint()); // http://127.0.0.1:PORT, region server.region()
//! ```

pub mod auth;
pub mod conditional;
pub mod datagen;
pub mod faults;
pub mod listing;
pub mod s3impl;
pub mod server;
pub mod store;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::thread::JoinHandle;
use std::time::SystemTime;

use bytes::Bytes;
use s3s::service::S3ServiceBuilder;
use tokio::sync::oneshot;

use crate::auth::{CredentialEntry, CredentialTable, TableAccess, TableAuth};
use crate::faults::{FaultPlan, NoFaults};
use crate::s3impl::MemS3;
use crate::server::{Shared, VirtualHosts};
use crate::store::{Object, Store};

/// How to start a [`TestServer`].
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// TCP port on 127.0.0.1; 0 picks a free one.
    pub port: u16,
    /// The region requests must be signed for (lower case; s3s rejects upper-case regions).
    pub region: String,
    /// Base domain for virtual-hosted-style requests (`BUCKET.DOMAIN:PORT`); `None` = path style
    /// only.
    pub virtual_host_domain: Option<String>,
    /// Reject requests signed for another region with `400 AuthorizationHeaderMalformed`, as
    /// S3 does.
    pub enforce_region: bool,
    /// Minimum size of every part but the last in CompleteMultipartUpload (S3: 5 MiB).
    pub min_part_size: u64,
    /// Credentials installed at start: (access key, secret key).
    pub credentials: Vec<(String, String)>,
    /// Serve https with this certificate chain and key (PEM files) instead
    /// of plain http.
    pub tls: Option<TlsFiles>,
}

/// PEM files for an https server.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// The server's certificate, then any intermediates.
    pub cert_chain: std::path::PathBuf,
    /// Its private key (PKCS#8, PKCS#1 or SEC1).
    pub key: std::path::PathBuf,
}

fn tls_acceptor(files: &TlsFiles) -> std::io::Result<tokio_rustls::TlsAcceptor> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let bad = |what: &str, e: &dyn std::fmt::Display| {
        std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("{what}: {e}"))
    };
    let certs = CertificateDer::pem_file_iter(&files.cert_chain)
        .map_err(|e| bad("certificate chain", &e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad("certificate chain", &e))?;
    let key = PrivateKeyDer::from_pem_file(&files.key).map_err(|e| bad("private key", &e))?;
    let provider = Arc::new(tokio_rustls::rustls::crypto::aws_lc_rs::default_provider());
    let config = tokio_rustls::rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| bad("TLS versions", &e))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| bad("certificate and key", &e))?;
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            port: 0,
            region: "us-test-1".into(),
            virtual_host_domain: Some("localhost".into()),
            enforce_region: true,
            min_part_size: 5 << 20,
            credentials: Vec::new(),
            tls: None,
        }
    }
}

/// Request counters (a snapshot; see [`TestServer::stats`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    /// GetObject requests that reached the handler (including 304/412/416/404 answers).
    pub get_requests: u64,
    /// HeadObject and HeadBucket requests that reached the handler.
    pub head_requests: u64,
    /// ListObjects(V2) and ListBuckets requests.
    pub list_requests: u64,
    /// PutObject, CopyObject and UploadPart requests.
    pub put_requests: u64,
    /// GetObject body bytes handed to the connection.
    pub bytes_sent: u64,
    /// Requests rejected by authentication: every 403, plus ExpiredToken and wrong-region.
    pub auth_failures: u64,
}

/// The live counters behind [`Stats`].
#[derive(Debug, Default)]
pub struct StatsInner {
    pub(crate) get_requests: AtomicU64,
    pub(crate) head_requests: AtomicU64,
    pub(crate) list_requests: AtomicU64,
    pub(crate) put_requests: AtomicU64,
    pub(crate) bytes_sent: AtomicU64,
    pub(crate) auth_failures: AtomicU64,
}

impl StatsInner {
    fn snapshot(&self) -> Stats {
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        Stats {
            get_requests: l(&self.get_requests),
            head_requests: l(&self.head_requests),
            list_requests: l(&self.list_requests),
            put_requests: l(&self.put_requests),
            bytes_sent: l(&self.bytes_sent),
            auth_failures: l(&self.auth_failures),
        }
    }

    fn reset(&self) {
        for a in [
            &self.get_requests,
            &self.head_requests,
            &self.list_requests,
            &self.put_requests,
            &self.bytes_sent,
            &self.auth_failures,
        ] {
            a.store(0, Ordering::Relaxed);
        }
    }
}

/// A running server. Stops on [`TestServer::shutdown`] or drop.
pub struct TestServer {
    scheme: &'static str,
    port: u16,
    region: String,
    store: Arc<Store>,
    credentials: Arc<CredentialTable>,
    stats: Arc<StatsInner>,
    shared: Arc<Shared>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for TestServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestServer")
            .field("port", &self.port)
            .field("region", &self.region)
            .finish_non_exhaustive()
    }
}

impl TestServer {
    /// Starts on 127.0.0.1 in a background thread with its own 2-worker tokio runtime; returns
    /// once the listener accepts connections.
    pub fn start(config: ServerConfig) -> std::io::Result<TestServer> {
        let tls = config.tls.as_ref().map(tls_acceptor).transpose()?;
        let listener = std::net::TcpListener::bind(("127.0.0.1", config.port))?;
        listener.set_nonblocking(true)?;
        let port = listener.local_addr()?.port();

        let store = Arc::new(Store::default());
        let credentials = Arc::new(CredentialTable::default());
        for (ak, sk) in &config.credentials {
            credentials.insert(
                ak,
                CredentialEntry {
                    secret_key: sk.clone(),
                    session_token: None,
                    expires_at: None,
                },
            );
        }
        let stats = Arc::new(StatsInner::default());

        let mut builder = S3ServiceBuilder::new(MemS3 {
            store: Arc::clone(&store),
            stats: Arc::clone(&stats),
            region: config.region.clone(),
            min_part_size: config.min_part_size,
        });
        builder.set_auth(TableAuth {
            table: Arc::clone(&credentials),
            stats: Arc::clone(&stats),
        });
        builder.set_access(TableAccess {
            table: Arc::clone(&credentials),
            stats: Arc::clone(&stats),
            region: config.enforce_region.then(|| config.region.clone()),
        });
        if let Some(domain) = &config.virtual_host_domain {
            builder.set_host(VirtualHosts::new(domain));
        }
        let shared = Arc::new(Shared {
            s3: builder.build(),
            stats: Arc::clone(&stats),
            faults: RwLock::new(Arc::new(NoFaults)),
            seq: AtomicU64::new(0),
        });

        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("cwfs-testserver")
            .enable_all()
            .build()?;
        let (stop_tx, stop_rx) = oneshot::channel();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<std::io::Result<()>>();
        let serve_shared = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name(format!("cwfs-testserver-{port}"))
            .spawn(move || {
                runtime.block_on(async move {
                    let listener = match tokio::net::TcpListener::from_std(listener) {
                        Ok(l) => {
                            let _ = ready_tx.send(Ok(()));
                            l
                        }
                        Err(e) => {
                            let _ = ready_tx.send(Err(e));
                            return;
                        }
                    };
                    server::serve(listener, tls, serve_shared, stop_rx).await;
                });
                runtime.shutdown_timeout(std::time::Duration::from_millis(200));
            })?;
        match ready_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(e),
            Err(_) => return Err(std::io::Error::other("server thread died during start")),
        }

        Ok(TestServer {
            scheme: if config.tls.is_some() {
                "https"
            } else {
                "http"
            },
            port,
            region: config.region,
            store,
            credentials,
            stats,
            shared,
            stop: Some(stop_tx),
            thread: Some(thread),
        })
    }

    /// `http://127.0.0.1:PORT` (`https://` when serving TLS).
    pub fn endpoint(&self) -> String {
        format!("{}://127.0.0.1:{}", self.scheme, self.port)
    }

    /// The TCP port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The region requests are signed for.
    pub fn region(&self) -> &str {
        &self.region
    }

    /// Creates `bucket` (no-op when it exists).
    pub fn create_bucket(&self, bucket: &str) {
        let _ = self.store.create_bucket(bucket);
    }

    /// Stores an object directly (no HTTP), with a fresh LastModified and MD5 ETag.
    ///
    /// # Panics
    /// When `bucket` does not exist.
    pub fn put_object(&self, bucket: &str, key: &str, data: impl Into<Bytes>) {
        if let Err(e) = self.store.put(bucket, key, Object::new(data.into())) {
            panic!("put_object({bucket:?}, {key:?}): {e:?}");
        }
    }

    /// Removes an object directly (no-op when missing).
    pub fn delete_object(&self, bucket: &str, key: &str) {
        let _ = self.store.delete(bucket, key);
    }

    /// The object's ETag as S3 sends it, with quotes (`"hex"`), if it exists.
    pub fn object_etag(&self, bucket: &str, key: &str) -> Option<String> {
        self.store
            .get(bucket, key)
            .ok()
            .map(|o| format!("\"{}\"", o.etag))
    }

    /// The object's content, if it exists.
    pub fn object_data(&self, bucket: &str, key: &str) -> Option<Bytes> {
        self.store.get(bucket, key).ok().map(|o| o.data.clone())
    }

    /// Adds or replaces credentials. With `session_token`, requests must carry exactly that
    /// `x-amz-security-token`; with `expires_at` in the past, requests fail with ExpiredToken.
    pub fn add_credentials(
        &self,
        access_key: &str,
        secret_key: &str,
        session_token: Option<&str>,
        expires_at: Option<SystemTime>,
    ) {
        self.credentials.insert(
            access_key,
            CredentialEntry {
                secret_key: secret_key.to_owned(),
                session_token: session_token.map(str::to_owned),
                expires_at,
            },
        );
    }

    /// Removes credentials; later requests with them fail with InvalidAccessKeyId.
    pub fn revoke_credentials(&self, access_key: &str) {
        self.credentials.remove(access_key);
    }

    /// A snapshot of the request counters.
    pub fn stats(&self) -> Stats {
        self.stats.snapshot()
    }

    /// Zeroes the request counters.
    pub fn reset_stats(&self) {
        self.stats.reset();
    }

    /// Installs a fault plan (see [`faults`]); `NoFaults` restores normal service.
    pub fn set_fault_plan(&self, plan: impl FaultPlan) {
        *self.shared.faults.write().unwrap() = Arc::new(plan);
    }

    /// Direct access to the store (bulk loading, inspection).
    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    /// Stops accepting, ends the runtime thread (open connections are dropped).
    pub fn shutdown(mut self) {
        self.stop_now();
    }

    fn stop_now(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.stop_now();
    }
}
