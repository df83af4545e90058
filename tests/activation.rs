//! systemd socket activation, with the real `systemd-socket-activate`: it
//! binds a TCP or Unix socket and starts this test binary, re-executed in
//! child mode, as the server that takes it. The child reports what it saw (the
//! environment cleared, the descriptor close-on-exec) in its answers or on
//! its stdout.
//!
//! `.ci/run` installs systemd-socket-activate (Debian's `systemd` package);
//! where it is missing the tests that need it print a note and pass. The
//! cases that need no service manager (a descriptor that is no socket, one
//! that is not open, sockets for another process) run under `sh`, which sets
//! `LISTEN_PID` to its own pid and then execs the child.

mod common;

use std::io::{BufRead, BufReader, Read};
use std::net::{TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use astra::{ActivatedSockets, Body, Response, Server};
use common::*;

/// What the child does with its sockets; set with `-E` for the child.
const MODE_ENV: &str = "ASTRA_TEST_ACTIVATION";
const VARS: [&str; 3] = ["LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES"];

fn find_activator() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/bin".into(), "/bin".into()])
        .map(|dir| dir.join("systemd-socket-activate"))
        .find(|candidate| candidate.is_file())
}

/// The activator, or a note that the test is skipped.
fn activator_or_skip(test: &str) -> Option<PathBuf> {
    let found = find_activator();
    if found.is_none() {
        eprintln!(
            "note: {test} skipped: systemd-socket-activate is not installed \
             (apt-get install systemd)"
        );
    }
    found
}

/// The arguments that make this test binary run only `test`, in child mode.
fn child_args(test: &str) -> Vec<String> {
    let exe = std::env::current_exe().expect("current_exe");
    vec![
        exe.to_str().expect("a UTF-8 test binary path").to_string(),
        test.to_string(),
        "--exact".into(),
        "--nocapture".into(),
        "--test-threads=1".into(),
        "--include-ignored".into(),
    ]
}

