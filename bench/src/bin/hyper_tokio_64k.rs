//! A control for `hyper_tokio`: the same server, with hyper's HTTP/1 read
//! buffer capped at 64 KiB (`http1().max_buf_size(65536)`) as astra caps it by
//! default, instead of hyper's default of about 400 KiB. The difference between
//! the two shows how much of a gap to `ours` is that setting rather than design.

include!("../hyper_routes.rs");

/// astra's default HTTP/1 read buffer cap.
const MAX_BUF_SIZE: usize = 64 * 1024;

#[tokio::main]
async fn main() {
    accept_loop(handle_async, Some(MAX_BUF_SIZE)).await;
}
