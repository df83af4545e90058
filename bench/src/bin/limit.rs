//! The syscall-bound ceiling: no HTTP parsing, one thread per core. Every
//! `\r\n\r\n` seen in a connection's input is answered with the same fixed
//! `Hello, World!` HTTP/1.1 keep-alive response, whatever the request was. It is
//! not a server: it only shows how fast this machine can move requests through
//! the kernel.
//!
//! Each thread (as many as `std::thread::available_parallelism()`, which follows
//! the CPU affinity mask, so one under `taskset -c 0`) has its own listener on
//! the same address (`SO_REUSEPORT`, so the kernel spreads new connections over
//! them) and its own mio poll loop, and shares nothing with the others.

use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};

const RESPONSE: &[u8] =
    b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 13\r\n\r\nHello, World!";
const LISTENER: Token = Token(usize::MAX);
const END: &[u8; 4] = b"\r\n\r\n";

struct Conn {
    stream: TcpStream,
    /// How many bytes of `\r\n\r\n` the input's tail has matched so far.
    matched: usize,
    /// Responses not yet accepted by the kernel.
    out: Vec<u8>,
    sent: usize,
    want_write: bool,
}

impl Conn {
    /// Counts request ends in `input`, carrying a partial match across reads.
    fn count_ends(&mut self, input: &[u8]) -> usize {
        let mut ends = 0;
        for &byte in input {
            if byte == END[self.matched] {
                self.matched += 1;
                if self.matched == END.len() {
                    ends += 1;
                    self.matched = 0;
                }
            } else {
                self.matched = usize::from(byte == b'\r');
            }
        }
        ends
    }

    /// Writes what is pending. `Ok(true)`: all written.
    fn flush(&mut self) -> io::Result<bool> {
        while self.sent < self.out.len() {
            match self.stream.write(&self.out[self.sent..]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => self.sent += n,
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(err) => return Err(err),
            }
        }
        self.out.clear();
        self.sent = 0;
        Ok(true)
    }

    /// Handles readiness. `Ok(false)`: the connection is finished.
    fn ready(&mut self, buf: &mut [u8]) -> io::Result<bool> {
        loop {
            match self.stream.read(buf) {
                Ok(0) => return Ok(false),
                Ok(n) => {
                    let ends = self.count_ends(&buf[..n]);
                    for _ in 0..ends {
                        self.out.extend_from_slice(RESPONSE);
                    }
                }
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => break,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(err) => return Err(err),
            }
        }
        self.flush()?;
        Ok(true)
    }
}

