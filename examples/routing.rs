//! Routes requests with `matchit`, a small path router.
//!
//! Run it with `cargo run --example routing`, then try
//! `curl http://127.0.0.1:3000/`, `curl http://127.0.0.1:3000/user/42` and
//! `curl -X POST --data hello http://127.0.0.1:3000/echo`.

use astra::{Body, ConnectionInfo, Request, Response, ResponseBuilder, Server};
use http::{Method, StatusCode};
use std::collections::HashMap;
use std::io::Read;
use std::sync::Arc;

/// A handler gets the request and the route's named parameters.
type Handler = fn(Request, &Params) -> Response;
type Params = HashMap<String, String>;

fn home(_request: Request, _params: &Params) -> Response {
    Response::new(Body::new("welcome home\n"))
}

fn user(_request: Request, params: &Params) -> Response {
    Response::new(Body::new(format!("user {}\n", params["id"])))
}

fn echo(mut request: Request, _params: &Params) -> Response {
    let mut text = Vec::new();
    match request.body_mut().reader().read_to_end(&mut text) {
        Ok(_) => Response::new(Body::new(text)),
        Err(err) => status(StatusCode::BAD_REQUEST, format!("bad body: {err}\n")),
    }
}

fn status(code: StatusCode, text: String) -> Response {
    ResponseBuilder::new()
        .status(code)
        .body(Body::new(text))
        .expect("a status and a body make a valid response")
}

/// One router per HTTP method.
struct Router {
    routes: HashMap<Method, matchit::Router<Handler>>,
}

impl Router {
    fn new() -> Router {
        Router {
            routes: HashMap::new(),
        }
    }

    fn route(mut self, method: Method, path: &str, handler: Handler) -> Router {
        self.routes
            .entry(method)
            .or_default()
            .insert(path, handler)
            .expect("routes do not conflict");
        self
    }

    fn serve(&self, request: Request, _info: ConnectionInfo) -> Response {
        let Some(router) = self.routes.get(request.method()) else {
            return status(
                StatusCode::METHOD_NOT_ALLOWED,
                "method not allowed\n".into(),
            );
        };
        let path = request.uri().path().to_owned();
        match router.at(&path) {
            Ok(matched) => {
                let params = matched
                    .params
                    .iter()
                    .map(|(k, v)| (k.to_owned(), v.to_owned()))
                    .collect();
                (matched.value)(request, &params)
            }
            Err(_) => status(StatusCode::NOT_FOUND, "not found\n".into()),
        }
    }
}

fn main() {
    let router = Arc::new(
        Router::new()
            .route(Method::GET, "/", home)
            .route(Method::GET, "/user/{id}", user)
            .route(Method::POST, "/echo", echo),
    );
    let server = Server::bind("127.0.0.1:3000");
    println!(
        "listening on http://{}",
        server.local_addr().expect("bound address")
    );
    server
        .serve(move |request, info| router.serve(request, info))
        .expect("serve failed");
}
