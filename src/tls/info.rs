//! [`TlsInfo`]: what a handler can know of its connection's TLS session.

use rustls::pki_types::CertificateDer;
use rustls::ServerConnection;

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
    pub(super) fn of(conn: &ServerConnection) -> TlsInfo {
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
