//! Helpers shared by the integration tests: start a server on a free port,
//! talk raw HTTP/1 over a `TcpStream`, measure the test process, and run one
//! test in a child process of its own.
//!
//! Every socket made here has read and write timeouts, and every wait has a
//! deadline, so a broken server fails a test instead of hanging it.

#![allow(dead_code)]

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use astra::test::TestServer;
use astra::{Server, ServerHandle, Service, Stats};

/// Read/write timeout of raw test sockets.
pub const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// Binds a server to `127.0.0.1:0`.
pub fn server() -> Server {
    Server::bind("127.0.0.1:0")
}

/// Serves `service` with `server` on a background thread, as an
/// [`astra::test::TestServer`]: dropping it shuts the server down gracefully
/// and waits for `serve` to return, and fails the test if `serve` failed.
/// Declare it before the test's clients, so that they are dropped (closed)
/// first; a test that leaves a handler blocked gives its server a short
/// `shutdown_timeout`.
pub fn start<S>(server: Server, service: S) -> TestServer
where
    S: Service + Sync,
{
    TestServer::start(server, service)
}

/// Waits until `done` holds, polling it with a short back-off (0.1 ms
/// growing to 10 ms between polls); panics naming `what` after `limit`.
pub fn wait_until(limit: Duration, what: &str, mut done: impl FnMut() -> bool) {
    poll_until(limit, || {
        if done() {
            Ok(())
        } else {
            Err(format!("{what}: not so within {limit:?}"))
        }
    })
}

/// Waits (at most [`IO_TIMEOUT`]) until `ok` holds for the server's stats,
/// and returns the snapshot that did; panics with the last one.
pub fn wait_for_stats(handle: &ServerHandle, what: &str, ok: impl Fn(&Stats) -> bool) -> Stats {
    poll_until(IO_TIMEOUT, || {
        let stats = handle.stats();
        if ok(&stats) {
            Ok(stats)
        } else {
            Err(format!(
                "{what}: not so within {IO_TIMEOUT:?}; last {stats:?}"
            ))
        }
    })
}

/// Waits (at most [`IO_TIMEOUT`]) until a `wrap_reader` response to a client
/// that reads nothing has filled the socket and waits for it to drain.
/// Nothing says so but silence: its reader, which counts what it produced
/// in `produced`, goes unasked for 50 ms, with no user code running or
/// queued meanwhile.
pub fn wait_until_stalled(handle: &ServerHandle, produced: &AtomicU64) {
    let mut last = (0, Instant::now());
    wait_until(IO_TIMEOUT, "the response stalls", || {
        let now = produced.load(Ordering::SeqCst);
        let stats = handle.stats();
        if now == 0 || now != last.0 || stats.handlers_running + stats.queued > 0 {
            last = (now, Instant::now());
        }
        last.1.elapsed() >= Duration::from_millis(50)
    });
}

/// Calls `attempt` until it succeeds, with the back-off of [`wait_until`];
/// panics with its last error after `limit`.
fn poll_until<T>(limit: Duration, mut attempt: impl FnMut() -> Result<T, String>) -> T {
    let deadline = Instant::now() + limit;
    let mut pause = Duration::from_micros(100);
    loop {
        let failed = match attempt() {
            Ok(value) => return value,
            Err(failed) => failed,
        };
        let now = Instant::now();
        if now >= deadline {
            panic!("{failed}");
        }
        thread::sleep(pause.min(deadline - now));
        pause = (pause * 2).min(Duration::from_millis(10));
    }
}

/// A `101 Switching Protocols` answer for an `Upgrade: protocol` request.
pub fn switching(protocol: &str) -> astra::Response {
    astra::ResponseBuilder::new()
        .status(101)
        .header("connection", "upgrade")
        .header("upgrade", protocol)
        .body(astra::Body::empty())
        .unwrap()
}

