//! The mount(8) helper convention: `mount.cwfs SOURCE MOUNTPOINT [-s] [-f]
//! [-n] [-v] [-o OPTIONS]`, as run by `mount -t cwfs` and `/etc/fstab`.
//!
//! Owns: turning a helper command line into the argument list of
//! `cwfs mount`, so both go through the one config struct (`config.rs`).
//! Each `-o` option `name[=value]` becomes `--name[=value]` (`_` and `-`
//! are the same); standard options map as documented in
//! docs/CONFIGURATION.md; options that only mean something to mount(8) or
//! systemd are accepted and ignored. An unknown option is an error naming
//! it (or, with `-s`, a warning).

use std::ffi::{OsStr, OsString};

/// What the helper was asked to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HelperCall {
    /// Arguments for `cwfs` (starting with `mount`).
    pub argv: Vec<OsString>,
    /// `-f`: do everything but mount.
    pub fake: bool,
    /// `-v`.
    pub verbose: bool,
    /// Options that were ignored (for `-v` and `-s`).
    pub ignored: Vec<String>,
}

/// `-o` names that map to `cwfs mount` flags without a value.
const FLAGS: &[&str] = &[
    "force-path-style",
    "allow-other",
    "allow-root",
    "read-only",
    "foreground",
];
/// `-o` names that take a value.
const VALUED: &[&str] = &[
    "endpoint-url",
    "region",
    "profile",
    "credentials-uri",
    "token-file",
    "cache-size",
    "block-size",
    "part-size",
    "prefetch-window",
    "max-connections",
    "max-attempts",
    "retry-timeout",
    "stall-timeout",
    "uid",
    "gid",
    "file-mode",
    "dir-mode",
    "metadata-ttl",
    "log-level",
    "log-file",
];
/// Kernel mount flags passed through to the FUSE mount.
const KERNEL: &[&str] = &[
    "nosuid", "suid", "nodev", "dev", "noexec", "exec", "noatime", "atime", "sync", "async",
    "dirsync",
];
/// Options for mount(8), fstab or systemd only.
const IGNORED: &[&str] = &[
    "_netdev", "nofail", "auto", "noauto", "user", "users", "nouser", "owner", "group", "defaults",
    "rw", "nolock", "netdev",
];

fn usage() -> String {
    "usage: mount.cwfs SOURCE MOUNTPOINT [-s] [-f] [-n] [-v] [-o OPTION[,OPTION...]]".to_string()
}

/// Parse a helper command line (without the program name).
pub fn parse_helper(args: &[OsString]) -> Result<HelperCall, String> {
    let mut positional: Vec<OsString> = Vec::new();
    let mut options: Vec<String> = Vec::new();
    let (mut fake, mut verbose, mut sloppy) = (false, false, false);
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let s = a.to_string_lossy();
        match s.as_ref() {
            "-o" => {
                let v = it
                    .next()
                    .ok_or_else(|| format!("-o needs a value; {}", usage()))?;
                let v = v.to_str().ok_or("mount options must be valid UTF-8")?;
                options.push(v.to_string());
            }
            "-f" => fake = true,
            "-v" => verbose = true,
            "-s" => sloppy = true,
            "-n" => {}
            // mount(8) may pass the type and a namespace; neither matters here.
            "-t" | "-N" => {
                it.next();
            }
            "-h" | "--help" => return Err(usage()),
            _ if s.starts_with("-o") && s.len() > 2 => options.push(s[2..].to_string()),
            _ if s.starts_with('-') && s.len() > 1 => {
                return Err(format!("unknown flag `{s}`; {}", usage()))
            }
            _ => positional.push(a.clone()),
        }
    }
    let [source, mountpoint] = <[OsString; 2]>::try_from(positional).map_err(|p| {
        format!(
            "expected SOURCE and MOUNTPOINT, got {} arguments; {}",
            p.len(),
            usage()
        )
    })?;
    let mut argv: Vec<OsString> = vec!["mount".into()];
    let mut ignored = Vec::new();
    for opt in options
        .iter()
        .flat_map(|o| o.split(','))
        .filter(|o| !o.is_empty())
    {
        let (name, value) = match opt.split_once('=') {
            Some((n, v)) => (n, Some(v)),
            None => (opt, None),
        };
        let canon = name.replace('_', "-");
        let canon = canon.as_str();
        if IGNORED.contains(&name)
            || name.starts_with("x-systemd.")
            || name.starts_with("x-")
            || name == "comment"
        {
            ignored.push(opt.to_string());
        } else if name == "ro" {
            argv.push("--read-only".into());
        } else if KERNEL.contains(&name) {
            if value.is_some() {
                return Err(format!("mount option `{opt}` takes no value"));
            }
            argv.push(format!("--kernel-flag={name}").into());
        } else if FLAGS.contains(&canon) {
            if value.is_some() {
                return Err(format!("mount option `{opt}` takes no value"));
            }
            argv.push(format!("--{canon}").into());
        } else if VALUED.contains(&canon) {
            let v = value
                .filter(|v| !v.is_empty())
                .ok_or_else(|| format!("mount option `{name}` needs a value: `{name}=...`"))?;
            argv.push(format!("--{canon}={v}").into());
        } else if sloppy {
            ignored.push(opt.to_string());
        } else {
            return Err(format!(
                "unknown mount option `{opt}` (see `cwfs mount --help` for the options; write them as name=value, with _ or -)"
            ));
        }
    }
    argv.push(source);
    argv.push(mountpoint);
    Ok(HelperCall {
        argv,
        fake,
        verbose,
        ignored,
    })
}

