//! `cwfs-bench`: the raw S3 ceiling for `scripts/bench`, measured with the
//! project's own store client ([`S3Store`]) and no FUSE in between.
//!
//! Each subcommand prints exactly one line of JSON on stdout:
//! - `get`: read one whole object, in one GET (`--streams 1`) or as ranged
//!   GETs of `--part` MiB by `--streams` workers;
//! - `small`: GET `--count` whole objects `PREFIX/000000...` with
//!   `--workers` workers (sizes and ETags come from a listing done before
//!   the clock starts);
//! - `list`: list every key under a prefix, page by page.
//!
//! Keys come from `AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY` (and
//! `AWS_SESSION_TOKEN` when set). Timing covers only the data requests: the
//! HEAD (or listing) that learns sizes and ETags happens before the clock.

use std::collections::HashMap;
use std::io::Write;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::Bytes;
use clap::{Args, Parser, Subcommand};
use cwfs::creds::{self, CredentialsConfig, Secret};
use cwfs::store::s3::{S3Settings, S3Store};
use cwfs::store::{ObjectMeta, ObjectStore};
use futures::StreamExt;

const MIB: f64 = 1024.0 * 1024.0;

/// Raw S3 throughput through the cwfs store client (the benchmark ceiling).
#[derive(Debug, Parser)]
#[command(name = "cwfs-bench", version)]
struct Cli {
    #[command(flatten)]
    common: Common,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Args)]
struct Common {
    /// S3 endpoint URL.
    #[arg(long, global = true, default_value = "http://127.0.0.1:9000")]
    endpoint: String,
    /// Signing region.
    #[arg(long, global = true, default_value = "us-test-1")]
    region: String,
    /// Path-style addressing (http://host/BUCKET/KEY).
    #[arg(long, global = true)]
    path_style: bool,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Read one whole object.
    Get {
        #[arg(long)]
        bucket: String,
        #[arg(long)]
        key: String,
        /// Parallel ranged GETs; 1 = one GET of the whole object.
        #[arg(long, default_value_t = 1)]
        streams: usize,
        /// Size of each ranged GET, MiB (with --streams > 1).
        #[arg(long, default_value_t = 16)]
        part: u64,
        /// Also write the object's bytes, in order, to PATH after timing
        /// (`-` = stdout; the JSON line then goes to stderr).
        #[arg(long, value_name = "PATH")]
        out: Option<String>,
    },
    /// GET many small objects whole.
    Small {
        #[arg(long)]
        bucket: String,
        /// Objects are PREFIX/000000, PREFIX/000001, ...
        #[arg(long)]
        prefix: String,
        #[arg(long)]
        count: usize,
        #[arg(long, default_value_t = 8)]
        workers: usize,
    },
    /// List every key under a prefix.
    List {
        #[arg(long)]
        bucket: String,
        #[arg(long)]
        prefix: String,
        /// Keys per page (S3 caps it at 1000).
        #[arg(long, default_value_t = 1000)]
        page: u32,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cwfs-bench: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match rt.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("cwfs-bench: {e}");
            ExitCode::from(1)
        }
    }
}

async fn store(common: &Common, bucket: &str) -> Result<Arc<S3Store>, String> {
    let access_key_id = std::env::var("AWS_ACCESS_KEY_ID")
        .map_err(|_| "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY".to_string())?;
    let secret = std::env::var("AWS_SECRET_ACCESS_KEY")
        .map_err(|_| "set AWS_SECRET_ACCESS_KEY".to_string())?;
    let session_token = std::env::var("AWS_SESSION_TOKEN")
        .ok()
        .filter(|t| !t.is_empty())
        .map(Secret::new);
    let cfg = CredentialsConfig::Static {
        access_key_id,
        secret_access_key: Secret::new(secret),
        session_token,
    };
    let handle = creds::start(&cfg, &common.region)
        .await
        .map_err(|e| e.to_string())?;
    let settings = S3Settings::new(bucket, &common.endpoint, &common.region, common.path_style);
    Ok(Arc::new(S3Store::new(&settings, handle)?))
}

