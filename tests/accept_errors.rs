//! Accept errors never end `serve`: a server that runs out of file descriptors
//! stays alive, does not spin on the failing `accept`, and serves again once
//! descriptors are free.
//!
//! The server runs in a child process (this test binary re-executed in child
//! mode) with `RLIMIT_NOFILE` lowered to 64. The parent first floods it with
//! more connections than it has descriptors, then has a handler take every
//! free descriptor (as a handler opening files might), so that `accept` itself
//! fails with `EMFILE` while clients keep connecting.

mod common;

use std::fs::File;
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant};

use astra::{Body, Request, Response};
use common::{ChildGuard, RawConn};

const TEST: &str = "descriptor_exhaustion_does_not_end_or_spin_serve";
const ADDR_FILE_ENV: &str = "ASTRA_TEST_ADDR_FILE";
const CHILD_NOFILE: u64 = 64;

/// Child mode: serve with few descriptors, telling the parent the address.
fn child() {
    let addr_file = PathBuf::from(std::env::var(ADDR_FILE_ENV).expect("address file"));
    let server = common::server();
    let addr = server.local_addr().unwrap();
    common::set_nofile_soft(CHILD_NOFILE);
    std::fs::write(&addr_file, addr.to_string()).unwrap();
    // Descriptors taken by `/hog`, given back by `/release`.
    static HOG: Mutex<Vec<File>> = Mutex::new(Vec::new());
    // Blocks until the parent kills this process.
    server
        .serve(|request: Request, _| match request.uri().path() {
            "/hog" => {
                let mut hog = HOG.lock().unwrap();
                while let Ok(file) = File::open("/dev/null") {
                    hog.push(file);
                }
                Response::new(Body::new(hog.len().to_string()))
            }
            "/release" => {
                HOG.lock().unwrap().clear();
                Response::new(Body::new("released"))
            }
            _ => Response::new(Body::new("alive")),
        })
        .expect("serve returned");
    unreachable!("serve returned");
}

/// Waits for the child to write its address.
fn child_addr(file: &PathBuf, child: &mut common::ChildGuard) -> SocketAddr {
    let mut addr = None;
    common::wait_until(Duration::from_secs(30), "the child server starts", || {
        assert!(child.is_running(), "the child server exited early");
        addr = std::fs::read_to_string(file)
            .ok()
            .and_then(|text| text.trim().parse().ok());
        addr.is_some()
    });
    addr.unwrap()
}

/// Checks for 2 s that the child stays alive without spinning.
fn assert_alive_and_quiet(child: &mut ChildGuard, what: &str) {
    let pid = child.id();
    let cpu_before = common::cpu_time(pid);
    let wall = Instant::now();
    // The workload: an idle stretch whose CPU time is measured.
    thread::sleep(Duration::from_secs(2));
    let cpu = common::cpu_time(pid) - cpu_before;
    let wall = wall.elapsed();
    eprintln!("{what}: child CPU time {cpu:?} in {wall:?}");
    assert!(child.is_running(), "{what}: the child server died");
    assert!(
        cpu.as_secs_f64() < 0.3 * wall.as_secs_f64(),
        "{what}: the child used {cpu:?} of CPU in {wall:?}: its accept loop spins"
    );
}

/// Waits (at most 10 s) until a new client is answered.
fn assert_serves_again(addr: SocketAddr, what: &str) {
    let mut answer = None;
    common::wait_until(
        Duration::from_secs(10),
        &format!("{what}: a new client is answered once descriptors are free"),
        || {
            answer = common::agent()
                .get(&common::url(addr, "/"))
                .call()
                .ok()
                .map(|mut response| {
                    let body = response.body_mut().read_to_string().unwrap_or_default();
                    (response.status().as_u16(), body)
                });
            answer.is_some()
        },
    );
    assert_eq!(answer, Some((200, "alive".to_string())), "{what}");
}

fn open_connections(addr: SocketAddr, n: usize) -> Vec<TcpStream> {
    (0..n)
        .map_while(|_| TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok())
        .collect()
}

fn open_descriptors(pid: u32) -> u64 {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count() as u64
}

#[test]
fn descriptor_exhaustion_does_not_end_or_spin_serve() {
    if common::is_child(TEST) {
        child();
        return;
    }
    let dir = std::env::temp_dir().join(format!("astra-accept-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let addr_file = dir.join("addr");
    let _ = std::fs::remove_file(&addr_file);
    let mut child = common::spawn_child(TEST, &[(ADDR_FILE_ENV, addr_file.display().to_string())]);
    let addr = child_addr(&addr_file, &mut child);
    let pid = child.id();
    let _ = std::fs::remove_dir_all(&dir);

    // Served before anything else.
    assert_eq!(common::get(addr, "/"), (200, "alive".to_string()));

    // 1. A flood: twice as many connections as the child has descriptors. What
    //    it cannot take waits in the listen backlog.
    let flood = open_connections(addr, CHILD_NOFILE as usize * 2);
    assert!(
        flood.len() as u64 > CHILD_NOFILE,
        "only {} connections opened",
        flood.len()
    );
    // The child takes what it can at once; a spinning accept loop would spin
    // for the whole window measured here.
    assert_alive_and_quiet(&mut child, "flood of connections");
    eprintln!(
        "flood: child has {} descriptors open (limit {CHILD_NOFILE})",
        open_descriptors(pid)
    );
    drop(flood);
    assert_serves_again(addr, "after the flood");

    // 2. `accept` itself fails: a handler takes every free descriptor, then
    //    clients keep connecting.
    //    The server may still be accepting and closing what is left of the
    //    flood, each freeing a descriptor after `/hog` took the last one, so
    //    `/hog` is repeated until the child stays at its limit.
    let mut control = RawConn::open(addr);
    common::wait_until(
        Duration::from_secs(10),
        "the child is at its descriptor limit (else the test proves nothing)",
        || {
            control.send(b"GET /hog HTTP/1.1\r\nHost: t\r\n\r\n");
            let hogged = control.read_response().unwrap();
            let open = open_descriptors(pid);
            eprintln!(
                "the handler holds {} descriptors; {open} open",
                hogged.body_str()
            );
            open >= CHILD_NOFILE
        },
    );
    let waiting = open_connections(addr, 20);
    assert_eq!(waiting.len(), 20);
    assert_alive_and_quiet(&mut child, "accept failing with EMFILE");

    // Give the descriptors back: the server accepts and serves again.
    control.send(b"GET /release HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_eq!(control.read_response().unwrap().body_str(), "released");
    drop(waiting);
    assert_serves_again(addr, "after EMFILE");
    assert!(child.is_running(), "the child died");
    // `child` is killed on drop, whatever happened above.
}
