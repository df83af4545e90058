//! [`TlsConfig`] and what it becomes: certificates loaded from PEM, the
//! crypto provider, the ALPN protocols offered, and the [`TlsSlot`] a
//! reload replaces.

use std::fmt;
use std::io;
use std::path::Path;
use std::sync::{Arc, Mutex};

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert, ResolvesServerCertUsingSni};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;

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
