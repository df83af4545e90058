//! `examples/chat.rs` in a real browser: headless Chromium (Debian's
//! `chromium`) opens the chat page in two tabs, each tab's own WebSocket
//! connects to our server, and what is typed in one tab shows up in the other,
//! both ways, along with a WebSocket client in the test itself.
//!
//! The test drives Chromium over the Chrome DevTools Protocol (CDP), JSON
//! over a WebSocket that Chromium serves on a port of its own: it opens the
//! tabs, runs JavaScript in them (`Runtime.evaluate`) to type, click Send and
//! read the message list, and closes a tab to see the server let go of it.
//!
//! Every step has a deadline, and Chromium runs in a process group of its own
//! that is killed when the test ends, whichever way. `.ci/run` installs
//! Chromium; without it the test is skipped locally and fails in CI (`CI`
//! set), so it can never pass by not running.

#![cfg(feature = "websocket")]

mod common;

// The example's chat room itself, not a copy: its `main` is unused here.
#[path = "../examples/chat.rs"]
#[allow(dead_code)]
mod chat;

use std::fs::File;
use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use astra::websocket::tungstenite::{self, client::IntoClientRequest, Message, WebSocket};
use serde_json::{json, Value};

use chat::ChatRoom;
use common::*;

/// The page the example serves, as the browser should get it.
const PAGE: &str = include_str!("../examples/chat.html");

/// How long one wait may take: for Chromium to start, a tab to connect, a
/// message to arrive.
const STEP: Duration = Duration::from_secs(20);

fn find_chromium() -> Option<PathBuf> {
    ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
}

/// Polls `check` every 20 ms until it returns `Some`, for at most [`STEP`].
fn wait_for<T>(what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + STEP;
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(Instant::now() < deadline, "{what}: not within {STEP:?}");
        thread::sleep(Duration::from_millis(20));
    }
}

/// A headless Chromium with a fresh profile, killed with its whole process
/// group when dropped.
struct Chromium {
    child: Child,
    /// The profile (`profile/`) and Chromium's stderr (`chromium.log`);
    /// removed after Chromium is dead (fields drop after `drop`).
    dir: TempDir,
}

impl Chromium {
    fn launch(binary: &Path) -> Chromium {
        let dir = TempDir::new("chromium");
        let profile = dir.join("profile");
        let log = File::create(dir.join("chromium.log")).expect("create chromium.log");
        let mut command = Command::new(binary);
        command
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--no-default-browser-check",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-extensions",
                "--disable-crash-reporter",
                // Containers often have a small /dev/shm.
                "--disable-dev-shm-usage",
                // Our server is on 127.0.0.1; no proxy from the environment.
                "--no-proxy-server",
                // Both tabs are background tabs: keep them running at full speed.
                "--disable-background-timer-throttling",
                "--disable-renderer-backgrounding",
                "--disable-backgrounding-occluded-windows",
                // A free port on 127.0.0.1, written to DevToolsActivePort.
                "--remote-debugging-port=0",
                "--remote-debugging-address=127.0.0.1",
            ])
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup chromium.log"))
            .stderr(log)
            // Its own group, so that one kill reaches the renderers, the GPU
            // and network processes, and the zygotes too.
            .process_group(0);
        // SAFETY: prctl is async-signal-safe, and touches no memory of ours.
        // If the test process dies before `drop` (killed by a harness
        // timeout), the kernel kills the browser, which takes its children.
        unsafe {
            command.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let child = command.spawn().expect("spawn chromium");
        Chromium { child, dir }
    }

    /// Waits for the DevTools endpoint and connects to it.
    fn devtools(&mut self) -> Devtools {
        let file = self.dir.join("profile").join("DevToolsActivePort");
        let (port, path) = wait_for("Chromium's DevToolsActivePort", || {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("chromium exited at start ({status}):\n{}", self.log());
            }
            // Two lines: the port, then the browser target's path.
            let text = std::fs::read_to_string(&file).ok()?;
            let mut lines = text.lines();
            let port: u16 = lines.next()?.trim().parse().ok()?;
            let path = lines.next()?.trim().to_owned();
            Some((port, path))
        });
        Devtools::connect(SocketAddr::from(([127, 0, 0, 1], port)), &path)
    }

    /// The end of what Chromium wrote, for failure messages.
    fn log(&self) -> String {
        let text = std::fs::read_to_string(self.dir.join("chromium.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }
}

impl Drop for Chromium {
    fn drop(&mut self) {
        if thread::panicking() {
            eprintln!("--- chromium.log (end)\n{}", self.log());
        }
        let group = self.child.id() as libc::pid_t;
        // SAFETY: plain syscalls; the group is the one made for Chromium.
        unsafe { libc::kill(-group, libc::SIGKILL) };
        let _ = self.child.wait();
        // The others are reparented; let them go before the profile is removed.
        let deadline = Instant::now() + Duration::from_secs(5);
        // SAFETY: signal 0 only asks whether the group still has members.
        while unsafe { libc::kill(-group, 0) } == 0 && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(20));
        }
    }
}

