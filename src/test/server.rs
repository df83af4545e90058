//! [`TestServer`]: a real server on `127.0.0.1:0` for the length of a test.

use std::io;
use std::net::SocketAddr;
use std::thread::JoinHandle;

use crate::server::service::Service;
use crate::server::shutdown::ServerHandle;
use crate::server::Server;

/// A real server on `127.0.0.1:0`, serving on a thread of its own, shut down
/// gracefully (and waited for) when dropped: for tests that want real
/// sockets and clients. If `serve` failed, or panicked, the drop panics with
/// that (unless the test is already panicking), so the test fails.
///
/// ```
/// use astra::test::TestServer;
/// use astra::{Body, Response, Server};
/// use std::io::{Read, Write};
///
/// let server = TestServer::start(Server::bind("127.0.0.1:0"), |_request, _info| {
///     Response::new(Body::new("real"))
/// });
/// let mut stream = std::net::TcpStream::connect(server.addr())?;
/// stream.write_all(b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")?;
/// let mut reply = String::new();
/// stream.read_to_string(&mut reply)?;
/// assert!(reply.ends_with("real"));
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Debug)]
pub struct TestServer {
    addr: SocketAddr,
    handle: ServerHandle,
    thread: Option<JoinHandle<io::Result<()>>>,
}

impl TestServer {
    /// Starts serving `service` with `server` (bound to a TCP address; use
    /// `127.0.0.1:0` for a free port).
    ///
    /// # Panics
    ///
    /// If the server has no TCP address (a Unix socket server).
    pub fn start<S: Service + Sync>(server: Server, service: S) -> TestServer {
        let addr = server
            .local_addr()
            .expect("TestServer needs a server bound to a TCP address");
        let handle = server.handle();
        let thread = std::thread::Builder::new()
            .name("astra-test-server".into())
            .spawn(move || server.serve(service))
            .expect("start the test server's thread");
        TestServer {
            addr,
            handle,
            thread: Some(thread),
        }
    }

    /// Where the server listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://<addr><path>`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// A handle to the server (stats, shutdown).
    pub fn handle(&self) -> &ServerHandle {
        &self.handle
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.handle.shutdown();
        if let Some(thread) = self.thread.take() {
            // serve returns within its shutdown timeout; its error or its
            // panic is the test's to see, unless the test is already failing.
            let outcome = thread.join();
            if std::thread::panicking() {
                return;
            }
            match outcome {
                Ok(Ok(())) => {}
                Ok(Err(err)) => panic!("TestServer: serve failed: {err}"),
                Err(panic) => std::panic::resume_unwind(panic),
            }
        }
    }
}
