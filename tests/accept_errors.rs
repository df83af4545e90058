//! Accept errors never end `serve`: a server that runs out of file descriptors
//! stays alive, does not spin on the failing `accept`, and serves again once
//! descriptors are free.
//!
//! The server runs in a child process (this test binary re-executed in child
//! mode) with `RLIMIT_NOFILE` lowered to 64; the parent exhausts it.

mod common;

use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::thread;
use std::time::{Duration, Instant};

use astra::{Body, Response};

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
    // Blocks until the parent kills this process.
    server
        .serve(|_, _| Response::new(Body::new("alive")))
        .expect("serve returned");
    unreachable!("serve returned");
}

/// Waits for the child to write its address.
fn child_addr(file: &PathBuf, child: &mut common::ChildGuard) -> SocketAddr {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(text) = std::fs::read_to_string(file) {
            if let Ok(addr) = text.trim().parse() {
                return addr;
            }
        }
        assert!(child.is_running(), "the child server exited early");
        assert!(Instant::now() < deadline, "the child server never started");
        thread::sleep(Duration::from_millis(20));
    }
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

    // Served before the exhaustion.
    assert_eq!(common::get(addr, "/"), (200, "alive".to_string()));

    // Far more connections than the child has descriptors: it accepts until it
    // hits EMFILE; the rest wait in the listen backlog.
    let mut held: Vec<TcpStream> = Vec::new();
    for _ in 0..(CHILD_NOFILE as usize * 2) {
        match TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
            Ok(stream) => held.push(stream),
            Err(_) => break,
        }
    }
    assert!(
        held.len() as u64 > CHILD_NOFILE,
        "only {} connections opened",
        held.len()
    );
    // Let the child run into the limit.
    thread::sleep(Duration::from_millis(300));
    assert!(
        child.is_running(),
        "the child died when its descriptors ran out"
    );
    let open_fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count() as u64;
    eprintln!("child has {open_fds} descriptors open (limit {CHILD_NOFILE})");
    assert!(
        open_fds >= CHILD_NOFILE - 1,
        "the child did not reach its descriptor limit ({open_fds} open): the test proves nothing"
    );

    // At exhaustion, the accept loop must back off, not spin.
    let cpu_before = common::cpu_time(pid);
    let wall = Instant::now();
    thread::sleep(Duration::from_secs(2));
    let cpu = common::cpu_time(pid) - cpu_before;
    let wall = wall.elapsed();
    eprintln!("child CPU time during {wall:?} at descriptor exhaustion: {cpu:?}");
    assert!(
        child.is_running(),
        "the child died at descriptor exhaustion"
    );
    assert!(
        cpu.as_secs_f64() < 0.3 * wall.as_secs_f64(),
        "the child used {cpu:?} of CPU in {wall:?} at descriptor exhaustion: it spins"
    );

    // Free the descriptors: the server serves again.
    drop(held);
    let deadline = Instant::now() + Duration::from_secs(10);
    let (status, body) = loop {
        let attempt = common::agent().get(&common::url(addr, "/")).call();
        match attempt {
            Ok(mut response) => {
                let status = response.status().as_u16();
                break (
                    status,
                    response.body_mut().read_to_string().unwrap_or_default(),
                );
            }
            Err(err) => {
                assert!(
                    Instant::now() < deadline,
                    "no answer within 10 s after the descriptors were freed: {err}"
                );
                thread::sleep(Duration::from_millis(100));
            }
        }
    };
    assert_eq!((status, body.as_str()), (200, "alive"));
    assert!(child.is_running(), "the child died");
    let _ = std::fs::remove_dir_all(&dir);
    // `child` is killed on drop, whatever happened above.
}
