//! What a server listens on (a TCP or a Unix stream socket), binding a Unix
//! socket path, and accepting on the accept loop's poller.

use std::fs;
use std::io;
use std::net::{SocketAddr, TcpListener};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};

use crate::io::stream::Stream;

/// A bound, listening socket, before `serve` starts.
#[derive(Debug)]
pub(crate) enum Listener {
    Tcp(TcpListener),
    Unix {
        listener: UnixListener,
        /// The socket file `Server::bind_unix` created, removed when the
        /// listener closes; `None` for a listener bound elsewhere.
        file: Option<SocketFile>,
    },
}

impl Listener {
    /// Binds a Unix socket at `path`, replacing a stale socket file (one that
    /// no process listens on) but nothing else.
    pub(crate) fn bind_unix(path: &Path) -> io::Result<Listener> {
        let listener = match UnixListener::bind(path) {
            Ok(listener) => listener,
            Err(err) if err.kind() == io::ErrorKind::AddrInUse => {
                remove_stale_socket(path, err)?;
                UnixListener::bind(path).map_err(|err| with_path(err, path))?
            }
            Err(err) => return Err(with_path(err, path)),
        };
        let file = SocketFile::new(path).map_err(|err| with_path(err, path))?;
        Ok(Listener::Unix {
            listener,
            file: Some(file),
        })
    }

    pub(crate) fn local_addr(&self) -> io::Result<SocketAddr> {
        match self {
            Listener::Tcp(listener) => listener.local_addr(),
            Listener::Unix { .. } => Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "astra: this server listens on a Unix socket, which has no IP address \
                 (see Server::local_unix_path)",
            )),
        }
    }

    pub(crate) fn local_unix_path(&self) -> Option<PathBuf> {
        match self {
            Listener::Tcp(_) => None,
            Listener::Unix { listener, .. } => listener
                .local_addr()
                .ok()?
                .as_pathname()
                .map(Path::to_owned),
        }
    }

    /// Makes the socket non-blocking, for the accept loop's poller.
    pub(crate) fn into_accepting(self) -> io::Result<Accepting> {
        Ok(match self {
            Listener::Tcp(listener) => {
                listener.set_nonblocking(true)?;
                Accepting {
                    socket: AcceptingSocket::Tcp(mio::net::TcpListener::from_std(listener)),
                    _file: None,
                }
            }
            Listener::Unix { listener, file } => {
                listener.set_nonblocking(true)?;
                Accepting {
                    socket: AcceptingSocket::Unix(mio::net::UnixListener::from_std(listener)),
                    _file: file,
                }
            }
        })
    }
}

/// Decides what to do about a path that `bind(2)` found taken: a socket file
/// nobody listens on (left by a run that crashed) is removed; a live socket, or
/// anything that is not a socket, is an error and is left as it is.
fn remove_stale_socket(path: &Path, bind_error: io::Error) -> io::Result<()> {
    let metadata = match fs::symlink_metadata(path) {
        Ok(metadata) => metadata,
        // Gone since: let the second bind say what is wrong, if anything.
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(_) => return Err(with_path(bind_error, path)),
    };
    if !metadata.file_type().is_socket() {
        return Err(io::Error::new(
            io::ErrorKind::AddrInUse,
            format!(
                "{} exists and is not a socket; astra leaves it alone",
                path.display()
            ),
        ));
    }
    // Non-blocking, so a listener with a full backlog cannot stall us: it
    // answers EAGAIN, which counts as alive.
    match mio::net::UnixStream::connect(path) {
        Ok(_) => Err(io::Error::new(
            io::ErrorKind::AddrInUse,
            format!("another server is listening on {}", path.display()),
        )),
        Err(err) if err.kind() == io::ErrorKind::ConnectionRefused => {
            log::info!("removing the stale socket file {}", path.display());
            match fs::remove_file(path) {
                Err(err) if err.kind() != io::ErrorKind::NotFound => Err(with_path(err, path)),
                _ => Ok(()),
            }
        }
        Err(err) if err.kind() == io::ErrorKind::WouldBlock => Err(io::Error::new(
            io::ErrorKind::AddrInUse,
            format!(
                "another server is listening on {} (its backlog is full)",
                path.display()
            ),
        )),
        Err(err) => Err(io::Error::new(
            io::ErrorKind::AddrInUse,
            format!(
                "{} is in use, and connecting to it to see whether it is stale failed: {err}",
                path.display()
            ),
        )),
    }
}

fn with_path(err: io::Error, path: &Path) -> io::Error {
    io::Error::new(err.kind(), format!("{}: {err}", path.display()))
}

/// A socket file this server created; dropping it removes the file if the path
/// still names that same file (not one a newer server has bound since).
#[derive(Debug)]
pub(crate) struct SocketFile {
    path: PathBuf,
    dev: u64,
    ino: u64,
}

impl SocketFile {
    fn new(path: &Path) -> io::Result<SocketFile> {
        let metadata = fs::symlink_metadata(path)?;
        Ok(SocketFile {
            path: path.to_owned(),
            dev: metadata.dev(),
            ino: metadata.ino(),
        })
    }
}

impl Drop for SocketFile {
    fn drop(&mut self) {
        let Ok(metadata) = fs::symlink_metadata(&self.path) else {
            return;
        };
        if metadata.dev() == self.dev && metadata.ino() == self.ino {
            if let Err(err) = fs::remove_file(&self.path) {
                log::debug!(
                    "could not remove the socket file {}: {err}",
                    self.path.display()
                );
            }
        }
    }
}

/// The listening socket as the accept loop polls it.
pub(crate) struct Accepting {
    /// Declared before `_file`: the socket closes before its file is removed.
    socket: AcceptingSocket,
    _file: Option<SocketFile>,
}

enum AcceptingSocket {
    Tcp(mio::net::TcpListener),
    Unix(mio::net::UnixListener),
}

impl Accepting {
    /// Accepts one connection, with the client's address for TCP.
    pub(crate) fn accept(&self) -> io::Result<(Stream, Option<SocketAddr>)> {
        match &self.socket {
            AcceptingSocket::Tcp(listener) => {
                let (stream, peer) = listener.accept()?;
                Ok((Stream::Tcp(stream), Some(peer)))
            }
            AcceptingSocket::Unix(listener) => {
                let (stream, _) = listener.accept()?;
                Ok((Stream::Unix(stream), None))
            }
        }
    }
}

impl AsRawFd for Accepting {
    fn as_raw_fd(&self) -> RawFd {
        match &self.socket {
            AcceptingSocket::Tcp(listener) => listener.as_raw_fd(),
            AcceptingSocket::Unix(listener) => listener.as_raw_fd(),
        }
    }
}
