//! The read path through a real mount: concurrent byte-exact reads with a
//! cache smaller than the data, versions never mixed, mmap.

mod common;

use std::fs;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::time::Duration;

use common::*;

#[test]
fn concurrent_random_and_sequential_reads_are_byte_exact_under_eviction() {
    let server = Server::start();
    let files: Vec<Vec<u8>> = (0..4)
        .map(|i| pattern(100 + i, (24 << 20) + i as usize * 12_345))
        .collect();
    for (i, d) in files.iter().enumerate() {
        server.put(&format!("data/f{i}.bin"), d.clone());
    }
    // 8 MiB of cache for ~96 MiB of data: blocks are evicted all the time.
    let m = server.mount(
        BUCKET,
        &[
            "--cache-size",
            "8MiB",
            "--block-size",
            "256KiB",
            "--part-size",
            "1MiB",
        ],
    );
    let files = Arc::new(files);
    let mut threads = Vec::new();
    for t in 0..12u64 {
        let files = files.clone();
        let root = m.mountpoint.clone();
        threads.push(std::thread::spawn(move || {
            let mut x = 0x9E37_79B9_7F4A_7C15u64 ^ t;
            for round in 0..40 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let i = (x % 4) as usize;
                let data = &files[i];
                let mut f = fs::File::open(root.join(format!("data/f{i}.bin"))).unwrap();
                if round % 8 == 0 {
                    // A whole sequential pass (exercises prefetch).
                    let mut got = Vec::new();
                    f.read_to_end(&mut got).unwrap();
                    assert!(got == *data, "sequential pass of f{i} differs");
                } else {
                    let off = (x >> 11) % data.len() as u64;
                    let len = 1 + ((x >> 40) % (3 << 20)) as usize;
                    let mut buf = vec![0u8; len];
                    let n = f.read_at(&mut buf, off).unwrap();
                    let want = len.min(data.len() - off as usize);
                    assert_eq!(n, want);
                    assert!(
                        buf[..n] == data[off as usize..off as usize + n],
                        "f{i} at {off}+{len}"
                    );
                }
            }
        }));
    }
    for t in threads {
        t.join().unwrap();
    }
}

#[test]
fn versions_never_mix() {
    let server = Server::start();
    let v1 = pattern(1, 8 << 20);
    let v2 = pattern(2, 8 << 20);
    server.put("obj.bin", v1.clone());
    let m = server.mount(
        BUCKET,
        &[
            "--metadata-ttl",
            "1",
            "--block-size",
            "64KiB",
            "--part-size",
            "64KiB",
            "--prefetch-window",
            "0",
        ],
    );
    let path = m.path("obj.bin");
    let f = fs::File::open(&path).unwrap();
    let mut head = vec![0u8; 1 << 20];
    f.read_exact_at(&mut head, 0).unwrap();
    assert!(head[..] == v1[..1 << 20]);

    server.put("obj.bin", v2.clone());
    // The old handle: old bytes (already cached) or ESTALE, never v2 bytes.
    let mut buf = vec![0u8; 1 << 20];
    for off in (0..8u64 << 20).step_by(1 << 20) {
        match f.read_at(&mut buf, off) {
            Ok(n) => assert!(
                buf[..n] == v1[off as usize..off as usize + n],
                "old handle got other bytes at {off}"
            ),
            Err(e) => assert_eq!(e.raw_os_error(), Some(libc::ESTALE), "{e}"),
        }
    }
    drop(f);
    // A new open after the TTL sees the new version, whole.
    std::thread::sleep(Duration::from_millis(1500));
    let got = fs::read(&path).unwrap();
    assert!(got == v2, "new open reads the new version");
    // And a changed size is seen too.
    std::thread::sleep(Duration::from_millis(1500));
    server.put("obj.bin", b"short".to_vec());
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(fs::read(&path).unwrap(), b"short");
}

#[test]
fn mmap_reads_are_byte_exact() {
    let server = Server::start();
    let data = pattern(9, (6 << 20) + 777);
    server.put("weights.safetensors", data.clone());
    let m = server.mount(BUCKET, &[]);
    let f = fs::File::open(m.path("weights.safetensors")).unwrap();
    let len = data.len();
    // SAFETY: a read-only shared mapping of a file we keep open; the
    // mapping is unmapped before the file is dropped.
    let ptr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ,
            libc::MAP_SHARED,
            std::os::fd::AsRawFd::as_raw_fd(&f),
            0,
        )
    };
    assert_ne!(
        ptr,
        libc::MAP_FAILED,
        "mmap failed: {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: ptr maps exactly len readable bytes.
    let mapped = unsafe { std::slice::from_raw_parts(ptr as *const u8, len) };
    // Touch pages out of order first, then compare everything.
    for off in [len - 1, 4 << 20, 12345, 0] {
        assert_eq!(mapped[off], data[off]);
    }
    assert!(mapped == &data[..]);
    // SAFETY: unmapping the mapping made above.
    unsafe { libc::munmap(ptr, len) };
}

