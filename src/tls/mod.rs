//! TLS (feature `tls`): certificates, the handshake and the encrypted stream.
//!
//! rustls is sans-IO: it turns bytes into bytes. [`TlsStream`] feeds it from
//! a connection's socket through hyper's `Read`/`Write` traits, so the
//! handshake and every record run inside the connection's task, woken by the
//! reactor like any other read or write: no thread waits on a slow client.
//! Nothing here loops on rustls's "wants read/write" alone (the shape of
//! RUSTSEC-2024-0336): every loop either makes progress on the socket or
//! returns `Pending` or an error.

use std::fmt;
use std::io::{self, BufRead, Read, Write};
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};

use hyper::rt::ReadBufCursor;

use crate::io::sync_io::SyncIo;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert, ResolvesServerCertUsingSni};
use rustls::sign::CertifiedKey;
use rustls::{ServerConfig, ServerConnection};

/// The certificates (or the whole rustls configuration) a server presents.
///
/// Give it to [`Server::tls`](crate::Server::tls); replace it on a running
/// server with [`ServerHandle::reload_tls`](crate::ServerHandle::reload_tls).
///
/// ```no_run
/// use astra::{Body, Response, Server, TlsConfig};
///
/// // openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 365 \
/// //     -subj /CN=localhost -addext subjectAltName=DNS:localhost -keyout key.pem -out cert.pem
/// let tls = TlsConfig::from_pem_files("cert.pem", "key.pem")?;
/// Server::bind("0.0.0.0:8443")
///     .tls(tls)
///     .serve(|_request, _info| Response::new(Body::new("Hello over TLS")))?;
/// # Ok::<(), std::io::Error>(())
/// ```
///
/// Built from PEM files, it offers TLS 1.3 and 1.2 with rustls's safe defaults
/// and ALPN `h2` (with the `http2` feature) and `http/1.1`. Its crypto
/// provider is the process default when the application installed one
/// ([`rustls::crypto::CryptoProvider::install_default`], as rustls asks
/// libraries to honour: install aws-lc-rs's there for its post-quantum key
/// exchange), else `ring`, the provider feature `tls` builds (it has no
/// post-quantum key exchange). For anything else (client certificates, other versions or
/// providers, a certificate resolver of your own) build a
/// [`rustls::ServerConfig`] and convert it with `From`; ALPN is added when it
/// sets none.
pub struct TlsConfig {
    source: Source,
}

enum Source {
    Certificates(Certificates),
    Custom(Arc<ServerConfig>),
}

impl fmt::Debug for TlsConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.source {
            Source::Certificates(certs) => f
                .debug_struct("TlsConfig")
                .field("server_names", &certs.names)
                .finish_non_exhaustive(),
            Source::Custom(_) => f.debug_struct("TlsConfig").field("custom", &true).finish(),
        }
    }
}

impl TlsConfig {
    /// Loads a certificate chain (the server's certificate first, then its
    /// intermediates) and its private key (PKCS#8, PKCS#1 or SEC1), both PEM.
    ///
    /// This certificate is the one every client gets, unless
    /// [`with_server_name`](TlsConfig::with_server_name) adds one for the name
    /// the client asks for (SNI).
    ///
    /// # Errors
    ///
    /// Each names the file: it cannot be read, holds no certificate or no
    /// private key, is not valid PEM, or the key does not belong to the
    /// certificate.
    pub fn from_pem_files(
        cert_chain: impl AsRef<Path>,
        private_key: impl AsRef<Path>,
    ) -> io::Result<TlsConfig> {
        let key = load_files(cert_chain.as_ref(), private_key.as_ref())?;
        Ok(TlsConfig {
            source: Source::Certificates(Certificates {
                default: Some(Arc::new(key)),
                by_name: ResolvesServerCertUsingSni::new(),
                names: Vec::new(),
            }),
        })
    }

    /// Like [`from_pem_files`](TlsConfig::from_pem_files), from PEM text in
    /// memory.
    ///
    /// # Errors
    ///
    /// As `from_pem_files`, naming the argument instead of a file.
    pub fn from_pem(cert_chain: &[u8], private_key: &[u8]) -> io::Result<TlsConfig> {
        let chain = parse_chain(cert_chain, "the certificate chain PEM")?;
        let key = parse_key(private_key, "the private key PEM")?;
        let key = certified_key(
            chain,
            key,
            "the private key PEM",
            "the certificate chain PEM",
        )?;
        Ok(TlsConfig {
            source: Source::Certificates(Certificates {
                default: Some(Arc::new(key)),
                by_name: ResolvesServerCertUsingSni::new(),
                names: Vec::new(),
            }),
        })
    }

