#!/usr/bin/env python3
"""Helper of scripts/bench (python 3.11, standard library only).

`bench.py run ...` is the orchestrator: it starts the test S3 server, mounts
cwfs and its peers, runs every workload in a child process with a timeout,
and prints the table. The other subcommands are those children (one
measurement each, one JSON line on stdout) and the fake token exchange.

Every process started here is recorded in WORK/state/pids and every mount in
WORK/state/mounts, so scripts/bench's trap can clean up even if this process
is killed; this process also cleans up itself on exit, Ctrl-C and SIGTERM.
"""

import argparse
import hashlib
import http.server
import json
import math
import os
import platform
import random
import signal
import statistics
import subprocess
import sys
import threading
import time

MiB = 1 << 20
GiB = 1 << 30
HERE = os.path.dirname(os.path.abspath(__file__))
SELF = os.path.abspath(__file__)

REGION = "us-test-1"
ACCESS_KEY = "cwfs-bench"
SECRET_KEY = "cwfs-bench-secret"
BUCKET = "bench"
SEED = 20240601


def emit(obj):
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def pct(values, p):
    """Nearest-rank percentile of `values` (p in 0..100)."""
    s = sorted(values)
    if not s:
        return None
    k = max(1, math.ceil(p / 100.0 * len(s)))
    return s[k - 1]


# --------------------------------------------------------------------------
# Child workloads: each prints one JSON line.
# --------------------------------------------------------------------------


def w_ttfb(a):
    t0 = time.perf_counter()
    fd = os.open(a.file, os.O_RDONLY)
    b = os.read(fd, 1)
    t1 = time.perf_counter()
    os.close(fd)
    if len(b) != 1:
        raise SystemExit(f"read {len(b)} bytes, wanted 1")
    emit({"ms": (t1 - t0) * 1000.0})


def read_whole(path, bufsize=MiB):
    n = 0
    with open(path, "rb", buffering=0) as f:
        while True:
            b = f.read(bufsize)
            if not b:
                return n
            n += len(b)


