//! HTTPS (feature `tls`): curl over HTTP/1.1 and HTTP/2, SNI, TLS 1.2 and
//! 1.3, big bodies, client certificates, certificate reload under load,
//! stalled and aborted handshakes, plain HTTP on the TLS port, and the errors
//! a bad certificate file gives. A test CA and its certificates (ECDSA P-256)
//! are made by each test with rcgen.

#![cfg(feature = "tls")]

mod common;

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use astra::rustls::pki_types::{CertificateDer, ServerName};
use astra::rustls::{self, ClientConfig, RootCertStore};
use astra::test::TestServer;
use astra::{Body, ConnectionInfo, Request, Response, ResponseBuilder, Server, TlsConfig};
use common::{within, IO_TIMEOUT};

/// A test CA, the certificates it signed, and the directory holding their PEM
/// files (removed on drop).
struct Pki {
    dir: PathBuf,
    ca: rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
}

/// A certificate and key written to `<name>.pem` and `<name>.key`.
struct Issued {
    cert: PathBuf,
    key: PathBuf,
    der: CertificateDer<'static>,
}

impl Pki {
    fn new(test: &str) -> Pki {
        let dir = std::env::temp_dir().join(format!("astra-tls-{test}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create the certificate directory");
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "astra test CA");
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        let ca = rcgen::CertifiedIssuer::self_signed(params, rcgen::KeyPair::generate().unwrap())
            .unwrap();
        std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
        Pki { dir, ca }
    }

    fn ca_pem(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// A server certificate for `names` (DNS names or IP addresses).
    fn server(&self, file: &str, names: &[&str]) -> Issued {
        let mut params =
            rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, names[0]);
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        self.issue(file, params)
    }

    /// A client certificate (for mTLS) with `name` as its common name.
    fn client(&self, file: &str, name: &str) -> Issued {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        self.issue(file, params)
    }

