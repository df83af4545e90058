// Shared pieces of the hyper + tokio servers, included by `hyper_tokio`,
// `hyper_tokio_64k`, `hyper_blocking` and `hyper_tokio_tls`.

use std::convert::Infallible;
use std::net::SocketAddr;

use astra_bench::{route, Route, HELLO, ONE_K};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

type Reply = Response<Full<Bytes>>;

fn text(status: StatusCode, body: Bytes) -> Reply {
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = status;
    response
}

/// The routes, async flavour: the sleeping routes await a tokio timer.
#[allow(dead_code)]
async fn handle_async(request: Request<Incoming>) -> Result<Reply, Infallible> {
    let which = route(request.method().as_str(), request.uri().path());
    Ok(match which {
        Route::Hello => text(StatusCode::OK, Bytes::from_static(HELLO.as_bytes())),
        Route::Sleep(how_long) => {
            tokio::time::sleep(how_long).await;
            text(StatusCode::OK, Bytes::from_static(HELLO.as_bytes()))
        }
        Route::OneK => text(StatusCode::OK, Bytes::from_static(&ONE_K)),
        Route::Echo => {
            let mut body = request.into_body();
            let mut total: u64 = 0;
            while let Some(frame) = body.frame().await {
                match frame {
                    Ok(frame) => {
                        if let Some(data) = frame.data_ref() {
                            total += data.len() as u64;
                        }
                    }
                    Err(err) => {
                        eprintln!("echo: body error: {err}");
                        return Ok(text(StatusCode::BAD_REQUEST, Bytes::from_static(b"bad body")));
                    }
                }
            }
            text(StatusCode::OK, Bytes::from(total.to_string()))
        }
        Route::NotFound => text(StatusCode::NOT_FOUND, Bytes::new()),
    })
}

/// The routes, blocking flavour: runs on a blocking-pool thread, sleeps with
/// `std::thread::sleep` and reads the body by blocking on each frame.
#[allow(dead_code)]
fn handle_blocking(request: Request<Incoming>, runtime: tokio::runtime::Handle) -> Reply {
    match route(request.method().as_str(), request.uri().path()) {
        Route::Hello => text(StatusCode::OK, Bytes::from_static(HELLO.as_bytes())),
        Route::Sleep(how_long) => {
            std::thread::sleep(how_long);
            text(StatusCode::OK, Bytes::from_static(HELLO.as_bytes()))
        }
        Route::OneK => text(StatusCode::OK, Bytes::from_static(&ONE_K)),
        Route::Echo => {
            let mut body = request.into_body();
            let mut total: u64 = 0;
            while let Some(frame) = runtime.block_on(body.frame()) {
                match frame {
                    Ok(frame) => {
                        if let Some(data) = frame.data_ref() {
                            total += data.len() as u64;
                        }
                    }
                    Err(err) => {
                        eprintln!("echo: body error: {err}");
                        return text(StatusCode::BAD_REQUEST, Bytes::from_static(b"bad body"));
                    }
                }
            }
            text(StatusCode::OK, Bytes::from(total.to_string()))
        }
        Route::NotFound => text(StatusCode::NOT_FOUND, Bytes::new()),
    }
}

/// The listener on argv[1]'s address; like every server, exits if it cannot
/// have it, so that `run.sh` sees a failed start rather than a silent one.
async fn bind_or_exit() -> TcpListener {
    let addr: SocketAddr = match astra_bench::listen_addr().parse() {
        Ok(addr) => addr,
        Err(err) => {
            eprintln!("bad listen address: {err}");
            std::process::exit(2);
        }
    };
    match TcpListener::bind(addr).await {
        Ok(listener) => listener,
        Err(err) => {
            eprintln!("bind {addr}: {err}");
            std::process::exit(1);
        }
    }
}

/// The next accepted connection, with `TCP_NODELAY` set.
async fn accept_next(listener: &TcpListener) -> tokio::net::TcpStream {
    loop {
        match listener.accept().await {
            Ok((stream, _peer)) => {
                let _ = stream.set_nodelay(true);
                return stream;
            }
            Err(err) => {
                // EMFILE and friends: back off briefly rather than spin.
                eprintln!("accept: {err}");
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
        }
    }
}

/// A connection's error. Resets and early closes are routine under load; keep
/// quiet unless asked.
fn connection_error(what: &str, err: &dyn std::fmt::Display) {
    if std::env::var_os("BENCH_VERBOSE").is_some() {
        eprintln!("{what}: {err}");
    }
}

/// The idiomatic accept loop: one tokio task per connection, served by
/// hyper-util's auto (HTTP/1 + HTTP/2 prior knowledge) builder, at hyper's
/// defaults except, if given, the HTTP/1 read buffer's cap
/// (`http1().max_buf_size`).
#[allow(dead_code)]
async fn accept_loop<F, Fut>(handler: F, http1_max_buf_size: Option<usize>)
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<Reply, Infallible>> + Send + 'static,
{
    let listener = bind_or_exit().await;
    loop {
        let stream = accept_next(&listener).await;
        let handler = handler.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(handler);
            let mut builder = auto::Builder::new(TokioExecutor::new());
            if let Some(max) = http1_max_buf_size {
                builder.http1().max_buf_size(max);
            }
            if let Err(err) = builder
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                connection_error("connection", &err);
            }
        });
    }
}