def w_files(a):
    """Read `count` files DIR/000000... whole with `workers` threads."""
    paths = [os.path.join(a.dir, f"{i:06d}") for i in range(a.count)]
    lock = threading.Lock()
    state = {"next": 0, "bytes": 0, "errors": []}

    def worker():
        while True:
            with lock:
                i = state["next"]
                state["next"] += 1
            if i >= len(paths):
                return
            try:
                n = read_whole(paths[i], a.bufsize)
            except OSError as e:
                with lock:
                    state["errors"].append(f"{paths[i]}: {e}")
                return
            with lock:
                state["bytes"] += n

    threads = [threading.Thread(target=worker) for _ in range(a.workers)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    secs = time.perf_counter() - t0
    if state["errors"]:
        raise SystemExit("; ".join(state["errors"][:3]))
    emit({"files": a.count, "bytes": state["bytes"], "seconds": secs,
          "files_s": a.count / secs, "mib_s": state["bytes"] / MiB / secs})


def w_rand(a):
    """`count` preads of `size` bytes at random offsets aligned to `size`."""
    rng = random.Random(a.seed)
    fd = os.open(a.file, os.O_RDONLY)
    try:
        fsize = os.fstat(fd).st_size
        slots = fsize // a.size
        lat = []
        for _ in range(a.count):
            off = rng.randrange(slots) * a.size
            t0 = time.perf_counter()
            b = os.pread(fd, a.size, off)
            lat.append((time.perf_counter() - t0) * 1000.0)
            if len(b) != a.size:
                raise SystemExit(f"pread at {off} returned {len(b)} bytes, wanted {a.size}")
    finally:
        os.close(fd)
    emit({"n": len(lat), "p50_ms": pct(lat, 50), "p99_ms": pct(lat, 99),
          "mean_ms": statistics.fmean(lat), "max_ms": max(lat)})


def w_randloop(a):
    """Random `size` preads over several files for `seconds`, dropping each
    read range from the page cache afterwards so reads keep reaching the
    filesystem daemon (and, past its cache, S3)."""
    rng = random.Random(a.seed)
    fds = [os.open(f, os.O_RDONLY) for f in a.files]
    sizes = [os.fstat(fd).st_size for fd in fds]
    lat, errors = [], []
    t_end = time.monotonic() + a.seconds
    while time.monotonic() < t_end:
        i = rng.randrange(len(fds))
        off = rng.randrange(sizes[i] // a.size) * a.size
        t0 = time.perf_counter()
        try:
            b = os.pread(fds[i], a.size, off)
        except OSError as e:
            errors.append(f"{a.files[i]}@{off}: {e}")
            time.sleep(0.05)
            continue
        lat.append((time.perf_counter() - t0) * 1000.0)
        if len(b) != a.size:
            errors.append(f"{a.files[i]}@{off}: short read {len(b)}")
        os.posix_fadvise(fds[i], off, a.size, os.POSIX_FADV_DONTNEED)
    for fd in fds:
        os.close(fd)
    emit({"n": len(lat), "errors": len(errors), "first_errors": errors[:3],
          "p50_ms": pct(lat, 50), "p99_ms": pct(lat, 99),
          "max_ms": max(lat) if lat else None})


def w_sha(a):
    h = hashlib.sha256()
    n = 0
    with open(a.file, "rb", buffering=0) as f:
        while True:
            b = f.read(4 * MiB)
            if not b:
                break
            h.update(b)
            n += len(b)
    emit({"sha256": h.hexdigest(), "bytes": n})


def w_exchange(a):
    """Fake token exchange (AWS container-credentials protocol) on 127.0.0.1:
    hands out the test server's key pair with no session token and an
    Expiration `lifetime` seconds ahead, so cwfs renews them continually."""
    count = [0]
    lock = threading.Lock()

    class H(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            if self.headers.get("Authorization", "") != f"Bearer {a.token}":
                self.send_response(401)
                self.end_headers()
                return
            exp = time.gmtime(time.time() + a.lifetime)
            body = json.dumps({
                "AccessKeyId": a.key,
                "SecretAccessKey": a.secret,
                "Expiration": time.strftime("%Y-%m-%dT%H:%M:%SZ", exp),
            }).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            with lock:
                count[0] += 1
                tmp = a.count_file + ".tmp"
                with open(tmp, "w") as f:
                    f.write(f"{count[0]}\n")
                os.replace(tmp, a.count_file)

        def log_message(self, *args):
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    print(f"READY {srv.server_address[1]}", flush=True)
    srv.serve_forever()


# --------------------------------------------------------------------------
# Orchestrator
# --------------------------------------------------------------------------


class Fail(Exception):
    """A workload or mount failed; the message says why."""


class Interrupted(BaseException):
    pass


_interrupted = False


def on_signal(signum, _frame):
    # Ctrl-C reaches this process twice (from the terminal and forwarded by
    # scripts/bench): only the first one interrupts, so cleanup is not cut.
    global _interrupted
    if _interrupted:
        return
    _interrupted = True
    raise Interrupted(f"signal {signum}")


def mounted(path):
    try:
        with open("/proc/self/mountinfo") as f:
            for line in f:
                if line.split()[4] == path:
                    return True
    except OSError:
        pass
    return False


def tail(path, n=8):
    try:
        with open(path, errors="replace") as f:
            lines = f.read().splitlines()
        return " | ".join(l.strip() for l in lines[-n:] if l.strip())
    except OSError:
        return ""


def vm_hwm_mib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    raise Fail(f"no VmHWM for pid {pid}")


class Mount:
    def __init__(self, fs, path, proc, log):
        self.fs, self.path, self.proc, self.log = fs, path, proc, log


class Bench:
    def __init__(self, a):
        self.a = a
        self.work = a.work
        self.bin = a.bin
        self.state = os.path.join(self.work, "state")
        os.makedirs(self.state, exist_ok=True)
        for f in ("pids", "mounts"):
            open(os.path.join(self.state, f), "w").close()
        for d in ("logs", "mnt"):
            subprocess.run(["rm", "-rf", "--one-file-system", os.path.join(self.work, d)],
                           check=False)
        self.procs = {}     # pid -> Popen
        self.workers = set()  # pids of measurement children (stopped first)
        self.mounts = {}    # path -> Mount
        self.server = None
        self.endpoint = None
        self.exchange = None
        self.unavailable = {}   # fs -> reason
        self.mount_seq = 0
        q = a.quick
        avail_gib = self.mem_available() / GiB
        par = 16 * MiB if q else (GiB if avail_gib >= 14 else 256 * MiB)
        self.cfg = {
            "big": 64 * MiB if q else GiB,
            "par_count": 4, "par": par,
            "small_count": 200 if q else 2000, "small": 64 * 1024,
            "dir_count": 1000 if q else 10000,
            "many_count": 64, "many": MiB if q else 16 * MiB,
            "rand_count": 200 if q else 2000,
            "creds_seconds": 12 if q else 30,
        }
        self.fss = ["cwfs"] if a.only == "cwfs" else ["cwfs", "s3fs", "rclone"]
        self.results = {fs: {} for fs in self.fss + ["ceiling"]}
        self.errors = []
        self.verify = {}
        self.notes = {}

    @staticmethod
    def mem_available():
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
        return 0

    # ---- bookkeeping for scripts/bench's trap ----
    def _save_state(self):
        with open(os.path.join(self.state, "pids.tmp"), "w") as f:
            for pid in self.procs:
                f.write(f"{pid}\n")
        os.replace(os.path.join(self.state, "pids.tmp"), os.path.join(self.state, "pids"))
        with open(os.path.join(self.state, "mounts.tmp"), "w") as f:
            for p in self.mounts:
                f.write(f"{p}\n")
        os.replace(os.path.join(self.state, "mounts.tmp"), os.path.join(self.state, "mounts"))

    def spawn(self, cmd, log, env=None, stdout_path=None):
        """Start a long-lived process (a daemon, the exchange) in its own
        session, so Ctrl-C reaches only this script, which then unmounts."""
        with open(stdout_path or log, "ab") as out, open(log, "ab") as err:
            p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                                 env=env, start_new_session=True)
        self.procs[p.pid] = p
        self._save_state()
        return p

    def stop(self, p, grace=10.0):
        """Stop a process this script started (by its pid only)."""
        if p.poll() is None:
            try:
                p.send_signal(signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                p.wait(grace)
            except subprocess.TimeoutExpired:
                try:
                    p.kill()
                except ProcessLookupError:
                    pass
                try:
                    p.wait(5)
                except subprocess.TimeoutExpired:
                    pass
        self.procs.pop(p.pid, None)
        self._save_state()

    def log(self, msg):
        print(msg, file=sys.stderr, flush=True)

    # ---- the server ----
    def start_server(self):
        c = self.cfg
        objs = [
            f"{BUCKET}:big:1:{c['big']}",
            f"{BUCKET}:par:{c['par_count']}:{c['par']}",
            f"{BUCKET}:small:{c['small_count']}:{c['small']}",
            f"{BUCKET}:dir:{c['dir_count']}:1",
            f"{BUCKET}:many:{c['many_count']}:{c['many']}",
        ]
        cmd = [os.path.join(self.bin, "cwfs-testserver"), "--region", REGION,
               "--access-key", ACCESS_KEY, "--secret-key", SECRET_KEY]
        for o in objs:
            cmd += ["--objects", o]
        out = os.path.join(self.work, "server.out")
        err = os.path.join(self.work, "server.err")
        self.log(f"== starting cwfs-testserver ({' '.join(objs)})")
        with open(out, "wb") as o, open(err, "wb") as e:
            p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=o, stderr=e,
                                 start_new_session=True)
        self.procs[p.pid] = p
        self._save_state()
        self.server = p
        deadline = time.monotonic() + self.a.server_timeout
        while time.monotonic() < deadline:
            with open(out) as f:
                for line in f:
                    if line.startswith("READY "):
                        self.endpoint = line.split()[1].strip()
                        self.log(f"   {self.endpoint} (pid {p.pid})")
                        return
            if p.poll() is not None:
                raise Fail(f"cwfs-testserver exited with {p.returncode}: {tail(err)}")
            time.sleep(0.2)
        raise Fail(f"cwfs-testserver not ready after {self.a.server_timeout}s: {tail(err)}")

    def base_env(self):
        env = dict(os.environ)
        for k in list(env):
            if k.startswith(("AWS_", "RCLONE_")):
                del env[k]
        env["AWS_ACCESS_KEY_ID"] = ACCESS_KEY
        env["AWS_SECRET_ACCESS_KEY"] = SECRET_KEY
        return env

    # ---- mounts ----
    def mount(self, fs, extra=None, creds="static"):
        if fs in self.unavailable:
            raise Fail(self.unavailable[fs])
        self.mount_seq += 1
        path = os.path.join(self.work, "mnt", f"{fs}-{self.mount_seq}")
        os.makedirs(path, exist_ok=True)
        log = os.path.join(self.work, "logs", f"{fs}-{self.mount_seq}.log")
        os.makedirs(os.path.dirname(log), exist_ok=True)
        env = self.base_env()
        if fs == "cwfs":
            cmd = [os.path.join(self.bin, "cwfs"), "mount", "--foreground",
                   "--endpoint-url", self.endpoint, "--region", REGION, "--force-path-style",
                   "--log-file", log]
            if creds == "exchange":
                del env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"]
                cmd += ["--credentials-uri", f"http://127.0.0.1:{self.exchange['port']}/creds",
                        "--token-file", self.exchange["token_file"]]
            cmd += (extra or []) + [BUCKET, path]
        elif fs == "s3fs":
            pw = os.path.join(self.state, "s3fs.passwd")
            with open(pw, "w") as f:
                f.write(f"{ACCESS_KEY}:{SECRET_KEY}\n")
            os.chmod(pw, 0o600)
            cmd = ["s3fs", BUCKET, path, "-f",
                   "-o", f"url={self.endpoint}", "-o", "use_path_request_style",
                   "-o", f"endpoint={REGION}", "-o", f"passwd_file={pw}",
                   "-o", "listobjectsv2"] + (extra or [])
        elif fs == "rclone":
            # The environment of this machine may set AWS_CA_BUNDLE, which
            # rclone's SDK cannot apply to its own transport; it is removed
            # above with every other AWS_* variable (plain http to 127.0.0.1).
            env.update({
                "RCLONE_CONFIG_PEER_TYPE": "s3",
                "RCLONE_CONFIG_PEER_PROVIDER": "Other",
                "RCLONE_CONFIG_PEER_ENDPOINT": self.endpoint,
                "RCLONE_CONFIG_PEER_ACCESS_KEY_ID": ACCESS_KEY,
                "RCLONE_CONFIG_PEER_SECRET_ACCESS_KEY": SECRET_KEY,
                "RCLONE_CONFIG_PEER_REGION": REGION,
                "RCLONE_CONFIG_PEER_FORCE_PATH_STYLE": "true",
                "RCLONE_CONFIG": os.path.join(self.state, "rclone.conf"),
            })
            open(env["RCLONE_CONFIG"], "a").close()
            cmd = ["rclone", "mount", f"peer:{BUCKET}", path,
                   "--log-file", log, "--log-level", "NOTICE"] + (extra or [])
        else:
            raise ValueError(fs)
        p = self.spawn(cmd, log + ".out", env=env)
        self.mounts[path] = Mount(fs, path, p, log)
        self._save_state()
        deadline = time.monotonic() + self.a.mount_timeout
        while time.monotonic() < deadline:
            if mounted(path):
                # It is in the mount table; wait until it answers.
                left = max(1.0, deadline - time.monotonic())
                try:
                    subprocess.run(["stat", "-c", "%i", path], stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL, timeout=left, check=True)
                    return self.mounts[path]
                except (subprocess.TimeoutExpired, subprocess.CalledProcessError) as e:
                    m = self.mounts[path]
                    self.unmount(m)
                    raise Fail(f"{fs} mounted but does not answer ({e})")
            if p.poll() is not None:
                m = self.mounts.pop(path)
                self._save_state()
                self.procs.pop(p.pid, None)
                why = tail(log + ".out") or tail(log)
                raise Fail(f"{fs} exited with {p.returncode} before mounting: {why}")
            time.sleep(0.05)
        m = self.mounts[path]
        self.unmount(m)
        raise Fail(f"{fs} did not mount within {self.a.mount_timeout}s: {tail(log + '.out') or tail(log)}")

    def unmount(self, m):
        if mounted(m.path):
            r = subprocess.run(["umount", m.path], stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, timeout=30)
            if r.returncode != 0 and mounted(m.path):
                subprocess.run(["umount", "-l", m.path], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, timeout=30)
        # The daemon exits once unmounted; otherwise stop it.
        try:
            m.proc.wait(15)
        except subprocess.TimeoutExpired:
            pass
        self.stop(m.proc)
        if mounted(m.path):
            subprocess.run(["umount", "-l", m.path], stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL, timeout=30)
        self.mounts.pop(m.path, None)
        self._save_state()
        try:
            os.rmdir(m.path)
        except OSError:
            pass

    def cleanup(self):
        for pid in list(self.workers):
            if pid in self.procs:
                self.stop(self.procs[pid], grace=2)
        for m in list(self.mounts.values()):
            try:
                self.unmount(m)
            except Exception as e:  # keep cleaning
                self.log(f"cleanup: unmounting {m.path}: {e}")
        for p in list(self.procs.values()):
            self.stop(p, grace=5)

    # ---- running children ----
    def child(self, cmd, timeout=None, mount=None, env=None):
        """Run one measurement child; returns its JSON line. On timeout the
        child and the filesystem daemon (if given) are stopped so a hung
        read cannot hang the benchmark."""
        timeout = timeout or self.a.timeout
        p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, env=env, start_new_session=True)
        self.procs[p.pid] = p
        self.workers.add(p.pid)
        self._save_state()
        try:
            out, err = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            if mount is not None:
                self.stop(mount.proc, grace=2)
            try:
                p.communicate(timeout=10)
            except subprocess.TimeoutExpired:
                pass
            self.procs.pop(p.pid, None)
            self._save_state()
            what = " ".join(os.path.basename(x) for x in cmd[:3])
            raise Fail(f"timed out after {timeout}s: {what}")
        self.procs.pop(p.pid, None)
        self._save_state()
        if p.returncode != 0:
            msg = err.decode(errors="replace").strip().splitlines()
            raise Fail(f"{os.path.basename(cmd[0])} {cmd[1] if len(cmd) > 1 else ''} exited "
                       f"{p.returncode}: {msg[-1] if msg else ''}")
        return out.decode(errors="replace")

    def py(self, *args, mount=None, timeout=None):
        out = self.child([sys.executable, SELF] + [str(x) for x in args], timeout, mount)
        return json.loads(out.strip().splitlines()[-1])

    def timed(self, cmd, mount=None, timeout=None):
        t0 = time.perf_counter()
        out = self.child(cmd, timeout, mount)
        return time.perf_counter() - t0, out

    def run_dds(self, paths, size, mount):
        """dd every path concurrently; aggregate MiB/s over the wall time."""
        t0 = time.perf_counter()
        ps = []
        for path in paths:
            p = subprocess.Popen(["dd", f"if={path}", "of=/dev/null", "bs=1M"],
                                 stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                 stderr=subprocess.PIPE, start_new_session=True)
            self.procs[p.pid] = p
            self.workers.add(p.pid)
            ps.append(p)
        self._save_state()
        deadline = time.monotonic() + self.a.timeout
        errs = []
        try:
            for p in ps:
                left = deadline - time.monotonic()
                try:
                    _, err = p.communicate(timeout=max(0.1, left))
                except subprocess.TimeoutExpired:
                    for q in ps:
                        if q.poll() is None:
                            q.kill()
                    self.stop(mount.proc, grace=2)
                    raise Fail(f"dd timed out after {self.a.timeout}s")
                err = err.decode(errors="replace")
                first = err.splitlines()[-1] if err.strip() else ""
                got = None
                for line in err.splitlines():
                    if " bytes" in line and "copied" in line:
                        got = int(line.split()[0])
                if p.returncode != 0 or got != size:
                    errs.append(f"dd {p.args[1]}: rc {p.returncode}, {got} bytes of {size}: {first}")
        finally:
            for p in ps:
                if p.poll() is None:
                    p.kill()
                    p.wait()
                self.procs.pop(p.pid, None)
            self._save_state()
        secs = time.perf_counter() - t0
        if errs:
            raise Fail("; ".join(errs))
        return len(paths) * size / MiB / secs

    @staticmethod
    def drop_caches():
        os.sync()
        try:
            with open("/proc/sys/vm/drop_caches", "w") as f:
                f.write("3\n")
        except OSError as e:
            raise Fail(f"cannot drop the page cache: {e}")

    # ---- workloads (each mounts fresh and unmounts) ----
    def with_mount(self, fs, fn, extra=None, creds="static"):
        m = self.mount(fs, extra, creds)
        try:
            return fn(m)
        finally:
            self.unmount(m)

    def wl_ttfb(self, fs):
        def f(m):
            self.drop_caches()
            return {"ttfb_ms": self.py("ttfb", os.path.join(m.path, "big/000000"), mount=m)["ms"]}
        return self.with_mount(fs, f)

    def wl_seq(self, fs):
        size = self.cfg["big"]

        def f(m):
            path = os.path.join(m.path, "big/000000")
            self.drop_caches()
            cold = self.run_dds([path], size, m)
            warm = self.run_dds([path], size, m)
            return {"seq_cold": cold, "seq_warm": warm}
        return self.with_mount(fs, f)

    def wl_par(self, fs):
        c = self.cfg

        def f(m):
            paths = [os.path.join(m.path, f"par/{i:06d}") for i in range(c["par_count"])]
            self.drop_caches()
            return {"par4": self.run_dds(paths, c["par"], m)}
        return self.with_mount(fs, f)

    def wl_small(self, fs):
        c = self.cfg

        def f(m):
            self.drop_caches()
            r = self.py("files", os.path.join(m.path, "small"), "--count", c["small_count"],
                        "--workers", 8, mount=m)
            if r["bytes"] != c["small_count"] * c["small"]:
                raise Fail(f"read {r['bytes']} bytes of {c['small_count'] * c['small']}")
            return {"small": r["files_s"]}
        return self.with_mount(fs, f)

    def wl_rand(self, fs, size, name):
        def f(m):
            self.drop_caches()
            r = self.py("rand", os.path.join(m.path, "big/000000"), "--size", size,
                        "--count", self.cfg["rand_count"], "--seed", SEED, mount=m)
            return {f"{name}_p50": r["p50_ms"], f"{name}_p99": r["p99_ms"]}
        return self.with_mount(fs, f)

    def wl_ls(self, fs):
        n = self.cfg["dir_count"]

        def f(m):
            d = os.path.join(m.path, "dir")
            self.drop_caches()
            out = {}
            for which in ("ls_cold", "ls_warm"):
                secs, text = self.timed(["ls", "-l", d], mount=m)
                lines = len(text.splitlines()) - 1  # "total N"
                if lines != n:
                    raise Fail(f"ls -l listed {lines} entries, wanted {n}")
                out[which] = secs
            return out
        return self.with_mount(fs, f)

    def wl_rss(self, fs):
        c = self.cfg
        extra = ["--cache-size", "1GiB"] if fs == "cwfs" else None

        def f(m):
            self.drop_caches()
            r = self.py("files", os.path.join(m.path, "many"), "--count", c["many_count"],
                        "--workers", c["many_count"], mount=m)
            if r["bytes"] != c["many_count"] * c["many"]:
                raise Fail(f"read {r['bytes']} bytes of {c['many_count'] * c['many']}")
            return {"rss": vm_hwm_mib(m.proc.pid)}
        return self.with_mount(fs, f, extra=extra)

    def wl_creds(self, fs):
        """Random 1 MiB reads for creds_seconds with static keys, then with
        keys from the fake exchange that live 10 s."""
        c = self.cfg
        files = ["big/000000"] + [f"par/{i:06d}" for i in range(c["par_count"])]
        out = {}
        for creds in ("static", "exchange"):
            before = self.exchange_count()

            def f(m):
                self.drop_caches()
                return self.py("randloop", "--seconds", c["creds_seconds"], "--size", MiB,
                               "--seed", SEED, *[os.path.join(m.path, x) for x in files],
                               mount=m, timeout=c["creds_seconds"] + self.a.timeout)
            r = self.with_mount(fs, f, creds=creds)
            if r["errors"]:
                raise Fail(f"{creds} keys: {r['errors']} failed reads, e.g. {r['first_errors']}")
            out[f"creds_{creds}_p50"] = r["p50_ms"]
            out[f"creds_{creds}_p99"] = r["p99_ms"]
            out[f"creds_{creds}_n"] = r["n"]
            if creds == "exchange":
                out["creds_renewals"] = self.exchange_count() - before - 1
        return out

    def start_exchange(self):
        token_file = os.path.join(self.state, "api-token")
        with open(token_file, "w") as f:
            f.write("bench-api-token\n")
        os.chmod(token_file, 0o600)
        count_file = os.path.join(self.state, "exchange.count")
        with open(count_file, "w") as f:
            f.write("0\n")
        out = os.path.join(self.work, "exchange.out")
        for f in (out, out + ".err"):
            open(f, "w").close()
        p = self.spawn([sys.executable, SELF, "exchange", "--key", ACCESS_KEY, "--secret",
                        SECRET_KEY, "--lifetime", "10", "--token", "bench-api-token",
                        "--count-file", count_file], out + ".err", stdout_path=out)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            with open(out) as f:
                t = f.read()
            if t.startswith("READY "):
                self.exchange = {"port": int(t.split()[1]), "token_file": token_file,
                                 "count_file": count_file, "proc": p}
                return
            if p.poll() is not None:
                break
            time.sleep(0.05)
        raise Fail(f"the fake token exchange did not start: {tail(out + '.err')}")

    def exchange_count(self):
        try:
            with open(self.exchange["count_file"]) as f:
                return int(f.read().strip() or 0)
        except (OSError, ValueError, TypeError):
            return 0

    def wl_verify(self, fs):
        """sha256 of the big file read cold through the mount, and of a few
        small files, against the same objects read by cwfs-bench."""
        def f(m):
            self.drop_caches()
            got = self.py("sha", os.path.join(m.path, "big/000000"), mount=m)
            res = {"big": got["sha256"] == self.ref_sha["big/000000"]}
            for k in self.sample_keys():
                g = self.py("sha", os.path.join(m.path, k), mount=m)
                res[k] = g["sha256"] == self.ref_sha[k]
            return res
        return self.with_mount(fs, f)

    def sample_keys(self):
        n = self.cfg["small_count"]
        return [f"small/{i:06d}" for i in sorted({0, 1, n // 2, n - 1})] + ["dir/000000"]

    # ---- the ceiling ----
    def bench_cmd(self, *args):
        return [os.path.join(self.bin, "cwfs-bench"), "--endpoint", self.endpoint, "--region",
                REGION, "--path-style"] + [str(a) for a in args]

    def bench_json(self, *args):
        out = self.child(self.bench_cmd(*args), env=self.base_env())
        return json.loads(out.strip().splitlines()[-1])

    def reference_sha(self, key, streams=8):
        p = subprocess.Popen(self.bench_cmd("get", "--bucket", BUCKET, "--key", key,
                                            "--streams", streams, "--out", "-"),
                             stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, env=self.base_env(), start_new_session=True)
        self.procs[p.pid] = p
        self._save_state()
        h = hashlib.sha256()
        n = 0
        result = {}

        def reader():
            nonlocal n
            while True:
                b = p.stdout.read(4 * MiB)
                if not b:
                    return
                h.update(b)
                n += len(b)
        t = threading.Thread(target=reader, daemon=True)
        t.start()
        t.join(self.a.timeout)
        if t.is_alive():
            p.kill()
            raise Fail(f"cwfs-bench get --out - {key}: timed out")
        err = p.stderr.read().decode(errors="replace")
        p.wait()
        self.procs.pop(p.pid, None)
        self._save_state()
        if p.returncode != 0:
            raise Fail(f"cwfs-bench get {key}: {err.strip()}")
        result = json.loads(err.strip().splitlines()[-1])
        if result["bytes"] != n:
            raise Fail(f"cwfs-bench get {key}: wrote {n} bytes of {result['bytes']}")
        return h.hexdigest()

    def wl_ceiling(self):
        c = self.cfg
        out = {}
        r = self.bench_json("get", "--bucket", BUCKET, "--key", "big/000000", "--streams", 1)
        out["ceil_get1"] = r["mib_s"]
        r = self.bench_json("get", "--bucket", BUCKET, "--key", "big/000000", "--streams", 8,
                            "--part", 16)
        out["ceil_get8"] = r["mib_s"]
        r = self.bench_json("small", "--bucket", BUCKET, "--prefix", "small",
                            "--count", c["small_count"], "--workers", 8)
        out["ceil_small"] = r["files_s"]
        r = self.bench_json("list", "--bucket", BUCKET, "--prefix", "dir")
        if r["keys"] != c["dir_count"]:
            raise Fail(f"cwfs-bench list: {r['keys']} keys, wanted {c['dir_count']}")
        out["ceil_list"] = r["seconds"]
        return out

    # ---- main loop ----
    def record(self, fs, run, values):
        for k, v in values.items():
            self.results[fs].setdefault(k, []).append(v)

    def attempt(self, fs, name, fn, run):
        t0 = time.monotonic()
        try:
            vals = fn()
            self.record(fs, run, vals)
            shown = ", ".join(f"{k}={fmt(v)}" for k, v in vals.items())
            self.log(f"   {fs:7s} {name:10s} {shown}  ({time.monotonic() - t0:.1f}s)")
        except Fail as e:
            msg = str(e)
            self.errors.append({"fs": fs, "workload": name, "run": run, "error": msg})
            self.log(f"   {fs:7s} {name:10s} FAILED: {msg}")
            if "before mounting" in msg or "did not mount" in msg or "does not answer" in msg:
                if fs != "cwfs":
                    self.unavailable[fs] = msg
                    self.log(f"   {fs}: not mountable; its column will show n/a")

    def main(self):
        started = time.monotonic()
        self.load_start = os.getloadavg()
        self.start_server()
        self.start_exchange()
        self.log("== reference checksums (cwfs-bench get, 8 streams)")
        self.ref_sha = {"big/000000": self.reference_sha("big/000000")}
        for k in self.sample_keys():
            self.ref_sha[k] = self.reference_sha(k, streams=1)
        self.log(f"   big/000000 sha256 {self.ref_sha['big/000000']}")
        for fs in self.fss:
            t0 = time.monotonic()
            try:
                res = self.wl_verify(fs)
                self.verify[fs] = {"ok": all(res.values()), "detail": res}
                self.log(f"   {fs:7s} verify     {'ok' if all(res.values()) else 'MISMATCH ' + str(res)}"
                         f"  ({time.monotonic() - t0:.1f}s)")
            except Fail as e:
                self.verify[fs] = {"ok": None, "error": str(e)}
                self.log(f"   {fs:7s} verify     FAILED: {e}")
                if fs != "cwfs" and ("mount" in str(e) or "answer" in str(e)):
                    self.unavailable[fs] = str(e)
        for run in range(1, self.a.runs + 1):
            self.log(f"== run {run}/{self.a.runs}")
            self.attempt("ceiling", "ceiling", self.wl_ceiling, run)
            for fs in self.fss:
                if fs in self.unavailable:
                    continue
                for name, fn in [
                    ("ttfb", lambda: self.wl_ttfb(fs)),
                    ("seq", lambda: self.wl_seq(fs)),
                    ("par4", lambda: self.wl_par(fs)),
                    ("small", lambda: self.wl_small(fs)),
                    ("rand1m", lambda: self.wl_rand(fs, MiB, "rand1m")),
                    ("rand4k", lambda: self.wl_rand(fs, 4096, "rand4k")),
                    ("ls", lambda: self.wl_ls(fs)),
                    ("rss", lambda: self.wl_rss(fs)),
                ]:
                    if fs in self.unavailable:
                        break
                    self.attempt(fs, name, fn, run)
                if fs == "cwfs":
                    self.attempt(fs, "creds", lambda: self.wl_creds(fs), run)
        self.elapsed = time.monotonic() - started
        self.load_end = os.getloadavg()


def fmt(v):
    if v is None:
        return "n/a"
    if isinstance(v, str):
        return v
    if isinstance(v, (bool, int)):
        return str(v)
    a = abs(v)
    if a >= 100:
        return f"{v:.0f}"
    if a >= 10:
        return f"{v:.1f}"
    if a >= 1:
        return f"{v:.2f}"
    return f"{v:.3f}"


def size_label(n):
    if n >= GiB and n % GiB == 0:
        return f"{n // GiB} GiB"
    if n >= MiB and n % MiB == 0:
        return f"{n // MiB} MiB"
    return f"{n // 1024} KiB"


def report(b):
    c = b.cfg
    med = {fs: {k: statistics.median(v) for k, v in r.items()} for fs, r in b.results.items()}
    big, par = size_label(c["big"]), size_label(c["par"])
    rows = [
        # key, label, better ("hi"/"lo"), ceiling key
        ("seq_cold", f"cold sequential read, {big} (MiB/s)", "hi", "ceil_get8"),
        ("seq_warm", f"warm re-read, same mount (MiB/s)", "hi", None),
        ("par4", f"{c['par_count']} files × {par} in parallel, aggregate (MiB/s)", "hi", "ceil_get8"),
        ("small", f"{c['small_count']:,} × 64 KiB files, 8 workers (files/s)", "hi", "ceil_small"),
        ("rand1m_p50", f"{c['rand_count']:,} random 1 MiB reads, p50 (ms)", "lo", None),
        ("rand1m_p99", f"{c['rand_count']:,} random 1 MiB reads, p99 (ms)", "lo", None),
        ("rand4k_p50", f"{c['rand_count']:,} random 4 KiB reads, p50 (ms)", "lo", None),
        ("rand4k_p99", f"{c['rand_count']:,} random 4 KiB reads, p99 (ms)", "lo", None),
        ("ls_cold", f"ls -l of {c['dir_count']:,} entries, cold (s)", "lo", "ceil_list"),
        ("ls_warm", f"ls -l of {c['dir_count']:,} entries, warm (s)", "lo", None),
        ("ttfb_ms", f"time to first byte, fresh mount (ms)", "lo", None),
        ("rss", f"peak RSS, {c['many_count']} files read at once (MiB) [cwfs --cache-size 1GiB]", "lo", None),
        ("creds_static_p50", f"random 1 MiB reads {c['creds_seconds']} s, static keys, p50 (ms)", "lo", None),
        ("creds_static_p99", f"random 1 MiB reads {c['creds_seconds']} s, static keys, p99 (ms)", "lo", None),
        ("creds_exchange_p50", f"same, keys renewed every ~7 s, p50 (ms)", "lo", None),
        ("creds_exchange_p99", f"same, keys renewed every ~7 s, p99 (ms)", "lo", None),
        ("ceil_get1", f"S3 ceiling: one GET of {big} (MiB/s)", "hi", "ceil_get1"),
        ("ceil_get8", f"S3 ceiling: 8 × 16 MiB ranged GETs of {big} (MiB/s)", "hi", "ceil_get8"),
    ]
    peers = [fs for fs in ("s3fs", "rclone")]
    header = ["workload", "cwfs", "s3fs", "rclone", "ceiling", "cwfs/ceiling", "cwfs/best peer"]
    table = []
    for key, label, better, ckey in rows:
        def val(fs):
            if fs not in med:
                return None
            return med[fs].get(key)
        cw = val("cwfs")
        ceil = med["ceiling"].get(ckey) if ckey else None
        pv = {fs: val(fs) for fs in peers}
        cell = {}
        for fs in ("cwfs", "s3fs", "rclone"):
            v = val(fs)
            if key.startswith("ceil_") or (key.startswith("creds_") and fs != "cwfs"):
                cell[fs] = "—"          # does not apply
            elif fs not in b.fss:
                cell[fs] = "skipped"
            elif v is not None and b.verify.get(fs, {}).get("ok") is False:
                cell[fs] = fmt(v) + " (wrong data)"
            else:
                cell[fs] = fmt(v)
        ratio_c = ratio_p = None
        if cw is not None and ceil is not None and not key.startswith("ceil_"):
            ratio_c = cw / ceil if better == "hi" else ceil / cw
        known = [v for v in pv.values() if v is not None]
        if cw is not None and known and not key.startswith(("ceil_", "creds_")):
            bestp = max(known) if better == "hi" else min(known)
            ratio_p = cw / bestp if better == "hi" else (bestp / cw if cw > 0 else None)
        table.append([label, cell["cwfs"], cell["s3fs"], cell["rclone"], fmt(ceil) if ceil is not None else "—",
                      f"{ratio_c:.2f}×" if ratio_c is not None else "—",
                      f"{ratio_p:.2f}×" if ratio_p is not None else "—"])
    widths = [max(len(str(r[i])) for r in table + [header]) for i in range(len(header))]

    def line(r):
        return "| " + " | ".join(str(x).ljust(widths[i]) if i == 0 else str(x).rjust(widths[i])
                                 for i, x in enumerate(r)) + " |"
    md = [line(header),
          "|" + "|".join("-" * (widths[0] + 2) if i == 0 else "-" * (widths[i] + 1) + ":"
                         for i in range(len(header))) + "|"]
    md += [line(r) for r in table]
    renew = med["cwfs"].get("creds_renewals")
    notes = [
        f"Medians of {b.a.runs} run(s){' (--quick: small sizes, smoke test only)' if b.a.quick else ''}; "
        f"{os.cpu_count()} CPUs, {Bench.mem_available() / GiB:.0f} GiB available, kernel {platform.release()}; "
        f"all traffic to cwfs-testserver (in-memory S3) on 127.0.0.1.",
        "Ratios: >1 means cwfs is better. Throughput rows: cwfs ÷ other; time, latency and RSS "
        "rows: other ÷ cwfs. 'best peer' is the better of s3fs and rclone.",
        "Cold = fresh mount for every run and `echo 3 > /proc/sys/vm/drop_caches` before reading "
        "(a fresh FUSE mount also starts with an empty page cache for its files); warm = the same "
        "file or directory again in the same mount, page cache and daemon caches kept.",
        "Each workload row uses its own fresh mount. Sequential reads are `dd bs=1M`; small files "
        "are read by 8 Python threads (open, read to EOF, close); random reads are os.pread at "
        f"offsets aligned to the read size, seed {SEED}, timed with perf_counter. The {big} file has "
        f"only {c['big'] // MiB:,} aligned 1 MiB offsets, so most of the {c['rand_count']:,} random "
        "1 MiB reads revisit one already read: their p50 is mostly page-cache hits and their p99 "
        "the misses.",
        "The daemons run in the foreground under this script (cwfs mount --foreground, s3fs -f, "
        "rclone mount without --daemon) so their PIDs are known exactly; the RSS row is VmHWM "
        "of that process after the reads.",
        "Ceiling = cwfs-bench (the cwfs S3 client, no FUSE): sequential rows compare with 8 × 16 MiB "
        "ranged GETs, small files with 8 workers GETting whole objects, cold ls with a paginated "
        "ListObjectsV2 of the directory.",
        "Defaults everywhere except `--cache-size 1GiB` for cwfs in the RSS row. "
        "s3fs: `-o url=… -o use_path_request_style -o endpoint=us-test-1 -o listobjectsv2 -f` "
        "(no use_cache: no local disk cache). rclone: `rclone mount` with default "
        "--vfs-cache-mode off (no disk cache, 16 MiB --buffer-size per open file), s3 remote "
        "provider Other, path style.",
        f"Key renewal rows (cwfs only): reads over {c['par_count'] + 1} files "
        f"({size_label(c['big'] + c['par_count'] * c['par'])}) with each read range dropped from "
        "the page cache afterwards, so reads keep reaching cwfs and, past its block cache, S3; "
        "keys from a fake token exchange on 127.0.0.1 that live 10 s "
        f"({fmt(renew)} renewals per run, median)." if renew is not None else
        "Key renewal rows: not measured.",
    ]
    ver = []
    for fs in b.fss:
        v = b.verify.get(fs, {})
        ver.append(f"{fs}: " + ("ok" if v.get("ok") else ("MISMATCH" if v.get("ok") is False
                                                          else "not verified (" + v.get("error", "?") + ")")))
    notes.append("Data check (sha256 of the big file read cold through the mount, and of 5 small "
                 "objects, against cwfs-bench): " + "; ".join(ver) + ".")
    ls_, le = getattr(b, "load_start", None), getattr(b, "load_end", None)
    if ls_:
        busy = " — other work was running: expect noise" if ls_[0] > 1.0 or (le and le[0] > 2.5) else ""
        notes.append(f"Load average at start {ls_[0]:.2f}" + (f", at end {le[0]:.2f}" if le else "")
                     + f" ({os.cpu_count()} CPUs){busy}.")
    for fs, why in b.unavailable.items():
        notes.append(f"{fs}: n/a — {why}")
    failed = {}
    for e in b.errors:
        failed.setdefault((e["fs"], e["workload"]), e["error"])
    for (fs, wl), msg in failed.items():
        if fs in b.unavailable:
            continue
        notes.append(f"{fs} {wl} failed: {msg}")
    text = "\n".join(md) + "\n\n" + "\n".join(f"{i + 1}. {n}" for i, n in enumerate(notes)) + "\n"
    return text, med


def cmd_run(a):
    b = Bench(a)
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    status = 0
    try:
        b.main()
    except (Fail, Interrupted) as e:
        b.log(f"scripts/bench: stopped: {e}")
        status = 1
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        b.cleanup()
    if not any(b.results[fs] for fs in b.results):
        return status or 1
    text, med = report(b)
    print()
    print(text)
    os.makedirs(os.path.dirname(a.json), exist_ok=True)
    with open(os.path.splitext(a.json)[0] + ".md", "w") as f:
        f.write(text)
    meta = {
        "quick": a.quick, "runs": a.runs, "only": a.only, "sizes": b.cfg,
        "cpus": os.cpu_count(), "kernel": platform.release(),
        "elapsed_s": getattr(b, "elapsed", None), "endpoint": b.endpoint,
        "loadavg_start": getattr(b, "load_start", None), "loadavg_end": getattr(b, "load_end", None),
        "versions": a.versions,
    }
    with open(a.json, "w") as f:
        json.dump({"meta": meta, "raw": b.results, "medians": med, "verify": b.verify,
                   "errors": b.errors, "unavailable": b.unavailable}, f, indent=2)
    print(f"raw results: {a.json}; table: {os.path.splitext(a.json)[0]}.md")
    if getattr(b, "elapsed", None):
        print(f"elapsed: {b.elapsed / 60:.1f} min")
    if b.verify.get("cwfs", {}).get("ok") is not True:
        status = 1
    if any(e["fs"] in ("cwfs", "ceiling") for e in b.errors):
        status = 1
    return status


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("--bin", required=True)
    r.add_argument("--work", required=True)
    r.add_argument("--runs", type=int, default=3)
    r.add_argument("--quick", action="store_true")
    r.add_argument("--only", choices=["cwfs"])
    r.add_argument("--timeout", type=float, default=300.0, help="per workload step, seconds")
    r.add_argument("--mount-timeout", type=float, default=30.0)
    r.add_argument("--server-timeout", type=float, default=300.0)
    r.add_argument("--json", required=True)
    r.add_argument("--versions", type=json.loads, default={})
    s = sub.add_parser("ttfb")
    s.add_argument("file")
    s = sub.add_parser("files")
    s.add_argument("dir")
    s.add_argument("--count", type=int, required=True)
    s.add_argument("--workers", type=int, default=8)
    s.add_argument("--bufsize", type=int, default=MiB)
    s = sub.add_parser("rand")
    s.add_argument("file")
    s.add_argument("--size", type=int, required=True)
    s.add_argument("--count", type=int, required=True)
    s.add_argument("--seed", type=int, default=SEED)
    s = sub.add_parser("randloop")
    s.add_argument("files", nargs="+")
    s.add_argument("--seconds", type=float, required=True)
    s.add_argument("--size", type=int, required=True)
    s.add_argument("--seed", type=int, default=SEED)
    s = sub.add_parser("sha")
    s.add_argument("file")
    s = sub.add_parser("exchange")
    s.add_argument("--key", required=True)
    s.add_argument("--secret", required=True)
    s.add_argument("--token", required=True)
    s.add_argument("--lifetime", type=float, default=10.0)
    s.add_argument("--count-file", required=True)
    a = ap.parse_args()
    fn = {"run": cmd_run, "ttfb": w_ttfb, "files": w_files, "rand": w_rand,
          "randloop": w_randloop, "sha": w_sha, "exchange": w_exchange}[a.cmd]
    rc = fn(a)
    sys.exit(rc or 0)


if __name__ == "__main__":
    main()