    fn issue(&self, file: &str, params: rcgen::CertificateParams) -> Issued {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.ca).unwrap();
        let issued = Issued {
            cert: self.dir.join(format!("{file}.pem")),
            key: self.dir.join(format!("{file}.key")),
            der: cert.der().clone(),
        };
        std::fs::write(&issued.cert, cert.pem()).unwrap();
        std::fs::write(&issued.key, key.serialize_pem()).unwrap();
        issued
    }

    /// A rustls client that trusts this CA.
    fn client_config(&self) -> Arc<ClientConfig> {
        let mut roots = RootCertStore::empty();
        roots.add(self.ca.der().clone()).unwrap();
        // The process default: ring, the only provider this build turns on.
        Arc::new(
            ClientConfig::builder()
                .with_root_certificates(roots)
                .with_no_client_auth(),
        )
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn tls_config(issued: &Issued) -> TlsConfig {
    TlsConfig::from_pem_files(&issued.cert, &issued.key).expect("load the test certificate")
}

/// Starts `server` with TLS on a background thread.
fn start_tls<F>(server: Server, tls: TlsConfig, handler: F) -> TestServer
where
    F: Fn(Request, ConnectionInfo) -> Response + Send + Sync + 'static,
{
    common::start(server.tls(tls), handler)
}

/// A handler that describes the connection's TLS session.
fn describe(request: Request, info: ConnectionInfo) -> Response {
    let tls = info.tls().expect("a TLS connection");
    let text = format!(
        "version={:?} sni={} alpn={} http={:?} client_certs={}",
        tls.protocol_version(),
        tls.server_name().unwrap_or("-"),
        tls.alpn_protocol()
            .map(|p| String::from_utf8_lossy(p).into_owned())
            .unwrap_or("-".into()),
        request.version(),
        tls.peer_certificates().map_or(0, |c| c.len()),
    );
    Response::new(Body::new(text))
}

fn curl_available() -> bool {
    Command::new("curl").arg("--version").output().is_ok()
}

/// Runs curl with a time limit; returns its output.
fn curl(args: &[&str]) -> Output {
    let output = Command::new("curl")
        .args(["-sS", "--max-time", "20"])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run curl");
    output
}

fn curl_ok(args: &[&str]) -> String {
    let output = curl(args);
    assert!(
        output.status.success(),
        "curl {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("utf-8 from curl")
}

fn https(addr: SocketAddr, path: &str) -> String {
    format!("https://localhost:{}{path}", addr.port())
}

fn resolve(addr: SocketAddr, name: &str) -> String {
    format!("{name}:{}:127.0.0.1", addr.port())
}

macro_rules! need_curl {
    () => {
        if !curl_available() {
            eprintln!("skipped: curl is not installed");
            return;
        }
    };
}

#[test]
fn curl_over_http1_sees_tls_1_3_sni_and_alpn() {
    need_curl!();
    let pki = Pki::new("http1");
    let cert = pki.server("localhost", &["localhost"]);
    let server = start_tls(common::server(), tls_config(&cert), describe);
    let addr = server.addr();
    let ca = pki.ca_pem();
    let url = https(addr, "/");
    let out = curl_ok(&[
        "--http1.1",
        "--cacert",
        ca.to_str().unwrap(),
        "--resolve",
        &resolve(addr, "localhost"),
        &url,
    ]);
    assert_eq!(
        out,
        "version=Some(TLSv1_3) sni=localhost alpn=http/1.1 http=HTTP/1.1 client_certs=0"
    );
}

#[test]
fn tls_1_2_is_served_too() {
    need_curl!();
    let pki = Pki::new("tls12");
    let cert = pki.server("localhost", &["localhost"]);
    let server = start_tls(common::server(), tls_config(&cert), describe);
    let addr = server.addr();
    let ca = pki.ca_pem();
    let url = https(addr, "/");
    let out = curl_ok(&[
        "--http1.1",
        "--tlsv1.2",
        "--tls-max",
        "1.2",
        "--cacert",
        ca.to_str().unwrap(),
        "--resolve",
        &resolve(addr, "localhost"),
        &url,
    ]);
    assert!(out.starts_with("version=Some(TLSv1_2) "), "{out}");
}

#[cfg(feature = "http2")]
#[test]
fn curl_http2_is_chosen_by_alpn() {
    need_curl!();
    let pki = Pki::new("h2");
    let cert = pki.server("localhost", &["localhost"]);
    let server = start_tls(common::server(), tls_config(&cert), describe);
    let addr = server.addr();
    let ca = pki.ca_pem();
    let url = https(addr, "/");
    let out = curl_ok(&[
        "--http2",
        "--cacert",
        ca.to_str().unwrap(),
        "--resolve",
        &resolve(addr, "localhost"),
        &url,
    ]);
    assert_eq!(
        out,
        "version=Some(TLSv1_3) sni=localhost alpn=h2 http=HTTP/2.0 client_certs=0"
    );
}

#[cfg(feature = "http2")]
#[test]
fn http1_only_offers_only_http1_over_alpn() {
    need_curl!();
    let pki = Pki::new("h1only");
    let cert = pki.server("localhost", &["localhost"]);
    let server = start_tls(common::server().http1_only(), tls_config(&cert), describe);
    let addr = server.addr();
    let ca = pki.ca_pem();
    let url = https(addr, "/");
    let out = curl_ok(&[
        "--http2",
        "--cacert",
        ca.to_str().unwrap(),
        "--resolve",
        &resolve(addr, "localhost"),
        &url,
    ]);
    assert!(out.contains("alpn=http/1.1 http=HTTP/1.1"), "{out}");
}

#[test]
fn certificates_are_chosen_by_server_name() {
    need_curl!();
    let pki = Pki::new("sni");
    let default = pki.server("default", &["default.test"]);
    let a = pki.server("a", &["a.test"]);
    let b = pki.server("b", &["b.test"]);
    let tls = tls_config(&default)
        .with_server_name("a.test", &a.cert, &a.key)
        .unwrap()
        .with_server_name("B.Test", &b.cert, &b.key)
        .unwrap();
    let server = start_tls(common::server(), tls, describe);
    let addr = server.addr();
    let ca = pki.ca_pem();
    // curl checks that the certificate it gets is valid for the name it asked
    // for: each answer proves the right certificate was chosen.
    for name in ["a.test", "b.test", "default.test"] {
        let url = format!("https://{name}:{}/", addr.port());
        let out = curl_ok(&[
            "--http1.1",
            "--cacert",
            ca.to_str().unwrap(),
            "--resolve",
            &resolve(addr, name),
            &url,
        ]);
        assert!(out.contains(&format!("sni={name} ")), "{name}: {out}");
    }
    // A name with no certificate of its own gets the default one, which is
    // not valid for it: curl refuses, and says why.
    let url = format!("https://other.test:{}/", addr.port());
    let output = curl(&[
        "--cacert",
        ca.to_str().unwrap(),
        "--resolve",
        &resolve(addr, "other.test"),
        &url,
    ]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("other.test"), "{stderr}");
    // No SNI at all (an IP address): the default certificate.
    let (server_name, served) = handshake_with(
        addr,
        pki.client_config(),
        ServerName::try_from("default.test").unwrap(),
    );
    assert_eq!(server_name.as_deref(), Some("default.test"));
    assert_eq!(served, default.der);
}

#[test]
fn a_certificate_for_another_name_is_refused_with_a_clear_error() {
    let pki = Pki::new("wrongname");
    let default = pki.server("default", &["default.test"]);
    let a = pki.server("a", &["a.test"]);
    let err = tls_config(&default)
        .with_server_name("b.test", &a.cert, &a.key)
        .unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    let message = err.to_string();
    assert!(
        message.contains("a.pem") && message.contains("b.test"),
        "{message}"
    );
}

/// Hashes bytes (FNV-1a, 64 bits): enough to tell a corrupted body.
fn fnv(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf29ce484222325;
    for &b in bytes {
        hash ^= b as u64;
        hash = hash.wrapping_mul(0x100000001b3);
    }
    hash
}

fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 + i / 4093) as u8).collect()
}

