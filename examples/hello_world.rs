//! The smallest astra server: answers every request with "Hello, World!".
//!
//! Run it with `cargo run --release --example hello_world`, then
//! `curl http://127.0.0.1:3000/`.

use astra::{Body, Response, Server};

fn main() {
    let addr = std::env::var("ASTRA_ADDR").unwrap_or_else(|_| "127.0.0.1:3000".into());
    let server = Server::bind(&addr);
    println!(
        "listening on http://{}",
        server.local_addr().expect("bound address")
    );
    server
        .serve(|_request, _info| Response::new(Body::new("Hello, World!")))
        .expect("serve failed");
}