/// A Chrome DevTools Protocol connection to the browser target.
struct Devtools {
    socket: WebSocket<TcpStream>,
    next_id: u64,
}

/// A tab: its target id, and the CDP session attached to it.
struct Tab {
    target: String,
    session: String,
}

impl Devtools {
    fn connect(addr: SocketAddr, path: &str) -> Devtools {
        // Reads and writes time out: a call that gets no answer fails.
        let stream = connect_with_timeout(addr, STEP);
        let (socket, _) = tungstenite::client(format!("ws://{addr}{path}"), stream)
            .unwrap_or_else(|err| panic!("CDP handshake with ws://{addr}{path}: {err}"));
        Devtools { socket, next_id: 1 }
    }

    /// Calls `method`, in `session` if given (else on the browser), and
    /// returns its result; fails on a CDP error. Events are skipped.
    fn call(&mut self, session: Option<&str>, method: &str, params: Value) -> Value {
        let id = self.next_id;
        self.next_id += 1;
        let mut request = json!({ "id": id, "method": method, "params": params });
        if let Some(session) = session {
            request["sessionId"] = json!(session);
        }
        self.socket
            .send(Message::text(request.to_string()))
            .unwrap_or_else(|err| panic!("CDP {method}: sending: {err}"));
        loop {
            let message = self
                .socket
                .read()
                .unwrap_or_else(|err| panic!("CDP {method}: no answer: {err}"));
            let Message::Text(text) = message else {
                continue;
            };
            let mut reply: Value = serde_json::from_str(text.as_str())
                .unwrap_or_else(|err| panic!("CDP {method}: bad JSON {text:?}: {err}"));
            if reply["id"] != json!(id) {
                continue;
            }
            if !reply["error"].is_null() {
                panic!("CDP {method} failed: {}", reply["error"]);
            }
            return reply["result"].take();
        }
    }

    /// Opens `url` in a new tab and attaches to it.
    fn open(&mut self, url: &str) -> Tab {
        let created = self.call(None, "Target.createTarget", json!({ "url": url }));
        let target = created["targetId"].as_str().expect("a targetId").to_owned();
        let attached = self.call(
            None,
            "Target.attachToTarget",
            json!({ "targetId": target, "flatten": true }),
        );
        let session = attached["sessionId"]
            .as_str()
            .expect("a sessionId")
            .to_owned();
        Tab { target, session }
    }

    /// Runs `expression` in `tab` and returns its value (JSON).
    fn eval(&mut self, tab: &Tab, expression: &str) -> Value {
        let mut result = self.call(
            Some(&tab.session),
            "Runtime.evaluate",
            json!({ "expression": expression, "returnByValue": true }),
        );
        if !result["exceptionDetails"].is_null() {
            panic!(
                "{expression:?} threw: {}",
                result["exceptionDetails"]["exception"]["description"]
            );
        }
        result["result"]["value"].take()
    }

    /// The page's status line ("connecting", "connected", ...); empty while
    /// the page has not loaded.
    fn status(&mut self, tab: &Tab) -> String {
        let status = self.eval(tab, "document.getElementById('status')?.textContent ?? ''");
        status.as_str().unwrap_or_default().to_owned()
    }

    /// The messages the page has received, in order.
    fn messages(&mut self, tab: &Tab) -> Vec<String> {
        let list = self.eval(
            tab,
            "Array.from(document.querySelectorAll('#messages li'), li => li.textContent)",
        );
        serde_json::from_value(list).expect("a list of strings")
    }

    /// Types `text` into the page's input and clicks Send, as a user would.
    fn say(&mut self, tab: &Tab, text: &str) {
        let literal = json!(text).to_string();
        self.eval(
            tab,
            &format!(
                "document.getElementById('input').value = {literal};
                 document.getElementById('send').click();"
            ),
        );
    }

    /// Waits until `tab` has received exactly `expected`.
    fn wait_messages(&mut self, tab: &Tab, name: &str, expected: &[&str]) {
        let mut seen = Vec::new();
        let deadline = Instant::now() + STEP;
        while Instant::now() < deadline {
            seen = self.messages(tab);
            if seen == expected {
                return;
            }
            thread::sleep(Duration::from_millis(20));
        }
        panic!("{name}'s tab shows {seen:?}, not {expected:?}, after {STEP:?}");
    }
}

/// A WebSocket client in the test: connects to `/ws` with timeouts.
fn raw_client(addr: SocketAddr) -> WebSocket<TcpStream> {
    let (socket, _) = tungstenite::client(format!("ws://{addr}/ws"), connect(addr))
        .unwrap_or_else(|err| panic!("WebSocket handshake with {addr}: {err}"));
    socket
}

