//! The library under test, default settings.

use astra as astra_api;

include!("../astra_routes.rs");

fn main() {
    let addr = astra_bench::listen_addr();
    if let Err(err) = astra_api::Server::bind(addr.as_str()).serve(handle) {
        eprintln!("ours: serve failed: {err}");
        std::process::exit(1);
    }
}