fn big_bodies(request: Request, _info: ConnectionInfo) -> Response {
    match request.uri().path() {
        "/download" => Response::new(Body::new(pattern(32 << 20))),
        "/upload" => {
            let mut body = Vec::new();
            request
                .into_body()
                .reader()
                .read_to_end(&mut body)
                .expect("read the upload");
            Response::new(Body::new(format!("{} {:x}", body.len(), fnv(&body))))
        }
        _ => ResponseBuilder::new()
            .status(404)
            .body(Body::empty())
            .unwrap(),
    }
}

fn big_bodies_over(version: &str) {
    let pki = Pki::new(&format!("big{version}"));
    let cert = pki.server("localhost", &["localhost"]);
    let server = start_tls(common::server(), tls_config(&cert), big_bodies);
    let addr = server.addr();
    let ca = pki.ca_pem();
    let download = pki.dir.join("download.bin");
    let upload = pki.dir.join("upload.bin");
    let sent = pattern(8 << 20);
    std::fs::write(&upload, &sent).unwrap();
    let resolve = resolve(addr, "localhost");
    let common_args = ["--cacert", ca.to_str().unwrap(), "--resolve", &resolve];
    let url = https(addr, "/download");
    let mut args = vec![version, "-o", download.to_str().unwrap(), &url];
    args.extend(common_args);
    curl_ok(&args);
    let got = std::fs::read(&download).unwrap();
    assert_eq!(got.len(), 32 << 20);
    assert!(got == pattern(32 << 20), "the download arrived changed");
    let url = https(addr, "/upload");
    let data = format!("@{}", upload.display());
    let mut args = vec![version, "--data-binary", &data, &url];
    args.extend(common_args);
    let out = curl_ok(&args);
    assert_eq!(out, format!("{} {:x}", sent.len(), fnv(&sent)));
}

#[test]
fn a_32_mib_download_and_an_8_mib_upload_arrive_intact_over_http1() {
    need_curl!();
    big_bodies_over("--http1.1");
}

#[cfg(feature = "http2")]
#[test]
fn a_32_mib_download_and_an_8_mib_upload_arrive_intact_over_http2() {
    need_curl!();
    big_bodies_over("--http2");
}

