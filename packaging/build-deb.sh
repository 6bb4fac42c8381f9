#!/usr/bin/env bash
# packaging/build-deb.sh — build a Debian package of cwfs with dpkg-deb.
#
#   packaging/build-deb.sh [--binary PATH] [--out DIR]
#
# Builds `cargo build --release` unless --binary names an existing cwfs
# binary, stages the files below and writes DIR/cwfs_VERSION_ARCH.deb
# (default DIR: target/deb). The package installs:
#   /usr/bin/cwfs                      the binary
#   /sbin/mount.cwfs -> /usr/bin/cwfs  the mount(8) helper (mount -t cwfs, fstab)
#   /usr/share/doc/cwfs/               README, docs, examples (fstab lines,
#                                      a systemd .mount unit, Kubernetes)
# and depends on fuse3 (fusermount3 for non-root mounts, /etc/fuse.conf).
set -euo pipefail
cd "$(dirname "$0")/.."

binary=""
out=target/deb
while (($#)); do
  case "$1" in
    --binary) binary=$2; shift ;;
    --out) out=$2; shift ;;
    *) echo "build-deb.sh: unknown argument $1" >&2; exit 2 ;;
  esac
  shift
done
if [ -z "$binary" ]; then
  cargo build --release --quiet -p cwfs --bin cwfs
  binary=target/release/cwfs
fi
[ -x "$binary" ] || { echo "build-deb.sh: $binary is not an executable" >&2; exit 1; }

version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
arch=$(dpkg --print-architecture)
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT

install -D -m 0755 "$binary" "$stage/usr/bin/cwfs"
mkdir -p "$stage/sbin"
ln -s /usr/bin/cwfs "$stage/sbin/mount.cwfs"
doc="$stage/usr/share/doc/cwfs"
install -D -m 0644 README.md "$doc/README.md"
for f in docs/*.md; do install -D -m 0644 "$f" "$doc/$(basename "$f")"; done
install -D -m 0644 packaging/fstab.example "$doc/examples/fstab.example"
install -D -m 0644 packaging/systemd/mnt-train.mount "$doc/examples/mnt-train.mount"
install -D -m 0644 packaging/systemd/mnt-train.automount "$doc/examples/mnt-train.automount"
install -D -m 0644 packaging/kubernetes/daemonset.yaml "$doc/examples/kubernetes-daemonset.yaml"
size=$(du -sk "$stage" | cut -f1)

mkdir -p "$stage/DEBIAN"
cat >"$stage/DEBIAN/control" <<CONTROL
Package: cwfs
Version: $version
Architecture: $arch
Maintainer: cwfs developers <cwfs@localhost>
Depends: fuse3, libc6
Section: utils
Priority: optional
Installed-Size: $size
Description: mount CoreWeave AI Object Storage buckets as a local filesystem
 cwfs mounts a bucket of CoreWeave AI Object Storage, or of any
 S3-compatible store, as a read-only directory tree through FUSE, for
 training jobs that read datasets as plain files. Credentials renew in the
 background; reads are served from a block cache with sequential prefetch.
 Includes the mount.cwfs helper for mount -t cwfs and /etc/fstab.
CONTROL

mkdir -p "$out"
deb="$out/cwfs_${version}_${arch}.deb"
dpkg-deb --root-owner-group --build "$stage" "$deb" >/dev/null
echo "$deb"