/// A ureq agent with bounded timeouts that does not turn 4xx/5xx into errors.
pub fn agent() -> ureq::Agent {
    ureq::Agent::new_with_config(
        ureq::config::Config::builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(15)))
            .build(),
    )
}

/// `http://addr/path`
pub fn url(addr: SocketAddr, path: &str) -> String {
    format!("http://{addr}{path}")
}

/// GETs `path` with a fresh agent and returns the status and body.
pub fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut response = agent()
        .get(&url(addr, path))
        .call()
        .unwrap_or_else(|err| panic!("GET {path} failed: {err}"));
    let status = response.status().as_u16();
    let body = response
        .body_mut()
        .read_to_string()
        .unwrap_or_else(|err| panic!("reading the body of GET {path} failed: {err}"));
    (status, body)
}

/// Connects with read and write timeouts of [`IO_TIMEOUT`].
pub fn connect(addr: SocketAddr) -> TcpStream {
    connect_with_timeout(addr, IO_TIMEOUT)
}

/// Connects with the given read and write timeouts.
pub fn connect_with_timeout(addr: SocketAddr, timeout: Duration) -> TcpStream {
    let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .unwrap_or_else(|err| panic!("connect to {addr} failed: {err}"));
    stream.set_read_timeout(Some(timeout)).unwrap();
    stream.set_write_timeout(Some(timeout)).unwrap();
    stream.set_nodelay(true).unwrap();
    stream
}

/// A response read off a raw socket.
#[derive(Debug)]
pub struct RawResponse {
    /// e.g. `HTTP/1.1`
    pub version: String,
    pub status: u16,
    /// The head exactly as received, status line and headers.
    pub head: String,
    /// Header names lower-cased, values trimmed.
    pub headers: Vec<(String, String)>,
    /// The decoded body (chunked framing removed).
    pub body: Vec<u8>,
}

impl RawResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn is_chunked(&self) -> bool {
        self.header("transfer-encoding")
            .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"))
    }

    pub fn body_str(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// A response head: version, status, the head as received, and the headers
/// (names lower-cased).
pub type Head = (String, u16, String, Vec<(String, String)>);

/// Reads an HTTP/1 response from a raw socket.
///
/// A buffered reader wraps the stream; keep it for the next response on the
/// same connection (pipelining, keep-alive).
pub struct RawConn {
    pub reader: BufReader<TcpStream>,
}

impl RawConn {
    pub fn new(stream: TcpStream) -> RawConn {
        RawConn {
            reader: BufReader::new(stream),
        }
    }

    pub fn open(addr: SocketAddr) -> RawConn {
        RawConn::new(connect(addr))
    }

    pub fn stream(&self) -> &TcpStream {
        self.reader.get_ref()
    }

    pub fn send(&mut self, bytes: &[u8]) {
        self.reader
            .get_mut()
            .write_all(bytes)
            .unwrap_or_else(|err| panic!("writing the request failed: {err}"));
    }

    /// Reads the status line and headers, skipping no interim responses.
    pub fn read_head(&mut self) -> io::Result<Head> {
        let mut head = String::new();
        loop {
            let mut line = String::new();
            let n = self.reader.read_line(&mut line)?;
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("connection closed inside the response head: {head:?}"),
                ));
            }
            head.push_str(&line);
            if line == "\r\n" || line == "\n" {
                break;
            }
        }
        let mut lines = head.lines();
        let status_line = lines.next().unwrap_or_default();
        let mut parts = status_line.splitn(3, ' ');
        let version = parts.next().unwrap_or_default().to_string();
        let status = parts
            .next()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| io::Error::other(format!("bad status line: {status_line:?}")))?;
        let headers = lines
            .filter(|l| !l.is_empty())
            .filter_map(|l| {
                let (name, value) = l.split_once(':')?;
                Some((name.trim().to_ascii_lowercase(), value.trim().to_string()))
            })
            .collect();
        Ok((version, status, head, headers))
    }

    /// Reads a whole response. `head_request` tells a response to HEAD (no body).
    pub fn read_response_to(&mut self, head_request: bool) -> io::Result<RawResponse> {
        let (version, status, head, headers) = self.read_head()?;
        let mut response = RawResponse {
            version,
            status,
            head,
            headers,
            body: Vec::new(),
        };
        if head_request || status < 200 || status == 204 || status == 304 {
            return Ok(response);
        }
        if response.is_chunked() {
            response.body = self.read_chunked()?;
        } else if let Some(len) = response.header("content-length") {
            let len: usize = len.parse().map_err(io::Error::other)?;
            let mut body = vec![0; len];
            self.reader.read_exact(&mut body)?;
            response.body = body;
        } else {
            self.reader.read_to_end(&mut response.body)?;
        }
        Ok(response)
    }

    pub fn read_response(&mut self) -> io::Result<RawResponse> {
        self.read_response_to(false)
    }

    /// Decodes a chunked body; fails if the connection closes before the last chunk.
    pub fn read_chunked(&mut self) -> io::Result<Vec<u8>> {
        decode_chunked(&mut self.reader)
    }

    /// Reads until the peer closes the connection; fails on a timeout.
    pub fn read_to_close(&mut self) -> io::Result<Vec<u8>> {
        let mut rest = Vec::new();
        self.reader.read_to_end(&mut rest)?;
        Ok(rest)
    }

    /// True if nothing arrives within `wait` (the connection stays open and quiet).
    pub fn is_quiet_for(&mut self, wait: Duration) -> bool {
        if !self.reader.buffer().is_empty() {
            return false;
        }
        let stream = self.reader.get_ref();
        stream.set_read_timeout(Some(wait)).unwrap();
        let mut byte = [0; 1];
        let quiet = match stream.peek(&mut byte) {
            Ok(_) => false,
            Err(err) => matches!(
                err.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            ),
        };
        stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        quiet
    }
}

