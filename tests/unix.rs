//! Serving on Unix domain sockets: requests through curl and raw sockets, the
//! same timeouts, limits, shutdown and HTTP/2 detection as over TCP, and what
//! `bind_unix` does with a file already at its path.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use astra::{Body, ConnectionInfo, Request, Response, Server, ServerHandle, Service};
use common::*;

/// Describes the connection a request came on.
fn describe(request: Request, info: ConnectionInfo) -> Response {
    Response::new(Body::new(format!(
        "{} unix={} peer_addr={:?}",
        request.uri().path(),
        info.is_unix_socket(),
        info.peer_addr()
    )))
}

/// Serves on a thread; returns the socket path, a handle and the serve thread.
fn start_unix<S: Service + Sync>(
    server: Server,
    service: S,
) -> (PathBuf, ServerHandle, JoinHandle<std::io::Result<()>>) {
    let path = server.local_unix_path().expect("a Unix socket path");
    let handle = server.handle();
    let thread = thread::spawn(move || server.serve(service));
    (path, handle, thread)
}

/// Shuts the server down and waits (bounded) for `serve` to return `Ok`.
fn stop(handle: ServerHandle, serving: JoinHandle<std::io::Result<()>>) {
    handle.shutdown();
    join_within(serving, Duration::from_secs(10), "serve after shutdown")
        .expect("serve returns Ok after a graceful shutdown");
}

const GET_CLOSE: &[u8] = b"GET /raw HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n";

#[test]
fn curl_gets_an_answer_over_a_unix_socket() {
    let dir = TempDir::new("unix-curl");
    let server = Server::bind_unix(dir.join("http.sock"));
    let err = server
        .local_addr()
        .expect_err("a Unix server has no IP address");
    assert_eq!(err.kind(), ErrorKind::Unsupported);
    assert!(err.to_string().contains("Unix socket"), "{err}");
    let (path, handle, serving) = start_unix(server, describe);
    assert_eq!(path, dir.join("http.sock"));
    for _ in 0..3 {
        assert_eq!(
            curl_unix(&path, "/hello", &[]),
            "/hello unix=true peer_addr=None"
        );
    }
    let reply = raw_unix_request(&path, GET_CLOSE);
    assert!(reply.starts_with("HTTP/1.1 200 OK\r\n"), "{reply}");
    assert!(reply.ends_with("/raw unix=true peer_addr=None"), "{reply}");
    stop(handle, serving);
}

#[test]
fn peer_credentials_are_those_of_the_connecting_process() {
    let dir = TempDir::new("unix-cred");
    let server = Server::bind_unix(dir.join("s"));
    let (path, handle, serving) = start_unix(server, |_request: Request, info: ConnectionInfo| {
        let peer = info
            .peer_credentials()
            .expect("a Unix client has credentials");
        Response::new(Body::new(format!(
            "pid={:?} uid={} gid={}",
            peer.pid(),
            peer.uid(),
            peer.gid()
        )))
    });
    // SAFETY: getuid and getgid have no preconditions and cannot fail.
    let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
    let reply = raw_unix_request(&path, GET_CLOSE);
    let ours = format!("pid=Some({}) uid={uid} gid={gid}", std::process::id());
    assert!(reply.ends_with(&ours), "{reply}\nexpected {ours}");
    // curl is another process: its pid, our user.
    let body = curl_unix(&path, "/", &[]);
    assert!(body.ends_with(&format!(" uid={uid} gid={gid}")), "{body}");
    assert!(
        !body.starts_with(&format!("pid=Some({})", std::process::id())),
        "{body}"
    );
    stop(handle, serving);
}

#[test]
fn tcp_connections_have_no_peer_credentials() {
    let server = start(server(), |_request: Request, info: ConnectionInfo| {
        Response::new(Body::new(format!("{:?}", info.peer_credentials())))
    });
    let addr = server.addr();
    assert_eq!(get(addr, "/"), (200, "None".to_string()));
    assert_eq!(ConnectionInfo::default().peer_credentials(), None);
    assert!(!ConnectionInfo::default().is_unix_socket());
}

#[test]
fn keep_alive_requests_share_one_unix_connection() {
    let dir = TempDir::new("unix-keepalive");
    let (path, handle, serving) = start_unix(Server::bind_unix(dir.join("s")), describe);
    let mut stream = connect_unix(&path);
    for i in 0..3 {
        stream
            .write_all(format!("GET /{i} HTTP/1.1\r\nHost: localhost\r\n\r\n").as_bytes())
            .unwrap();
        let expected = format!("/{i} unix=true peer_addr=None");
        let mut reply = Vec::new();
        let mut buf = [0; 1024];
        while !String::from_utf8_lossy(&reply).ends_with(&expected) {
            let n = stream
                .read(&mut buf)
                .expect("a response on the same connection");
            assert!(n > 0, "closed: {}", String::from_utf8_lossy(&reply));
            reply.extend_from_slice(&buf[..n]);
        }
    }
    stop(handle, serving);
}

