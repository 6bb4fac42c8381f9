//! The one configuration struct of cwfs, shared by the `cwfs` command line
//! and (later) the `mount.cwfs -o a,b=c` helper.
//!
//! Owns: parsing and validating every user-settable knob, and the defaults.
//! This is the only module that reads environment variables (through clap's
//! `env` fallbacks and [`MountArgs::resolve`]); the layers below receive
//! plain, validated values.

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::creds::{CredentialsConfig, Secret, TokenSource, COREWEAVE_EXCHANGE_URI};

/// The CoreWeave AI Object Storage endpoint, reachable from anywhere.
pub const DEFAULT_ENDPOINT: &str = "https://cwobject.com";
/// The CoreWeave LOTA endpoint (node-local caching proxy inside clusters).
pub const LOTA_ENDPOINT: &str = "http://cwlota.com";
/// How long names, attributes and listings are trusted by default.
/// One minute keeps `ls` and `stat` cheap for a training job while a dataset
/// that changes is seen within a minute; `indefinite` is for immutable data.
pub const DEFAULT_METADATA_TTL: Duration = Duration::from_secs(60);

/// cwfs — mount CoreWeave AI Object Storage (or any S3-compatible bucket) as
/// a local directory tree.
#[derive(Debug, Parser)]
#[command(name = "cwfs", version, about, long_about = None, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Mount BUCKET[/PREFIX] at MOUNTPOINT.
    ///
    /// By default cwfs runs as a daemon and returns once the mount answers;
    /// unmount with `umount MOUNTPOINT` or `fusermount3 -u MOUNTPOINT`.
    Mount(Box<MountArgs>),
}

/// Everything `cwfs mount` accepts.
#[derive(Debug, Clone, Args)]
pub struct MountArgs {
    /// What to mount: BUCKET, BUCKET/PREFIX or s3://BUCKET[/PREFIX].
    #[arg(value_name = "SOURCE")]
    pub source: String,

    /// An existing, empty directory to mount on.
    #[arg(value_name = "MOUNTPOINT")]
    pub mountpoint: PathBuf,

    #[command(flatten)]
    pub store: StoreArgs,

    #[command(flatten)]
    pub creds: CredsArgs,

    #[command(flatten)]
    pub cache: CacheArgs,

    #[command(flatten)]
    pub fs: FsArgs,

    #[command(flatten)]
    pub log: LogArgs,

    /// A kernel mount flag for the FUSE mount: exec, noexec, suid, nosuid,
    /// dev, nodev, atime, noatime, sync, async, dirsync (repeatable; the
    /// defaults are nosuid, nodev, noatime).
    #[arg(long, value_name = "FLAG", value_parser = ["exec", "noexec", "suid", "nosuid", "dev", "nodev", "atime", "noatime", "sync", "async", "dirsync"])]
    pub kernel_flag: Vec<String>,

    /// Stay in the foreground (logs go to stderr); SIGINT/SIGTERM unmount.
    #[arg(short = 'f', long)]
    pub foreground: bool,
}

/// Where the bucket lives and how to address it.
#[derive(Debug, Clone, Args)]
pub struct StoreArgs {
    /// S3 endpoint URL [default: $AWS_ENDPOINT_URL_S3, else $AWS_ENDPOINT_URL,
    /// else https://cwobject.com]. Use http://cwlota.com for CoreWeave LOTA.
    #[arg(long, value_name = "URL")]
    pub endpoint_url: Option<String>,

    /// Region, passed verbatim (CoreWeave: the availability zone, e.g.
    /// US-EAST-04A) [default: $AWS_REGION, else $AWS_DEFAULT_REGION].
    #[arg(long, value_name = "NAME")]
    pub region: Option<String>,

    /// Address buckets as ENDPOINT/BUCKET instead of BUCKET.ENDPOINT
    /// (CoreWeave requires the default, virtual-hosted addressing).
    #[arg(long)]
    pub force_path_style: bool,

    /// PEM file of CA certificates to trust for an https endpoint, besides
    /// the system's (for a store with a private CA) [default: $AWS_CA_BUNDLE].
    #[arg(long, value_name = "PATH")]
    pub ca_bundle: Option<PathBuf>,
}

