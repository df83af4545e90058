//! WebSocket against real clients: Python's `websockets` and Node's `ws` run
//! small scripts against an in-process echo server; then a thousand tungstenite
//! clients open and close in turn, and two thousand idle WebSockets hold no
//! threads while new clients are answered at once.
//!
//! The client libraries come from `.ci/run`, which installs them when missing:
//! - Python: `python3 -m pip install --user 'websockets>=13,<18'` (so plain
//!   `python3` finds it; set `ASTRA_TEST_PYTHON` to use another interpreter);
//! - Node: `npm install --prefix /tmp/astra-ws-clients/node ws@8`; the scripts
//!   run with `NODE_PATH=/tmp/astra-ws-clients/node/node_modules` (set
//!   `ASTRA_TEST_NODE_DIR` to use another prefix).
//!
//! A test whose client library is missing prints why and passes, except under
//! CI (`CI=true`), where it fails: CI must not skip them silently.

#![cfg(feature = "websocket")]

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use astra::test::TestServer;
use astra::websocket::tungstenite;
use astra::websocket::{Message, Sender, WebSocketUpgrade};
use astra::{Body, ConnectionInfo, Request, Response, Server};

/// The prefix `.ci/run` installs Node's `ws` into.
const NODE_DIR: &str = "/tmp/astra-ws-clients/node";
/// How long a client script may run.
const SCRIPT_LIMIT: Duration = Duration::from_secs(30);

/// `/plain` answers plain HTTP; anything else is a WebSocket echo that speaks
/// the subprotocol "chat" when offered.
fn echo(mut request: Request, _info: ConnectionInfo) -> Response {
    if request.uri().path() == "/plain" {
        return Response::new(Body::new("ok"));
    }
    match WebSocketUpgrade::from_request(&mut request) {
        Ok(ws) => ws
            .protocols(["chat"])
            .serve(|sender: &Sender, message: Message| {
                let _ = sender.send(message);
            }),
        Err(refusal) => refusal,
    }
}

fn start_echo(server: Server) -> TestServer {
    common::start(server, echo)
}

// ---------------------------------------------------------------------------
// Client scripts

fn python() -> String {
    std::env::var("ASTRA_TEST_PYTHON").unwrap_or_else(|_| "python3".into())
}

fn node_modules() -> PathBuf {
    let dir = std::env::var("ASTRA_TEST_NODE_DIR").unwrap_or_else(|_| NODE_DIR.into());
    PathBuf::from(dir).join("node_modules")
}

fn node() -> Command {
    let mut command = Command::new("node");
    command.env("NODE_PATH", node_modules());
    command
}

/// Whether a client library is there: runs `check`; if it fails, skips the
/// test (returns false) with a message, or fails it under CI.
fn client_available(what: &str, mut check: Command, install: &str) -> bool {
    check
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let error = match check.spawn() {
        Ok(child) => {
            let mut script = Script::from_child(child);
            match script.finish(Duration::from_secs(20)) {
                (true, _, _) => return true,
                (false, _, stderr) => stderr,
            }
        }
        Err(err) => err.to_string(),
    };
    let message = format!(
        "{what} is not available ({}); install it with: {install}",
        error.trim()
    );
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("CI=true and {message} (.ci/run should have)");
    }
    eprintln!("SKIPPED: {message}");
    false
}

fn python_available() -> bool {
    let mut check = Command::new(python());
    check.args(["-c", "import websockets.sync.client"]);
    client_available(
        "Python's websockets",
        check,
        "python3 -m pip install --user 'websockets>=13,<18'",
    )
}

fn node_available() -> bool {
    let mut check = node();
    check.args([
        "-e",
        "try { require('ws') } catch (e) { console.error(e.message.split('\\n')[0]); process.exit(1) }",
    ]);
    client_available(
        "Node's ws",
        check,
        &format!("npm install --prefix {NODE_DIR} ws@8"),
    )
}

/// A client process; killed if dropped before it exits.
struct Script {
    child: Child,
    lines: mpsc::Receiver<String>,
    stderr: Option<thread::JoinHandle<String>>,
    seen: Vec<String>,
}

impl Script {
    fn run(mut command: Command) -> Script {
        command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let child = command
            .spawn()
            .unwrap_or_else(|err| panic!("spawn {command:?}: {err}"));
        Script::from_child(child)
    }

