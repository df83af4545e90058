//! tokio-tungstenite 0.30 on tokio's multi-thread runtime, the way its
//! examples/echo-server.rs does it: a task per connection, `accept_async`,
//! then the read half forwarded into the write half, text and binary
//! messages only. Default tungstenite configuration (`astra_bench::ws_config`:
//! unless `BENCH_WS_READ_BUFFER` is set). The reference for S14
//! and S15.

use futures_util::{future, StreamExt, TryStreamExt};
use tokio::net::{TcpListener, TcpStream};

async fn accept_connection(stream: TcpStream) {
    // The example panics on a failed handshake or forward; a benchmark server
    // should just drop that connection.
    let Ok(ws_stream) =
        tokio_tungstenite::accept_async_with_config(stream, astra_bench::ws_config()).await
    else {
        return;
    };
    let (write, read) = ws_stream.split();
    let _ = read
        .try_filter(|msg| future::ready(msg.is_text() || msg.is_binary()))
        .forward(write)
        .await;
}

#[tokio::main]
async fn main() {
    let addr = astra_bench::listen_addr();
    let listener = match TcpListener::bind(&addr).await {
        Ok(listener) => listener,
        Err(err) => {
            eprintln!("tokio_tungstenite: bind {addr}: {err}");
            std::process::exit(1);
        }
    };
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                tokio::spawn(accept_connection(stream));
            }
            // The example stops at the first error; out of descriptors, for
            // one, is worth going on after.
            // A short pause so that a persistent error does not spin.
            Err(err) => {
                eprintln!("tokio_tungstenite: accept: {err}");
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
        }
    }
}