/// Where credentials come from (see docs/CONFIGURATION.md for the order).
#[derive(Debug, Clone, Args)]
pub struct CredsArgs {
    /// Use this profile of the shared AWS config files [default: $AWS_PROFILE].
    #[arg(long, value_name = "NAME")]
    pub profile: Option<String>,

    /// Exchange a token for temporary keys at this URL (AWS container
    /// credentials protocol) [default: $AWS_CONTAINER_CREDENTIALS_FULL_URI;
    /// with --token-file alone: CoreWeave's API-token exchange].
    #[arg(long, value_name = "URL")]
    pub credentials_uri: Option<String>,

    /// File holding the API access token (bare or `Bearer <token>`), re-read
    /// at every renewal [default: $AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE].
    #[arg(long, value_name = "PATH")]
    pub token_file: Option<PathBuf>,
}

/// The read path: cache, prefetch, connections.
#[derive(Debug, Clone, Args)]
pub struct CacheArgs {
    /// The one memory budget for file data, shared by every open file:
    /// cached blocks plus blocks being fetched, e.g. 512MiB or 8GiB.
    #[arg(long, value_name = "BYTES", default_value = "2GiB", value_parser = parse_size)]
    pub cache_size: u64,

    /// Cache granularity and the smallest ranged GET, e.g. 1MiB: a random
    /// read fetches the blocks it touches.
    #[arg(long, value_name = "BYTES", default_value = "1MiB", value_parser = parse_block_size)]
    pub block_size: u64,

    /// Bytes per ranged GET of a sequential reader's prefetch, e.g. 16MiB
    /// (CoreWeave advises requests of at least 15 MB). Rounded down to a
    /// multiple of --block-size.
    #[arg(long, value_name = "BYTES", default_value = "16MiB", value_parser = parse_size)]
    pub part_size: u64,

    /// Largest read-ahead window of one open file (it starts at one part and
    /// doubles while reads stay sequential); 0 disables prefetch.
    #[arg(long, value_name = "BYTES", default_value = "256MiB", value_parser = parse_size)]
    pub prefetch_window: u64,

    /// Attempts per S3 request before it fails with EIO (retries use
    /// exponential backoff with full jitter).
    #[arg(long, value_name = "N", default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub max_attempts: u32,

    /// Give up retrying a request after this many seconds in all.
    #[arg(long, value_name = "SECONDS", default_value = "30", value_parser = parse_seconds)]
    pub retry_timeout: Duration,

    /// A download that delivers no byte for this many seconds is resumed
    /// from the first missing byte.
    #[arg(long, value_name = "SECONDS", default_value = "10", value_parser = parse_seconds)]
    pub stall_timeout: Duration,

    /// S3 requests in flight at once, for the whole mount.
    #[arg(long, value_name = "N", default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub max_connections: u32,
}

/// Parse `123`, `512K`, `512KiB`, `8MiB`, `8M`, `1GiB`, `1G`, `1.5GiB`
/// (binary units: K = 1024).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("`{s}` is not a size such as 512MiB or 8GiB"))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        "t" | "tb" | "tib" => 1 << 40,
        _ => {
            return Err(format!(
                "`{s}` has an unknown unit (use K, M, G or T, e.g. 512MiB)"
            ))
        }
    };
    let v = n * mult as f64;
    if !v.is_finite() || v < 0.0 || v > u64::MAX as f64 {
        return Err(format!("`{s}` is out of range"));
    }
    Ok(v as u64)
}

fn parse_block_size(s: &str) -> Result<u64, String> {
    let v = parse_size(s)?;
    // 64 KiB keeps request counts sane; 64 MiB bounds one block's memory.
    if !(64 << 10..=64 << 20).contains(&v) {
        return Err(format!("block size `{s}` must be between 64KiB and 64MiB"));
    }
    Ok(v)
}

/// How the mounted tree looks to local users.
#[derive(Debug, Clone, Args)]
pub struct FsArgs {
    /// Refuse every write with EROFS and mount the filesystem read-only.
    #[arg(long)]
    pub read_only: bool,

    /// Let users other than the mounting user access the mount.
    #[arg(long, conflicts_with = "allow_root")]
    pub allow_other: bool,

    /// Let root (besides the mounting user) access the mount.
    #[arg(long)]
    pub allow_root: bool,

    /// Owner of every file and directory [default: the mounting user].
    #[arg(long, value_name = "N")]
    pub uid: Option<u32>,

