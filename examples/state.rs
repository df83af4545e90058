//! A `Service` with shared state: counts the requests it has answered.
//!
//! Run it with `cargo run --example state`, then `curl http://127.0.0.1:3000/`.

use astra::{Body, ConnectionInfo, Request, Response, Server, Service};
use std::sync::atomic::{AtomicU64, Ordering};

/// State shared by every worker thread; `Server::serve` needs it to be `Sync`.
struct Counter {
    served: AtomicU64,
}

impl Service for Counter {
    fn call(&self, _request: Request, _info: ConnectionInfo) -> Response {
        let n = self.served.fetch_add(1, Ordering::Relaxed) + 1;
        Response::new(Body::new(format!("request number {n}\n")))
    }
}

fn main() {
    let server = Server::bind("127.0.0.1:3000");
    println!(
        "listening on http://{}",
        server.local_addr().expect("bound address")
    );
    server
        .serve(Counter {
            served: AtomicU64::new(0),
        })
        .expect("serve failed");
}