/// Decodes a chunked body from `reader`, trailers skipped; fails if the
/// stream ends before the last chunk.
pub fn decode_chunked(reader: &mut impl BufRead) -> io::Result<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "connection closed inside a chunked body after {} bytes",
                    body.len()
                ),
            ));
        }
        let size_text = line.trim().split(';').next().unwrap_or_default();
        let size = usize::from_str_radix(size_text, 16)
            .map_err(|_| io::Error::other(format!("bad chunk size line {line:?}")))?;
        if size == 0 {
            // Trailers, then the empty line.
            loop {
                let mut trailer = String::new();
                if reader.read_line(&mut trailer)? == 0 {
                    return Err(io::ErrorKind::UnexpectedEof.into());
                }
                if trailer == "\r\n" {
                    return Ok(body);
                }
            }
        }
        let start = body.len();
        body.resize(start + size, 0);
        reader.read_exact(&mut body[start..])?;
        let mut crlf = [0; 2];
        reader.read_exact(&mut crlf)?;
        if &crlf != b"\r\n" {
            return Err(io::Error::other("chunk not followed by CRLF"));
        }
    }
}

/// Sends one request on a new connection and reads the response.
pub fn raw_request(addr: SocketAddr, request: &[u8]) -> RawResponse {
    let mut conn = RawConn::open(addr);
    conn.send(request);
    conn.read_response().unwrap_or_else(|err| {
        panic!(
            "no response to {:?}: {err}",
            String::from_utf8_lossy(request)
        )
    })
}

/// Reads from a raw socket until it is closed; `Err` if it stays open past its
/// read timeout. Returns what arrived.
pub fn read_until_closed(stream: &mut impl Read) -> io::Result<Vec<u8>> {
    let mut all = Vec::new();
    let mut buf = [0; 8192];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return Ok(all),
            Ok(n) => all.extend_from_slice(&buf[..n]),
            Err(err) if err.kind() == io::ErrorKind::ConnectionReset => return Ok(all),
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(err) => return Err(err),
        }
    }
}

