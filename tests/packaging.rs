//! The Debian package: build it with packaging/build-deb.sh, install it with
//! dpkg, mount through the installed /sbin/mount.cwfs, remove it.
//!
//! This test changes the machine (it installs and removes the `cwfs`
//! package), so it refuses to run where a cwfs package is already installed
//! rather than replace someone's installation. The mount itself happens in
//! a private mount namespace.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::*;

fn installed() -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", "cwfs"])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
}

struct Uninstall;
impl Drop for Uninstall {
    fn drop(&mut self) {
        if installed() {
            let _ = Command::new("dpkg").args(["-r", "cwfs"]).output();
        }
    }
}

#[test]
fn deb_installs_mounts_and_removes() {
    assert!(!installed(), "a cwfs package is already installed on this machine; this test installs and removes its own, so it will not run here");
    let dir = TempDir::new("deb");
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = run_bounded(
        {
            let mut c = Command::new("bash");
            c.arg(root.join("packaging/build-deb.sh"))
                .arg("--binary")
                .arg(cwfs_bin())
                .arg("--out")
                .arg(dir.path())
                .current_dir(root);
            c
        },
        Duration::from_secs(120),
    );
    assert!(
        out.status.success(),
        "build-deb: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let deb = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let info = Command::new("dpkg-deb")
        .args(["-I", &deb])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&info.stdout).contains("Depends: fuse3"));
    let contents = String::from_utf8_lossy(
        &Command::new("dpkg-deb")
            .args(["-c", &deb])
            .output()
            .unwrap()
            .stdout,
    )
    .into_owned();
    for f in [
        "./usr/bin/cwfs",
        "./sbin/mount.cwfs -> /usr/bin/cwfs",
        "examples/mnt-train.mount",
        "examples/fstab.example",
        "CONFIGURATION.md",
    ] {
        assert!(
            contents.contains(f),
            "{f} missing from the package:\n{contents}"
        );
    }

    let _guard = Uninstall;
    let out = Command::new("dpkg").args(["-i", &deb]).output().unwrap();
    assert!(
        out.status.success(),
        "dpkg -i: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(Path::new("/sbin/mount.cwfs").exists());
    let v = Command::new("/usr/bin/cwfs")
        .arg("--version")
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&v.stdout).starts_with("cwfs "));

    // Mount through the installed helper, in a private mount namespace.
    let server = Server::start();
    server.put("pkg/hello.txt", b"from the package".to_vec());
    let mp = dir.path().join("m");
    std::fs::create_dir(&mp).unwrap();
    let script = r#"
        set -e
        trap 'umount -l "$MP" 2>/dev/null || true' EXIT
        mount -t cwfs -o "ro,endpoint_url=$EP,region=$REGION,force_path_style" "$SRC" "$MP"
        cat "$MP/hello.txt"
        umount "$MP"
    "#;
    let mut cmd = clean_command("unshare");
    cmd.args(["--mount", "--propagation", "private", "sh", "-c", script])
        .env("MP", &mp)
        .env("EP", server.s3.endpoint())
        .env("REGION", server.s3.region())
        .env("SRC", format!("{BUCKET}/pkg"))
        .env("AWS_ACCESS_KEY_ID", ACCESS_KEY)
        .env("AWS_SECRET_ACCESS_KEY", SECRET_KEY);
    let out = run_bounded(cmd, Duration::from_secs(90));
    assert!(
        out.status.success(),
        "mount via the package: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "from the package");

    let out = Command::new("dpkg").args(["-r", "cwfs"]).output().unwrap();
    assert!(
        out.status.success(),
        "dpkg -r: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!installed());
    assert!(!Path::new("/usr/bin/cwfs").exists() && !Path::new("/sbin/mount.cwfs").exists());
}

#[test]
fn systemd_units_are_valid() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    if Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_err()
    {
        panic!("systemd-analyze is missing: scripts/test installs the systemd package");
    }
    // verify checks syntax and names; the unit's name must match its Where=.
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg("--man=no")
        .arg(root.join("packaging/systemd/mnt-train.mount"))
        .arg(root.join("packaging/systemd/mnt-train.automount"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    // Lines about the machine's other units or a missing mount.cwfs binary
    // in $PATH are not about our files.
    let ours: Vec<&str> = err
        .lines()
        .filter(|l| l.contains("mnt-train") && !l.contains("not found"))
        .collect();
    assert!(
        out.status.success() && ours.is_empty(),
        "systemd-analyze verify: {err}"
    );
}
