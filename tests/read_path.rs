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
