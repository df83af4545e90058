//! The syscall-bound ceiling: one thread, one mio poll loop, no HTTP parsing.
//! Every `\r\n\r\n` seen in a connection's input is answered with the same fixed
//! `Hello, World!` HTTP/1.1 keep-alive response, whatever the request was. It is
//! not a server: it only shows how fast this machine can move requests through
//! the kernel with one core.

use std::io::{self, Read, Write};

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

fn main() -> io::Result<()> {
    let addr = astra_bench::listen_addr();
    let addr = addr
        .parse()
        .map_err(|err| io::Error::new(io::ErrorKind::InvalidInput, format!("{addr}: {err}")))?;
    let mut listener = TcpListener::bind(addr)?;
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