/// Is this process running as `mount.cwfs`?
pub fn invoked_as_helper(argv0: &OsStr) -> bool {
    std::path::Path::new(argv0)
        .file_name()
        .is_some_and(|n| n == "mount.cwfs")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Cli, Command, Environment};
    use clap::Parser;

    fn call(args: &[&str]) -> Result<HelperCall, String> {
        parse_helper(&args.iter().map(OsString::from).collect::<Vec<_>>())
    }

    fn resolved(args: &[&str]) -> crate::config::MountConfig {
        let c = call(args).unwrap();
        let mut argv: Vec<OsString> = vec!["cwfs".into()];
        argv.extend(c.argv);
        let Command::Mount(m) = Cli::try_parse_from(argv).unwrap().command;
        m.resolve(&Environment::default()).unwrap()
    }

    #[test]
    fn fstab_line_maps_to_the_cli() {
        let c = resolved(&[
            "my-bucket/train",
            "/mnt/train",
            "-o",
            "_netdev,nofail,ro,allow_other,token_file=/etc/cwfs/token,region=US-EAST-04A,x-systemd.automount,x-systemd.requires=network-online.target,comment=x,defaults",
        ]);
        assert_eq!(c.source.bucket, "my-bucket");
        assert_eq!(c.source.prefix, "train/");
        assert!(c.read_only && c.allow_other);
        assert_eq!(c.region, "US-EAST-04A");
        assert!(matches!(
            c.credentials,
            crate::creds::CredentialsConfig::Exchange { .. }
        ));
        assert!(!c.foreground, "the helper daemonizes");
    }

    #[test]
    fn dashes_and_underscores_and_kernel_flags() {
        let c = resolved(&["b", "/m", "-o", "region=r,endpoint-url=http://127.0.0.1:9,force_path_style,cache-size=1GiB,metadata_ttl=indefinite,noexec,nosuid,nodev,uid=5,file_mode=0600"]);
        assert!(c.force_path_style);
        assert_eq!(c.endpoint_url, "http://127.0.0.1:9");
        assert_eq!(c.read.cache_size, 1 << 30);
        assert_eq!(c.uid, 5);
        assert_eq!(c.file_mode, 0o600);
        assert_eq!(c.kernel_flags, ["noexec", "nosuid", "nodev"]);
        let c = resolved(&["b", "/m", "-oregion=r", "-s", "-n", "-v", "-o", "rw"]);
        assert!(!c.read_only);
    }

    #[test]
    fn bad_options_are_named() {
        assert!(call(&["b", "/m", "-o", "bogus=1"])
            .unwrap_err()
            .contains("`bogus=1`"));
        assert!(call(&["b", "/m", "-o", "region"])
            .unwrap_err()
            .contains("needs a value"));
        assert!(call(&["b", "/m", "-o", "allow_other=yes"])
            .unwrap_err()
            .contains("takes no value"));
        assert!(call(&["b"]).unwrap_err().contains("SOURCE and MOUNTPOINT"));
        assert!(call(&["b", "/m", "-x"]).unwrap_err().contains("-x"));
        let sloppy = call(&["b", "/m", "-s", "-o", "bogus,region=r"]).unwrap();
        assert_eq!(sloppy.ignored, ["bogus"]);
        assert!(call(&["b", "/m", "-f"]).unwrap().fake);
    }

    #[test]
    fn helper_name() {
        assert!(invoked_as_helper(OsStr::new("/sbin/mount.cwfs")));
        assert!(invoked_as_helper(OsStr::new("mount.cwfs")));
        assert!(!invoked_as_helper(OsStr::new("/usr/bin/cwfs")));
    }
}
