//! A fake token-exchange endpoint (the AWS container-credentials protocol as
//! CoreWeave serves it) on 127.0.0.1, for credentials tests.
//!
//! It accepts `Authorization: Bearer <token>` for the tokens it was told are
//! valid, issues fresh keys with a short lifetime, and registers them with
//! the test S3 server (which then accepts them, with their session token,
//! until they expire, and answers `ExpiredToken` after). It can be taken
//! "down" (connections are accepted and dropped without an answer), and it
//! records every exchange for the assertions and the renewal timeline.

use std::collections::HashSet;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use cwfs_testserver::TestServer;

/// One answered request.
#[derive(Debug, Clone)]
pub struct Exchanged {
    pub at: Instant,
    pub token: String,
    pub access_key: String,
    pub expires: Instant,
}

#[derive(Debug, Default)]
struct State {
    valid_tokens: HashSet<String>,
    lifetime: Duration,
    down: bool,
    exchanges: Vec<Exchanged>,
    rejected: u32,
    dropped: u32,
    /// Every secret handed out (secret keys, session tokens), to look for in logs.
    secrets: Vec<String>,
    counter: u64,
}

pub struct Exchange {
    pub port: u16,
    state: Arc<Mutex<State>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Exchange {
    pub fn start(s3: Arc<TestServer>, token: &str, lifetime: Duration) -> Exchange {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        listener.set_nonblocking(true).unwrap();
        let state = Arc::new(Mutex::new(State {
            valid_tokens: [token.to_string()].into_iter().collect(),
            lifetime,
            ..State::default()
        }));
        let stop = Arc::new(AtomicBool::new(false));
        let (st, sp) = (state.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            while !sp.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((conn, _)) => {
                        conn.set_nonblocking(false).ok();
                        conn.set_read_timeout(Some(Duration::from_secs(5))).ok();
                        serve(conn, &st, &s3);
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Exchange {
            port,
            state,
            stop,
            thread: Some(thread),
        }
    }

    pub fn uri(&self) -> String {
        format!(
            "http://127.0.0.1:{}/v1/cwobject/temporary-credentials/api-token",
            self.port
        )
    }

    pub fn set_down(&self, down: bool) {
        self.state.lock().unwrap().down = down;
    }

    /// Accept only `token` from now on (the old one is revoked).
    pub fn rotate_to(&self, token: &str) {
        let mut s = self.state.lock().unwrap();
        s.valid_tokens = [token.to_string()].into_iter().collect();
    }

    pub fn exchanges(&self) -> Vec<Exchanged> {
        self.state.lock().unwrap().exchanges.clone()
    }

    pub fn rejected(&self) -> u32 {
        self.state.lock().unwrap().rejected
    }

    pub fn dropped(&self) -> u32 {
        self.state.lock().unwrap().dropped
    }

    pub fn secrets(&self) -> Vec<String> {
        self.state.lock().unwrap().secrets.clone()
    }
}

impl Drop for Exchange {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve(mut conn: TcpStream, state: &Mutex<State>, s3: &TestServer) {
    let mut reader = BufReader::new(conn.try_clone().unwrap());
    let mut auth = None;
    let mut first = true;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if first {
            first = false;
            if !line.starts_with("GET /v1/cwobject/temporary-credentials/api-token ") {
                let _ = conn.write_all(
                    b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                );
                return;
            }
        } else if let Some((k, v)) = line.split_once(':') {
            if k.eq_ignore_ascii_case("authorization") {
                auth = Some(v.trim().to_string());
            }
        }
    }
    let mut s = state.lock().unwrap();
    if s.down {
        s.dropped += 1;
        return; // drop the connection without an answer
    }
    let token = auth
        .as_deref()
        .and_then(|a| a.strip_prefix("Bearer "))
        .unwrap_or("");
    if !s.valid_tokens.contains(token) {
        s.rejected += 1;
        let body = r#"{"message":"invalid token"}"#;
        let _ = write!(conn, "HTTP/1.1 401 Unauthorized\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}", body.len());
        return;
    }
    s.counter += 1;
    let n = s.counter;
    let access_key = format!("CWTEMP{n:06}");
    let secret = format!("tmpsecret-{n}-{:x}", fastrand_u64());
    let session = format!("tmpsession-{n}-{:x}", fastrand_u64());
    let expires_wall = SystemTime::now() + s.lifetime;
    s3.add_credentials(&access_key, &secret, Some(&session), Some(expires_wall));
    s.secrets.push(secret.clone());
    s.secrets.push(session.clone());
    let now = Instant::now();
    let expires = now + s.lifetime;
    s.exchanges.push(Exchanged {
        at: now,
        token: token.to_string(),
        access_key: access_key.clone(),
        expires,
    });
    drop(s);
    // Alternate the two RFC 3339 forms CoreWeave and AWS use.
    let expiration = rfc3339(expires_wall, n.is_multiple_of(2));
    let body = format!(
        r#"{{"AccessKeyId":"{access_key}","SecretAccessKey":"{secret}","Token":"{session}","Expiration":"{expiration}"}}"#
    );
    let _ = write!(
        conn,
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
}

fn fastrand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64,
    );
    h.finish()
}

/// Format as `YYYY-MM-DDTHH:MM:SSZ` (or with `+00:00`).
pub fn rfc3339(t: SystemTime, offset_form: bool) -> String {
    let secs = t.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}{}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        if offset_form { "+00:00" } else { "Z" }
    )
}