/// Runs `f` on a thread and waits at most `limit` for it; panics (failing the
/// test) on timeout or if `f` panicked. The thread is left behind on timeout.
pub fn within<T: Send + 'static>(
    limit: Duration,
    what: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> T {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
        let _ = tx.send(result);
    });
    match rx.recv_timeout(limit) {
        Ok(Ok(value)) => value,
        Ok(Err(panic)) => std::panic::resume_unwind(panic),
        Err(_) => panic!("{what}: not done within {limit:?}"),
    }
}

/// Joins a thread, failing the test if it takes longer than `limit`.
pub fn join_within<T: Send + 'static>(
    handle: thread::JoinHandle<T>,
    limit: Duration,
    what: &str,
) -> T {
    wait_until(limit, what, || handle.is_finished());
    match handle.join() {
        Ok(value) => value,
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

/// A field of `/proc/self/status`, in its unit (kB for memory).
pub fn proc_status(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("read /proc/self/status");
    status
        .lines()
        .find_map(|line| {
            let rest = line.strip_prefix(field)?.strip_prefix(':')?;
            rest.split_whitespace().next()?.parse().ok()
        })
        .unwrap_or_else(|| panic!("no {field} in /proc/self/status"))
}

/// Threads of the test process.
pub fn threads() -> u64 {
    proc_status("Threads")
}

/// Resident memory of the test process, in KiB.
pub fn rss_kib() -> u64 {
    proc_status("VmRSS")
}

/// Peak resident memory of the test process, in KiB.
pub fn hwm_kib() -> u64 {
    proc_status("VmHWM")
}

/// Raises this process's RLIMIT_NOFILE soft limit towards `want` (and the hard
/// limit too where allowed). Returns the soft limit in force afterwards.
pub fn raise_nofile(want: u64) -> u64 {
    // SAFETY: getrlimit/setrlimit with a valid pointer to a local struct.
    unsafe {
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return 0;
        }
        if limit.rlim_cur >= want {
            return limit.rlim_cur;
        }
        let mut raised = libc::rlimit {
            rlim_cur: want,
            rlim_max: limit.rlim_max.max(want),
        };
        if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) != 0 {
            // Not allowed past the hard limit: go as far as it.
            raised.rlim_max = limit.rlim_max;
            raised.rlim_cur = limit.rlim_max.min(want);
            libc::setrlimit(libc::RLIMIT_NOFILE, &raised);
        }
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit);
        limit.rlim_cur
    }
}

/// Sets this process's RLIMIT_NOFILE soft limit to `soft`.
pub fn set_nofile_soft(soft: u64) {
    // SAFETY: getrlimit/setrlimit with a valid pointer to a local struct.
    unsafe {
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit), 0);
        limit.rlim_cur = soft;
        assert_eq!(
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit),
            0,
            "setrlimit({soft})"
        );
    }
}

/// CPU time (user + system) a process has used, from `/proc/PID/stat`.
pub fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("read /proc/PID/stat");
    // The command name (field 2) may contain spaces: split after its ')'.
    let after = &stat[stat.rfind(')').expect("')' in stat") + 2..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    // Fields 14 and 15 of stat are utime and stime; `after` starts at field 3.
    let utime: u64 = fields[11].parse().unwrap();
    let stime: u64 = fields[12].parse().unwrap();
    // SAFETY: sysconf has no memory-safety preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Duration::from_millis((utime + stime) * 1000 / ticks)
}

/// The environment variable that puts a re-executed test binary in child mode.
pub const CHILD_ENV: &str = "ASTRA_TEST_CHILD";

/// True when this process was started by [`spawn_child`] to run `test`.
pub fn is_child(test: &str) -> bool {
    std::env::var(CHILD_ENV).is_ok_and(|v| v == test)
}