#[test]
fn rereads_of_an_unchanged_file_keep_the_page_cache() {
    let server = Server::start();
    let data = pattern(5, 4 << 20);
    server.put("f.bin", data.clone());
    let m = server.mount(BUCKET, &[]);
    assert!(fs::read(m.path("f.bin")).unwrap() == data);
    let gets = server.s3.stats().get_requests;
    for _ in 0..3 {
        assert!(fs::read(m.path("f.bin")).unwrap() == data);
    }
    assert_eq!(
        server.s3.stats().get_requests,
        gets,
        "re-reads come from caches, not the store"
    );
}

fn status_field(pid: u32, field: &str) -> u64 {
    let s = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = s
        .lines()
        .find(|l| l.starts_with(field))
        .unwrap_or_else(|| panic!("{field} missing"));
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[test]
fn memory_connections_fds_and_threads_stay_bounded() {
    // 256 open files, 64 concurrent sequential readers, 64 MiB of budget
    // for 1 GiB of data: the daemon's memory, sockets, descriptors and
    // threads stay within bounds.
    let server = Server::start();
    let per_file = 4 << 20;
    for i in 0..256 {
        server.put(&format!("many/{i:03}"), pattern(i, per_file));
    }
    let m = server.mount(
        BUCKET,
        &["--cache-size", "64MiB", "--max-connections", "16"],
    );
    let pid = m.pid();
    let baseline_kb = status_field(pid, "VmRSS:");
    let files: Vec<fs::File> = (0..256)
        .map(|i| fs::File::open(m.path(&format!("many/{i:03}"))).unwrap())
        .collect();
    let files = Arc::new(files);
    let max_sockets = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watcher = {
        let (max_sockets, done) = (max_sockets.clone(), done.clone());
        std::thread::spawn(move || {
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                let sockets = tcp_sockets(pid);
                max_sockets.fetch_max(sockets as u64, std::sync::atomic::Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(5));
            }
        })
    };
    let readers: Vec<_> = (0..64usize)
        .map(|t| {
            let files = files.clone();
            std::thread::spawn(move || {
                for i in (t..256).step_by(64) {
                    let mut buf = vec![0u8; 1 << 20];
                    let mut off = 0u64;
                    loop {
                        let n = files[i].read_at(&mut buf, off).unwrap();
                        if n == 0 {
                            break;
                        }
                        assert!(
                            buf[..n] == pattern(i as u64, per_file)[off as usize..off as usize + n]
                        );
                        off += n as u64;
                    }
                    assert_eq!(off, per_file as u64);
                }
            })
        })
        .collect();
    for r in readers {
        r.join().unwrap();
    }
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    watcher.join().unwrap();
    let peak_kb = status_field(pid, "VmHWM:");
    let threads = status_field(pid, "Threads:");
    let fds = fs::read_dir(format!("/proc/{pid}/fd")).unwrap().count();
    eprintln!(
        "baseline RSS {} MiB, peak RSS {} MiB, {threads} threads, {fds} fds, at most {} sockets",
        baseline_kb / 1024,
        peak_kb / 1024,
        max_sockets.load(std::sync::atomic::Ordering::Relaxed)
    );
    // Budget 64 MiB; allow 100 MiB for code, runtime and kernel buffers.
    assert!(
        peak_kb < baseline_kb + (64 + 100) * 1024,
        "peak RSS {peak_kb} KiB over the budget"
    );
    // --max-connections bounds requests in flight and open sockets: every
    // socket holds a permit from before its connect until it closes.
    assert!(
        max_sockets.load(std::sync::atomic::Ordering::Relaxed) <= 16,
        "more sockets than --max-connections 16"
    );
    assert!(threads < 40, "{threads} threads");
    assert!(fds < 64, "{fds} descriptors");
}

/// TCP sockets the process has open: its socket descriptors whose inode is
/// in /proc/net/tcp or tcp6 (the runtime also holds a Unix socketpair).
fn tcp_sockets(pid: u32) -> usize {
    let mut tcp = std::collections::HashSet::new();
    for table in ["tcp", "tcp6"] {
        let text = fs::read_to_string(format!("/proc/{pid}/net/{table}")).unwrap_or_default();
        for line in text.lines().skip(1) {
            if let Some(inode) = line.split_whitespace().nth(9) {
                tcp.insert(inode.to_string());
            }
        }
    }
    fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| {
            d.filter_map(|e| fs::read_link(e.ok()?.path()).ok())
                .filter_map(|l| {
                    let l = l.to_string_lossy().into_owned();
                    Some(l.strip_prefix("socket:[")?.strip_suffix(']')?.to_string())
                })
                .filter(|inode| tcp.contains(inode))
                .count()
        })
        .unwrap_or(0)
}
