//! Helper for the WebSocket scenarios S14 and S15, and the WebSocket servers'
//! start-up check: a tungstenite client over blocking `std::net::TcpStream`s.
//! Not a server.
//!
//! Usage:
//!
//! * `ws_load echo ADDR CONNS SECS SIZE` — opens CONNS WebSockets, one thread
//!   each; once all are open, prints `started`, and each sends a SIZE-byte
//!   text message and waits for its echo, again and again, for SECS. Then
//!   prints `messages N`, `msgs_per_sec X`, `p50_ms X`, `p99_ms X`, `errors N`
//!   and `client_cpu_pct X` (this process's CPU time over the run as a % of
//!   one core: near 100 % on one core means the client, not the server, set
//!   the pace), or `failed: WHY`, and last `finished`; only then, after
//!   [`LINGER`], closes the sockets. The caller may read the server's counters
//!   at `started` and `finished`: every connection is open in between, so a
//!   server's threads that live as long as their connection are all still
//!   there to be counted.
//! * `ws_load idle ADDR CONNS HOLD_SECS` — opens CONNS WebSockets from a few
//!   threads and leaves them idle. Prints, flushed as they happen: `open N`
//!   (all that could be opened are open; `stalled: WHY` after it if fewer than
//!   CONNS), then, 0.5 s later, a new client's TCP connect + handshake time as
//!   `latency_ms X` or `latency failed: WHY`, then `holding`: the caller may
//!   measure the server now. Closes them after HOLD_SECS, or when killed.
//! * `ws_load probe ADDR` — one handshake and one echoed message within 2 s;
//!   exits 0 if that worked (`run.sh`'s start-up check).