/// Re-executes this test binary to run only the test `test` (its full path
/// inside the binary, e.g. `child_runs_alone`) in child mode. The child's
/// stdout and stderr are piped.
pub fn spawn_child(test: &str, env: &[(&str, String)]) -> ChildGuard {
    let exe = std::env::current_exe().expect("current_exe");
    let mut command = Command::new(exe);
    command
        .args([
            test,
            "--exact",
            "--nocapture",
            "--test-threads=1",
            "--include-ignored",
        ])
        .env(CHILD_ENV, test)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (key, value) in env {
        command.env(key, value);
    }
    ChildGuard {
        child: Some(command.spawn().expect("spawn the child test process")),
    }
}

/// A child process that is killed when dropped, whatever happened.
pub struct ChildGuard {
    pub child: Option<Child>,
}

/// What a finished child left.
pub struct ChildOutput {
    pub success: bool,
    pub stdout: String,
    pub stderr: String,
}

impl ChildGuard {
    pub fn id(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// True while the child has not exited.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().unwrap().try_wait(), Ok(None))
    }

    /// Waits for the child to exit; kills it if it takes longer than `limit`.
    pub fn wait_within(mut self, limit: Duration) -> ChildOutput {
        let mut child = self.child.take().unwrap();
        let stdout = child.stdout.take().unwrap();
        let stderr = child.stderr.take().unwrap();
        let out = thread::spawn(move || read_all(stdout));
        let err = thread::spawn(move || read_all(stderr));
        let deadline = Instant::now() + limit;
        let status = loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                break Some(status);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            thread::sleep(Duration::from_millis(20));
        };
        let stdout = out.join().unwrap_or_default();
        let stderr = err.join().unwrap_or_default();
        match status {
            Some(status) => ChildOutput {
                success: status.success(),
                stdout,
                stderr,
            },
            None => panic!(
                "child test process did not finish within {limit:?}\n--- stdout\n{stdout}\n--- stderr\n{stderr}"
            ),
        }
    }

    /// Kills the child and returns what it wrote.
    pub fn kill(mut self) -> ChildOutput {
        let mut child = self.child.take().unwrap();
        let _ = child.kill();
        let _ = child.wait();
        let stdout = child.stdout.take().map(read_all).unwrap_or_default();
        let stderr = child.stderr.take().map(read_all).unwrap_or_default();
        ChildOutput {
            success: false,
            stdout,
            stderr,
        }
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn read_all(mut reader: impl Read) -> String {
    let mut bytes = Vec::new();
    let _ = reader.read_to_end(&mut bytes);
    String::from_utf8_lossy(&bytes).into_owned()
}

/// Runs the test `test` in a child process and fails if the child fails.
pub fn run_in_child(test: &str, limit: Duration) {
    let output = spawn_child(test, &[]).wait_within(limit);
    assert!(
        output.success,
        "child test {test} failed\n--- stdout\n{}\n--- stderr\n{}",
        output.stdout, output.stderr
    );
    // Let the parent's output show what the child measured.
    eprintln!("{}", output.stderr);
}

/// Installs (once) a panic hook that keeps quiet about the panics tests cause on
/// purpose (payload starting with `INTENTIONAL`), so a thousand of them do not
/// flood the output; other panics are reported as usual.
pub fn quiet_intentional_panics() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let payload = info.payload();
            let message = payload
                .downcast_ref::<&str>()
                .copied()
                .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
                .unwrap_or("");
            if !message.starts_with("INTENTIONAL") {
                default(info);
            }
        }));
    });
}

/// A reader producing `len` generated bytes (never held in memory): byte `i`
/// of the stream is `pattern(i)`.
pub struct Generated {
    pub pos: u64,
    pub len: u64,
    table: Vec<u8>,
}

/// The pattern's period: 251 is prime, so a misplaced or repeated block shifts it.
const PERIOD: u64 = 251;

