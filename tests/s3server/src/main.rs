//! The `cwfs-testserver` binary: runs the in-memory S3 server for `scripts/demo`,
//! `scripts/bench` and manual testing.
//!
//! Prints exactly one line `READY http://127.0.0.1:PORT` on stdout once it accepts connections,
//! then serves until SIGINT/SIGTERM and exits 0. Bad flags, unreadable `--load` dirs or a busy
//! port print a message on stderr and exit 2.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use cwfs_testserver::datagen::{self, ObjectsSpec};
use cwfs_testserver::store::Object;
use cwfs_testserver::{ServerConfig, TestServer};

/// In-memory S3 server on 127.0.0.1 for cwfs tests, demos and benchmarks.
#[derive(Debug, Parser)]
#[command(name = "cwfs-testserver", version)]
struct Args {
    /// TCP port on 127.0.0.1 (0 = pick a free one).
    #[arg(long, default_value_t = 0)]
    port: u16,
    /// Region that requests must be signed for (lower case).
    #[arg(long, default_value = "us-test-1")]
    region: String,
    /// Serve https with this PEM certificate chain (needs --tls-key).
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<std::path::PathBuf>,
    /// The PEM private key of --tls-cert.
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<std::path::PathBuf>,
    /// Access key accepted by the server.
    #[arg(long, default_value = "cwfs-test")]
    access_key: String,
    /// Secret key of --access-key.
    #[arg(long, default_value = "cwfs-test-secret")]
    secret_key: String,
    /// Create an empty bucket (repeatable).
    #[arg(long = "bucket", value_name = "NAME")]
    buckets: Vec<String>,
    /// Create BUCKET and load every file under DIR, keyed by its relative path (repeatable).
    #[arg(long = "load", value_name = "BUCKET=DIR")]
    loads: Vec<String>,
    /// Create BUCKET with a small generated sample dataset (repeatable).
    #[arg(long = "demo", value_name = "BUCKET")]
    demos: Vec<String>,
    /// Generate COUNT objects of SIZE bytes (K/M/G suffixes) named PREFIX/000000...
    /// (repeatable), e.g. bench:big:1:1G or bench:small:2000:64K.
    #[arg(long = "objects", value_name = "BUCKET:PREFIX:COUNT:SIZE")]
    objects: Vec<String>,
    /// Base domain for virtual-hosted-style requests (BUCKET.DOMAIN:PORT).
    #[arg(long, default_value = "localhost")]
    virtual_host_domain: String,
}

fn fail(msg: impl std::fmt::Display) -> ExitCode {
    eprintln!("cwfs-testserver: {msg}");
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let args = match Args::try_parse() {
        Ok(a) => a,
        Err(e) => {
            if matches!(
                e.kind(),
                clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion
            ) {
                let _ = e.print();
                return ExitCode::SUCCESS;
            }
            let _ = e.print();
            return ExitCode::from(2);
        }
    };

    // Validate everything before binding, so a bad flag never leaves a half-started server.
    let mut loads: Vec<(String, PathBuf)> = Vec::new();
    for l in &args.loads {
        let Some((bucket, dir)) = l.split_once('=') else {
            return fail(format!("--load expects BUCKET=DIR, got {l:?}"));
        };
        if bucket.is_empty() || dir.is_empty() {
            return fail(format!("--load expects BUCKET=DIR, got {l:?}"));
        }
        let dir = PathBuf::from(dir);
        if !dir.is_dir() {
            return fail(format!("--load {l}: {} is not a directory", dir.display()));
        }
        loads.push((bucket.to_owned(), dir));
    }
    let mut specs = Vec::new();
    for o in &args.objects {
        match ObjectsSpec::parse(o) {
            Ok(s) => specs.push(s),
            Err(e) => return fail(e),
        }
    }
    let all_buckets = args
        .buckets
        .iter()
        .chain(loads.iter().map(|(b, _)| b))
        .chain(args.demos.iter())
        .chain(specs.iter().map(|s| &s.bucket));
    for b in all_buckets {
        if !s3s::path::check_bucket_name(b) {
            return fail(format!(
                "invalid bucket name {b:?} (3-63 characters: lower-case letters, digits, '.', '-')"
            ));
        }
    }

    let config = ServerConfig {
        port: args.port,
        region: args.region.clone(),
        virtual_host_domain: Some(args.virtual_host_domain.clone()),
        credentials: vec![(args.access_key.clone(), args.secret_key.clone())],
        tls: args
            .tls_cert
            .clone()
            .zip(args.tls_key.clone())
            .map(|(cert_chain, key)| cwfs_testserver::TlsFiles { cert_chain, key }),
        ..ServerConfig::default()
    };
    let server = match TestServer::start(config) {
        Ok(s) => s,
        Err(e) if e.kind() == std::io::ErrorKind::InvalidInput => {
            return fail(format!("cannot set up TLS from --tls-cert/--tls-key: {e}"))
        }
        Err(e) => return fail(format!("cannot listen on 127.0.0.1:{}: {e}", args.port)),
    };

    for b in &args.buckets {
        server.create_bucket(b);
    }
    for (bucket, dir) in &loads {
        server.create_bucket(bucket);
        match datagen::load_dir(dir) {
            Ok(files) => {
                for (key, data) in files {
                    server.put_object(bucket, &key, data);
                }
            }
            Err(e) => return fail(format!("--load {bucket}={}: {e}", dir.display())),
        }
    }
    for bucket in &args.demos {
        server.create_bucket(bucket);
        for (key, data) in datagen::demo_dataset() {
            server.put_object(bucket, &key, data);
        }
    }
    for spec in &specs {
        server.create_bucket(&spec.bucket);
        let Ok(size) = usize::try_from(spec.size) else {
            return fail(format!("object size {} too large", spec.size));
        };
        for i in 0..spec.count {
            let key = spec.key(i);
            let data = datagen::object_content(&key, size);
            if let Err(e) = server.store().put(&spec.bucket, &key, Object::new(data)) {
                return fail(format!("--objects: {e:?}"));
            }
        }
    }

    // Install the signal handlers before announcing READY, so a SIGTERM sent right after READY
    // is handled (exit 0) rather than killing the process.
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return fail(format!("cannot create signal runtime: {e}")),
    };
    let signals = {
        use tokio::signal::unix::{signal, SignalKind};
        let _guard = rt.enter();
        signal(SignalKind::terminate()).and_then(|t| Ok((t, signal(SignalKind::interrupt())?)))
    };
    let (mut term, mut int) = match signals {
        Ok(s) => s,
        Err(e) => return fail(format!("cannot install signal handlers: {e}")),
    };

    {
        let mut out = std::io::stdout().lock();
        // If nobody reads stdout any more, keep serving anyway.
        let _ = writeln!(out, "READY {}", server.endpoint()).and_then(|()| out.flush());
    }

    rt.block_on(async {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    });
    server.shutdown();
    ExitCode::SUCCESS
}
