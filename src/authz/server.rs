//! `docker-tls-manager authz serve`: Docker's plugin protocol (HTTP/1.1 + JSON) on the unix
//! socket systemd passes (socket activation: requests queue in the socket while this process
//! restarts), or on `--listen PATH`. One thread per connection; dockerd keeps a few open.
//! Endpoints: `/Plugin.Activate`, `/AuthZPlugin.AuthZReq` (the decision),
//! `/AuthZPlugin.AuthZRes` (the same decision again, so a request dockerd retried empty after an
//! interruption does not hand its answer to a client that may not have it).

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::FromRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, bail};

use super::Files;
use super::policy::{AuthzRequest, CONSULTED_REASON, Cached, CertId, Decision, decide};

const CONTENT_TYPE: &str = "application/vnd.docker.plugins.v1.2+json";
/// A connection idle this long is closed (dockerd opens another when it needs one).
const IDLE: Duration = Duration::from_secs(300);
const MAX_HEADER: usize = 64 * 1024;
const MAX_BODY: usize = 64 * 1024 * 1024;

struct State {
    policy: Mutex<Cached>,
    /// Certificates already read (dockerd sends the same few over and over).
    ids: Mutex<HashMap<String, CertId>>,
    /// (client, decision) -> requests, for the metrics file.
    counters: Mutex<BTreeMap<(String, &'static str), u64>>,
    /// How long the plugin takes to answer, for the metrics file.
    times: AnswerTimes,
}

/// Upper bounds (seconds) of the answer-time histogram's buckets.
pub const ANSWER_BUCKETS: [f64; 8] = [0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01];

/// A histogram of the time from a request read to its answer written, lock-free (every
/// request adds to it).
#[derive(Default)]
pub struct AnswerTimes {
    /// Per bucket of [`ANSWER_BUCKETS`], then the +Inf one (not cumulative here).
    buckets: [AtomicU64; ANSWER_BUCKETS.len() + 1],
    sum_ns: AtomicU64,
}

impl AnswerTimes {
    pub fn record(&self, d: Duration) {
        let s = d.as_secs_f64();
        let i = ANSWER_BUCKETS
            .iter()
            .position(|&le| s <= le)
            .unwrap_or(ANSWER_BUCKETS.len());
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.sum_ns.fetch_add(
            u64::try_from(d.as_nanos()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
    }

    /// Cumulative counts per bucket (the last is +Inf, the total) and the sum in seconds.
    pub fn snapshot(&self) -> (Vec<u64>, f64) {
        let mut total = 0;
        let counts = self
            .buckets
            .iter()
            .map(|b| {
                total += b.load(Ordering::Relaxed);
                total
            })
            .collect();
        (counts, self.sum_ns.load(Ordering::Relaxed) as f64 / 1e9)
    }
}

/// The listener systemd passed (`LISTEN_FDS`), else `listen` bound here.
fn listener(listen: Option<&Path>) -> Result<UnixListener> {
    let ours = std::env::var("LISTEN_PID")
        .ok()
        .and_then(|p| p.parse::<u32>().ok())
        == Some(std::process::id());
    let fds = std::env::var("LISTEN_FDS")
        .ok()
        .and_then(|n| n.parse::<i32>().ok())
        .unwrap_or(0);
    // SAFETY: unsetenv before any other thread exists.
    unsafe {
        std::env::remove_var("LISTEN_PID");
        std::env::remove_var("LISTEN_FDS");
        std::env::remove_var("LISTEN_FDNAMES");
    }
    if ours && fds >= 1 {
        // SAFETY: systemd passes the socket as fd 3 (SD_LISTEN_FDS_START), ours to own.
        let l = unsafe { UnixListener::from_raw_fd(3) };
        // SAFETY: FD_CLOEXEC on an fd we own.
        unsafe { libc::fcntl(3, libc::F_SETFD, libc::FD_CLOEXEC) };
        return Ok(l);
    }
    match listen {
        Some(p) => {
            let _ = std::fs::remove_file(p);
            UnixListener::bind(p).with_context(|| format!("cannot listen on '{}'", p.display()))
        }
        None => bail!(
            "no socket passed by systemd (run through {}) and no --listen PATH",
            super::SOCKET_UNIT
        ),
    }
}

pub fn serve(config: Option<&Path>, listen: Option<&Path>) -> Result<()> {
    let l = listener(listen)?;
    let settings = crate::config::load(config);
    let files = match &settings {
        Ok(s) => Files::new(s),
        // Unreadable config: default paths; the policy then fails and refuses TLS requests.
        Err(_) => Files::new(&crate::config::parse("", Path::new("-")).expect("defaults")),
    };
    let metrics = files.metrics.clone();
    let state = Arc::new(State {
        policy: Mutex::new(Cached::new(files, config.map(Path::to_path_buf))),
        ids: Mutex::new(HashMap::new()),
        counters: Mutex::new(BTreeMap::new()),
        times: AnswerTimes::default(),
    });
    state.policy.lock().unwrap_or_else(|e| e.into_inner()).get();
    if let Some(m) = metrics {
        let st = state.clone();
        std::thread::spawn(move || {
            block_term();
            write_metrics(&st, &m)
        });
    }
    on_sigterm_interrupt();
    tracing::info!("authorization plugin {} serving", super::PLUGIN_NAME);
    let in_flight = Arc::new(AtomicUsize::new(0));
    loop {
        match accept(&l) {
            Ok(s) => {
                let st = state.clone();
                let n = in_flight.clone();
                std::thread::spawn(move || {
                    block_term();
                    if let Err(e) = connection(s, &st, &n) {
                        tracing::debug!("plugin connection ended: {e:#}");
                    }
                });
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => {
                tracing::warn!("accept: {e}");
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        if TERM.load(Ordering::SeqCst) {
            // Stopped or restarted: the requests accepted are answered first; the others
            // wait in systemd's socket for the next instance.
            let t0 = std::time::Instant::now();
            while in_flight.load(Ordering::SeqCst) > 0 && t0.elapsed() < Duration::from_secs(5) {
                std::thread::sleep(Duration::from_millis(1));
            }
            tracing::info!("stopping");
            return Ok(());
        }
    }
}

/// `accept4` once: unlike std's `accept`, returns `Interrupted` on a signal (SIGTERM).
fn accept(l: &UnixListener) -> std::io::Result<UnixStream> {
    use std::os::fd::AsRawFd;
    // SAFETY: accept4 on our listening fd; a returned fd is new and ours to own.
    let fd = unsafe {
        libc::accept4(
            l.as_raw_fd(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            libc::SOCK_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fd is a connected socket just returned by accept4.
    Ok(unsafe { UnixStream::from_raw_fd(fd) })
}

static TERM: AtomicBool = AtomicBool::new(false);

extern "C" fn on_term(_: libc::c_int) {
    TERM.store(true, Ordering::SeqCst);
}

/// Other threads leave SIGTERM to the accepting one.
fn block_term() {
    // SAFETY: a signal set built by sigemptyset/sigaddset, applied to this thread only.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
    }
}

/// SIGTERM sets `TERM` and interrupts `accept` (no SA_RESTART).
fn on_sigterm_interrupt() {
    // SAFETY: the handler only stores to an atomic; the mask is emptied before use.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_term as *const () as usize;
        libc::sigemptyset(&mut sa.sa_mask);
        sa.sa_flags = 0;
        libc::sigaction(libc::SIGTERM, &sa, std::ptr::null_mut());
    }
}

/// One HTTP request: method, path, body.
struct Request {
    path: String,
    body: Vec<u8>,
    close: bool,
}

fn read_request(r: &mut BufReader<UnixStream>) -> Result<Option<Request>> {
    let mut line = String::new();
    let mut total = 0;
    if r.read_line(&mut line)? == 0 {
        return Ok(None);
    }
    let mut parts = line.split_whitespace();
    let (_method, path, version) = (
        parts.next().unwrap_or(""),
        parts.next().unwrap_or("").to_string(),
        parts.next().unwrap_or(""),
    );
    let mut close = version == "HTTP/1.0";
    let mut length = 0usize;
    let mut chunked = false;
    loop {
        let mut h = String::new();
        let n = r.read_line(&mut h)?;
        total += n;
        if n == 0 || total > MAX_HEADER {
            bail!("headers cut short or too long");
        }
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            let v = v.trim();
            match k.trim().to_ascii_lowercase().as_str() {
                "content-length" => length = v.parse().context("bad Content-Length")?,
                "transfer-encoding" => chunked = v.eq_ignore_ascii_case("chunked"),
                "connection" => close = v.eq_ignore_ascii_case("close"),
                _ => {}
            }
        }
    }
    let mut body = Vec::new();
    if chunked {
        loop {
            let mut size = String::new();
            r.read_line(&mut size)?;
            let n = usize::from_str_radix(size.trim().split(';').next().unwrap_or(""), 16)
                .context("bad chunk size")?;
            // checked: a chunk size near usize::MAX must not wrap around (and panic below).
            let start = body.len();
            let end = start
                .checked_add(n)
                .filter(|&e| e <= MAX_BODY)
                .context("body too large")?;
            body.resize(end, 0);
            r.read_exact(&mut body[start..])?;
            let mut crlf = String::new();
            r.read_line(&mut crlf)?;
            if n == 0 {
                break;
            }
        }
    } else {
        if length > MAX_BODY {
            bail!("body too large");
        }
        body.resize(length, 0);
        r.read_exact(&mut body)?;
    }
    Ok(Some(Request { path, body, close }))
}

/// Serves one connection; `in_flight` counts the requests read and not yet answered.
fn connection(stream: UnixStream, st: &State, in_flight: &AtomicUsize) -> Result<()> {
    stream.set_read_timeout(Some(IDLE))?;
    let mut w = stream.try_clone()?;
    let mut r = BufReader::new(stream);
    // Kept alive as dockerd asks (a new connection per call doubled the added latency). If
    // this process is killed, a call in flight or sent on a connection it held is retried by
    // dockerd with an empty body (allowed, see `answer`); new connections queue in the socket
    // systemd holds.
    loop {
        // Waiting for the next request: a stop does not wait for this connection.
        if TERM.load(Ordering::SeqCst) {
            break;
        }
        let Some(req) = read_request(&mut r)? else {
            break;
        };
        in_flight.fetch_add(1, Ordering::SeqCst);
        let t0 = std::time::Instant::now();
        let a = answer(&req, st);
        // One write: a kill cannot leave dockerd half an answer (which it does not retry).
        let out = format!(
            "HTTP/1.1 {}\r\nContent-Type: {CONTENT_TYPE}\r\nContent-Length: {}\r\n\r\n{}",
            a.status,
            a.body.len(),
            a.body,
        );
        // The audit line before the answer: a request dockerd carries out has its line.
        if let Some((ar, d)) = &a.audit {
            audit(ar, d);
        }
        let written = w.write_all(out.as_bytes());
        if written.is_ok() {
            st.times.record(t0.elapsed());
        }
        in_flight.fetch_sub(1, Ordering::SeqCst);
        written?;
        if req.close {
            break;
        }
    }
    Ok(())
}

fn json_escape(s: &str) -> String {
    serde_json::to_string(s).expect("a string serializes")
}

/// What the plugin answers, and the audit line it writes before the answer.
struct Answer {
    status: &'static str,
    body: String,
    audit: Option<(AuthzRequest, Decision)>,
}

impl Answer {
    fn ok(body: &str) -> Answer {
        Answer {
            status: "200 OK",
            body: body.into(),
            audit: None,
        }
    }

    fn decision(d: &Decision) -> Answer {
        if d.allow {
            Answer::ok(r#"{"Allow":true}"#)
        } else {
            Answer::ok(&format!(
                r#"{{"Allow":false,"Msg":{}}}"#,
                json_escape(&d.reason)
            ))
        }
    }
}

fn answer(req: &Request, st: &State) -> Answer {
    match req.path.as_str() {
        "/Plugin.Activate" => Answer::ok(r#"{"Implements":["authz"]}"#),
        // The same decision again on the response: what an interrupted AuthZReq let through
        // unchecked (dockerd's empty retry, below) is not handed back to a client that may
        // not have it (a revoked one, a role that may not read it). Allowed responses are not
        // audited twice.
        "/AuthZPlugin.AuthZRes" => {
            let Ok(ar) = serde_json::from_slice::<AuthzRequest>(&req.body) else {
                return Answer::ok(r#"{"Allow":true}"#);
            };
            let d = decide_cached(st, &ar);
            let mut a = Answer::decision(&d);
            if !d.allow {
                a.audit = Some((ar, d));
            }
            a
        }
        "/AuthZPlugin.AuthZReq" => {
            // dockerd retries a plugin call whose connection broke (this process killed
            // mid-request) with the body it already consumed: empty. It carries nothing to
            // decide on; refusing it would fail unix-socket requests too. Allowed, logged.
            if req.body.iter().all(u8::is_ascii_whitespace) {
                tracing::warn!(
                    decision = "allow",
                    reason = "empty request: dockerd's retry after the plugin was interrupted",
                    "docker request"
                );
                return Answer::ok(r#"{"Allow":true}"#);
            }
            let (d, ar) = match serde_json::from_slice::<AuthzRequest>(&req.body) {
                Ok(ar) => (decide_cached(st, &ar), ar),
                Err(e) => (
                    Decision {
                        allow: false,
                        tls: true,
                        client: String::new(),
                        serial: String::new(),
                        reason: format!("unreadable request from dockerd: {e}"),
                    },
                    AuthzRequest::default(),
                ),
            };
            if d.tls && d.reason != CONSULTED_REASON {
                let mut c = st.counters.lock().unwrap_or_else(|e| e.into_inner());
                *c.entry((d.client.clone(), if d.allow { "allow" } else { "deny" }))
                    .or_default() += 1;
            }
            let mut a = Answer::decision(&d);
            a.audit = Some((ar, d));
            a
        }
        _ => Answer {
            status: "404 Not Found",
            body: r#"{"Err":"unknown endpoint"}"#.into(),
            audit: None,
        },
    }
}

/// `decide` with the policy as last read and the certificates already seen.
fn decide_cached(st: &State, ar: &AuthzRequest) -> Decision {
    let mut cache = st.policy.lock().unwrap_or_else(|e| e.into_inner());
    let mut ids = st.ids.lock().unwrap_or_else(|e| e.into_inner());
    if ids.len() > 10_000 {
        ids.clear();
    }
    decide(cache.get(), ar, &mut ids)
}

/// The audit line: every request over TLS at info, denials at warning; the unix socket at debug.
fn audit(r: &AuthzRequest, d: &Decision) {
    let decision = if d.allow { "allow" } else { "deny" };
    if !d.tls {
        tracing::debug!(method = %r.method, path = %r.uri, decision, reason = %d.reason, "docker request");
    } else if d.allow || d.reason == CONSULTED_REASON {
        tracing::info!(client = %d.client, serial = %d.serial, method = %r.method, path = %r.uri, decision, reason = %d.reason, "docker request");
    } else {
        tracing::warn!(client = %d.client, serial = %d.serial, method = %r.method, path = %r.uri, decision, reason = %d.reason, "docker request");
    }
}

/// Renders the counters and the answer-time histogram (cumulative counts per bucket of
/// [`ANSWER_BUCKETS`] then +Inf, and the sum in seconds) as a node_exporter textfile.
pub fn render_metrics(
    c: &BTreeMap<(String, &'static str), u64>,
    times: &(Vec<u64>, f64),
) -> String {
    let mut s = String::from(
        "# HELP docker_tls_manager_authz_requests_total Docker API requests over TLS seen by the authorization plugin, by client and decision (since the plugin started).\n\
         # TYPE docker_tls_manager_authz_requests_total counter\n",
    );
    for ((client, decision), n) in c {
        let client = client
            .replace('\\', "\\\\")
            .replace('"', "\\\"")
            .replace('\n', "\\n");
        s.push_str(&format!(
            "docker_tls_manager_authz_requests_total{{client=\"{client}\",decision=\"{decision}\"}} {n}\n"
        ));
    }
    let (counts, sum) = times;
    s.push_str(
        "# HELP docker_tls_manager_authz_answer_seconds Time from a call of dockerd read to the plugin's answer written, audit line included (answers written since the plugin started).\n\
         # TYPE docker_tls_manager_authz_answer_seconds histogram\n",
    );
    for (i, n) in counts.iter().enumerate() {
        let le = ANSWER_BUCKETS
            .get(i)
            .map_or("+Inf".to_string(), |b| b.to_string());
        s.push_str(&format!(
            "docker_tls_manager_authz_answer_seconds_bucket{{le=\"{le}\"}} {n}\n"
        ));
    }
    s.push_str(&format!(
        "docker_tls_manager_authz_answer_seconds_sum {sum}\n\
         docker_tls_manager_authz_answer_seconds_count {}\n",
        counts.last().copied().unwrap_or(0)
    ));
    s
}

fn write_metrics(st: &State, path: &Path) {
    let mut last = String::new();
    loop {
        let counters = st
            .counters
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let text = render_metrics(&counters, &st.times.snapshot());
        if text != last && path.parent().is_some_and(Path::is_dir) {
            match crate::files::atomic_write(path, text.as_bytes(), 0o644) {
                Ok(()) => last = text,
                Err(e) => tracing::debug!("metrics: {e:#}"),
            }
        }
        std::thread::sleep(Duration::from_secs(5));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A plugin's state with the default paths (no policy files: TLS requests are refused).
    fn test_state() -> State {
        let settings = crate::config::parse("", Path::new("-")).unwrap();
        State {
            policy: Mutex::new(Cached::new(Files::new(&settings), None)),
            ids: Mutex::new(HashMap::new()),
            counters: Mutex::new(BTreeMap::new()),
            times: AnswerTimes::default(),
        }
    }

    fn read(raw: &[u8]) -> Result<Option<Request>> {
        let (mut a, b) = UnixStream::pair().unwrap();
        a.write_all(raw).unwrap();
        drop(a);
        read_request(&mut BufReader::new(b))
    }

    /// Bad input ends that connection with an error; it never panics (the release build
    /// aborts on a panic: the plugin would go down).
    #[test]
    fn bad_requests_are_errors_not_panics() {
        let head = "POST /AuthZPlugin.AuthZReq HTTP/1.1\r\n";
        for (raw, why) in [
            (
                format!(
                    "{head}Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\nfffffffffffffffe\r\n"
                ),
                "body too large",
            ),
            (
                format!("{head}Transfer-Encoding: chunked\r\n\r\nffffffffffffffff\r\n"),
                "body too large",
            ),
            (
                format!("{head}Transfer-Encoding: chunked\r\n\r\nzz\r\n"),
                "bad chunk size",
            ),
            (
                format!("{head}Content-Length: 99999999999\r\n\r\n"),
                "body too large",
            ),
            (
                format!("{head}Content-Length: -1\r\n\r\n"),
                "bad Content-Length",
            ),
            (
                format!("{head}Content-Length: 10\r\n\r\nshort"),
                "failed to fill",
            ),
            (
                format!("{head}X: {}\r\n\r\n", "a".repeat(MAX_HEADER)),
                "too long",
            ),
        ] {
            let e = match read(raw.as_bytes()) {
                Err(e) => format!("{e:#}"),
                Ok(_) => panic!("accepted: {}", &raw[..raw.len().min(200)]),
            };
            assert!(e.contains(why), "{e}");
        }
    }

    /// A request dockerd could not have sent (malformed JSON, wrong types) is refused with a
    /// reason; unknown fields are ignored.
    #[test]
    fn malformed_requests_are_refused() {
        let st = test_state();
        let ask = |body: &str| {
            answer(
                &Request {
                    path: "/AuthZPlugin.AuthZReq".into(),
                    body: body.as_bytes().to_vec(),
                    close: false,
                },
                &st,
            )
        };
        let ask = |body: &str| {
            let a = ask(body);
            (a.status, a.body)
        };
        for body in [
            "{",
            "[1,2]",
            r#"{"User": 5}"#,
            r#"{"RequestPeerCertificates": "x"}"#,
            "\u{0}\u{1}",
        ] {
            let (status, out) = ask(body);
            assert_eq!(status, "200 OK");
            assert!(
                out.starts_with(r#"{"Allow":false,"Msg":"unreadable request from dockerd"#),
                "{body}: {out}"
            );
        }
        // Unknown fields: ignored (the unix socket: no user, no certificate).
        let (_, out) = ask(r#"{"RequestMethod":"GET","RequestUri":"/_ping","Future":{"a":[1]}}"#);
        assert_eq!(out, r#"{"Allow":true}"#);
        // A certificate that is not one: refused with a reason.
        let (_, out) = ask(
            r#"{"User":"x","UserAuthNMethod":"TLS","RequestMethod":"GET","RequestUri":"/_ping","RequestPeerCertificates":["-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"]}"#,
        );
        assert!(out.contains(r#""Allow":false"#), "{out}");
    }

    /// Which answers carry an audit line: every AuthZReq dockerd describes (the unix socket's
    /// at debug), the unreadable ones too; AuthZRes only when it refuses; never the empty
    /// retry (warned where it is answered), the activation or an unknown endpoint.
    #[test]
    fn each_answer_says_whether_it_is_audited() {
        let st = test_state();
        let unix = r#"{"RequestMethod":"GET","RequestUri":"/_ping"}"#;
        let bad_cert = r#"{"User":"x","UserAuthNMethod":"TLS","RequestMethod":"GET","RequestUri":"/_ping","RequestPeerCertificates":["-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"]}"#;
        for (path, body, status, audited, allow) in [
            ("/AuthZPlugin.AuthZReq", unix, "200 OK", Some(false), true),
            (
                "/AuthZPlugin.AuthZReq",
                bad_cert,
                "200 OK",
                Some(true),
                false,
            ),
            ("/AuthZPlugin.AuthZReq", "{", "200 OK", Some(true), false),
            ("/AuthZPlugin.AuthZReq", " ", "200 OK", None, true),
            ("/AuthZPlugin.AuthZRes", unix, "200 OK", None, true),
            (
                "/AuthZPlugin.AuthZRes",
                bad_cert,
                "200 OK",
                Some(true),
                false,
            ),
            ("/AuthZPlugin.AuthZRes", "{", "200 OK", None, true),
            ("/Plugin.Activate", "", "200 OK", None, false),
            ("/Other", "", "404 Not Found", None, false),
        ] {
            let a = answer(
                &Request {
                    path: path.into(),
                    body: body.as_bytes().to_vec(),
                    close: false,
                },
                &st,
            );
            assert_eq!(a.status, status, "{path} {body}");
            assert_eq!(
                a.audit.as_ref().map(|(_, d)| d.tls),
                audited,
                "{path} {body}: audit line (over TLS)"
            );
            if let Some((_, d)) = &a.audit {
                assert_eq!(d.allow, allow, "{path} {body}");
            }
            assert_eq!(
                a.body.contains(r#""Allow":true"#),
                allow,
                "{path} {body}: {}",
                a.body
            );
        }
    }

    /// A tracing layer that holds each audit line (an event with a `decision` field) until the
    /// test lets it go.
    struct HoldAudit(Mutex<std::sync::mpsc::Receiver<()>>);

    impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for HoldAudit {
        fn on_event(
            &self,
            event: &tracing::Event<'_>,
            _: tracing_subscriber::layer::Context<'_, S>,
        ) {
            if event.metadata().fields().field("decision").is_some() {
                let _ = self.0.lock().unwrap().recv();
            }
        }
    }

    /// The audit line is written before the answer: while it cannot be written, dockerd gets
    /// no answer (a request dockerd carries out always has its line).
    #[test]
    fn the_audit_line_comes_before_the_answer() {
        use tracing_subscriber::layer::SubscriberExt;
        let (release, held) = std::sync::mpsc::channel();
        let (ours, mut dockerd) = UnixStream::pair().unwrap();
        let server = std::thread::spawn(move || {
            let st = test_state();
            let subscriber = tracing_subscriber::registry().with(HoldAudit(Mutex::new(held)));
            tracing::subscriber::with_default(subscriber, || {
                connection(ours, &st, &AtomicUsize::new(0))
            })
        });
        let body = r#"{"User":"x","UserAuthNMethod":"TLS","RequestMethod":"GET","RequestUri":"/_ping","RequestPeerCertificates":["-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"]}"#;
        dockerd
            .write_all(
                format!(
                    "POST /AuthZPlugin.AuthZReq HTTP/1.1\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                )
                .as_bytes(),
            )
            .unwrap();
        dockerd
            .set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        let mut buf = [0u8; 1];
        let early = dockerd.read(&mut buf);
        assert!(
            matches!(&early, Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
            "answered before its audit line was written: {early:?}"
        );
        release.send(()).unwrap();
        dockerd
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let mut out = Vec::from(&buf[..0]);
        dockerd.read_to_end(&mut out).unwrap();
        let out = String::from_utf8(out).unwrap();
        assert!(
            out.starts_with("HTTP/1.1 200 OK") && out.contains(r#""Allow":false"#),
            "{out}"
        );
        server.join().unwrap().unwrap();
    }

    #[test]
    fn metrics_escape_labels() {
        let mut c = BTreeMap::new();
        c.insert(("a\"b".to_string(), "deny"), 3);
        let times = AnswerTimes::default();
        times.record(Duration::from_micros(30));
        times.record(Duration::from_micros(80));
        times.record(Duration::from_micros(80));
        times.record(Duration::from_secs(1));
        let t = render_metrics(&c, &times.snapshot());
        assert!(t.contains(r#"{client="a\"b",decision="deny"} 3"#), "{t}");
        // Cumulative buckets, +Inf the total, the sum in seconds.
        for line in [
            r#"docker_tls_manager_authz_answer_seconds_bucket{le="0.00005"} 1"#,
            r#"docker_tls_manager_authz_answer_seconds_bucket{le="0.0001"} 3"#,
            r#"docker_tls_manager_authz_answer_seconds_bucket{le="0.01"} 3"#,
            r#"docker_tls_manager_authz_answer_seconds_bucket{le="+Inf"} 4"#,
            "docker_tls_manager_authz_answer_seconds_sum 1.00019",
            "docker_tls_manager_authz_answer_seconds_count 4",
        ] {
            assert!(t.lines().any(|l| l == line), "{line} not in\n{t}");
        }
    }
}