/// The next text message `socket` gets.
fn next_text(socket: &mut WebSocket<TcpStream>) -> String {
    loop {
        match socket.read() {
            Ok(Message::Text(text)) => return text.as_str().to_owned(),
            Ok(_) => {}
            Err(err) => panic!("the test's client got no message within {IO_TIMEOUT:?}: {err}"),
        }
    }
}

fn wait_connected(room: &ChatRoom, n: usize) {
    wait_for(&format!("{n} clients in the room"), || {
        (room.connected() == n).then_some(())
    });
}

#[test]
fn two_browser_tabs_chat_through_the_server() {
    let Some(binary) = find_chromium() else {
        assert!(
            std::env::var_os("CI").is_none(),
            "chromium is not installed; .ci/run must install it"
        );
        eprintln!("skipped: chromium is not installed (apt-get install -y chromium)");
        return;
    };
    let started = Instant::now();
    let room = ChatRoom::new();
    let server = start(server(), room.clone());
    let addr = server.addr();
    let page = url(addr, "/");
    assert_eq!(get(addr, "/"), (200, PAGE.to_owned()));

    let mut chromium = Chromium::launch(&binary);
    let mut devtools = chromium.devtools();
    let alice = devtools.open(&page);
    let bob = devtools.open(&page);
    for (name, tab) in [("alice", &alice), ("bob", &bob)] {
        wait_for(&format!("{name}'s page connected"), || {
            (devtools.status(tab) == "connected").then_some(())
        });
    }
    // The browser sees `open` once the 101 is in; the room may add the client
    // a moment later: wait for it, so that no message goes out before.
    wait_connected(&room, 2);
    let mut rust = raw_client(addr);
    wait_connected(&room, 3);

    // Browser to server: alice types; everyone gets it, alice too.
    devtools.say(&alice, "hello from alice");
    assert_eq!(next_text(&mut rust), "hello from alice");
    devtools.wait_messages(&bob, "bob", &["hello from alice"]);
    devtools.wait_messages(&alice, "alice", &["hello from alice"]);

    // Server to browser, from another client: both tabs show it.
    rust.send(Message::text("hello from rust, ünïcödé ✓"))
        .expect("send from the test's client");
    assert_eq!(next_text(&mut rust), "hello from rust, ünïcödé ✓");
    let both = ["hello from alice", "hello from rust, ünïcödé ✓"];
    devtools.wait_messages(&alice, "alice", &both);
    devtools.wait_messages(&bob, "bob", &both);

    // And back from the other tab.
    devtools.say(&bob, "hi alice");
    assert_eq!(next_text(&mut rust), "hi alice");
    let all = [both[0], both[1], "hi alice"];
    devtools.wait_messages(&alice, "alice", &all);
    devtools.wait_messages(&bob, "bob", &all);

    // Closing a tab closes its WebSocket: the room lets bob go (`on_close`)
    // and goes on without him.
    devtools.call(
        None,
        "Target.closeTarget",
        json!({ "targetId": bob.target }),
    );
    wait_connected(&room, 2);
    devtools.say(&alice, "bye bob");
    assert_eq!(next_text(&mut rust), "bye bob");
    let after = [all[0], all[1], all[2], "bye bob"];
    devtools.wait_messages(&alice, "alice", &after);

    rust.close(None).expect("close the test's client");
    wait_connected(&room, 1);
    drop(devtools);
    drop(chromium);
    eprintln!("browser chat test took {:?}", started.elapsed());
}

/// The room only takes pages served by itself: a WebSocket opened by a page
/// from elsewhere (its `Origin`) is refused; clients sending no `Origin` and
/// pages from this host are let in.
#[test]
fn a_page_from_elsewhere_cannot_join() {
    let room = ChatRoom::new();
    let server = start(server(), room.clone());
    let addr = server.addr();
    // The socket, or the status of the refusal.
    let handshake = |origin: Option<&str>| -> Result<WebSocket<TcpStream>, u16> {
        let mut request = format!("ws://{addr}/ws").into_client_request().unwrap();
        if let Some(origin) = origin {
            request
                .headers_mut()
                .insert("Origin", origin.parse().unwrap());
        }
        match tungstenite::client(request, connect(addr)) {
            Ok((socket, _)) => Ok(socket),
            Err(tungstenite::HandshakeError::Failure(tungstenite::Error::Http(response))) => {
                Err(response.status().as_u16())
            }
            Err(err) => panic!("handshake with Origin {origin:?} failed: {err}"),
        }
    };
    assert_eq!(handshake(Some("http://evil.example")).err(), Some(403));
    let own_page = format!("http://{addr}");
    let _same_origin = handshake(Some(&own_page)).expect("this host's own page is let in");
    let _no_origin = handshake(None).expect("a client without Origin is let in");
    wait_connected(&room, 2);
}
