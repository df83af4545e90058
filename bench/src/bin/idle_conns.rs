//! Helper for scenario S3: opens many keep-alive connections, each of which sends
//! one `GET /` and reads the answer, then leaves them idle and times a new
//! client's `GET /`.
//!
//! Usage: `idle_conns ADDR [COUNT=5000] [HOLD_SECS=30]`
//!
//! Prints, one per line, flushed as they happen:
//!
//! * `opened N` — connections that were answered and are now idle
//! * `stalled: WHY` — (only if opening stopped early) why
//! * `latency_ms X` or `latency failed: WHY` — the new client's request
//! * `holding` — the idle connections are still open; the caller may measure
//!   the server now. The helper exits after HOLD_SECS, or when killed.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

/// How long one of the idle connections may take to be answered while opening.
const OPEN_TIMEOUT: Duration = Duration::from_secs(2);
/// How long the whole opening phase may take.
const OPEN_DEADLINE: Duration = Duration::from_secs(60);
/// How long the new client waits for its answer.
const PROBE_TIMEOUT: Duration = Duration::from_secs(10);

const REQUEST: &[u8] = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n";

/// Sends one `GET /` on `stream` and reads the whole answer before `deadline`.
fn exchange(stream: &mut TcpStream, deadline: Instant) -> io::Result<()> {
    stream.write_all(REQUEST)?;
    let mut buf = Vec::with_capacity(512);
    let mut chunk = [0u8; 4096];
    let mut need: Option<usize> = None;
    loop {
        if let Some(total) = need {
            if buf.len() >= total {
                return Ok(());
            }
        } else if let Some(end) = find(&buf, b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            if !head.starts_with("http/1.1 200") && !head.starts_with("http/1.0 200") {
                let line = head.lines().next().unwrap_or("").to_string();
                return Err(io::Error::other(format!("status {line:?}")));
            }
            let length = head
                .lines()
                .find_map(|line| line.strip_prefix("content-length:"))
                .and_then(|value| value.trim().parse::<usize>().ok());
            match length {
                Some(length) => {
                    need = Some(end + 4 + length);
                    continue;
                }
                // Not expected from these servers; the head is enough here.
                None => return Ok(()),
            }
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::ErrorKind::TimedOut.into());
        }
        stream.set_read_timeout(Some(left))?;
        match stream.read(&mut chunk) {
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => {
                return Err(io::ErrorKind::TimedOut.into())
            }
            Err(err) => return Err(err),
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Connects and does one exchange, all within `timeout`.
fn connect_and_ask(addr: SocketAddr, timeout: Duration) -> io::Result<TcpStream> {
    let deadline = Instant::now() + timeout;
    let mut stream = TcpStream::connect_timeout(&addr, timeout)?;
    stream.set_write_timeout(Some(timeout))?;
    exchange(&mut stream, deadline)?;
    Ok(stream)
}

fn say(line: &str) {
    let mut out = io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

fn main() {
    let mut args = std::env::args().skip(1);
    let addr = args
        .next()
        .unwrap_or_else(|| astra_bench::DEFAULT_ADDR.to_string());
    let count: usize = args.next().and_then(|s| s.parse().ok()).unwrap_or(5000);
    let hold = Duration::from_secs(args.next().and_then(|s| s.parse().ok()).unwrap_or(30));
    let addr = match addr.to_socket_addrs().ok().and_then(|mut a| a.next()) {
        Some(addr) => addr,
        None => {
            eprintln!("bad address {addr}");
            std::process::exit(2);
        }
    };
    astra_bench::raise_nofile();

    let started = Instant::now();
    let mut idle = Vec::with_capacity(count);
    let mut stalled = None;
    for i in 0..count {
        if started.elapsed() > OPEN_DEADLINE {
            stalled = Some(format!("opening took over {}s", OPEN_DEADLINE.as_secs()));
            break;
        }
        match connect_and_ask(addr, OPEN_TIMEOUT) {
            Ok(stream) => idle.push(stream),
            Err(err) => {
                stalled = Some(format!("connection #{} got no answer: {err}", i + 1));
                break;
            }
        }
    }
    say(&format!("opened {}", idle.len()));
    if let Some(why) = stalled {
        say(&format!("stalled: {why}"));
    }
    // Let the server settle into its idle state before the probe.
    std::thread::sleep(Duration::from_millis(500));

    let probe_start = Instant::now();
    match connect_and_ask(addr, PROBE_TIMEOUT) {
        Ok(_stream) => say(&format!(
            "latency_ms {:.3}",
            probe_start.elapsed().as_secs_f64() * 1000.0
        )),
        Err(err) if err.kind() == io::ErrorKind::TimedOut => say(&format!(
            "latency failed: no answer in {} s",
            PROBE_TIMEOUT.as_secs()
        )),
        Err(err) => say(&format!("latency failed: {err}")),
    }
    say("holding");
    std::thread::sleep(hold);
    drop(idle);
}
