//! Ctrl-C or SIGTERM starts a graceful shutdown: the server stops accepting,
//! finishes every request in flight, and `serve` returns.
//!
//! Run it with `cargo run --example graceful_shutdown`, start a slow request
//! with `curl http://127.0.0.1:3000/`, press Ctrl-C: the request still gets its
//! answer before the process exits.

use astra::{Body, Response, Server};
use std::time::Duration;

fn main() {
    let server = Server::bind("127.0.0.1:3000").shutdown_timeout(Duration::from_secs(10));
    let handle = server.handle();
    ctrlc::set_handler(move || {
        eprintln!("shutting down: finishing requests in flight");
        handle.shutdown();
    })
    .expect("install the Ctrl-C / SIGTERM handler");

    println!(
        "listening on http://{}",
        server.local_addr().expect("bound address")
    );
    server
        .serve(|_request, _info| {
            // A slow handler, to see the drain wait for it.
            std::thread::sleep(Duration::from_secs(3));
            Response::new(Body::new("done, even if you pressed Ctrl-C\n"))
        })
        .expect("serve failed");
    println!("server stopped");
}