/// `setsockopt(fd, SOL_SOCKET, option, 1)`.
fn enable(fd: &OwnedFd, option: libc::c_int) -> io::Result<()> {
    let one: libc::c_int = 1;
    // SAFETY: a valid descriptor, and a pointer to a c_int with its size.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            option,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// A non-blocking listener on `addr` with `SO_REUSEADDR` and `SO_REUSEPORT`
/// set before `bind`, so that every thread can have its own.
fn reuseport_listener(addr: SocketAddr) -> io::Result<TcpListener> {
    let domain = match addr {
        SocketAddr::V4(_) => libc::AF_INET,
        SocketAddr::V6(_) => libc::AF_INET6,
    };
    // SAFETY: plain socket(2); the descriptor is owned at once below.
    let raw = unsafe {
        libc::socket(
            domain,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `raw` is a fresh descriptor that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    enable(&fd, libc::SO_REUSEADDR)?;
    enable(&fd, libc::SO_REUSEPORT)?;
    let rc = match addr {
        SocketAddr::V4(v4) => {
            // SAFETY: sockaddr_in is plain data; all zeroes is a valid value.
            let mut sa: libc::sockaddr_in = unsafe { std::mem::zeroed() };
            sa.sin_family = libc::AF_INET as libc::sa_family_t;
            sa.sin_port = v4.port().to_be();
            // octets() are in network order, as s_addr is stored.
            sa.sin_addr.s_addr = u32::from_ne_bytes(v4.ip().octets());
            // SAFETY: a valid descriptor and a sockaddr_in with its size.
            unsafe {
                libc::bind(
                    fd.as_raw_fd(),
                    (&sa as *const libc::sockaddr_in).cast(),
                    std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
                )
            }
        }
        SocketAddr::V6(v6) => {
            // SAFETY: sockaddr_in6 is plain data; all zeroes is a valid value.
            let mut sa: libc::sockaddr_in6 = unsafe { std::mem::zeroed() };
            sa.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            sa.sin6_port = v6.port().to_be();
            sa.sin6_flowinfo = v6.flowinfo();
            sa.sin6_addr.s6_addr = v6.ip().octets();
            sa.sin6_scope_id = v6.scope_id();
            // SAFETY: a valid descriptor and a sockaddr_in6 with its size.
            unsafe {
                libc::bind(
                    fd.as_raw_fd(),
                    (&sa as *const libc::sockaddr_in6).cast(),
                    std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t,
                )
            }
        }
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // The backlog mio's and tokio's own `bind` use.
    // SAFETY: a valid, bound descriptor.
    if unsafe { libc::listen(fd.as_raw_fd(), 1024) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(TcpListener::from_std(std::net::TcpListener::from(fd)))
}

fn main() {
    let addr = astra_bench::listen_addr();
    let addr: SocketAddr = match addr.parse() {
        Ok(addr) => addr,
        Err(err) => {
            eprintln!("limit: bad listen address {addr}: {err}");
            std::process::exit(2);
        }
    };
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    // Every listener is bound before any thread starts, so a failure to bind
    // ends the process before it answers anything.
    let mut listeners: Vec<TcpListener> = (0..threads)
        .map(|_| reuseport_listener(addr))
        .collect::<io::Result<_>>()
        .unwrap_or_else(|err| {
            eprintln!("limit: bind {addr}: {err}");
            std::process::exit(1);
        });
    // The last listener is served on the main thread: `threads` threads in all.
    let last = listeners.pop().expect("at least one listener");
    for listener in listeners {
        std::thread::spawn(move || serve_or_exit(listener));
    }
    serve_or_exit(last);
}

/// [`serve`], ending the whole process if it fails: a loop only returns on an
/// error it cannot go on from.
fn serve_or_exit(listener: TcpListener) {
    if let Err(err) = serve(listener) {
        eprintln!("limit: poll: {err}");
        std::process::exit(1);
    }
}

/// One thread's loop: accepts on its own listener and serves what it accepted.
fn serve(mut listener: TcpListener) -> io::Result<()> {
    let mut poll = Poll::new()?;
    poll.registry()
        .register(&mut listener, LISTENER, Interest::READABLE)?;

    let mut conns: Vec<Option<Conn>> = Vec::new();
    let mut free: Vec<usize> = Vec::new();
    let mut events = Events::with_capacity(1024);
    let mut buf = vec![0u8; 64 * 1024];

    loop {
        if let Err(err) = poll.poll(&mut events, None) {
            if err.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(err);
        }
        for event in events.iter() {
            if event.token() == LISTENER {
                loop {
                    match listener.accept() {
                        Ok((mut stream, _)) => {
                            let _ = stream.set_nodelay(true);
                            let slot = free.pop().unwrap_or_else(|| {
                                conns.push(None);
                                conns.len() - 1
                            });
                            if let Err(err) = poll.registry().register(
                                &mut stream,
                                Token(slot),
                                Interest::READABLE,
                            ) {
                                eprintln!("register: {err}");
                                free.push(slot);
                                continue;
                            }
                            conns[slot] = Some(Conn {
                                stream,
                                matched: 0,
                                out: Vec::new(),
                                sent: 0,
                                want_write: false,
                            });
                        }
                        Err(err) if err.kind() == io::ErrorKind::WouldBlock => break,
                        Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                        Err(err) => {
                            // Out of descriptors and the like: try again on the
                            // next event rather than spin.
                            eprintln!("accept: {err}");
                            break;
                        }
                    }
                }
                continue;
            }
            let slot = event.token().0;
            let Some(conn) = conns.get_mut(slot).and_then(Option::as_mut) else {
                continue;
            };
            // An error finishes the connection, as an end of input does.
            let keep = conn.ready(&mut buf).unwrap_or(false);
            if !keep {
                if let Some(mut conn) = conns[slot].take() {
                    let _ = poll.registry().deregister(&mut conn.stream);
                }
                free.push(slot);
                continue;
            }
            // Ask for writability only while output is pending.
            let pending = !conn.out.is_empty();
            if pending != conn.want_write {
                let interest = if pending {
                    Interest::READABLE | Interest::WRITABLE
                } else {
                    Interest::READABLE
                };
                if poll
                    .registry()
                    .reregister(&mut conn.stream, Token(slot), interest)
                    .is_ok()
                {
                    conn.want_write = pending;
                }
            }
        }
    }
}