#[test]
fn a_client_certificate_is_visible_to_the_handler() {
    need_curl!();
    let pki = Pki::new("mtls");
    let cert = pki.server("localhost", &["localhost"]);
    let client = pki.client("client", "alice");
    let mut roots = RootCertStore::empty();
    roots.add(pki.ca.der().clone()).unwrap();
    let verifier = rustls::server::WebPkiClientVerifier::builder(Arc::new(roots))
        .build()
        .unwrap();
    let chain = vec![cert.der.clone()];
    let key = rustls::pki_types::PrivateKeyDer::from_pem_file(&cert.key).unwrap();
    let config = rustls::ServerConfig::builder()
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .unwrap();
    let expected = client.der.clone();
    let server = start_tls(
        common::server(),
        TlsConfig::from(config),
        move |_req, info| {
            let certs = info
                .tls()
                .unwrap()
                .peer_certificates()
                .expect("a client certificate");
            // curl may send its CA after the client's own certificate.
            let same = certs[0] == expected;
            Response::new(Body::new(format!("same={same}")))
        },
    );
    let addr = server.addr();
    let ca = pki.ca_pem();
    let resolve = resolve(addr, "localhost");
    let url = https(addr, "/");
    let out = curl_ok(&[
        "--cacert",
        ca.to_str().unwrap(),
        "--cert",
        client.cert.to_str().unwrap(),
        "--key",
        client.key.to_str().unwrap(),
        "--resolve",
        &resolve,
        &url,
    ]);
    assert_eq!(out, "same=true");
    // Without a certificate the handshake fails; no handler runs.
    let output = curl(&[
        "--cacert",
        ca.to_str().unwrap(),
        "--resolve",
        &resolve,
        &url,
    ]);
    assert!(
        !output.status.success(),
        "served without a client certificate"
    );
}

use rustls::pki_types::pem::PemObject;

/// One handshake with a rustls client and one request; returns the server
/// name the handler saw and the certificate the server presented.
fn handshake_with(
    addr: SocketAddr,
    config: Arc<ClientConfig>,
    name: ServerName<'static>,
) -> (Option<String>, CertificateDer<'static>) {
    let mut stream = TlsClient::connect(addr, config, name).expect("handshake");
    let body = stream.get("/").expect("request");
    let sni = body
        .split_whitespace()
        .find_map(|w| w.strip_prefix("sni="))
        .filter(|s| *s != "-")
        .map(str::to_owned);
    let cert = stream.peer_certificate();
    (sni, cert)
}

/// A blocking HTTPS/1.1 client over rustls, for tests that need to count
/// handshakes or look at the server's certificate.
struct TlsClient {
    tls: rustls::StreamOwned<rustls::ClientConnection, TcpStream>,
}

impl TlsClient {
    fn connect(
        addr: SocketAddr,
        config: Arc<ClientConfig>,
        name: ServerName<'static>,
    ) -> io::Result<TlsClient> {
        let tcp = TcpStream::connect(addr)?;
        tcp.set_read_timeout(Some(IO_TIMEOUT))?;
        tcp.set_write_timeout(Some(IO_TIMEOUT))?;
        let conn = rustls::ClientConnection::new(config, name).map_err(io::Error::other)?;
        let mut tls = rustls::StreamOwned::new(conn, tcp);
        while tls.conn.is_handshaking() {
            tls.conn.complete_io(&mut tls.sock)?;
        }
        Ok(TlsClient { tls })
    }

    /// GET `path` on this connection (kept alive); returns the body.
    fn get(&mut self, path: &str) -> io::Result<String> {
        write!(self.tls, "GET {path} HTTP/1.1\r\nhost: localhost\r\n\r\n")?;
        self.tls.flush()?;
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            if self.tls.read(&mut byte)? == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            head.push(byte[0]);
        }
        let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
        let len: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse().ok())
            .ok_or_else(|| io::Error::other(format!("no content-length in {head:?}")))?;
        let mut body = vec![0; len];
        self.tls.read_exact(&mut body)?;
        Ok(String::from_utf8_lossy(&body).into_owned())
    }

    fn peer_certificate(&self) -> CertificateDer<'static> {
        self.tls.conn.peer_certificates().unwrap()[0].clone()
    }
}