fn json_line(v: serde_json::Value, to_stderr: bool) {
    let line = format!("{v}\n");
    if to_stderr {
        let _ = std::io::stderr().write_all(line.as_bytes());
    } else {
        let mut out = std::io::stdout().lock();
        let _ = out.write_all(line.as_bytes()).and_then(|()| out.flush());
    }
}

fn rate(bytes: u64, seconds: f64) -> f64 {
    if seconds > 0.0 {
        bytes as f64 / MIB / seconds
    } else {
        0.0
    }
}

async fn run(cli: Cli) -> Result<(), String> {
    match cli.cmd {
        Cmd::Get {
            bucket,
            key,
            streams,
            part,
            out,
        } => {
            let s = store(&cli.common, &bucket).await?;
            get(s, &key, streams.max(1), part.max(1) << 20, out).await
        }
        Cmd::Small {
            bucket,
            prefix,
            count,
            workers,
        } => {
            let s = store(&cli.common, &bucket).await?;
            small(s, &prefix, count, workers.max(1)).await
        }
        Cmd::List {
            bucket,
            prefix,
            page,
        } => {
            let s = store(&cli.common, &bucket).await?;
            list(s, &prefix, page.clamp(1, 1000)).await
        }
    }
}

async fn get(
    s: Arc<S3Store>,
    key: &str,
    streams: usize,
    part: u64,
    out: Option<String>,
) -> Result<(), String> {
    let meta = s.head(key).await.map_err(|e| e.to_string())?;
    let size = meta.size;
    let keep = out.is_some();
    let start = Instant::now();
    let parts: Vec<Bytes> = if streams == 1 {
        fetch(&s, key, 0..size, &meta.etag, keep).await?
    } else {
        let nparts = size.div_ceil(part) as usize;
        let next = Arc::new(AtomicUsize::new(0));
        let slots: Arc<Mutex<Vec<Vec<Bytes>>>> = Arc::new(Mutex::new(vec![Vec::new(); nparts]));
        let mut tasks = Vec::new();
        for _ in 0..streams.min(nparts.max(1)) {
            let (s, next, slots) = (s.clone(), next.clone(), slots.clone());
            let (key, etag) = (key.to_string(), meta.etag.clone());
            tasks.push(tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= nparts {
                        return Ok::<(), String>(());
                    }
                    let lo = i as u64 * part;
                    let hi = (lo + part).min(size);
                    let b = fetch(&s, &key, lo..hi, &etag, keep).await?;
                    if keep {
                        slots.lock().unwrap()[i] = b;
                    }
                }
            }));
        }
        for t in tasks {
            t.await.map_err(|e| e.to_string())??;
        }
        let mut slots = slots.lock().unwrap();
        slots.drain(..).flatten().collect()
    };
    let got: u64 = parts.iter().map(|p| p.len() as u64).sum();
    if keep && got != size {
        return Err(format!("{key}: fetched {got} bytes of {size}"));
    }
    let seconds = start.elapsed().as_secs_f64();
    let to_stderr = out.as_deref() == Some("-");
    if let Some(path) = out {
        let mut w: Box<dyn Write> = if path == "-" {
            Box::new(std::io::stdout().lock())
        } else {
            Box::new(std::fs::File::create(&path).map_err(|e| format!("{path}: {e}"))?)
        };
        for p in &parts {
            w.write_all(p).map_err(|e| format!("writing {path}: {e}"))?;
        }
        w.flush().map_err(|e| format!("writing {path}: {e}"))?;
    }
    json_line(
        serde_json::json!({
            "op": "get", "key": key, "streams": streams, "part_mib": part >> 20,
            "bytes": size, "seconds": seconds, "mib_s": rate(size, seconds),
        }),
        to_stderr,
    );
    Ok(())
}

