//! A `TlsConfig` built from PEM uses the process-default rustls
//! `CryptoProvider` when the application installed one (what rustls asks of
//! libraries; the way to aws-lc-rs's post-quantum key exchange). A test
//! binary of its own: the process default is set once per process.

#![cfg(feature = "tls")]

mod common;

use std::net::TcpStream;
use std::sync::Arc;

use astra::rustls::crypto::{ring, CryptoProvider};
use astra::rustls::pki_types::ServerName;
use astra::rustls::{self, CipherSuite, ClientConfig, RootCertStore};
use astra::{Body, Response, TlsConfig};
use common::IO_TIMEOUT;

#[test]
fn a_pem_config_uses_the_installed_process_default_provider() {
    // ring's constructor is deprecated (no post-quantum key exchange); the
    // test needs its suites all the same.
    #[allow(deprecated)]
    let ring = ring::default_provider();
    // The installed default offers ChaCha20 only, which the client below
    // ranks last: the handshake picks it only if the server uses this
    // provider.
    CryptoProvider {
        cipher_suites: vec![ring::cipher_suite::TLS13_CHACHA20_POLY1305_SHA256],
        ..ring.clone()
    }
    .install_default()
    .unwrap();

    let dir = std::env::temp_dir().join(format!("astra-tls-provider-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let (cert_path, key_path) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert_path, cert.cert.pem()).unwrap();
    std::fs::write(&key_path, cert.signing_key.serialize_pem()).unwrap();
    let tls = TlsConfig::from_pem_files(&cert_path, &key_path).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();

    let server = common::start(common::server().tls(tls), |_req, _info| {
        Response::new(Body::new("ok"))
    });

    let mut roots = RootCertStore::empty();
    roots.add(cert.cert.der().clone()).unwrap();
    let mut suites = ring.cipher_suites.clone();
    suites.sort_by_key(|s| s.suite() == CipherSuite::TLS13_CHACHA20_POLY1305_SHA256);
    let client_provider = CryptoProvider {
        cipher_suites: suites,
        ..ring
    };
    let config = ClientConfig::builder_with_provider(Arc::new(client_provider))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = ServerName::try_from("localhost").unwrap();
    let mut conn = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
    let mut tcp = TcpStream::connect(server.addr()).unwrap();
    tcp.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    tcp.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
    while conn.is_handshaking() {
        conn.complete_io(&mut tcp).unwrap();
    }
    assert_eq!(
        conn.negotiated_cipher_suite().map(|s| s.suite()),
        Some(CipherSuite::TLS13_CHACHA20_POLY1305_SHA256)
    );
}