    fn from_child(mut child: Child) -> Script {
        let (tx, lines) = mpsc::channel();
        if let Some(stdout) = child.stdout.take() {
            thread::spawn(move || {
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            });
        }
        let stderr = child.stderr.take().map(|mut stderr| {
            thread::spawn(move || {
                let mut text = String::new();
                let _ = stderr.read_to_string(&mut text);
                text
            })
        });
        Script {
            child,
            lines,
            stderr,
            seen: Vec::new(),
        }
    }

    /// The next line of output; fails the test if none comes in `limit`.
    fn line(&mut self, limit: Duration) -> String {
        match self.lines.recv_timeout(limit) {
            Ok(line) => {
                self.seen.push(line.clone());
                line
            }
            Err(err) => {
                let _ = self.child.kill();
                let (_, _, stderr) = self.finish(Duration::from_secs(5));
                panic!(
                    "no line from the client within {limit:?} ({err}); it printed {:?}\n--- stderr\n{stderr}",
                    self.seen
                );
            }
        }
    }

    /// Waits for the process to exit (killing it at `limit`): whether it
    /// succeeded, the lines not read yet, and its stderr.
    fn finish(&mut self, limit: Duration) -> (bool, Vec<String>, String) {
        let deadline = Instant::now() + limit;
        let mut rest = Vec::new();
        // Output ends when the process exits (or closes it).
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => rest.push(line),
                Err(_) => break,
            }
        }
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                break Some(status);
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                break None;
            }
            thread::sleep(Duration::from_millis(10));
        };
        let stderr = self
            .stderr
            .take()
            .and_then(|h| h.join().ok())
            .unwrap_or_default();
        match status {
            Some(status) => (status.success(), rest, stderr),
            None => (
                false,
                rest,
                format!("killed: still running after {limit:?}\n{stderr}"),
            ),
        }
    }

    /// Waits for a successful exit and returns all the output.
    fn output(mut self) -> Vec<String> {
        let (ok, rest, stderr) = self.finish(SCRIPT_LIMIT);
        let mut all = std::mem::take(&mut self.seen);
        all.extend(rest);
        assert!(
            ok,
            "the client failed; it printed {all:?}\n--- stderr\n{stderr}"
        );
        all
    }
}