    /// Group of every file and directory [default: the mounting user's group].
    #[arg(long, value_name = "N")]
    pub gid: Option<u32>,

    /// Permission bits of files, in octal.
    #[arg(long, value_name = "OCTAL", default_value = "0644", value_parser = parse_mode)]
    pub file_mode: u16,

    /// Permission bits of directories, in octal.
    #[arg(long, value_name = "OCTAL", default_value = "0755", value_parser = parse_mode)]
    pub dir_mode: u16,

    /// How long names, attributes and listings are trusted before asking the
    /// store again: SECONDS (0 = always ask) or `indefinite` (immutable data).
    #[arg(long, value_name = "SECONDS|indefinite", default_value = "60", value_parser = parse_ttl)]
    pub metadata_ttl: MetadataTtl,

    /// Names kept in memory that the kernel does not hold (listed, or
    /// forgotten by the kernel), about 550 bytes each; the longest unused
    /// go first. Names the kernel holds are always kept.
    #[arg(long, value_name = "N", default_value_t = crate::meta::MAX_IDLE_NODES)]
    pub max_idle_inodes: usize,
}

/// Logging knobs.
#[derive(Debug, Clone, Args)]
pub struct LogArgs {
    /// Verbosity of the log.
    #[arg(long, value_enum, default_value_t = LogLevel::Info)]
    pub log_level: LogLevel,

    /// Append logs to this file [default: stderr in the foreground, syslog
    /// (ident `cwfs`) as a daemon].
    #[arg(long, value_name = "PATH")]
    pub log_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogLevel {
    Error,
    Warn,
    Info,
    Debug,
    Trace,
}

impl LogLevel {
    pub fn as_str(self) -> &'static str {
        match self {
            LogLevel::Error => "error",
            LogLevel::Warn => "warn",
            LogLevel::Info => "info",
            LogLevel::Debug => "debug",
            LogLevel::Trace => "trace",
        }
    }
}

/// How long metadata is trusted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetadataTtl {
    Finite(Duration),
    Indefinite,
}

impl MetadataTtl {
    /// Is something fetched `age` ago still to be trusted?
    pub fn is_fresh(self, age: Duration) -> bool {
        match self {
            MetadataTtl::Finite(ttl) => age < ttl,
            MetadataTtl::Indefinite => true,
        }
    }

    /// The TTL handed to the kernel for entries and attributes. The kernel
    /// takes a duration; "indefinite" becomes a year, which is as good.
    pub fn kernel_ttl(self) -> Duration {
        match self {
            MetadataTtl::Finite(ttl) => ttl,
            MetadataTtl::Indefinite => Duration::from_secs(365 * 24 * 3600),
        }
    }
}

fn parse_seconds(s: &str) -> Result<Duration, String> {
    let v: f64 = s
        .parse()
        .map_err(|_| format!("`{s}` is not a number of seconds"))?;
    if !v.is_finite() || v <= 0.0 || v > 86_400.0 {
        return Err(format!(
            "`{s}` must be more than 0 and at most 86400 seconds"
        ));
    }
    Ok(Duration::from_secs_f64(v))
}

fn parse_mode(s: &str) -> Result<u16, String> {
    let digits = s.strip_prefix("0o").unwrap_or(s);
    let mode = u16::from_str_radix(digits, 8)
        .map_err(|_| format!("`{s}` is not an octal mode such as 0644"))?;
    if mode > 0o7777 {
        return Err(format!("`{s}` is larger than 07777"));
    }
    Ok(mode)
}

fn parse_ttl(s: &str) -> Result<MetadataTtl, String> {
    if s.eq_ignore_ascii_case("indefinite") {
        return Ok(MetadataTtl::Indefinite);
    }
    let secs: f64 = s
        .parse()
        .map_err(|_| format!("`{s}` is neither a number of seconds nor `indefinite`"))?;
    if !secs.is_finite() || secs < 0.0 {
        return Err(format!(
            "`{s}` must be zero or a positive number of seconds"
        ));
    }
    Ok(MetadataTtl::Finite(Duration::from_secs_f64(secs)))
}

/// A bucket and an optional key prefix (always ending in `/` when not empty).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    pub bucket: String,
    pub prefix: String,
}