impl Generated {
    pub fn new(len: u64) -> Generated {
        Generated {
            pos: 0,
            len,
            // Many periods, so one read copies up to ~64 KiB with one memcpy.
            table: (0..PERIOD * 256).map(pattern).collect(),
        }
    }
}

/// The generated byte at offset `i`.
pub fn pattern(i: u64) -> u8 {
    (i % PERIOD) as u8
}

impl Read for Generated {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let start = (self.pos % PERIOD) as usize;
        let n = (buf.len() as u64)
            .min(self.len - self.pos)
            .min((self.table.len() - start) as u64) as usize;
        buf[..n].copy_from_slice(&self.table[start..start + n]);
        self.pos += n as u64;
        Ok(n)
    }
}

/// A cheap check that `chunk`, found at `offset` in a [`Generated`] stream, is
/// in place: its first and last bytes.
pub fn check_pattern(offset: u64, chunk: &[u8]) {
    if let (Some(first), Some(last)) = (chunk.first(), chunk.last()) {
        assert_eq!(*first, pattern(offset), "byte at offset {offset}");
        let end = offset + chunk.len() as u64 - 1;
        assert_eq!(*last, pattern(end), "byte at offset {end}");
    }
}

/// Echoes a request body read three ways in turn: 10 bytes through one
/// `BodyReader`, 7 through a second, then the rest by iterating the body.
/// A read error gets a 400 naming it.
pub fn echo_read_mixed(mut request: astra::Request) -> astra::Response {
    let body = request.body_mut();
    let mut echo = vec![0; 10];
    let mut second = [0; 7];
    let read = body
        .reader()
        .read_exact(&mut echo)
        .and_then(|()| body.reader().read_exact(&mut second));
    if let Err(err) = read {
        return bad_request(format!("reading the first 17 bytes: {err}"));
    }
    echo.extend_from_slice(&second);
    for chunk in body {
        match chunk {
            Ok(bytes) => echo.extend_from_slice(&bytes),
            Err(err) => return bad_request(format!("iterating the rest: {err}")),
        }
    }
    astra::Response::new(astra::Body::new(echo))
}

fn bad_request(message: String) -> astra::Response {
    astra::ResponseBuilder::new()
        .status(400)
        .body(astra::Body::new(message))
        .unwrap()
}

/// Asserts that `body` is the whole pattern from offset 0, byte for byte.
pub fn assert_whole_pattern(body: &[u8]) {
    if let Some(at) = (0..body.len()).find(|&i| body[i] != pattern(i as u64)) {
        panic!("byte at offset {at} of {} is not the pattern's", body.len());
    }
}

/// A fresh directory under the system's temp dir, removed with everything in
/// it when dropped; for Unix socket paths.
pub struct TempDir(pub std::path::PathBuf);

impl TempDir {
    /// A new, empty directory whose name has `tag`, this process's id and a
    /// counter, so concurrent tests never share one.
    pub fn new(tag: &str) -> TempDir {
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("astra-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create a temp dir");
        TempDir(dir)
    }