/// Bytes `range` of `key`, consumed as the store streams them (as the
/// filesystem does); the chunks are kept only when `keep`.
async fn fetch(
    s: &S3Store,
    key: &str,
    range: std::ops::Range<u64>,
    etag: &str,
    keep: bool,
) -> Result<Vec<Bytes>, String> {
    let want = range.end - range.start;
    let mut body = s
        .get_stream(key, range, etag)
        .await
        .map_err(|e| e.to_string())?;
    let mut chunks = Vec::new();
    let mut n = 0u64;
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| e.to_string())?;
        n += chunk.len() as u64;
        if keep {
            chunks.push(chunk);
        }
    }
    if n != want {
        return Err(format!("{key}: got {n} bytes, wanted {want}"));
    }
    Ok(chunks)
}

/// Every object under `prefix` (one listing, not timed by the callers).
async fn list_all(s: &S3Store, prefix: &str, page: u32) -> Result<(Vec<ObjectMeta>, u64), String> {
    let mut objects = Vec::new();
    let mut token: Option<String> = None;
    let mut pages = 0u64;
    loop {
        let p = s
            .list_page(prefix, token.as_deref(), page)
            .await
            .map_err(|e| e.to_string())?;
        pages += 1;
        objects.extend(p.objects);
        match p.next_token {
            Some(t) => token = Some(t),
            None => return Ok((objects, pages)),
        }
    }
}

fn dir_prefix(prefix: &str) -> String {
    let p = prefix.trim_end_matches('/');
    if p.is_empty() {
        String::new()
    } else {
        format!("{p}/")
    }
}

async fn small(s: Arc<S3Store>, prefix: &str, count: usize, workers: usize) -> Result<(), String> {
    let dir = dir_prefix(prefix);
    let (listed, _) = list_all(&s, &dir, 1000).await?;
    let by_key: HashMap<String, ObjectMeta> =
        listed.into_iter().map(|m| (m.key.clone(), m)).collect();
    let mut todo = Vec::with_capacity(count);
    for i in 0..count {
        let key = format!("{dir}{i:06}");
        match by_key.get(&key) {
            Some(m) => todo.push(m.clone()),
            None => return Err(format!("{key}: not in the listing of {dir}")),
        }
    }
    let todo = Arc::new(todo);
    let next = Arc::new(AtomicUsize::new(0));
    let total = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..workers {
        let (s, todo, next, total) = (s.clone(), todo.clone(), next.clone(), total.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(m) = todo.get(i) else {
                    return Ok::<(), String>(());
                };
                let b = s
                    .get_range(&m.key, 0..m.size, &m.etag)
                    .await
                    .map_err(|e| e.to_string())?;
                total.fetch_add(b.len() as u64, Ordering::Relaxed);
            }
        }));
    }
    for t in tasks {
        t.await.map_err(|e| e.to_string())??;
    }
    let seconds = start.elapsed().as_secs_f64();
    let bytes = total.load(Ordering::Relaxed);
    json_line(
        serde_json::json!({
            "op": "small", "prefix": prefix, "files": count, "workers": workers,
            "bytes": bytes, "seconds": seconds,
            "files_s": if seconds > 0.0 { count as f64 / seconds } else { 0.0 },
            "mib_s": rate(bytes, seconds),
        }),
        false,
    );
    Ok(())
}

async fn list(s: Arc<S3Store>, prefix: &str, page: u32) -> Result<(), String> {
    let dir = dir_prefix(prefix);
    let start = Instant::now();
    let (objects, pages) = list_all(&s, &dir, page).await?;
    let seconds = start.elapsed().as_secs_f64();
    json_line(
        serde_json::json!({
            "op": "list", "prefix": prefix, "keys": objects.len(), "pages": pages,
            "seconds": seconds,
        }),
        false,
    );
    Ok(())
}