#[test]
fn reload_under_load_fails_no_handshake_and_keeps_open_connections() {
    let pki = Pki::new("reload");
    let first = pki.server("first", &["localhost"]);
    let second = pki.server("second", &["localhost"]);
    let server = common::start(common::server().tls(tls_config(&first)), describe);
    let (addr, handle) = (server.addr(), server.handle());
    let config = pki.client_config();
    let name = ServerName::try_from("localhost").unwrap();

    // A connection opened before any reload.
    let mut kept = TlsClient::connect(addr, config.clone(), name.clone()).unwrap();
    assert_eq!(kept.peer_certificate(), first.der);

    // Clients make handshakes in a loop while the certificate flips.
    let stop = Arc::new(AtomicBool::new(false));
    let handshakes = Arc::new(AtomicUsize::new(0));
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let (stop, handshakes) = (stop.clone(), handshakes.clone());
            let (config, name) = (config.clone(), name.clone());
            thread::spawn(move || -> Result<(), String> {
                while !stop.load(Ordering::Relaxed) {
                    let mut client = TlsClient::connect(addr, config.clone(), name.clone())
                        .map_err(|e| format!("handshake failed: {e}"))?;
                    client
                        .get("/")
                        .map_err(|e| format!("request failed: {e}"))?;
                    handshakes.fetch_add(1, Ordering::Relaxed);
                }
                Ok(())
            })
        })
        .collect();
    for i in 0..20 {
        let next = if i % 2 == 0 { &second } else { &first };
        // A few handshakes between reloads; a client that stopped has an
        // error to tell when joined below.
        let target = handshakes.load(Ordering::Relaxed) + 5;
        common::wait_until(Duration::from_secs(10), "handshakes go on", || {
            handshakes.load(Ordering::Relaxed) >= target || clients.iter().any(|c| c.is_finished())
        });
        handle.reload_tls(tls_config(next)).unwrap();
    }
    stop.store(true, Ordering::Relaxed);
    for client in clients {
        common::join_within(client, Duration::from_secs(20), "a reload client")
            .expect("every handshake and request succeeded");
    }
    assert!(handshakes.load(Ordering::Relaxed) >= 100);

    // The last reload installed `first`; the one before it `second`.
    handle.reload_tls(tls_config(&second)).unwrap();
    let fresh = TlsClient::connect(addr, config, name).unwrap();
    assert_eq!(fresh.peer_certificate(), second.der);
    // The connection from before every reload still works, on its own session.
    assert!(kept.get("/").unwrap().starts_with("version=Some(TLSv1_3)"));
}

#[test]
fn reload_tls_on_a_plain_server_is_an_error() {
    let pki = Pki::new("reloadplain");
    let cert = pki.server("localhost", &["localhost"]);
    let server = common::server();
    let handle = server.handle();
    let err = handle.reload_tls(tls_config(&cert)).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    drop(server);
}

#[test]
fn a_stalled_handshake_is_closed_by_the_header_read_timeout() {
    let pki = Pki::new("stalled");
    let cert = pki.server("localhost", &["localhost"]);
    let server = common::server().http1_header_read_timeout(Duration::from_millis(500));
    let server = start_tls(server, tls_config(&cert), describe);
    let addr = server.addr();
    // One sends nothing, one half a ClientHello.
    let silent = common::connect(addr);
    let mut half = common::connect(addr);
    let hello = client_hello(&pki);
    half.write_all(&hello[..hello.len() / 2]).unwrap();
    let started = Instant::now();
    for mut stream in [silent, half] {
        let got = common::read_until_closed(&mut stream).expect("closed, not timed out");
        assert!(got.len() < 64, "only an alert, if anything: {got:?}");
    }
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(400),
        "closed too early: {took:?}"
    );
    assert!(took < Duration::from_secs(5), "closed late: {took:?}");
}

/// The bytes of a TLS 1.3 ClientHello for `localhost`.
fn client_hello(pki: &Pki) -> Vec<u8> {
    let mut conn = rustls::ClientConnection::new(
        pki.client_config(),
        ServerName::try_from("localhost").unwrap(),
    )
    .unwrap();
    let mut hello = Vec::new();
    while conn.wants_write() {
        conn.write_tls(&mut hello).unwrap();
    }
    hello
}

