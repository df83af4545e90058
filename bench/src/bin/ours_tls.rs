//! `ours` over TLS: the library under test with `.tls(..)`, default settings
//! otherwise; the same routes as `ours`.
//!
//! `ours_tls ADDR CERT KEY`, or CERT and KEY from `$BENCH_TLS_CERT` and
//! `$BENCH_TLS_KEY`.

use astra as astra_api;

include!("../astra_routes.rs");

fn main() {
    let addr = astra_bench::listen_addr();
    let tls = match astra_bench::tls_paths().and_then(|(cert, key)| {
        // Its errors name the file.
        astra_api::TlsConfig::from_pem_files(&cert, &key).map_err(|err| err.to_string())
    }) {
        Ok(tls) => tls,
        Err(err) => {
            eprintln!("ours_tls: {err}");
            std::process::exit(2);
        }
    };
    if let Err(err) = astra_api::Server::bind(addr.as_str())
        .tls(tls)
        .serve(handle)
    {
        eprintln!("ours_tls: serve failed: {err}");
        std::process::exit(1);
    }
}
