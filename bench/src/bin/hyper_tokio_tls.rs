//! `hyper_tokio` over TLS: the same routes and accept loop, each connection
//! first through tokio-rustls (rustls 0.23, ring provider), then served by
//! hyper-util's auto builder, HTTP/2 or HTTP/1.1 as ALPN chose. The reference
//! for the TLS scenarios.
//!
//! `hyper_tokio_tls ADDR CERT KEY`, or CERT and KEY from `$BENCH_TLS_CERT` and
//! `$BENCH_TLS_KEY`. With `$BENCH_TLS_HANDSHAKES` set it prints, once a second
//! when they changed, how many handshakes were full and how many resumed: the
//! check that a load tool really makes full handshakes (see README, S13).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::ServerConfig;
use rustls::HandshakeKind;
use tokio_rustls::TlsAcceptor;

include!("../hyper_routes.rs");

static FULL: AtomicU64 = AtomicU64::new(0);
static RESUMED: AtomicU64 = AtomicU64::new(0);

/// rustls at its defaults (TLS 1.2 and 1.3, its stateful session cache and
/// TLS 1.3 tickets, so a client that wants to resume can), with rustls's
/// process-default provider: ring, the only one this workspace turns on, as
/// the library uses when the application installs none.
fn tls_config(cert: &str, key: &str) -> Result<ServerConfig, String> {
    let certs = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|err| format!("{cert}: {err}"))?;
    let key = PrivateKeyDer::from_pem_file(key).map_err(|err| format!("{key}: {err}"))?;
    let mut config = ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|err| err.to_string())?;
    // What the library offers with `http2` on, in the same order.
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

#[tokio::main]
async fn main() {
    let config = match astra_bench::tls_paths().and_then(|(cert, key)| tls_config(&cert, &key)) {
        Ok(config) => config,
        Err(err) => {
            eprintln!("hyper_tokio_tls: {err}");
            std::process::exit(2);
        }
    };
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let count = std::env::var_os("BENCH_TLS_HANDSHAKES").is_some();
    if count {
        tokio::spawn(report_handshakes());
    }
    let listener = bind_or_exit().await;
    loop {
        let stream = accept_next(&listener).await;
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            // On the connection's own task, so that one slow handshake holds up
            // no other connection.
            let tls = match acceptor.accept(stream).await {
                Ok(tls) => tls,
                Err(err) => return connection_error("handshake", &err),
            };
            let session = tls.get_ref().1;
            if count {
                match session.handshake_kind() {
                    Some(HandshakeKind::Resumed) => RESUMED.fetch_add(1, Ordering::Relaxed),
                    _ => FULL.fetch_add(1, Ordering::Relaxed),
                };
            }
            // ALPN has settled the protocol; without it (a client that offered
            // none), the builder tells HTTP/2's preface from HTTP/1 as over TCP.
            let builder = auto::Builder::new(TokioExecutor::new());
            let builder = match session.alpn_protocol() {
                Some(b"h2") => builder.http2_only(),
                Some(_) => builder.http1_only(),
                None => builder,
            };
            let service = hyper::service::service_fn(handle_async);
            if let Err(err) = builder.serve_connection(TokioIo::new(tls), service).await {
                connection_error("connection", &err);
            }
        });
    }
}

async fn report_handshakes() {
    let mut last = (0, 0);
    loop {
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        let now = (
            FULL.load(Ordering::Relaxed),
            RESUMED.load(Ordering::Relaxed),
        );
        if now != last {
            eprintln!("handshakes: full {} resumed {}", now.0, now.1);
            last = now;
        }
    }
}
