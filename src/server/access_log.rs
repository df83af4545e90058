//! The access log: one line per request through `log`, at `info` level
//! with the target `astra::access` (`Server::access_log`).

use std::net::SocketAddr;

use http::{Method, StatusCode, Uri};

/// What the access log says of one request, filled in as it goes.
pub(crate) struct AccessRecord {
    pub(crate) peer: Option<SocketAddr>,
    pub(crate) method: Method,
    pub(crate) uri: Uri,
    pub(crate) version: http::Version,
    pub(crate) started: std::time::Instant,
    pub(crate) status: StatusCode,
    /// Response body bytes handed to hyper.
    pub(crate) bytes: u64,
}

/// The `log` target of access log lines.
pub(crate) const ACCESS_LOG_TARGET: &str = "astra::access";

impl Drop for AccessRecord {
    /// Logged when the response has been handed over in full, or dropped
    /// (the client went away): the duration covers the whole response.
    fn drop(&mut self) {
        let peer = crate::server::connection::Peer(self.peer);
        log::info!(
            target: ACCESS_LOG_TARGET,
            "{peer} \"{} {} {:?}\" {} {} {:.3}ms",
            self.method,
            self.uri,
            self.version,
            self.status.as_u16(),
            self.bytes,
            self.started.elapsed().as_secs_f64() * 1000.0,
        );
    }
}