    /// Adds a certificate for clients that ask for `server_name` (SNI), loaded
    /// as in [`from_pem_files`](TlsConfig::from_pem_files). Clients that ask
    /// for a name with no certificate of its own, or for none, get the first
    /// one. Names match exactly, ignoring ASCII case.
    ///
    /// ```no_run
    /// use astra::{Body, Response, Server, TlsConfig};
    ///
    /// let tls = TlsConfig::from_pem_files("example.com.pem", "example.com.key")?
    ///     .with_server_name("api.example.com", "api.pem", "api.key")?
    ///     .with_server_name("static.example.com", "static.pem", "static.key")?;
    /// Server::bind("0.0.0.0:443")
    ///     .tls(tls)
    ///     .serve(|_request, _info| Response::new(Body::new("hello")))?;
    /// # Ok::<(), std::io::Error>(())
    /// ```
    ///
    /// # Errors
    ///
    /// As `from_pem_files`; also when `server_name` is not a DNS name, when
    /// the certificate is not valid for it, and on a configuration made from
    /// a [`rustls::ServerConfig`] (its resolver is its own).
    pub fn with_server_name(
        mut self,
        server_name: &str,
        cert_chain: impl AsRef<Path>,
        private_key: impl AsRef<Path>,
    ) -> io::Result<TlsConfig> {
        let Source::Certificates(certs) = &mut self.source else {
            return Err(invalid(
                "with_server_name needs a TlsConfig made from PEM; a rustls::ServerConfig \
                 chooses its certificates with its own resolver",
            ));
        };
        let (chain, key) = (cert_chain.as_ref(), private_key.as_ref());
        let certified = load_files(chain, key)?;
        certs.by_name.add(server_name, certified).map_err(|err| {
            invalid(format!(
                "the certificate in {} cannot serve {server_name:?}: {err}",
                chain.display()
            ))
        })?;
        certs.names.push(server_name.to_ascii_lowercase());
        Ok(self)
    }

    /// The rustls configuration as given (ALPN not yet added).
    fn into_base(self) -> Arc<ServerConfig> {
        match self.source {
            Source::Certificates(certs) => {
                let config = ServerConfig::builder_with_provider(crypto_provider())
                    .with_safe_default_protocol_versions()
                    // ring has both; a process default without either is
                    // the application's mistake, named here.
                    .expect("the process-default rustls CryptoProvider supports TLS 1.3 or 1.2")
                    .with_no_client_auth()
                    .with_cert_resolver(Arc::new(certs));
                Arc::new(config)
            }
            Source::Custom(config) => config,
        }
    }
}

/// `base` with `alpn` offered, unless it sets ALPN protocols of its own.
fn with_alpn(base: &Arc<ServerConfig>, alpn: &[&[u8]]) -> Arc<ServerConfig> {
    if !base.alpn_protocols.is_empty() {
        return base.clone();
    }
    let mut config = (**base).clone();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(config)
}

impl From<Arc<ServerConfig>> for TlsConfig {
    /// Full control: client certificates (mTLS), a certificate resolver of
    /// your own, other protocol versions or crypto providers. If the
    /// configuration sets no ALPN protocols, the server sets its own (`h2`
    /// with the `http2` feature, and `http/1.1`); if it sets some, they are
    /// used as they are.
    fn from(config: Arc<ServerConfig>) -> TlsConfig {
        TlsConfig {
            source: Source::Custom(config),
        }
    }
}

impl From<ServerConfig> for TlsConfig {
    /// As `From<Arc<ServerConfig>>`.
    fn from(config: ServerConfig) -> TlsConfig {
        TlsConfig::from(Arc::new(config))
    }
}

/// A default certificate and certificates by server name.
struct Certificates {
    default: Option<Arc<CertifiedKey>>,
    by_name: ResolvesServerCertUsingSni,
    /// For `Debug`.
    names: Vec<String>,
}

impl fmt::Debug for Certificates {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Certificates")
            .field("server_names", &self.names)
            .finish_non_exhaustive()
    }
}

impl ResolvesServerCert for Certificates {
    fn resolve(&self, client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        if client_hello.server_name().is_some() {
            // Names without a certificate of their own fall through to the default.
            if let Some(key) = self.by_name.resolve(client_hello) {
                return Some(key);
            }
        }
        self.default.clone()
    }
}