impl Source {
    /// Parse `BUCKET`, `BUCKET/PREFIX` or `s3://BUCKET[/PREFIX]`.
    pub fn parse(s: &str) -> Result<Source, String> {
        let rest = s.strip_prefix("s3://").unwrap_or(s);
        let (bucket, prefix) = match rest.split_once('/') {
            Some((b, p)) => (b, p),
            None => (rest, ""),
        };
        if bucket.is_empty() {
            return Err(format!(
                "`{s}` names no bucket: use BUCKET, BUCKET/PREFIX or s3://BUCKET[/PREFIX]"
            ));
        }
        let valid_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_');
        if bucket.len() > 255 || !bucket.chars().all(valid_char) {
            return Err(format!(
                "`{bucket}` is not a valid bucket name (letters, digits, `-`, `.` and `_` only)"
            ));
        }
        let trimmed = prefix.trim_matches('/');
        if trimmed.split('/').any(|seg| seg == "." || seg == "..")
            || (!trimmed.is_empty() && trimmed.split('/').any(str::is_empty))
        {
            return Err(format!(
                "prefix `{prefix}` has an empty, `.` or `..` segment, which no path can reach"
            ));
        }
        let prefix = if trimmed.is_empty() {
            String::new()
        } else {
            format!("{trimmed}/")
        };
        Ok(Source {
            bucket: bucket.to_string(),
            prefix,
        })
    }

    /// `bucket` or `bucket/prefix` for display and the mount table.
    pub fn display_name(&self) -> String {
        if self.prefix.is_empty() {
            self.bucket.clone()
        } else {
            format!("{}/{}", self.bucket, self.prefix.trim_end_matches('/'))
        }
    }
}

/// The environment variables the config falls back to. Passed in (not read
/// inside) so that resolution is a pure function and unit-testable.
#[derive(Debug, Clone, Default)]
pub struct Environment {
    vars: Vec<(String, OsString)>,
}

impl Environment {
    pub fn from_process() -> Environment {
        Environment {
            vars: std::env::vars_os()
                .filter_map(|(k, v)| k.into_string().ok().map(|k| (k, v)))
                .collect(),
        }
    }

    pub fn from_pairs<K: Into<String>, V: Into<OsString>>(
        pairs: impl IntoIterator<Item = (K, V)>,
    ) -> Environment {
        Environment {
            vars: pairs
                .into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
        }
    }

    /// A non-empty UTF-8 value of `name`.
    pub fn get(&self, name: &str) -> Option<String> {
        self.vars
            .iter()
            .rev()
            .find(|(k, _)| k == name)
            .and_then(|(_, v)| v.to_str())
            .filter(|v| !v.is_empty())
            .map(str::to_string)
    }
}

/// The validated settings a mount runs with.
#[derive(Debug, Clone)]
pub struct MountConfig {
    pub source: Source,
    pub mountpoint: PathBuf,
    pub endpoint_url: String,
    pub region: String,
    pub force_path_style: bool,
    pub ca_bundle: Option<PathBuf>,
    pub credentials: CredentialsConfig,
    pub read: crate::read::ReadConfig,
    pub max_connections: u32,
    pub retry: crate::store::retry::RetryPolicy,
    pub stall_timeout: Duration,
    pub read_only: bool,
    pub allow_other: bool,
    pub allow_root: bool,
    pub uid: u32,
    pub gid: u32,
    pub file_mode: u16,
    pub dir_mode: u16,
    pub metadata_ttl: MetadataTtl,
    pub max_idle_inodes: usize,
    pub log_level: LogLevel,
    pub log_file: Option<PathBuf>,
    pub foreground: bool,
    pub kernel_flags: Vec<String>,
}

