//! hyper 1 + hyper-util's auto builder on tokio's multi-thread runtime, async
//! handlers: the reference every ratio is taken against.

include!("../hyper_routes.rs");

#[tokio::main]
async fn main() {
    accept_loop(handle_async, None).await;
}