    /// `name` inside the directory.
    pub fn join(&self, name: &str) -> std::path::PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs curl (bounded by `--max-time`) with `args` and returns its status
/// and stdout; fails the test if curl cannot run at all.
pub fn curl(args: &[&str]) -> (bool, String) {
    let output = Command::new("curl")
        .args(["--silent", "--show-error", "--max-time", "10"])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run curl");
    if !output.status.success() {
        eprintln!(
            "curl {args:?} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
    )
}

/// `curl --unix-socket path http://localhost{url_path}`: the response body.
pub fn curl_unix(path: &std::path::Path, url_path: &str, extra: &[&str]) -> String {
    let socket = path.to_str().expect("a UTF-8 socket path");
    let url = format!("http://localhost{url_path}");
    let mut args = vec!["--unix-socket", socket];
    args.extend_from_slice(extra);
    args.push(&url);
    let (ok, body) = curl(&args);
    assert!(ok, "curl --unix-socket {socket} {url} failed");
    body
}

/// Connects to a Unix socket with read and write timeouts of [`IO_TIMEOUT`].
pub fn connect_unix(path: &std::path::Path) -> std::os::unix::net::UnixStream {
    let stream = std::os::unix::net::UnixStream::connect(path)
        .unwrap_or_else(|err| panic!("connect to {} failed: {err}", path.display()));
    stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    stream.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
    stream
}

/// Sends `request` (which should ask for `Connection: close`) on a new Unix
/// socket connection and returns everything the server sent before closing.
pub fn raw_unix_request(path: &std::path::Path, request: &[u8]) -> String {
    let mut stream = connect_unix(path);
    stream.write_all(request).expect("write the request");
    let reply = read_until_closed(&mut stream).expect("the server closes after answering");
    String::from_utf8_lossy(&reply).into_owned()
}

/// Opens an HTTP/2 extended CONNECT stream (RFC 8441) with `:protocol`
/// `protocol` and `headers` to `addr`, checks it is accepted with a 200,
/// writes `send` on the stream and reads until `done` says what arrived is
/// complete; returns what arrived. hyper's client, on a tokio runtime of its
/// own; every step is bounded.
/// A current-thread tokio runtime, for the tests that drive hyper's own
/// HTTP/2 client ([`h2_connect`]).
#[cfg(feature = "http2")]
pub fn tokio_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Opens an HTTP/2 (prior knowledge) connection to `addr` with hyper's
/// client, inside a [`tokio_runtime`]: the sender, and the spawned task that
/// drives the connection.
#[cfg(feature = "http2")]
pub async fn h2_connect<B>(
    addr: SocketAddr,
) -> (
    hyper::client::conn::http2::SendRequest<B>,
    tokio::task::JoinHandle<hyper::Result<()>>,
)
where
    B: http_body::Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (sender, connection) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .unwrap();
    (sender, tokio::spawn(connection))
}

#[cfg(feature = "http2")]
pub fn h2_extended_connect(
    addr: SocketAddr,
    protocol: &'static str,
    headers: &[(&str, &str)],
    send: &[u8],
    done: impl Fn(&[u8]) -> bool,
) -> Vec<u8> {
    use hyper::rt::{Read as _, Write as _};
    use std::pin::Pin;
    use std::task::Poll;

    let mut request = http::Request::connect(format!("http://{addr}/"));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let mut request = request
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap();
    request
        .extensions_mut()
        .insert(hyper::ext::Protocol::from_static(protocol));
    let runtime = tokio_runtime();
    runtime.block_on(async move {
        let limit = Duration::from_secs(10);
        let (mut sender, _connection) = h2_connect(addr).await;
        let response = tokio::time::timeout(limit, sender.send_request(request))
            .await
            .expect("the CONNECT is answered")
            .unwrap();
        assert_eq!(response.status(), 200);
        let mut io = hyper::upgrade::on(response).await.unwrap();
        std::future::poll_fn(|cx| Pin::new(&mut io).poll_write(cx, send))
            .await
            .unwrap();
        let mut got = Vec::new();
        while !done(&got) {
            let mut buf = [0u8; 4096];
            let read = std::future::poll_fn(|cx| {
                let mut read = hyper::rt::ReadBuf::new(&mut buf);
                match Pin::new(&mut io).poll_read(cx, read.unfilled()) {
                    Poll::Ready(Ok(())) => Poll::Ready(Ok::<_, io::Error>(read.filled().len())),
                    Poll::Ready(Err(err)) => Poll::Ready(Err(err)),
                    Poll::Pending => Poll::Pending,
                }
            });
            let n = tokio::time::timeout(limit, read)
                .await
                .expect("the stream answers")
                .unwrap();
            assert!(n > 0, "the stream ended early, after {got:?}");
            got.extend_from_slice(&buf[..n]);
        }
        got
    })
}
