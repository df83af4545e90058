//! Serves "Hello, World!" on a Unix domain socket, and tells each client who it
//! is (the pid, uid and gid the kernel saw connect).
//!
//! Run it with `cargo run --example unix_socket -- /tmp/astra.sock` (the path
//! is optional; that one is the default), then
//! `curl --unix-socket /tmp/astra.sock http://localhost/`.
//! Ctrl-C stops it; the next run replaces the socket file it leaves.

use astra::{Body, ConnectionInfo, Response, Server};

fn main() {
    let path = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "/tmp/astra.sock".into());
    let server = Server::bind_unix(&path);
    println!("listening on {path}");
    server
        .serve(|_request, info: ConnectionInfo| {
            let greeting = match info.peer_credentials() {
                Some(peer) => format!(
                    "Hello, World! You are pid {:?}, uid {}, gid {}.\n",
                    peer.pid(),
                    peer.uid(),
                    peer.gid()
                ),
                None => "Hello, World!\n".to_string(),
            };
            Response::new(Body::new(greeting))
        })
        .expect("serve failed");
}