#[cfg(feature = "http2")]
#[test]
fn http2_prior_knowledge_is_detected_on_a_unix_socket() {
    let dir = TempDir::new("unix-h2");
    let (path, handle, serving) = start_unix(Server::bind_unix(dir.join("s")), describe);
    let body = curl_unix(
        &path,
        "/h2",
        &[
            "--http2-prior-knowledge",
            "--write-out",
            " version=%{http_version}",
        ],
    );
    assert_eq!(body, "/h2 unix=true peer_addr=None version=2");
    // HTTP/1 still works on the same socket.
    let body = curl_unix(&path, "/h1", &["--write-out", " version=%{http_version}"]);
    assert_eq!(body, "/h1 unix=true peer_addr=None version=1.1");
    stop(handle, serving);
}

#[test]
fn silent_unix_client_is_closed_after_header_read_timeout() {
    let dir = TempDir::new("unix-timeout");
    let server =
        Server::bind_unix(dir.join("s")).http1_header_read_timeout(Duration::from_millis(300));
    let (path, handle, serving) = start_unix(server, describe);
    let mut stream = connect_unix(&path);
    let started = Instant::now();
    let received = read_until_closed(&mut stream).expect("closed before the read timeout");
    let elapsed = started.elapsed();
    assert!(received.is_empty(), "nothing should be sent: {received:?}");
    assert!(
        elapsed >= Duration::from_millis(300),
        "closed early: {elapsed:?}"
    );
    assert!(elapsed < Duration::from_secs(3), "closed late: {elapsed:?}");
    stop(handle, serving);
}

#[test]
fn at_max_connections_unix_clients_wait_until_one_closes() {
    let dir = TempDir::new("unix-limit");
    let server = Server::bind_unix(dir.join("s")).max_connections(1);
    let (path, handle, serving) = start_unix(server, describe);
    let mut first = connect_unix(&path);
    first
        .write_all(b"GET /first HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .unwrap();
    let mut buf = [0; 1024];
    let n = first.read(&mut buf).expect("the first client is answered");
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    // Connected (the kernel's backlog) but not accepted: no answer yet.
    let mut second = connect_unix(&path);
    second.write_all(GET_CLOSE).unwrap();
    second
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let quiet = second.read(&mut buf);
    assert!(
        matches!(&quiet, Err(err) if err.kind() == ErrorKind::WouldBlock),
        "the second client must wait: {quiet:?}"
    );
    second.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    drop(first);
    let reply = read_until_closed(&mut second).expect("answered once the first closed");
    assert!(
        String::from_utf8_lossy(&reply).ends_with("/raw unix=true peer_addr=None"),
        "{}",
        String::from_utf8_lossy(&reply)
    );
    stop(handle, serving);
}

#[test]
fn graceful_shutdown_finishes_requests_and_removes_the_socket_file() {
    let dir = TempDir::new("unix-shutdown");
    let (started_tx, started_rx) = std::sync::mpsc::channel();
    let started_tx = std::sync::Mutex::new(started_tx);
    let server = Server::bind_unix(dir.join("s"));
    let (path, handle, serving) = start_unix(server, move |_request: Request, _info| {
        let _ = started_tx.lock().unwrap().send(());
        // Still running when the shutdown starts.
        thread::sleep(Duration::from_millis(300));
        Response::new(Body::new("finished"))
    });
    let client = {
        let path = path.clone();
        thread::spawn(move || raw_unix_request(&path, GET_CLOSE))
    };
    started_rx
        .recv_timeout(Duration::from_secs(10))
        .expect("the handler started");
    stop(handle, serving);
    let reply = join_within(client, Duration::from_secs(10), "client");
    assert!(
        reply.ends_with("finished"),
        "in flight, then answered: {reply}"
    );
    assert!(!path.exists(), "serve removes the socket file it bound");
    let err = UnixStream::connect(&path).expect_err("nobody listens any more");
    assert_eq!(err.kind(), ErrorKind::NotFound);
}

#[test]
fn a_socket_file_bound_by_someone_else_since_is_not_removed() {
    let dir = TempDir::new("unix-replaced");
    let (path, handle, serving) = start_unix(Server::bind_unix(dir.join("s")), describe);
    // Another process replaces our socket file with its own.
    std::fs::remove_file(&path).unwrap();
    let newer = UnixListener::bind(&path).unwrap();
    stop(handle, serving);
    assert!(path.exists(), "the newer socket file is left alone");
    let _client = UnixStream::connect(&path).expect("the newer listener still gets clients");
    drop(newer);
}

#[test]
fn dropping_an_unserved_server_removes_its_socket_file() {
    let dir = TempDir::new("unix-drop");
    let server = Server::bind_unix(dir.join("s"));
    assert!(dir.join("s").exists());
    drop(server);
    assert!(!dir.join("s").exists());
}

#[test]
fn a_stale_socket_file_is_replaced() {
    let dir = TempDir::new("unix-stale");
    let path = dir.join("s");
    // A crashed run: its socket file stays, nobody listens on it.
    drop(UnixListener::bind(&path).unwrap());
    assert!(path.exists());
    let err = UnixStream::connect(&path).expect_err("stale");
    assert_eq!(err.kind(), ErrorKind::ConnectionRefused);
    let (path, handle, serving) = start_unix(Server::bind_unix(&path), describe);
    assert_eq!(
        curl_unix(&path, "/again", &[]),
        "/again unix=true peer_addr=None"
    );
    stop(handle, serving);
}

#[test]
fn a_live_socket_is_refused_with_addr_in_use() {
    let dir = TempDir::new("unix-live");
    let path = dir.join("s");
    let live = UnixListener::bind(&path).unwrap();
    let err = Server::try_bind_unix(&path).expect_err("someone listens there");
    assert_eq!(err.kind(), ErrorKind::AddrInUse);
    assert!(err.to_string().contains(path.to_str().unwrap()), "{err}");
    // The live listener keeps its file and its clients.
    let _client = UnixStream::connect(&path).expect("the live listener still gets clients");
    live.accept().expect("and accepts them");
    let panic = std::panic::catch_unwind(|| Server::bind_unix(&path)).expect_err("bind panics");
    let message = panic.downcast_ref::<String>().expect("a formatted message");
    assert!(message.contains("Unix socket"), "{message}");
    assert!(message.contains(path.to_str().unwrap()), "{message}");
}

#[test]
fn a_path_that_is_not_a_socket_is_left_untouched() {
    let dir = TempDir::new("unix-file");
    let path = dir.join("precious.txt");
    std::fs::write(&path, "keep me").unwrap();
    let err = Server::try_bind_unix(&path).expect_err("not a socket");
    assert_eq!(err.kind(), ErrorKind::AddrInUse);
    assert!(err.to_string().contains("not a socket"), "{err}");
    assert!(err.to_string().contains(path.to_str().unwrap()), "{err}");
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "keep me");
    // A directory is not a socket either.
    let sub = dir.join("sub");
    std::fs::create_dir(&sub).unwrap();
    Server::try_bind_unix(&sub).expect_err("a directory");
    assert!(sub.is_dir());
}

