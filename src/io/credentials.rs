//! Who is at the other end of a Unix domain socket (`SO_PEERCRED`).

use std::io;
#[cfg(any(target_os = "linux", target_os = "android"))]
use std::os::fd::AsRawFd;

/// The process at the other end of a Unix domain socket, from
/// [`ConnectionInfo::peer_credentials`](crate::ConnectionInfo::peer_credentials).
///
/// The kernel records these when the client calls `connect(2)`: they describe
/// who connected, even if that process has since changed its user or passed
/// the socket on. They cannot be forged by the client, so a handler may use
/// them to authorize, as PostgreSQL's `peer` authentication does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PeerCredentials {
    pub(crate) pid: Option<u32>,
    pub(crate) uid: u32,
    pub(crate) gid: u32,
}

impl PeerCredentials {
    /// The client's process id, as this process sees it. `None` if the client
    /// runs in a PID namespace invisible from ours (a container), where the
    /// kernel reports no pid.
    pub fn pid(&self) -> Option<u32> {
        self.pid
    }

    /// The client's effective user id, mapped into our user namespace.
    pub fn uid(&self) -> u32 {
        self.uid
    }

    /// The client's effective group id, mapped into our user namespace.
    pub fn gid(&self) -> u32 {
        self.gid
    }
}

/// The credentials of a Unix socket's peer (`SO_PEERCRED`).
#[cfg(any(target_os = "linux", target_os = "android"))]
pub(crate) fn peer_credentials(stream: &mio::net::UnixStream) -> io::Result<PeerCredentials> {
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let size = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    let mut len = size;
    // SAFETY: the descriptor is open for the call (`stream` owns it and is
    // borrowed); getsockopt(2) writes at most `len` bytes, the size of `cred`,
    // through a pointer to that live local, and its length to `len`, another.
    let rc = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast::<libc::c_void>(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    if len != size {
        return Err(io::Error::other(format!(
            "SO_PEERCRED returned {len} bytes, not {size}"
        )));
    }
    Ok(PeerCredentials {
        // 0: the peer's process is not visible from our PID namespace.
        pid: u32::try_from(cred.pid).ok().filter(|&pid| pid > 0),
        uid: cred.uid,
        gid: cred.gid,
    })
}

/// Other systems have no `SO_PEERCRED`.
#[cfg(not(any(target_os = "linux", target_os = "android")))]
pub(crate) fn peer_credentials(_stream: &mio::net::UnixStream) -> io::Result<PeerCredentials> {
    Err(io::ErrorKind::Unsupported.into())
}