impl MountArgs {
    /// Apply defaults from `env` and validate. Errors say what to fix.
    pub fn resolve(&self, env: &Environment) -> Result<MountConfig, String> {
        let source = Source::parse(&self.source)?;
        let endpoint_url = self
            .store
            .endpoint_url
            .clone()
            .or_else(|| env.get("AWS_ENDPOINT_URL_S3"))
            .or_else(|| env.get("AWS_ENDPOINT_URL"))
            .unwrap_or_else(|| DEFAULT_ENDPOINT.to_string());
        validate_endpoint(&endpoint_url)?;
        let region = self
            .store
            .region
            .clone()
            .or_else(|| env.get("AWS_REGION"))
            .or_else(|| env.get("AWS_DEFAULT_REGION"))
            .ok_or_else(|| {
                "no region given: pass --region NAME or set AWS_REGION (on CoreWeave the region \
                 is the availability zone, e.g. US-EAST-04A)"
                    .to_string()
            })?;
        if region.trim().is_empty() || region.chars().any(|c| c.is_whitespace() || c == '/') {
            return Err(format!("region `{region}` is not a valid region name"));
        }
        let credentials = self.creds.resolve(env)?;
        // SAFETY: getuid/getgid cannot fail and touch no memory.
        let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
        Ok(MountConfig {
            source,
            mountpoint: self.mountpoint.clone(),
            endpoint_url: endpoint_url.trim_end_matches('/').to_string(),
            region,
            force_path_style: self.store.force_path_style,
            ca_bundle: self
                .store
                .ca_bundle
                .clone()
                .or_else(|| env.get("AWS_CA_BUNDLE").map(PathBuf::from)),
            credentials,
            read: self.cache.resolve()?,
            max_connections: self.cache.max_connections,
            retry: crate::store::retry::RetryPolicy {
                max_attempts: self.cache.max_attempts,
                deadline: self.cache.retry_timeout,
                ..Default::default()
            },
            stall_timeout: self.cache.stall_timeout,
            read_only: self.fs.read_only,
            allow_other: self.fs.allow_other,
            allow_root: self.fs.allow_root,
            uid: self.fs.uid.unwrap_or(uid),
            gid: self.fs.gid.unwrap_or(gid),
            file_mode: self.fs.file_mode,
            dir_mode: self.fs.dir_mode,
            metadata_ttl: self.fs.metadata_ttl,
            max_idle_inodes: self.fs.max_idle_inodes,
            log_level: self.log.log_level,
            log_file: self.log.log_file.clone(),
            foreground: self.foreground,
            kernel_flags: self.kernel_flag.clone(),
        })
    }
}

impl CacheArgs {
    fn resolve(&self) -> Result<crate::read::ReadConfig, String> {
        let block = self.block_size;
        if self.cache_size < 4 * block {
            return Err(format!(
                "--cache-size ({}) must hold at least 4 blocks of --block-size ({block} bytes)",
                self.cache_size
            ));
        }
        let part = (self.part_size / block).max(1) * block;
        Ok(crate::read::ReadConfig {
            cache_size: self.cache_size,
            block_size: block,
            part_size: part,
            prefetch_window: self.prefetch_window,
        })
    }
}

impl CredsArgs {
    /// Pick the credentials source. Options beat the environment; within the
    /// environment: static keys, then AWS_PROFILE, then the token exchange,
    /// then the rest of the default AWS chain.
    pub fn resolve(&self, env: &Environment) -> Result<CredentialsConfig, String> {
        if let Some(p) = &self.profile {
            return Ok(CredentialsConfig::Profile(p.clone()));
        }
        if self.credentials_uri.is_some() || self.token_file.is_some() {
            return exchange_config(self.credentials_uri.clone(), self.token_file.clone(), env);
        }
        match (
            env.get("AWS_ACCESS_KEY_ID"),
            env.get("AWS_SECRET_ACCESS_KEY"),
        ) {
            (Some(id), Some(secret)) => {
                return Ok(CredentialsConfig::Static {
                    access_key_id: id,
                    secret_access_key: Secret::new(secret),
                    session_token: env.get("AWS_SESSION_TOKEN").map(Secret::new),
                })
            }
            (Some(_), None) => return Err(
                "AWS_ACCESS_KEY_ID is set but AWS_SECRET_ACCESS_KEY is not: set both, or neither"
                    .into(),
            ),
            _ => {}
        }
        if let Some(p) = env.get("AWS_PROFILE") {
            return Ok(CredentialsConfig::Profile(p));
        }
        if let Some(uri) = env.get("AWS_CONTAINER_CREDENTIALS_FULL_URI") {
            return exchange_config(Some(uri), None, env);
        }
        Ok(CredentialsConfig::DefaultChain)
    }
}