/// The crypto provider for configurations built from PEM: the process
/// default when the application installed one (rustls asks libraries to use
/// it), else ring's.
fn crypto_provider() -> Arc<CryptoProvider> {
    if let Some(installed) = CryptoProvider::get_default() {
        return installed.clone();
    }
    // Not `ServerConfig::builder()`, which installs a default from rustls's
    // features: it panics when another crate in the build also turns on
    // rustls's aws-lc-rs. rustls 0.23.48 deprecates ring's constructor because
    // ring has no post-quantum key exchange; ring stays our provider (no
    // aws-lc-rs dependency), and an application that wants the post-quantum
    // exchange installs aws-lc-rs as the process default above.
    #[allow(deprecated)]
    let ring = rustls::crypto::ring::default_provider();
    Arc::new(ring)
}

fn invalid(message: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, message.into())
}

fn load_files(chain_path: &Path, key_path: &Path) -> io::Result<CertifiedKey> {
    let read = |path: &Path, what: &str| {
        std::fs::read(path).map_err(|err| {
            io::Error::new(
                err.kind(),
                format!("cannot read the TLS {what} {}: {err}", path.display()),
            )
        })
    };
    let chain_name = format!("certificate chain {}", chain_path.display());
    let key_name = format!("private key {}", key_path.display());
    let chain = parse_chain(&read(chain_path, "certificate chain")?, &chain_name)?;
    let key = parse_key(&read(key_path, "private key")?, &key_name)?;
    certified_key(chain, key, &key_name, &chain_name)
}

fn parse_chain(pem: &[u8], name: &str) -> io::Result<Vec<CertificateDer<'static>>> {
    let chain = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|err| invalid(format!("{name} is not valid PEM: {err}")))?;
    if chain.is_empty() {
        return Err(invalid(format!(
            "{name} holds no certificate (no \"BEGIN CERTIFICATE\" section)"
        )));
    }
    Ok(chain)
}

fn parse_key(pem: &[u8], name: &str) -> io::Result<PrivateKeyDer<'static>> {
    PrivateKeyDer::from_pem_slice(pem).map_err(|err| match err {
        rustls::pki_types::pem::Error::NoItemsFound => invalid(format!(
            "{name} holds no private key (no PKCS#8, PKCS#1 or SEC1 \"PRIVATE KEY\" section)"
        )),
        err => invalid(format!("{name} is not valid PEM: {err}")),
    })
}

fn certified_key(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    key_name: &str,
    chain_name: &str,
) -> io::Result<CertifiedKey> {
    match CertifiedKey::from_der(chain, key, &crypto_provider()) {
        Ok(key) => Ok(key),
        Err(rustls::Error::InconsistentKeys(_)) => Err(invalid(format!(
            "the {key_name} does not belong to the first certificate of the {chain_name}"
        ))),
        Err(err) => Err(invalid(format!("the {key_name} cannot be used: {err}"))),
    }
}

/// The configuration new connections get; replaced by
/// [`ServerHandle::reload_tls`](crate::ServerHandle::reload_tls).
#[derive(Default)]
pub(crate) struct TlsSlot {
    state: Mutex<SlotState>,
}

#[derive(Default)]
struct SlotState {
    /// The configuration as the user gave it, and as new connections get it.
    base: Option<Arc<ServerConfig>>,
    current: Option<Arc<ServerConfig>>,
    /// The ALPN protocols this server offers; set when it starts serving.
    alpn: Option<Vec<&'static [u8]>>,
}

impl TlsSlot {
    fn lock(&self) -> std::sync::MutexGuard<'_, SlotState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Installs `config` for the connections accepted from now on.
    pub(crate) fn set(&self, config: TlsConfig) {
        let base = config.into_base();
        let mut state = self.lock();
        let alpn = state.alpn.clone().unwrap_or_else(|| default_alpn(true));
        state.current = Some(with_alpn(&base, &alpn));
        state.base = Some(base);
    }

    pub(crate) fn is_set(&self) -> bool {
        self.lock().current.is_some()
    }

    /// Fixes the ALPN protocols (from the server's protocol settings) and
    /// applies them to the configuration already set.
    pub(crate) fn start(&self, alpn: Vec<&'static [u8]>) {
        let mut state = self.lock();
        state.current = state.base.as_ref().map(|base| with_alpn(base, &alpn));
        state.alpn = Some(alpn);
    }

