//! Greets each client with its own address, from `ConnectionInfo`.
//!
//! Run it with `cargo run --example connection_info`, then
//! `curl http://127.0.0.1:3000/`.

use astra::{Body, ConnectionInfo, Request, Response, Server};

fn greet(_request: Request, info: ConnectionInfo) -> Response {
    let text = match info.peer_addr() {
        Some(addr) => format!("hello, {addr}\n"),
        None => "hello, whoever you are\n".to_string(),
    };
    Response::new(Body::new(text))
}

fn main() {
    let server = Server::bind("127.0.0.1:3000");
    println!(
        "listening on http://{}",
        server.local_addr().expect("bound address")
    );
    server.serve(greet).expect("serve failed");
}