fn exchange_config(
    uri: Option<String>,
    token_file: Option<PathBuf>,
    env: &Environment,
) -> Result<CredentialsConfig, String> {
    let token_file = token_file.or_else(|| {
        env.get("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE")
            .map(PathBuf::from)
    });
    let uri = uri
        .or_else(|| env.get("AWS_CONTAINER_CREDENTIALS_FULL_URI"))
        .unwrap_or_else(|| COREWEAVE_EXCHANGE_URI.to_string());
    crate::creds::exchange::check_uri(&uri)?;
    let token = match (token_file, env.get("AWS_CONTAINER_AUTHORIZATION_TOKEN")) {
        (Some(f), _) => TokenSource::File(f),
        (None, Some(v)) => TokenSource::Value(Secret::new(v)),
        (None, None) => {
            return Err(format!(
                "the token exchange at {uri} needs a token: pass --token-file PATH, or set AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE or AWS_CONTAINER_AUTHORIZATION_TOKEN=\"Bearer <token>\""
            ))
        }
    };
    Ok(CredentialsConfig::Exchange { uri, token })
}

fn validate_endpoint(url: &str) -> Result<(), String> {
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))
        .ok_or_else(|| {
            format!(
                "endpoint `{url}` must start with https:// or http:// (e.g. {DEFAULT_ENDPOINT})"
            )
        })?;
    let host = rest.split('/').next().unwrap_or("");
    if host.is_empty() {
        return Err(format!("endpoint `{url}` has no host"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(extra: &[&str]) -> MountArgs {
        let mut argv = vec!["cwfs", "mount"];
        argv.extend_from_slice(extra);
        match Cli::try_parse_from(argv).unwrap().command {
            Command::Mount(m) => *m,
        }
    }

    #[test]
    fn source_forms() {
        let s = Source::parse("b").unwrap();
        assert_eq!((s.bucket.as_str(), s.prefix.as_str()), ("b", ""));
        let s = Source::parse("s3://b/x/y/").unwrap();
        assert_eq!((s.bucket.as_str(), s.prefix.as_str()), ("b", "x/y/"));
        let s = Source::parse("b/x").unwrap();
        assert_eq!(s.prefix, "x/");
        assert_eq!(s.display_name(), "b/x");
        assert!(Source::parse("").is_err());
        assert!(Source::parse("s3://").is_err());
        assert!(Source::parse("b/a//c").is_err());
        assert!(Source::parse("b/../c").is_err());
        assert!(Source::parse("bad bucket").is_err());
    }

    #[test]
    fn modes_and_ttl() {
        assert_eq!(parse_mode("0644"), Ok(0o644));
        assert_eq!(parse_mode("755"), Ok(0o755));
        assert!(parse_mode("0999").is_err());
        assert!(parse_mode("77777").is_err());
        assert_eq!(parse_ttl("indefinite"), Ok(MetadataTtl::Indefinite));
        assert_eq!(
            parse_ttl("1.5"),
            Ok(MetadataTtl::Finite(Duration::from_millis(1500)))
        );
        assert!(parse_ttl("-1").is_err());
        assert!(parse_ttl("soon").is_err());
    }

    #[test]
    fn endpoint_and_region_precedence() {
        let a = args(&["b", "/mnt"]);
        let env = Environment::from_pairs([
            ("AWS_ENDPOINT_URL", "http://generic:1"),
            ("AWS_ENDPOINT_URL_S3", "http://s3specific:2"),
            ("AWS_DEFAULT_REGION", "fallback"),
        ]);
        let c = a.resolve(&env).unwrap();
        assert_eq!(c.endpoint_url, "http://s3specific:2");
        assert_eq!(c.region, "fallback");

        let env = Environment::from_pairs([("AWS_REGION", "US-EAST-04A")]);
        let c = a.resolve(&env).unwrap();
        assert_eq!(c.endpoint_url, DEFAULT_ENDPOINT);
        assert_eq!(c.region, "US-EAST-04A", "region passes verbatim");

        let a = args(&[
            "--region",
            "r",
            "--endpoint-url",
            "http://127.0.0.1:9/",
            "b",
            "/m",
        ]);
        let c = a.resolve(&env).unwrap();
        assert_eq!(c.region, "r");
        assert_eq!(c.endpoint_url, "http://127.0.0.1:9");
    }

    #[test]
    fn missing_region_says_how_to_fix() {
        let err = args(&["b", "/m"])
            .resolve(&Environment::default())
            .unwrap_err();
        assert!(
            err.contains("--region") && err.contains("AWS_REGION"),
            "{err}"
        );
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("512MiB"), Ok(512 << 20));
        assert_eq!(parse_size("8GiB"), Ok(8 << 30));
        assert_eq!(parse_size("8G"), Ok(8 << 30));
        assert_eq!(parse_size("1.5K"), Ok(1536));
        assert_eq!(parse_size("100"), Ok(100));
        assert!(parse_size("lots").is_err());
        assert!(parse_size("5 parsecs").is_err());
        assert!(parse_block_size("1K").is_err());
        assert!(parse_block_size("2GiB").is_err());
        let c = args(&[
            "--region",
            "r",
            "--block-size",
            "1MiB",
            "--part-size",
            "15MB",
            "b",
            "/m",
        ])
        .resolve(&Environment::default())
        .unwrap();
        assert_eq!(c.read.part_size, 15 << 20, "rounded to whole blocks");
        let e = args(&["--region", "r", "--cache-size", "2MiB", "b", "/m"])
            .resolve(&Environment::default())
            .unwrap_err();
        assert!(e.contains("--cache-size"), "{e}");
    }

    fn creds_of(extra: &[&str], env: &[(&str, &str)]) -> Result<CredentialsConfig, String> {
        let mut argv = extra.to_vec();
        argv.extend(["b", "/m"]);
        args(&argv)
            .creds
            .resolve(&Environment::from_pairs(env.iter().copied()))
    }

    #[test]
    fn credential_source_precedence() {
        let keys = [("AWS_ACCESS_KEY_ID", "AK"), ("AWS_SECRET_ACCESS_KEY", "SK")];
        assert!(matches!(
            creds_of(&[], &keys),
            Ok(CredentialsConfig::Static { .. })
        ));
        assert!(
            matches!(creds_of(&["--profile", "p"], &keys), Ok(CredentialsConfig::Profile(p)) if p == "p")
        );
        match creds_of(&["--token-file", "/t"], &keys).unwrap() {
            CredentialsConfig::Exchange { uri, token } => {
                assert_eq!(
                    uri, COREWEAVE_EXCHANGE_URI,
                    "--token-file alone implies CoreWeave's URI"
                );
                assert_eq!(token, TokenSource::File("/t".into()));
            }
            other => panic!("{other:?}"),
        }
        let env = [
            ("AWS_CONTAINER_CREDENTIALS_FULL_URI", "https://x/creds"),
            ("AWS_CONTAINER_AUTHORIZATION_TOKEN", "Bearer t"),
            ("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE", "/f"),
        ];
        match creds_of(&[], &env).unwrap() {
            CredentialsConfig::Exchange { uri, token } => {
                assert_eq!(uri, "https://x/creds");
                assert_eq!(token, TokenSource::File("/f".into()), "the file wins");
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            creds_of(&[], &env[..2]),
            Ok(CredentialsConfig::Exchange {
                token: TokenSource::Value(_),
                ..
            })
        ));
        assert!(creds_of(&[], &env[..1])
            .unwrap_err()
            .contains("--token-file"));
        let e = creds_of(
            &[
                "--credentials-uri",
                "http://10.1.2.3/c",
                "--token-file",
                "/t",
            ],
            &[],
        )
        .unwrap_err();
        assert!(e.contains("loopback"), "{e}");
        assert!(matches!(
            creds_of(&[], &[("AWS_PROFILE", "x")]),
            Ok(CredentialsConfig::Profile(_))
        ));
        assert!(matches!(
            creds_of(&[], &[]),
            Ok(CredentialsConfig::DefaultChain)
        ));
        assert!(creds_of(&[], &keys[..1]).is_err());
    }

    #[test]
    fn secrets_stay_out_of_debug() {
        let c = creds_of(
            &[],
            &[
                ("AWS_ACCESS_KEY_ID", "AK"),
                ("AWS_SECRET_ACCESS_KEY", "TOPSECRET"),
            ],
        )
        .unwrap();
        assert!(!format!("{c:?}").contains("TOPSECRET"));
    }

    #[test]
    fn bad_endpoint() {
        let err = args(&["--endpoint-url", "cwobject.com", "--region", "r", "b", "/m"])
            .resolve(&Environment::default())
            .unwrap_err();
        assert!(err.contains("https://"), "{err}");
    }
}