    pub(crate) fn current(&self) -> Option<Arc<ServerConfig>> {
        self.lock().current.clone()
    }
}

/// The ALPN protocols to offer, most preferred first.
pub(crate) fn default_alpn(http2: bool) -> Vec<&'static [u8]> {
    let mut alpn: Vec<&'static [u8]> = Vec::new();
    if http2 && cfg!(feature = "http2") {
        alpn.push(b"h2");
    }
    alpn.push(b"http/1.1");
    alpn
}

/// What a handler can know about its connection's TLS session; see
/// [`ConnectionInfo::tls`](crate::ConnectionInfo::tls).
#[derive(Clone, Debug)]
pub struct TlsInfo {
    server_name: Option<String>,
    alpn_protocol: Option<Vec<u8>>,
    protocol_version: Option<rustls::ProtocolVersion>,
    cipher_suite: Option<rustls::CipherSuite>,
    peer_certificates: Option<Vec<CertificateDer<'static>>>,
}

impl TlsInfo {
    fn of(conn: &ServerConnection) -> TlsInfo {
        TlsInfo {
            server_name: conn.server_name().map(str::to_owned),
            alpn_protocol: conn.alpn_protocol().map(<[u8]>::to_vec),
            protocol_version: conn.protocol_version(),
            cipher_suite: conn.negotiated_cipher_suite().map(|s| s.suite()),
            peer_certificates: conn.peer_certificates().map(<[_]>::to_vec),
        }
    }

    /// Facts of a TLS session for a
    /// [`TestRequest`](crate::test::TestRequest::tls): TLS 1.3 with
    /// `TLS13_AES_128_GCM_SHA256`, no server name, no ALPN protocol and no
    /// client certificate; the `with_` methods change each.
    ///
    /// ```
    /// use astra::rustls::pki_types::CertificateDer;
    /// use astra::test::TestRequest;
    /// use astra::{Body, ConnectionInfo, Request, Response, TlsInfo};
    ///
    /// fn whoami(_request: Request, info: ConnectionInfo) -> Response {
    ///     let client_certificate = info.tls().and_then(|tls| tls.peer_certificates()).is_some();
    ///     Response::new(Body::new(if client_certificate { "known" } else { "anonymous" }))
    /// }
    ///
    /// let tls = TlsInfo::new()
    ///     .with_server_name("api.example.com")
    ///     .with_peer_certificates(vec![CertificateDer::from(vec![0x30, 0x00])]);
    /// let response = TestRequest::get("/").tls(tls).call(&whoami);
    /// assert_eq!(response.text()?, "known");
    /// # Ok::<(), std::io::Error>(())
    /// ```
    #[allow(clippy::new_without_default)]
    pub fn new() -> TlsInfo {
        TlsInfo {
            server_name: None,
            alpn_protocol: None,
            protocol_version: Some(rustls::ProtocolVersion::TLSv1_3),
            cipher_suite: Some(rustls::CipherSuite::TLS13_AES_128_GCM_SHA256),
            peer_certificates: None,
        }
    }

    /// Sets the server name (SNI) the client asked for.
    pub fn with_server_name(mut self, name: impl Into<String>) -> TlsInfo {
        self.server_name = Some(name.into());
        self
    }

    /// Sets the protocol ALPN agreed on (`b"h2"`, `b"http/1.1"`).
    pub fn with_alpn_protocol(mut self, protocol: impl Into<Vec<u8>>) -> TlsInfo {
        self.alpn_protocol = Some(protocol.into());
        self
    }

    /// Sets the TLS version.
    pub fn with_protocol_version(mut self, version: rustls::ProtocolVersion) -> TlsInfo {
        self.protocol_version = Some(version);
        self
    }

    /// Sets the cipher suite.
    pub fn with_cipher_suite(mut self, suite: rustls::CipherSuite) -> TlsInfo {
        self.cipher_suite = Some(suite);
        self
    }

    /// Sets the certificate chain the client presented, its own first (as
    /// after a verified mTLS handshake; nothing checks it here).
    pub fn with_peer_certificates(mut self, chain: Vec<CertificateDer<'static>>) -> TlsInfo {
        self.peer_certificates = Some(chain);
        self
    }

    /// The server name the client asked for (SNI), if it sent one.
    pub fn server_name(&self) -> Option<&str> {
        self.server_name.as_deref()
    }