impl Drop for Script {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Writes `source` to `name` in a fresh temp dir (removed when dropped).
fn script_file(tag: &str, name: &str, source: &str) -> (common::TempDir, PathBuf) {
    let dir = common::TempDir::new(tag);
    let path = dir.join(name);
    std::fs::File::create(&path)
        .and_then(|mut f| f.write_all(source.as_bytes()))
        .expect("write the client script");
    (dir, path)
}

/// What both clients print in `echo` mode, line by line.
fn expected_echo_output() -> Vec<String> {
    [
        "subprotocol chat",
        "text hello, astra",
        "binary 0001feff",
        "big binary 1048576 true",
        "pong astra-ping",
        "closed 1000",
    ]
    .map(String::from)
    .to_vec()
}

const PYTHON_CLIENT: &str = r#"
import sys
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

mode, url = sys.argv[1], sys.argv[2]

def out(*words):
    print(*words, flush=True)

if mode == "echo":
    with connect(url, subprotocols=["superchat", "chat"], max_size=None,
                 open_timeout=5, close_timeout=5) as ws:
        out("subprotocol", ws.subprotocol)
        ws.send("hello, astra")
        out("text", ws.recv(timeout=5))
        ws.send(b"\x00\x01\xfe\xff")
        reply = ws.recv(timeout=5)
        out("binary", reply.hex() if isinstance(reply, bytes) else "not bytes: %r" % reply)
        big = bytes(i % 251 for i in range(1 << 20))
        ws.send(big)
        reply = ws.recv(timeout=10)
        out("big", "binary" if isinstance(reply, bytes) else "text", len(reply),
            "true" if reply == big else "false")
        if ws.ping(b"astra-ping").wait(5):
            out("pong", "astra-ping")
        else:
            out("no pong")
    out("closed", ws.close_code)
elif mode == "shutdown":
    with connect(url, open_timeout=5, close_timeout=5) as ws:
        ws.send("ready")
        out("echo", ws.recv(timeout=5))
        try:
            message = ws.recv(timeout=20)
            out("unexpected message", repr(message))
        except ConnectionClosed as closed:
            out("closed", closed.rcvd.code if closed.rcvd else None)
"#;

const NODE_CLIENT: &str = r#"
const WebSocket = require('ws');
const [mode, url] = process.argv.slice(2);
const out = (...words) => console.log(words.join(' '));
const fail = (why) => { out('error', why); process.exit(1); };
setTimeout(() => fail('timeout'), 20000);

const ws = new WebSocket(url, mode === 'echo' ? ['superchat', 'chat'] : [], { handshakeTimeout: 5000 });
const next = () => new Promise((resolve) => ws.once('message', (data, isBinary) => resolve({ data, isBinary })));
ws.on('error', (err) => fail(err.message));
ws.on('close', (code) => { out('closed', code); process.exit(0); });
ws.on('open', async () => {
  if (mode === 'shutdown') {
    ws.send('ready');
    const reply = await next();
    out('echo', reply.data.toString());
    return; // the server closes
  }
  out('subprotocol', ws.protocol);
  ws.send('hello, astra');
  let m = await next();
  out('text', m.isBinary ? 'binary!' : m.data.toString());
  ws.send(Buffer.from([0, 1, 0xfe, 0xff]));
  m = await next();
  out('binary', m.isBinary ? m.data.toString('hex') : 'not binary');
  const big = Buffer.alloc(1 << 20);
  for (let i = 0; i < big.length; i++) big[i] = i % 251;
  ws.send(big);
  m = await next();
  out('big', m.isBinary ? 'binary' : 'text', m.data.length, Buffer.compare(m.data, big) === 0);
  const pong = new Promise((resolve) => ws.once('pong', resolve));
  ws.ping(Buffer.from('astra-ping'));
  out('pong', (await pong).toString());
  ws.close(1000, 'done');
});
"#;

fn python_script(mode: &str, addr: SocketAddr, file: &std::path::Path) -> Script {
    let mut command = Command::new(python());
    command.arg(file).args([mode, &format!("ws://{addr}/ws")]);
    Script::run(command)
}

fn node_script(mode: &str, addr: SocketAddr, file: &std::path::Path) -> Script {
    let mut command = node();
    command.arg(file).args([mode, &format!("ws://{addr}/ws")]);
    Script::run(command)
}

/// Text, binary and 1 MiB echoes, the subprotocol, a ping, a normal close.
#[test]
fn python_websockets_echo_subprotocol_ping() {
    if !python_available() {
        return;
    }
    let server = start_echo(common::server());
    let addr = server.addr();
    let (_dir, file) = script_file("ws-python", "client.py", PYTHON_CLIENT);
    let output = python_script("echo", addr, &file).output();
    assert_eq!(output, expected_echo_output());
}

#[test]
fn node_ws_echo_subprotocol_ping() {
    if !node_available() {
        return;
    }
    let server = start_echo(common::server());
    let addr = server.addr();
    let (_dir, file) = script_file("ws-node", "client.js", NODE_CLIENT);
    let output = node_script("echo", addr, &file).output();
    assert_eq!(output, expected_echo_output());
}

/// A graceful shutdown closes open WebSockets with 1001 (going away).
fn shutdown_gives_1001(run: impl FnOnce(SocketAddr) -> Script) {
    let server = common::server().shutdown_timeout(Duration::from_secs(5));
    let handle = server.handle();
    let addr = server.local_addr().unwrap();
    let serving = thread::spawn(move || server.serve(echo));
    let mut client = run(addr);
    assert_eq!(client.line(Duration::from_secs(15)), "echo ready");
    let t = Instant::now();
    handle.shutdown();
    assert_eq!(client.line(Duration::from_secs(10)), "closed 1001");
    eprintln!("the client saw 1001 {:?} after shutdown()", t.elapsed());
    client.output();
    let served = common::join_within(serving, Duration::from_secs(10), "serve after shutdown");
    served.expect("serve returns Ok after a graceful shutdown");
}

#[test]
fn python_websockets_sees_1001_on_graceful_shutdown() {
    if !python_available() {
        return;
    }
    let (_dir, file) = script_file("ws-python", "client.py", PYTHON_CLIENT);
    shutdown_gives_1001(|addr| python_script("shutdown", addr, &file));
}

#[test]
fn node_ws_sees_1001_on_graceful_shutdown() {
    if !node_available() {
        return;
    }
    let (_dir, file) = script_file("ws-node", "client.js", NODE_CLIENT);
    shutdown_gives_1001(|addr| node_script("shutdown", addr, &file));
}

// ---------------------------------------------------------------------------
// Many clients (tungstenite's client)

type Client = tungstenite::WebSocket<std::net::TcpStream>;

/// Opens a WebSocket with tungstenite's client over a socket with timeouts,
/// and checks one echo.
fn open(addr: SocketAddr) -> Client {
    let stream = common::connect(addr);
    let (mut ws, response) = tungstenite::client(format!("ws://{addr}/ws"), stream)
        .unwrap_or_else(|err| panic!("WebSocket handshake with {addr}: {err}"));
    assert_eq!(response.status(), 101);
    ws.send(Message::text("hi")).expect("send");
    assert_eq!(ws.read().expect("echo"), Message::text("hi"));
    ws
}

/// Closes normally: our close, the server's answer, then the server closes TCP.
fn close(mut ws: Client) {
    ws.close(None).expect("close");
    loop {
        match ws.read() {
            Ok(Message::Close(frame)) => {
                let code = frame.map(|f| u16::from(f.code));
                assert!(matches!(code, None | Some(1000)), "closed with {code:?}");
            }
            Ok(other) => panic!("{other:?} after close"),
            Err(tungstenite::Error::ConnectionClosed) => break,
            Err(err) => panic!("closing: {err}"),
        }
    }
    let mut byte = [0; 1];
    let n = ws
        .get_mut()
        .read(&mut byte)
        .expect("the server closes the TCP connection");
    assert_eq!(n, 0, "data after the close handshake");
}

#[test]
fn a_thousand_clients_open_and_close() {
    const CLIENTS: usize = 1000;
    const THREADS: usize = 4;
    let server = start_echo(common::server());
    let addr = server.addr();
    let start = Instant::now();
    let threads: Vec<_> = (0..THREADS)
        .map(|_| {
            thread::spawn(move || {
                for _ in 0..CLIENTS / THREADS {
                    close(open(addr));
                }
            })
        })
        .collect();
    for handle in threads {
        common::join_within(handle, Duration::from_secs(30), "1000 WebSocket clients");
    }
    eprintln!(
        "{CLIENTS} WebSockets opened, echoed once and closed in {:?}",
        start.elapsed()
    );
    // The server is still fine.
    close(open(addr));
}

const IDLE_TEST: &str = "idle_websockets_hold_no_threads";
const IDLE: usize = 2000;
/// Threads the server may have beyond the test's own: a handful.
const HANDFUL: u64 = 8;

/// Idle WebSockets in messages mode hold no thread: two thousand of them, and
/// the process has a handful of threads more than before the server started,
/// while new HTTP and WebSocket clients are answered at once. In a child
/// process of its own, so the thread count is this test's alone.
#[test]
fn idle_websockets_hold_no_threads() {
    if !common::is_child(IDLE_TEST) {
        common::run_in_child(IDLE_TEST, Duration::from_secs(60));
        return;
    }
    // Two descriptors per socket (both ends are in this process).
    let limit = common::raise_nofile(2 * IDLE as u64 + 200);
    assert!(
        limit >= 2 * IDLE as u64 + 200,
        "RLIMIT_NOFILE could only be raised to {limit}"
    );
    let baseline = common::threads();
    let server = start_echo(common::server());
    let addr = server.addr();
    let start = Instant::now();
    let mut idle: Vec<Client> = (0..IDLE).map(|_| open(addr)).collect();
    eprintln!(
        "{IDLE} WebSockets opened (one echo each) in {:?}",
        start.elapsed()
    );

    let t = Instant::now();
    let (status, body) = common::get(addr, "/plain");
    let took = t.elapsed();
    assert_eq!((status, body.as_str()), (200, "ok"));
    assert!(
        took < Duration::from_secs(1),
        "a new HTTP client waited {took:?} beside {IDLE} idle WebSockets"
    );
    let t = Instant::now();
    close(open(addr));
    let took_ws = t.elapsed();
    assert!(
        took_ws < Duration::from_secs(1),
        "a new WebSocket client waited {took_ws:?}"
    );

    let now = common::threads();
    eprintln!(
        "threads: {baseline} before the server, {now} with {IDLE} idle WebSockets; \
         new HTTP client answered in {took:?}, new WebSocket in {took_ws:?}"
    );
    assert!(
        now <= baseline + HANDFUL,
        "{now} threads with {IDLE} idle WebSockets (baseline {baseline}, allowed {HANDFUL} more)"
    );

    // They were idle, not dropped: a sample still echoes, and closes cleanly.
    for ws in idle.iter_mut().step_by(IDLE / 20) {
        ws.send(Message::binary(vec![7; 100])).expect("send");
        assert_eq!(ws.read().expect("echo"), Message::binary(vec![7; 100]));
    }
    for ws in idle.drain(..).step_by(IDLE / 20) {
        close(ws);
    }
}
