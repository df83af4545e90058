//! One connection's life: pick the protocol, then let hyper serve it.

use hyper::server::conn::http1;

use crate::net::TcpConn;
use crate::service::HyperService;

/// Which protocols a connection may speak.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Mode {
    /// HTTP/1, and HTTP/2 with prior knowledge when the `http2` feature is on,
    /// told apart by the first bytes the client sends.
    Auto,
    Http1Only,
    #[cfg(feature = "http2")]
    Http2Only,
}

/// The hyper builders every connection of one server is served with.
pub(crate) struct Protocols {
    pub(crate) mode: Mode,
    pub(crate) http1: http1::Builder,
    #[cfg(feature = "http2")]
    pub(crate) http2: hyper::server::conn::http2::Builder<crate::runtime::Executor>,
}

/// Serves one accepted connection until it closes.
pub(crate) async fn serve(conn: TcpConn, protocols: &Protocols, service: HyperService) {
    let peer = service.info.peer_addr;
    let result = match protocols.mode {
        Mode::Http1Only => serve_http1(protocols, conn, service).await,
        #[cfg(feature = "http2")]
        Mode::Http2Only => protocols.http2.serve_connection(conn, service).await,
        #[cfg(not(feature = "http2"))]
        Mode::Auto => serve_http1(protocols, conn, service).await,
        #[cfg(feature = "http2")]
        Mode::Auto => match crate::detect::detect_http2(conn).await {
            Ok((true, conn)) => protocols.http2.serve_connection(conn, service).await,
            Ok((false, conn)) => serve_http1(protocols, conn, service).await,
            Err(err) => {
                log::debug!("connection from {peer:?} closed before its first request: {err}");
                return;
            }
        },
    };
    if let Err(err) = result {
        // Clients that go away mid-request are routine; not worth a warning.
        log::debug!("connection from {peer:?} ended with an error: {err}");
    }
}

async fn serve_http1<I>(protocols: &Protocols, io: I, service: HyperService) -> hyper::Result<()>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    protocols
        .http1
        .serve_connection(io, service)
        .with_upgrades()
        .await
}