    /// The protocol agreed by ALPN (`b"h2"`, `b"http/1.1"`), if any.
    pub fn alpn_protocol(&self) -> Option<&[u8]> {
        self.alpn_protocol.as_deref()
    }

    /// The TLS version in use (`TLSv1_3`, `TLSv1_2`).
    pub fn protocol_version(&self) -> Option<rustls::ProtocolVersion> {
        self.protocol_version
    }

    /// The cipher suite in use.
    pub fn cipher_suite(&self) -> Option<rustls::CipherSuite> {
        self.cipher_suite
    }

    /// The certificate chain the client presented, its own certificate
    /// first: only with a configuration that asks for client certificates
    /// (mTLS), built as a [`rustls::ServerConfig`]. rustls has verified it
    /// against that configuration's roots before the handler runs.
    pub fn peer_certificates(&self) -> Option<&[CertificateDer<'static>]> {
        self.peer_certificates.as_deref()
    }
}

/// The answer to a plain-HTTP request on a TLS port, as Go's server gives it.
const PLAIN_HTTP_RESPONSE: &[u8] = b"HTTP/1.1 400 Bad Request\r\ncontent-type: text/plain\r\n\
connection: close\r\ncontent-length: 51\r\n\r\nThis port speaks HTTPS: the request was plain HTTP\n";

/// A TLS session over a connection, as hyper's `Read` and `Write`.
pub(crate) struct TlsStream<T> {
    io: T,
    session: ServerConnection,
    /// The client's close_notify or the socket's end was seen: reads end.
    read_closed: bool,
    close_notify_sent: bool,
    /// The bytes `first_flight` fed rustls have been processed.
    first_flight_processed: bool,
}

impl<T> TlsStream<T>
where
    T: hyper::rt::Read + hyper::rt::Write + Unpin,
{
    /// Runs the server side of the handshake over `io`.
    pub(crate) async fn accept(io: T, config: Arc<ServerConfig>) -> io::Result<TlsStream<T>> {
        let session = ServerConnection::new(config).map_err(io::Error::other)?;
        let mut stream = TlsStream {
            io,
            session,
            read_closed: false,
            close_notify_sent: false,
            first_flight_processed: false,
        };
        stream.first_flight().await?;
        std::future::poll_fn(|cx| stream.poll_handshake(cx)).await?;
        Ok(stream)
    }

    /// Reads the client's first bytes: a plain-HTTP request gets a 400 that
    /// says why (instead of a TLS alert its client cannot read), anything
    /// else goes to rustls.
    async fn first_flight(&mut self) -> io::Result<()> {
        let mut head = [0u8; 1024];
        let n = std::future::poll_fn(|cx| {
            let mut io = SyncIo {
                io: &mut self.io,
                cx,
            };
            match io.read(&mut head) {
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => Poll::Pending,
                result => Poll::Ready(result),
            }
        })
        .await?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the client closed the connection before its TLS handshake",
            ));
        }
        // A TLS record starts with its content type (22: handshake); an
        // HTTP request with a method in capital letters.
        if head[0].is_ascii_uppercase() {
            let mut sent = 0;
            std::future::poll_fn(|cx| {
                while sent < PLAIN_HTTP_RESPONSE.len() {
                    match ready!(Pin::new(&mut self.io).poll_write(cx, &PLAIN_HTTP_RESPONSE[sent..]))
                    {
                        Ok(0) => return Poll::Ready(()),
                        Ok(n) => sent += n,
                        Err(_) => return Poll::Ready(()),
                    }
                }
                let _ = ready!(Pin::new(&mut self.io).poll_shutdown(cx));
                Poll::Ready(())
            })
            .await;
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "a plain-HTTP request on the TLS port (answered 400)",
            ));
        }
        let mut rest = &head[..n];
        while !rest.is_empty() {
            self.session.read_tls(&mut rest)?;
        }
        Ok(())
    }

    fn poll_handshake(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if !self.first_flight_processed {
            self.first_flight_processed = true;
            self.process(cx)?;
        }
        loop {
            // Send what rustls has for the client first: it may be waiting
            // for our flight before it sends more.
            ready!(self.poll_flush_tls(cx))?;
            if !self.session.is_handshaking() {
                return Poll::Ready(Ok(()));
            }
            if self.read_closed {
                // The client closed (close_notify or end of stream) before the
                // handshake finished: no more bytes will come to finish it.
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the client closed the connection during the TLS handshake",
                )));
            }
            if !ready!(self.poll_read_tls(cx))? {
                continue;
            }
        }
    }

    /// Decrypts what was read; an error sends rustls's alert (best effort)
    /// and ends the session.
    fn process(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        match self.session.process_new_packets() {
            Ok(state) => {
                if state.peer_has_closed() {
                    self.read_closed = true;
                }
                Ok(())
            }
            Err(err) => {
                // rustls queued an alert that says why; if the socket cannot
                // take it now, the connection closes without it.
                let _ = self.poll_flush_tls(cx);
                Err(io::Error::new(io::ErrorKind::InvalidData, err))
            }
        }
    }

    /// Reads one batch of TLS records from the socket and decrypts it.
    /// Ready(true): the socket reached its end.
    fn poll_read_tls(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<bool>> {
        let mut io = SyncIo {
            io: &mut self.io,
            cx,
        };
        match self.session.read_tls(&mut io) {
            Ok(0) => {
                self.read_closed = true;
                Poll::Ready(Ok(true))
            }
            Ok(_) => {
                self.process(cx)?;
                Poll::Ready(Ok(false))
            }
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => Poll::Pending,
            Err(err) => Poll::Ready(Err(err)),
        }
    }

    /// Writes every TLS record rustls holds to the socket.
    fn poll_flush_tls(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.session.wants_write() {
            let mut io = SyncIo {
                io: &mut self.io,
                cx,
            };
            match self.session.write_tls(&mut io) {
                Ok(0) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Ok(_) => {}
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => return Poll::Pending,
                Err(err) => return Poll::Ready(Err(err)),
            }
        }
        Poll::Ready(Ok(()))
    }

    /// What a handler may know of this session.
    pub(crate) fn info(&self) -> TlsInfo {
        TlsInfo::of(&self.session)
    }

    /// Whether ALPN chose HTTP/2.
    pub(crate) fn is_h2(&self) -> bool {
        self.session.alpn_protocol() == Some(b"h2")
    }
}

