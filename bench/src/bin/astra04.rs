//! The published astra 0.4 from crates.io, default settings.

use astra04 as astra_api;

include!("../astra_routes.rs");

fn main() {
    let addr = astra_bench::listen_addr();
    if let Err(err) = astra_api::Server::bind(addr.as_str()).serve(handle) {
        eprintln!("astra04: serve failed: {err}");
        std::process::exit(1);
    }
}
