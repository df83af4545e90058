//! Serves files from a directory with plain blocking `std::fs`.
//!
//! Run it with `cargo run --example static_files -- [DIR]` (default: the current
//! directory), then `curl http://127.0.0.1:3000/Cargo.toml`. Files stream from
//! disk through `Body::wrap_reader`, so a large file costs no more memory than a
//! small one.

use astra::{Body, ConnectionInfo, Request, Response, ResponseBuilder, Server};
use http::{header, Method, StatusCode};
use std::fs::File;
use std::path::{Component, Path, PathBuf};

fn serve_file(root: &Path, request: Request) -> Response {
    if request.method() != Method::GET && request.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "only GET and HEAD\n");
    }
    let Some(path) = resolve(root, request.uri().path()) else {
        return text(StatusCode::BAD_REQUEST, "bad path\n");
    };
    // Blocking file I/O is fine here: this runs on a worker thread.
    let file = match File::open(&path) {
        Ok(file) => file,
        Err(_) => return text(StatusCode::NOT_FOUND, "not found\n"),
    };
    let len = match file.metadata() {
        Ok(meta) if meta.is_file() => meta.len(),
        _ => return text(StatusCode::NOT_FOUND, "not a file\n"),
    };
    ResponseBuilder::new()
        .header(header::CONTENT_LENGTH, len)
        .header(header::CONTENT_TYPE, content_type(&path))
        .body(Body::wrap_reader(file))
        .expect("valid headers")
}

/// Maps a URL path under `root`, refusing `..` and other escapes.
fn resolve(root: &Path, url_path: &str) -> Option<PathBuf> {
    let mut path = root.to_path_buf();
    for component in Path::new(url_path.trim_start_matches('/')).components() {
        match component {
            Component::Normal(part) => path.push(part),
            Component::CurDir => {}
            _ => return None,
        }
    }
    if path.is_dir() {
        path.push("index.html");
    }
    Some(path)
}

fn content_type(path: &Path) -> &'static str {
    match path.extension().and_then(|e| e.to_str()) {
        Some("html") => "text/html; charset=utf-8",
        Some("css") => "text/css",
        Some("js") => "text/javascript",
        Some("json") => "application/json",
        Some("png") => "image/png",
        Some("txt" | "md" | "toml" | "rs") => "text/plain; charset=utf-8",
        _ => "application/octet-stream",
    }
}

fn text(status: StatusCode, body: &'static str) -> Response {
    ResponseBuilder::new()
        .status(status)
        .body(Body::new(body))
        .expect("valid response")
}

fn main() {
    let root = PathBuf::from(std::env::args().nth(1).unwrap_or_else(|| ".".into()));
    let server = Server::bind("127.0.0.1:3000");
    println!(
        "serving {} on http://{}",
        root.display(),
        server.local_addr().expect("bound address")
    );
    server
        .serve(move |request: Request, _info: ConnectionInfo| serve_file(&root, request))
        .expect("serve failed");
}
