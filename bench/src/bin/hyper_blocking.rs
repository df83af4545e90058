//! hyper 1 + hyper-util's auto builder on tokio's multi-thread runtime, with each
//! handler run in `tokio::task::spawn_blocking` (the usual way to host blocking
//! handlers on tokio).

include!("../hyper_routes.rs");

async fn handle(request: Request<Incoming>) -> Result<Reply, Infallible> {
    let runtime = tokio::runtime::Handle::current();
    match tokio::task::spawn_blocking(move || handle_blocking(request, runtime)).await {
        Ok(reply) => Ok(reply),
        Err(err) => {
            eprintln!("handler panicked: {err}");
            Ok(text(StatusCode::INTERNAL_SERVER_ERROR, Bytes::new()))
        }
    }
}

#[tokio::main]
async fn main() {
    accept_loop(handle, None).await;
}