use std::io::{self, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use tungstenite::{Message, WebSocket};

/// How long a connect + handshake may take while opening.
const OPEN_TIMEOUT: Duration = Duration::from_secs(5);
/// How long opening all the idle sockets may take.
const OPEN_DEADLINE: Duration = Duration::from_secs(120);
/// How long one echo may take before the connection counts as failed.
const ECHO_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the new client of `idle` waits for its handshake.
const PROBE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long `echo` waits for each server close frame at the end.
const CLOSE_TIMEOUT: Duration = Duration::from_millis(200);
/// How long `echo` keeps the sockets open after `finished`.
const LINGER: Duration = Duration::from_secs(1);
/// Threads opening the idle sockets: a few, so that a server slow to accept
/// one connection (a thread to start) does not serialise the rest.
const IDLE_OPENERS: usize = 4;

fn say(line: &str) {
    let mut out = io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

fn fail(why: &str) -> ! {
    say(&format!("failed: {why}"));
    std::process::exit(1);
}

/// This process's user + system CPU time.
fn cpu_time() -> Duration {
    // SAFETY: getrusage with a valid pointer to a zeroed local struct.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut usage);
        usage
    };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

/// TCP connect and WebSocket handshake to `ws://addr/`, both within `timeout`;
/// the socket is left with `timeout` as its read and write timeout.
fn open(addr: SocketAddr, timeout: Duration) -> io::Result<WebSocket<TcpStream>> {
    let stream = TcpStream::connect_timeout(&addr, timeout)?;
    // Each message is one write; the client should not hold it back (the
    // servers keep their own defaults).
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    let url = format!("ws://{addr}/");
    match tungstenite::client(url.as_str(), stream) {
        Ok((socket, _response)) => Ok(socket),
        Err(err) => Err(io::Error::other(format!("handshake: {err}"))),
    }
}

/// Sends `payload` and waits for a text or binary message back, which must
/// be as long (pings are answered by tungstenite as it reads).
fn echo(socket: &mut WebSocket<TcpStream>, payload: &str) -> Result<(), String> {
    socket
        .send(Message::text(payload))
        .map_err(|err| format!("send: {err}"))?;
    loop {
        match socket.read() {
            Ok(Message::Text(text)) if text.len() == payload.len() => return Ok(()),
            Ok(Message::Binary(data)) if data.len() == payload.len() => return Ok(()),
            Ok(Message::Text(_)) | Ok(Message::Binary(_)) => {
                return Err("echo of the wrong length".into())
            }
            Ok(Message::Close(frame)) => return Err(format!("server closed: {frame:?}")),
            Ok(_) => {} // ping, pong, frame
            Err(tungstenite::Error::Io(err))
                if matches!(
                    err.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return Err(format!("no echo in {} s", ECHO_TIMEOUT.as_secs()))
            }
            Err(err) => return Err(format!("read: {err}")),
        }
    }
}

/// Sends a close frame and waits (briefly, bounded by the read timeout) for
/// the server's, so the server sees a clean close rather than a reset.
fn close(mut socket: WebSocket<TcpStream>) {
    if socket.close(None).is_err() {
        return;
    }
    while socket.read().is_ok() {}
}

fn parse_addr(addr: &str) -> SocketAddr {
    match addr.to_socket_addrs().ok().and_then(|mut a| a.next()) {
        Some(addr) => addr,
        None => fail(&format!("bad address {addr}")),
    }
}

fn arg<T: std::str::FromStr>(args: &[String], i: usize, name: &str) -> T {
    match args.get(i).map(|s| s.parse()) {
        Some(Ok(v)) => v,
        _ => fail(&format!("missing or bad {name} (argument {i})")),
    }
}

/// The value below which `q` of the sorted samples lie, in ms.
fn quantile_ms(sorted_us: &[u32], q: f64) -> f64 {
    let i = ((sorted_us.len() as f64 * q).ceil() as usize).clamp(1, sorted_us.len()) - 1;
    sorted_us[i] as f64 / 1000.0
}

fn run_echo(addr: SocketAddr, conns: usize, secs: u64, size: usize) {
    let payload = "x".repeat(size);
    // Every connection is opened before any is timed, so the run measures
    // echoing, not handshakes; the barrier also lines up the start.
    let barrier = Arc::new(Barrier::new(conns + 1));
    let duration = Duration::from_secs(secs);
    let mut threads = Vec::with_capacity(conns);
    for _ in 0..conns {
        let barrier = barrier.clone();
        let payload = payload.clone();
        threads.push(thread::spawn(move || {
            let opened = open(addr, OPEN_TIMEOUT);
            // Wait even on failure, so that the barrier is always released.
            let start: Instant = {
                barrier.wait();
                Instant::now()
            };
            let mut socket = match opened {
                Ok(socket) => socket,
                Err(err) => return (Vec::new(), Some(format!("open: {err}")), None),
            };
            if let Err(err) = socket.get_ref().set_read_timeout(Some(ECHO_TIMEOUT)) {
                return (Vec::new(), Some(format!("set_read_timeout: {err}")), None);
            }
            // Round-trip times in µs; 64 connections x at most a few 100k
            // messages per second stay within a few tens of MB.
            let mut samples: Vec<u32> = Vec::with_capacity(1 << 16);
            let mut error = None;
            while start.elapsed() < duration {
                let sent = Instant::now();
                if let Err(why) = echo(&mut socket, &payload) {
                    error = Some(why);
                    break;
                }
                samples.push(sent.elapsed().as_micros().min(u32::MAX as u128) as u32);
            }
            // Kept open, to be closed after `finished` (see the module docs).
            let keep = error.is_none().then_some(socket);
            (samples, error, keep)
        }));
    }
    barrier.wait();
    let start = Instant::now();
    let cpu_start = cpu_time();
    say("started");
    let mut all = Vec::new();
    let mut errors = 0;
    let mut first_error = None;
    let mut sockets = Vec::with_capacity(conns);
    for handle in threads {
        match handle.join() {
            Ok((samples, error, socket)) => {
                all.extend(samples);
                sockets.extend(socket);
                if let Some(why) = error {
                    errors += 1;
                    first_error.get_or_insert(why);
                }
            }
            Err(_) => {
                errors += 1;
                first_error.get_or_insert("client thread panicked".into());
            }
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    let cpu = (cpu_time() - cpu_start).as_secs_f64();
    if errors == conns {
        fail(&format!(
            "every connection failed, first: {}",
            first_error.unwrap_or_default()
        ));
    }
    if all.is_empty() {
        fail("no message echoed");
    }
    all.sort_unstable();
    say(&format!("messages {}", all.len()));
    say(&format!("msgs_per_sec {:.1}", all.len() as f64 / elapsed));
    say(&format!("p50_ms {:.3}", quantile_ms(&all, 0.50)));
    say(&format!("p99_ms {:.3}", quantile_ms(&all, 0.99)));
    say(&format!("errors {errors}"));
    say(&format!("client_cpu_pct {:.1}", 100.0 * cpu / elapsed));
    if let Some(why) = first_error {
        say(&format!("first_error {why}"));
    }
    say("finished");
    thread::sleep(LINGER);
    for socket in sockets {
        // One after another, so each may wait only briefly for the server's
        // close frame: 64 x ECHO_TIMEOUT would outlast run.sh's timeout.
        let _ = socket.get_ref().set_read_timeout(Some(CLOSE_TIMEOUT));
        close(socket);
    }
}

fn run_idle(addr: SocketAddr, conns: usize, hold: Duration) {
    astra_bench::raise_nofile();
    let started = Instant::now();
    let openers = IDLE_OPENERS.min(conns.max(1));
    let mut handles = Vec::new();
    for t in 0..openers {
        // Spread CONNS over the openers, the first ones taking the remainder.
        let share = conns / openers + usize::from(t < conns % openers);
        handles.push(thread::spawn(move || {
            let mut sockets = Vec::with_capacity(share);
            for _ in 0..share {
                if started.elapsed() > OPEN_DEADLINE {
                    let why = format!("opening took over {} s", OPEN_DEADLINE.as_secs());
                    return (sockets, Some(why));
                }
                match open(addr, OPEN_TIMEOUT) {
                    Ok(socket) => sockets.push(socket),
                    Err(err) => {
                        let why = format!("socket #{} failed: {err}", sockets.len() + 1);
                        return (sockets, Some(why));
                    }
                }
            }
            (sockets, None)
        }));
    }
    let mut idle = Vec::with_capacity(conns);
    let mut stalled = None;
    for handle in handles {
        match handle.join() {
            Ok((sockets, why)) => {
                idle.extend(sockets);
                if let Some(why) = why {
                    stalled.get_or_insert(why);
                }
            }
            Err(_) => {
                stalled.get_or_insert("opener thread panicked".to_string());
            }
        }
    }
    say(&format!("open {}", idle.len()));
    if let Some(why) = stalled {
        say(&format!("stalled: {why}"));
    }
    // Let the server settle into its idle state before the new client.
    thread::sleep(Duration::from_millis(500));
    let probe_start = Instant::now();
    match open(addr, PROBE_TIMEOUT) {
        Ok(socket) => {
            say(&format!(
                "latency_ms {:.3}",
                probe_start.elapsed().as_secs_f64() * 1000.0
            ));
            close(socket);
        }
        Err(err) => say(&format!("latency failed: {err}")),
    }
    say("holding");
    thread::sleep(hold);
    // Dropping closes the TCP connections: with this many, a close handshake
    // each would only add time and measure nothing.
    drop(idle);
}

fn run_probe(addr: SocketAddr) {
    let timeout = Duration::from_secs(2);
    let result = open(addr, timeout)
        .map_err(|err| format!("open: {err}"))
        .and_then(|mut socket| {
            echo(&mut socket, "probe")?;
            close(socket);
            Ok(())
        });
    if let Err(why) = result {
        fail(&why);
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let usage = "usage: ws_load echo ADDR CONNS SECS SIZE | idle ADDR CONNS HOLD_SECS | probe ADDR";
    let mode = args.get(1).map(String::as_str).unwrap_or("");
    if args.len() < 3 {
        fail(usage);
    }
    let addr = parse_addr(&args[2]);
    match mode {
        "echo" => {
            let conns: usize = arg(&args, 3, "CONNS");
            let secs: u64 = arg(&args, 4, "SECS");
            let size: usize = arg(&args, 5, "SIZE");
            if conns == 0 {
                fail("CONNS must be at least 1");
            }
            run_echo(addr, conns, secs, size);
        }
        "idle" => {
            let conns: usize = arg(&args, 3, "CONNS");
            let hold: u64 = arg(&args, 4, "HOLD_SECS");
            run_idle(addr, conns, Duration::from_secs(hold));
        }
        "probe" => run_probe(addr),
        _ => fail(usage),
    }
}
