//! tungstenite 0.30's own blocking server, the way its examples/server.rs
//! does it: a std `TcpListener`, a thread per connection, `tungstenite::accept`
//! and a loop echoing every text and binary message. Default tungstenite
//! configuration (`astra_bench::ws_config`: unless `BENCH_WS_READ_BUFFER` is
//! set), default thread stack size.
//!
//! Unlike the example, nothing unwraps: a connection's error ends that
//! connection's thread quietly, and a thread that cannot be created is logged
//! (`thread creation failed: ...`, which `run.sh` reports) and its connection
//! dropped, so the server goes on serving the others.

use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;

fn serve(stream: TcpStream) {
    let Ok(mut socket) = tungstenite::accept_with_config(stream, astra_bench::ws_config()) else {
        return;
    };
    // Ends with the client's close (tungstenite answers it and then reports
    // the connection closed) or any error.
    while let Ok(message) = socket.read() {
        if (message.is_text() || message.is_binary()) && socket.send(message).is_err() {
            break;
        }
    }
}

fn main() {
    let addr = astra_bench::listen_addr();
    let listener = match TcpListener::bind(&addr) {
        Ok(listener) => listener,
        Err(err) => {
            eprintln!("tungstenite_blocking: bind {addr}: {err}");
            std::process::exit(1);
        }
    };
    // Only the first failed thread creation is logged: under S15 one tends to
    // be followed by thousands.
    static SPAWN_FAILED: AtomicBool = AtomicBool::new(false);
    for stream in listener.incoming() {
        let stream = match stream {
            Ok(stream) => stream,
            // Out of descriptors, say: the example would stop; a pause
            // keeps a persistent error from spinning (and flooding stderr).
            Err(err) => {
                eprintln!("tungstenite_blocking: accept: {err}");
                thread::sleep(std::time::Duration::from_millis(10));
                continue;
            }
        };
        if let Err(err) = thread::Builder::new().spawn(move || serve(stream)) {
            if !SPAWN_FAILED.swap(true, Ordering::Relaxed) {
                eprintln!("tungstenite_blocking: thread creation failed: {err}");
            }
        }
    }
}