#[test]
fn binding_in_a_missing_directory_names_the_path() {
    let dir = TempDir::new("unix-missing");
    let path = dir.join("no/such/dir/s");
    let err = Server::try_bind_unix(&path).expect_err("no such directory");
    assert_eq!(err.kind(), ErrorKind::NotFound);
    assert!(err.to_string().contains(path.to_str().unwrap()), "{err}");
}

#[test]
fn serves_on_a_unix_listener_bound_elsewhere_and_leaves_its_file() {
    let dir = TempDir::new("unix-from");
    let path = dir.join("s");
    let server = Server::from_unix_listener(UnixListener::bind(&path).unwrap());
    let (served, handle, serving) = start_unix(server, describe);
    assert_eq!(served, path);
    assert_eq!(curl_unix(&path, "/x", &[]), "/x unix=true peer_addr=None");
    stop(handle, serving);
    assert!(
        Path::new(&path).exists(),
        "a listener astra did not bind keeps its file"
    );
}

#[test]
fn tcp_connections_are_not_unix_ones() {
    let server = start(server(), describe);
    let addr = server.addr();
    let (status, body) = get(addr, "/tcp");
    assert_eq!(status, 200);
    assert!(
        body.starts_with("/tcp unix=false peer_addr=Some(127.0.0.1:"),
        "{body}"
    );
    assert_eq!(common::server().local_unix_path(), None);
}

#[test]
fn local_addr_is_the_accepted_sockets_address_over_tcp_and_none_over_unix() {
    // Bound to the wildcard address: the local address is the one the client
    // reached, not 0.0.0.0.
    let tcp = start(
        Server::bind("0.0.0.0:0"),
        |_request: Request, info: ConnectionInfo| {
            Response::new(Body::new(format!("{:?}", info.local_addr())))
        },
    );
    let port = tcp.addr().port();
    let reached: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    assert_eq!(get(reached, "/"), (200, format!("Some({reached})")));
    assert_eq!(ConnectionInfo::default().local_addr(), None);

    let dir = TempDir::new("unix-local-addr");
    let (path, handle, serving) = start_unix(
        Server::bind_unix(dir.join("s")),
        |_request: Request, info: ConnectionInfo| {
            Response::new(Body::new(format!("{:?}", info.local_addr())))
        },
    );
    let reply = raw_unix_request(&path, GET_CLOSE);
    assert!(reply.ends_with("\r\n\r\nNone"), "{reply}");
    stop(handle, serving);
}