/// A process whose stdout and stderr lines arrive on a channel, killed (with
/// the process group it leads, for `--accept`'s children) when dropped.
struct Spawned {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Spawned {
    fn new(mut command: Command) -> Spawned {
        use std::os::unix::process::CommandExt;
        command
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = command.spawn().expect("spawn");
        let (tx, lines) = mpsc::channel();
        let out = child.stdout.take().unwrap();
        let err = child.stderr.take().unwrap();
        for pipe in [Box::new(out) as Box<dyn Read + Send>, Box::new(err)] {
            let tx = tx.clone();
            thread::spawn(move || {
                for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                    let _ = tx.send(line);
                }
            });
        }
        Spawned {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// Waits (10 s at most) for a line that holds `prefix`, and returns it
    /// from there; `None` if the process's output ends first.
    fn line_starting(&mut self, prefix: &str) -> Option<String> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    // The test harness may have begun the line ("test x ... ").
                    if let Some(at) = line.find(prefix) {
                        return Some(line[at..].to_string());
                    }
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => return None,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    panic!(
                        "no line starting with {prefix:?} in 10 s; got {:?}",
                        self.seen
                    )
                }
            }
        }
    }

    /// Like `line_starting`, failing the test if the line never comes.
    fn expect_line(&mut self, prefix: &str) -> String {
        match self.line_starting(prefix) {
            Some(line) => line,
            None => panic!("output ended without {prefix:?}: {:?}", self.seen),
        }
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        // SAFETY: kill(2) with a negative pid signals the process group the
        // child leads (`process_group(0)`); it touches no memory.
        unsafe { libc::kill(-(self.child.id() as libc::pid_t), libc::SIGKILL) };
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `systemd-socket-activate` with `args` before the child's command,
/// the child running `test` in `mode`. `None` if it exits before listening
/// (its port was taken meanwhile).
fn activate(activator: &Path, test: &str, mode: &str, args: &[&str]) -> Option<Spawned> {
    let mut command = Command::new(activator);
    command
        .args(args)
        .arg(format!("--setenv={CHILD_ENV}={test}"))
        .arg(format!("--setenv={MODE_ENV}={mode}"))
        .arg("--")
        .args(child_args(test));
    let mut spawned = Spawned::new(command);
    spawned.line_starting("Listening on")?;
    Some(spawned)
}

/// Activates on a free TCP port (retrying if another process takes it first).
fn activate_tcp(activator: &Path, test: &str, mode: &str, extra: &[&str]) -> (Spawned, u16) {
    for _ in 0..5 {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let listen = format!("--listen=127.0.0.1:{port}");
        let mut args = vec![listen.as_str()];
        args.extend_from_slice(extra);
        if let Some(spawned) = activate(activator, test, mode, &args) {
            return (spawned, port);
        }
    }
    panic!("systemd-socket-activate never listened");
}

/// Child mode: serve what was passed, as `mode` says: `single` with
/// `Server::from_systemd`, otherwise the socket of that name.
fn serve_activated() {
    let mode = std::env::var(MODE_ENV).expect("a mode");
    let server = if mode == "single" {
        Server::from_systemd().expect("from_systemd")
    } else {
        let mut sockets = ActivatedSockets::from_env().expect("from_env");
        assert_eq!(sockets.len(), 1);
        assert_eq!(sockets.name(0), Some(mode.as_str()));
        assert!(sockets.take_named("other").unwrap().is_none());
        sockets
            .take_named(&mode)
            .unwrap()
            .expect("the named socket")
    };
    let second = ActivatedSockets::from_env().map(|sockets| sockets.len());
    // SAFETY: F_GETFD only reads the descriptor's flags.
    let flags = unsafe { libc::fcntl(3, libc::F_GETFD) };
    let summary = format!(
        "second_from_env={second:?} cloexec={}",
        flags >= 0 && flags & libc::FD_CLOEXEC != 0
    );
    server
        .serve(move |_request, info: astra::ConnectionInfo| {
            let cleared = VARS.iter().all(|var| std::env::var(var).is_err());
            Response::new(Body::new(format!(
                "env_cleared={cleared} {summary} unix={}",
                info.is_unix_socket()
            )))
        })
        .expect("serve");
}

/// Child mode: print what taking the first socket gives (`MODE_ENV`
/// `systemd`: what `Server::from_systemd` gives), then exit.
fn report_activated() {
    if std::env::var(MODE_ENV).is_ok_and(|mode| mode == "systemd") {
        match Server::from_systemd() {
            Ok(server) => println!("from_systemd: ok {server:?}"),
            Err(err) => println!("from_systemd: {:?}: {err}", err.kind()),
        }
        return;
    }
    let mut sockets = match ActivatedSockets::from_env() {
        Ok(sockets) => sockets,
        Err(err) => {
            println!("from_env: {:?}: {err}", err.kind());
            return;
        }
    };
    let cleared = VARS.iter().all(|var| std::env::var(var).is_err());
    println!("env_cleared: {cleared}");
    println!("len: {}", sockets.len());
    match sockets.take(0) {
        Ok(Some(_)) => println!("take: a server"),
        Ok(None) => println!("take: none"),
        Err(err) => println!("take: {:?}: {err}", err.kind()),
    }
}

fn assert_served(body: &str, unix: bool) {
    assert_eq!(
        body,
        format!("env_cleared=true second_from_env=Ok(0) cloexec=true unix={unix}")
    );
}

#[test]
fn from_systemd_serves_the_tcp_socket_it_was_passed() {
    const TEST: &str = "from_systemd_serves_the_tcp_socket_it_was_passed";
    if is_child(TEST) {
        return serve_activated();
    }
    let Some(activator) = activator_or_skip(TEST) else {
        return;
    };
    let (_server, port) = activate_tcp(&activator, TEST, "single", &[]);
    for path in ["/", "/again"] {
        let (ok, body) = curl(&[&format!("http://127.0.0.1:{port}{path}")]);
        assert!(ok);
        assert_served(&body, false);
    }
}

#[test]
fn take_named_serves_the_socket_of_that_name() {
    const TEST: &str = "take_named_serves_the_socket_of_that_name";
    if is_child(TEST) {
        return serve_activated();
    }
    let Some(activator) = activator_or_skip(TEST) else {
        return;
    };
    let (_server, port) = activate_tcp(&activator, TEST, "web", &["--fdname=web"]);
    let addr = ([127, 0, 0, 1], port).into();
    let (status, body) = get(addr, "/");
    assert_eq!(status, 200);
    assert_served(&body, false);
}

#[test]
fn a_passed_unix_socket_is_served_as_one() {
    const TEST: &str = "a_passed_unix_socket_is_served_as_one";
    if is_child(TEST) {
        return serve_activated();
    }
    let Some(activator) = activator_or_skip(TEST) else {
        return;
    };
    let dir = TempDir::new("activation-unix");
    let path = dir.join("http.sock");
    let listen = format!("--listen={}", path.display());
    let _server = activate(&activator, TEST, "single", &[&listen]).expect("listening");
    assert_served(&curl_unix(&path, "/", &[]), true);
    #[cfg(feature = "http2")]
    assert_served(&curl_unix(&path, "/", &["--http2-prior-knowledge"]), true);
}

#[test]
fn from_systemd_with_several_sockets_asks_for_take_named() {
    const TEST: &str = "from_systemd_with_several_sockets_asks_for_take_named";
    if is_child(TEST) {
        return report_activated();
    }
    let Some(activator) = activator_or_skip(TEST) else {
        return;
    };
    let dir = TempDir::new("activation-several");
    let second = format!("--listen={}", dir.join("admin.sock").display());
    let (mut server, port) = activate_tcp(
        &activator,
        TEST,
        "systemd",
        &[&second, "--fdname=web:admin"],
    );
    // The first connection starts the child.
    let _client = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let line = server.expect_line("from_systemd:");
    assert!(line.starts_with("from_systemd: InvalidInput:"), "{line}");
    assert!(line.contains("2 sockets (web, admin)"), "{line}");
    assert!(line.contains("take_named"), "{line}");
}

#[test]
fn a_datagram_socket_is_refused() {
    const TEST: &str = "a_datagram_socket_is_refused";
    if is_child(TEST) {
        return report_activated();
    }
    let Some(activator) = activator_or_skip(TEST) else {
        return;
    };
    let (mut server, port) = activate_tcp(&activator, TEST, "report", &["--datagram"]);
    // A datagram starts the child.
    let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
    udp.send_to(b"wake up", ("127.0.0.1", port)).unwrap();
    assert_eq!(server.expect_line("len:"), "len: 1");
    let line = server.expect_line("take:");
    assert!(line.starts_with("take: InvalidInput:"), "{line}");
    assert!(line.contains("descriptor 3"), "{line}");
    assert!(line.contains("not a stream socket"), "{line}");
}

#[test]
fn a_connection_from_accept_mode_is_refused() {
    const TEST: &str = "a_connection_from_accept_mode_is_refused";
    if is_child(TEST) {
        return report_activated();
    }
    let Some(activator) = activator_or_skip(TEST) else {
        return;
    };
    let (mut server, port) = activate_tcp(&activator, TEST, "report", &["--accept"]);
    let _client = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let line = server.expect_line("take:");
    assert!(line.starts_with("take: InvalidInput:"), "{line}");
    assert!(line.contains("not listening"), "{line}");
    assert!(line.contains("Accept=no"), "{line}");
}

/// Runs the child under `sh` with `script` before it execs (with
/// `LISTEN_FDS=1` and `LISTEN_PID` set as `pid` says) and returns its output.
fn under_sh(test: &str, prelude: &str, pid: &str) -> Spawned {
    let mut command = Command::new("sh");
    command
        .arg("-c")
        .arg(format!(
            "{prelude}; export LISTEN_FDS=1 LISTEN_PID={pid} LISTEN_FDNAMES=web; exec \"$0\" \"$@\""
        ))
        .args(child_args(test))
        .env(CHILD_ENV, test)
        .env_remove(MODE_ENV);
    Spawned::new(command)
}

#[test]
fn a_descriptor_that_is_not_a_socket_is_refused() {
    const TEST: &str = "a_descriptor_that_is_not_a_socket_is_refused";
    if is_child(TEST) {
        return report_activated();
    }
    let mut child = under_sh(TEST, "exec 3</dev/null", "$$");
    assert_eq!(child.expect_line("env_cleared:"), "env_cleared: true");
    assert_eq!(child.expect_line("len:"), "len: 1");
    let line = child.expect_line("take:");
    assert!(line.starts_with("take: InvalidInput:"), "{line}");
    assert!(
        line.contains("(web), descriptor 3, is not a socket"),
        "{line}"
    );
}

#[test]
fn a_descriptor_that_is_not_open_is_an_error() {
    const TEST: &str = "a_descriptor_that_is_not_open_is_an_error";
    if is_child(TEST) {
        return report_activated();
    }
    let mut child = under_sh(TEST, "exec 3<&-", "$$");
    let line = child.expect_line("from_env:");
    assert!(line.starts_with("from_env: InvalidInput:"), "{line}");
    assert!(line.contains("descriptor 3, which is not open"), "{line}");
}

#[test]
fn sockets_passed_to_another_process_are_ignored_and_the_env_cleared() {
    const TEST: &str = "sockets_passed_to_another_process_are_ignored_and_the_env_cleared";
    if is_child(TEST) {
        return report_activated();
    }
    // Inherited from an activated parent: LISTEN_PID names the parent.
    let mut child = under_sh(TEST, "exec 3</dev/null", "1");
    assert_eq!(child.expect_line("env_cleared:"), "env_cleared: true");
    assert_eq!(child.expect_line("len:"), "len: 0");
    assert_eq!(child.expect_line("take:"), "take: none");
}

#[test]
fn from_systemd_without_sockets_is_not_found() {
    if VARS.iter().any(|var| std::env::var_os(var).is_some()) {
        eprintln!("note: this test process was itself given LISTEN_* variables; skipped");
        return;
    }
    let err = Server::from_systemd().expect_err("no sockets were passed");
    assert_eq!(err.kind(), std::io::ErrorKind::NotFound);
    assert!(err.to_string().contains("LISTEN_FDS"), "{err}");
    let sockets = ActivatedSockets::from_env().unwrap();
    assert!(sockets.is_empty());
    assert_eq!(sockets.name(0), None);
}
