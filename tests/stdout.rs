//! The library prints nothing to stdout: a server in a child process serves
//! ordinary requests, a panicking handler, a panicking body reader, garbage
//! and aborted connections; its stdout stays empty.
//!
//! The child points its file descriptor 1 at a file once the test harness has
//! printed its own header, so everything written to stdout afterwards, by
//! `print!` or by a raw `write(1, ...)`, lands there. The child exits through a
//! request that flushes stdout and writes a marker, which proves the capture
//! works.

mod common;

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::time::Duration;

use astra::{Body, Request, Response};

const TEST: &str = "library_prints_nothing_to_stdout";
const DIR_ENV: &str = "ASTRA_TEST_STDOUT_DIR";
const MARKER: &str = "MARKER: the child's stdout capture works\n";

struct PanickingReader(usize);

impl Read for PanickingReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.0 == 0 {
            panic!("INTENTIONAL panic in a body reader (stdout test)");
        }
        let n = buf.len().min(self.0);
        buf[..n].fill(b'z');
        self.0 -= n;
        Ok(n)
    }
}

fn child() {
    let dir = PathBuf::from(std::env::var(DIR_ENV).unwrap());
    std::io::stdout().flush().unwrap();
    let capture = std::fs::File::create(dir.join("stdout")).unwrap();
    // SAFETY: dup2 on two valid descriptors; fd 1 now refers to the file.
    assert!(unsafe { libc::dup2(capture.as_raw_fd(), 1) } >= 0);
    drop(capture);

    let server = common::server();
    let addr = server.local_addr().unwrap();
    std::fs::write(dir.join("addr"), addr.to_string()).unwrap();
    server
        .serve(|mut request: Request, _| match request.uri().path() {
            "/panic" => panic!("INTENTIONAL panic in a handler (stdout test)"),
            "/reader-panic" => Response::new(Body::wrap_reader(PanickingReader(1 << 20))),
            "/echo" => {
                let mut body = Vec::new();
                let _ = request.body_mut().reader().read_to_end(&mut body);
                Response::new(Body::new(body))
            }
            "/exit" => {
                let mut out = std::io::stdout();
                out.write_all(MARKER.as_bytes()).unwrap();
                out.flush().unwrap();
                std::process::exit(0);
            }
            _ => Response::new(Body::new("ok")),
        })
        .unwrap();
}

fn wait_for_addr(dir: &std::path::Path, child: &mut common::ChildGuard) -> SocketAddr {
    let mut addr = None;
    common::wait_until(Duration::from_secs(30), "the child starts", || {
        assert!(child.is_running(), "the child exited early");
        addr = std::fs::read_to_string(dir.join("addr"))
            .ok()
            .and_then(|text| text.trim().parse().ok());
        addr.is_some()
    });
    addr.unwrap()
}

#[test]
fn library_prints_nothing_to_stdout() {
    if common::is_child(TEST) {
        child();
        return;
    }
    let dir = std::env::temp_dir().join(format!("astra-stdout-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let _ = std::fs::remove_file(dir.join("addr"));
    let mut child = common::spawn_child(TEST, &[(DIR_ENV, dir.display().to_string())]);
    let addr = wait_for_addr(&dir, &mut child);

    assert_eq!(common::get(addr, "/"), (200, "ok".to_string()));
    assert_eq!(common::get(addr, "/panic").0, 500);
    let mut response = common::agent()
        .post(&common::url(addr, "/echo"))
        .send(&b"echo me"[..])
        .unwrap();
    assert_eq!(response.body_mut().read_to_string().unwrap(), "echo me");
    // A response aborted by a panicking reader.
    let mut conn = common::RawConn::open(addr);
    conn.send(b"GET /reader-panic HTTP/1.1\r\nHost: t\r\n\r\n");
    let _ = conn.read_head();
    let _ = conn.read_chunked();
    // Garbage, an invalid chunked body, and a client that leaves mid-request.
    for bytes in [
        &b"NOT HTTP AT ALL\r\n\r\n"[..],
        b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\nshort",
    ] {
        let mut stream = common::connect_with_timeout(addr, Duration::from_secs(2));
        let _ = stream.write_all(bytes);
        let _ = stream.shutdown(std::net::Shutdown::Write);
        let _ = common::read_until_closed(&mut stream);
    }
    #[cfg(feature = "http2")]
    {
        // An HTTP/2 preface with nothing after it, then a close once the
        // server has answered with its SETTINGS frame's header.
        let mut stream = common::connect_with_timeout(addr, Duration::from_secs(2));
        let _ = stream.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n");
        let mut frame_head = [0; 9];
        stream.read_exact(&mut frame_head).unwrap();
        assert_eq!(frame_head[3], 0x4, "a SETTINGS frame: {frame_head:?}");
    }
    assert_eq!(common::get(addr, "/"), (200, "ok".to_string()));

    // Ask the child to flush and exit.
    let _ = common::agent().get(&common::url(addr, "/exit")).call();
    let output = child.wait_within(Duration::from_secs(10));
    let captured = std::fs::read_to_string(dir.join("stdout")).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        captured.ends_with(MARKER),
        "the capture did not work (marker missing): {captured:?}\n--- stderr\n{}",
        output.stderr
    );
    assert_eq!(
        captured.trim_end_matches(MARKER),
        "",
        "the library wrote to stdout"
    );
}