/// RUSTSEC-2024-0336: a close_notify right after the ClientHello sent rustls's
/// `complete_io` into a loop that never ended. Here the connection must close
/// at once and the server go on serving, even with one worker.
#[test]
fn close_notify_right_after_the_client_hello_closes_the_connection() {
    let pki = Pki::new("closenotify");
    let cert = pki.server("localhost", &["localhost"]);
    let server = start_tls(common::server().max_workers(1), tls_config(&cert), describe);
    let addr = server.addr();
    let mut flight = client_hello(&pki);
    // An alert record: warning (1), close_notify (0).
    flight.extend_from_slice(&[0x15, 0x03, 0x03, 0x00, 0x02, 0x01, 0x00]);
    for _ in 0..3 {
        let mut stream = common::connect(addr);
        stream.write_all(&flight).unwrap();
        let started = Instant::now();
        common::read_until_closed(&mut stream).expect("the server closes the connection");
        assert!(started.elapsed() < Duration::from_secs(3));
    }
    let (sni, _) = within(
        Duration::from_secs(10),
        "a handshake afterwards",
        move || {
            handshake_with(
                addr,
                pki.client_config(),
                ServerName::try_from("localhost").unwrap(),
            )
        },
    );
    assert_eq!(sni.as_deref(), Some("localhost"));
}

#[test]
fn a_thousand_stalled_handshakes_do_not_delay_a_new_client() {
    common::raise_nofile(4096);
    let pki = Pki::new("thousand");
    let cert = pki.server("localhost", &["localhost"]);
    let server = start_tls(common::server().max_workers(4), tls_config(&cert), describe);
    let addr = server.addr();
    let hello = client_hello(&pki);
    let stalled: Vec<TcpStream> = (0..1000)
        .map(|i| {
            let mut stream = common::connect(addr);
            if i % 2 == 0 {
                // Half a ClientHello: rustls waits for the rest.
                stream.write_all(&hello[..hello.len() / 2]).unwrap();
            }
            stream
        })
        .collect();
    let config = pki.client_config();
    let started = Instant::now();
    let (sni, _) = within(Duration::from_secs(10), "a new client", move || {
        handshake_with(addr, config, ServerName::try_from("localhost").unwrap())
    });
    let took = started.elapsed();
    assert_eq!(sni.as_deref(), Some("localhost"));
    assert!(
        took < Duration::from_secs(2),
        "the new client waited {took:?}"
    );
    drop(stalled);
}

#[test]
fn plain_http_on_the_tls_port_gets_a_400_and_a_close() {
    let pki = Pki::new("plain");
    let cert = pki.server("localhost", &["localhost"]);
    let server = start_tls(common::server(), tls_config(&cert), describe);
    let addr = server.addr();
    let mut stream = common::connect(addr);
    stream
        .write_all(b"GET / HTTP/1.1\r\nhost: localhost\r\n\r\n")
        .unwrap();
    let started = Instant::now();
    let got = common::read_until_closed(&mut stream).unwrap();
    assert!(started.elapsed() < Duration::from_secs(3));
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{text}");
    // The whole body, exactly as long as its content-length says.
    let (head, body) = text.split_once("\r\n\r\n").expect("a complete response");
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length: "))
        .and_then(|v| v.parse().ok())
        .expect("a content-length");
    assert_eq!(body.len(), length, "{text}");
    assert!(body.contains("HTTPS"), "{text}");
}