impl<T> hyper::rt::Read for TlsStream<T>
where
    T: hyper::rt::Read + hyper::rt::Write + Unpin,
{
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        mut buf: ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        let this = Pin::into_inner(self);
        loop {
            match this.session.reader().fill_buf() {
                Ok(plain) if !plain.is_empty() => {
                    let n = plain.len().min(buf.remaining());
                    buf.put_slice(&plain[..n]);
                    this.session.reader().consume(n);
                    return Poll::Ready(Ok(()));
                }
                // Nothing decrypted, and the client said it is done: end of stream.
                Ok(_) => return Poll::Ready(Ok(())),
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => {}
                // The socket ended without close_notify: rustls reports a
                // truncation; hyper decides whether a message was cut short.
                Err(err) if err.kind() == io::ErrorKind::UnexpectedEof => {
                    return Poll::Ready(Ok(()));
                }
                Err(err) => return Poll::Ready(Err(err)),
            }
            if this.read_closed {
                return Poll::Ready(Ok(()));
            }
            // Answers rustls owes the client (a key update, an alert) go out
            // while we wait for more; a blocked write is retried later.
            if let Poll::Ready(Err(err)) = this.poll_flush_tls(cx) {
                return Poll::Ready(Err(err));
            }
            ready!(this.poll_read_tls(cx))?;
        }
    }
}

impl<T> hyper::rt::Write for TlsStream<T>
where
    T: hyper::rt::Read + hyper::rt::Write + Unpin,
{
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_write_vectored(cx, &[io::IoSlice::new(buf)])
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = Pin::into_inner(self);
        // Records rustls already holds go first: its buffer stays bounded
        // by what the socket takes.
        ready!(this.poll_flush_tls(cx))?;
        let n = this.session.writer().write_vectored(bufs)?;
        // Start sending at once; what does not fit now goes with the next
        // write or flush (the bytes are accepted either way).
        if let Poll::Ready(Err(err)) = this.poll_flush_tls(cx) {
            return Poll::Ready(Err(err));
        }
        Poll::Ready(Ok(n))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = Pin::into_inner(self);
        ready!(this.poll_flush_tls(cx))?;
        Pin::new(&mut this.io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = Pin::into_inner(self);
        if !this.close_notify_sent {
            this.session.send_close_notify();
            this.close_notify_sent = true;
        }
        ready!(this.poll_flush_tls(cx))?;
        Pin::new(&mut this.io).poll_shutdown(cx)
    }
}