#[test]
fn garbage_instead_of_a_client_hello_closes_the_connection() {
    let pki = Pki::new("garbage");
    let cert = pki.server("localhost", &["localhost"]);
    let server = start_tls(common::server(), tls_config(&cert), describe);
    let addr = server.addr();
    let mut stream = common::connect(addr);
    stream
        .write_all(&[0x16, 0x03, 0x01, 0x00, 0x05, 1, 2, 3, 4, 5])
        .unwrap();
    let started = Instant::now();
    let got = common::read_until_closed(&mut stream).unwrap();
    assert!(started.elapsed() < Duration::from_secs(3));
    // At most an alert record.
    assert!(got.len() <= 7, "{got:?}");
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn bad_certificate_files_give_errors_that_name_the_file_and_the_problem() {
    let pki = Pki::new("badfiles");
    let good = pki.server("good", &["localhost"]);
    let other = pki.server("other", &["localhost"]);
    let missing = pki.dir.join("missing.pem");
    let empty = write(&pki.dir, "empty.pem", "");
    let not_pem = write(&pki.dir, "notpem.pem", "hello, I am not a certificate\n");

    let cases: Vec<(PathBuf, PathBuf, io::ErrorKind, Vec<String>)> = vec![
        (
            missing.clone(),
            good.key.clone(),
            io::ErrorKind::NotFound,
            vec![missing.display().to_string(), "certificate chain".into()],
        ),
        (
            good.cert.clone(),
            missing.clone(),
            io::ErrorKind::NotFound,
            vec![missing.display().to_string(), "private key".into()],
        ),
        (
            empty.clone(),
            good.key.clone(),
            io::ErrorKind::InvalidInput,
            vec![empty.display().to_string(), "no certificate".into()],
        ),
        (
            not_pem.clone(),
            good.key.clone(),
            io::ErrorKind::InvalidInput,
            vec![not_pem.display().to_string(), "no certificate".into()],
        ),
        (
            good.cert.clone(),
            good.cert.clone(),
            io::ErrorKind::InvalidInput,
            vec![good.cert.display().to_string(), "no private key".into()],
        ),
        (
            good.cert.clone(),
            other.key.clone(),
            io::ErrorKind::InvalidInput,
            vec![other.key.display().to_string(), "does not belong".into()],
        ),
    ];
    for (cert, key, kind, words) in cases {
        let err = TlsConfig::from_pem_files(&cert, &key).unwrap_err();
        assert_eq!(err.kind(), kind, "{err}");
        let message = err.to_string();
        for word in words {
            assert!(message.contains(&word), "{message:?} lacks {word:?}");
        }
    }
    assert!(TlsConfig::from_pem_files(&good.cert, &good.key).is_ok());
    let from_memory = TlsConfig::from_pem(
        &std::fs::read(&good.cert).unwrap(),
        &std::fs::read(&good.key).unwrap(),
    );
    assert!(from_memory.is_ok());
}

#[test]
fn tls_works_over_a_unix_socket() {
    need_curl!();
    let pki = Pki::new("unix");
    let cert = pki.server("localhost", &["localhost"]);
    let path = pki.dir.join("https.sock");
    let server = Server::try_bind_unix(&path).expect("bind the Unix socket");
    let server = server.tls(tls_config(&cert));
    // `TestServer` serves TCP only: this one gets a thread of its own.
    let handle = server.handle();
    let serving = thread::spawn(move || {
        server.serve(|request: Request, info: ConnectionInfo| {
            let mut described = String::new();
            describe(request, info.clone())
                .into_body()
                .reader()
                .read_to_string(&mut described)
                .unwrap();
            let text = format!(
                "unix={} credentials={} {described}",
                info.is_unix_socket(),
                info.peer_credentials().is_some(),
            );
            Response::new(Body::new(text))
        })
    });
    let ca = pki.ca_pem();
    let out = curl_ok(&[
        "--http1.1",
        "--unix-socket",
        path.to_str().unwrap(),
        "--cacert",
        ca.to_str().unwrap(),
        "https://localhost/",
    ]);
    assert!(
        out.starts_with("unix=true credentials=true version=Some(TLSv1_3) sni=localhost"),
        "{out}"
    );
    handle.shutdown();
    common::join_within(serving, Duration::from_secs(10), "serve")
        .expect("serve returns Ok after a graceful shutdown");
}

/// A polite TLS close after the last response: close_notify, then FIN. The
/// connection ended as the client meant it to, and counts as `Done`, not
/// `ClientGone`.
#[test]
fn a_close_notify_after_the_last_response_counts_as_done() {
    let pki = Pki::new("close-notify");
    let issued = pki.server("server", &["localhost"]);
    let server = common::start(common::server().tls(tls_config(&issued)), describe);
    let (addr, handle) = (server.addr(), server.handle());
    let name = ServerName::try_from("localhost").unwrap();
    let mut client = TlsClient::connect(addr, pki.client_config(), name).unwrap();
    assert!(client.get("/").unwrap().starts_with("version="));
    client.tls.conn.send_close_notify();
    while client.tls.conn.wants_write() {
        client.tls.conn.write_tls(&mut client.tls.sock).unwrap();
    }
    client.tls.sock.shutdown(std::net::Shutdown::Write).unwrap();
    let stats = common::wait_for_stats(handle, "the connection is counted closed", |stats| {
        stats.closed.iter().map(|(_, n)| n).sum::<u64>() == 1
    });
    assert_eq!(stats.closed_for(astra::CloseReason::Done), 1, "{stats:?}");
}
