//! systemd socket activation: serving on listening sockets the service manager
//! passed to us (`LISTEN_FDS`, `LISTEN_PID`, `LISTEN_FDNAMES`; see
//! `sd_listen_fds(3)`).

use std::ffi::OsStr;
use std::io;
use std::net::TcpListener;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixListener;
use std::sync::atomic::{AtomicBool, Ordering};

use super::Server;

/// The first descriptor the service manager passes (`SD_LISTEN_FDS_START`).
const FIRST_FD: RawFd = 3;

/// Set once this process has adopted the passed descriptors, so that no second
/// call adopts them again (even if the variables were set again).
static ADOPTED: AtomicBool = AtomicBool::new(false);

/// Listening sockets passed by systemd (or another service manager speaking
/// its protocol) for socket activation.
///
/// [`ActivatedSockets::from_env`] reads the protocol's environment variables
/// once; [`take`](ActivatedSockets::take) or
/// [`take_named`](ActivatedSockets::take_named) then turns each socket, TCP or
/// Unix, into a [`Server`]. For a unit with a single socket,
/// [`Server::from_systemd`] does both.
///
/// ```no_run
/// use astra::{ActivatedSockets, Body, Response};
///
/// // astra.socket has ListenStream=80 with FileDescriptorName=web, and
/// // ListenStream=/run/astra/admin.sock with FileDescriptorName=admin.
/// let mut sockets = ActivatedSockets::from_env()?;
/// let web = sockets.take_named("web")?.expect("no socket named web");
/// let admin = sockets.take_named("admin")?.expect("no socket named admin");
/// std::thread::spawn(move || {
///     admin.serve(|_request, _info| Response::new(Body::new("admin")))
/// });
/// web.serve(|_request, _info| Response::new(Body::new("Hello, World!")))?;
/// # Ok::<(), std::io::Error>(())
/// ```
///
/// Sockets not taken are closed when this value is dropped.
#[derive(Debug)]
pub struct ActivatedSockets {
    sockets: Vec<Passed>,
}

/// One passed descriptor.
#[derive(Debug)]
struct Passed {
    /// Its number, for error messages once it is taken.
    fd: RawFd,
    /// `None` once taken.
    socket: Option<OwnedFd>,
    name: Option<String>,
}

/// What the protocol's variables say: how many descriptors, and their names.
#[derive(Debug, PartialEq, Eq)]
struct Listen {
    count: usize,
    names: Option<Vec<String>>,
}

impl ActivatedSockets {
    /// Takes the sockets the service manager passed to this process.
    ///
    /// Reads `LISTEN_FDS` (how many descriptors, from 3 on) and `LISTEN_PID`
    /// (they are ours only if it is this process's id; otherwise they were
    /// meant for a parent, and the set is empty), and `LISTEN_FDNAMES` (their
    /// names, separated by colons), then removes all three from the
    /// environment, so child processes do not see them, and marks the
    /// descriptors close-on-exec. Without `LISTEN_FDS` the set is empty.
    ///
    /// Call it early in `main`, before other threads start: it changes the
    /// environment. The sockets are taken at most once per process: a second
    /// call finds the variables gone and returns an empty set (or, if they
    /// were set again, an error). Do not combine it with another crate that
    /// takes the same descriptors without removing the variables.
    ///
    /// ```no_run
    /// use astra::ActivatedSockets;
    ///
    /// let sockets = ActivatedSockets::from_env()?;
    /// for index in 0..sockets.len() {
    ///     println!("socket {index}: {:?}", sockets.name(index));
    /// }
    /// # Ok::<(), std::io::Error>(())
    /// ```
    ///
    /// # Errors
    ///
    /// - `InvalidData`: `LISTEN_FDS` or `LISTEN_PID` is not a number, or
    ///   `LISTEN_FDNAMES` does not name as many sockets as `LISTEN_FDS` counts;
    /// - `InvalidInput`: a descriptor `LISTEN_FDS` counts is not open;
    /// - `AlreadyExists`: this process already took its passed sockets.
    ///
    /// The variables are removed in every case.
    pub fn from_env() -> io::Result<ActivatedSockets> {
        let [fds, pid, names] = ["LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES"].map(|var| {
            let value = std::env::var_os(var);
            if value.is_some() {
                // Racy only against threads that read the environment
                // without std's lock (C code calling getenv): hence "call it
                // early" in the docs. (Edition 2024 makes this `unsafe`.)
                std::env::remove_var(var);
            }
            value
        });
        let listen = parse(
            fds.as_deref(),
            pid.as_deref(),
            names.as_deref(),
            std::process::id(),
        )?;
        let Some(Listen { count, names }) = listen else {
            return Ok(ActivatedSockets {
                sockets: Vec::new(),
            });
        };
        if ADOPTED.swap(true, Ordering::SeqCst) {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                "astra: this process already took the sockets the service manager passed",
            ));
        }
        // `parse` bounds `count` so that every number fits.
        let numbers = (0..count).map(|i| FIRST_FD + i as RawFd);
        for fd in numbers.clone() {
            set_cloexec(fd)?;
        }
        let mut names = names.map(Vec::into_iter);
        let sockets = numbers
            .map(|fd| Passed {
                fd,
                // SAFETY: `OwnedFd::from_raw_fd` needs `fd` open and owned by
                // nothing else, since dropping the `OwnedFd` closes it.
                // - Open: `set_cloexec` just succeeded on it (fcntl(2) fails
                //   with EBADF on a closed descriptor).
                // - Ours: `LISTEN_PID` names this process, so the service
                //   manager passed these descriptors to us, not to a parent
                //   whose environment we inherited. By the protocol they
                //   belong to the code that reads these variables; neither std
                //   nor astra adopts a descriptor by its number.
                // - Once: `ADOPTED` was false and is now set, so no other
                //   call in this process adopts them, and the variables are
                //   gone, so code that follows the protocol after us
                //   (sd_listen_fds, listenfd) does not find them either.
                socket: Some(unsafe { OwnedFd::from_raw_fd(fd) }),
                name: names.as_mut().and_then(Iterator::next),
            })
            .collect();
        Ok(ActivatedSockets { sockets })
    }

    /// How many sockets were passed (taken ones included).
    pub fn len(&self) -> usize {
        self.sockets.len()
    }

    /// True if no socket was passed.
    pub fn is_empty(&self) -> bool {
        self.sockets.is_empty()
    }

    /// The name of socket `index` (its unit's `FileDescriptorName=`, which
    /// defaults to the socket unit's name, such as `astra.socket`), if the
    /// service manager named it. `None` also for an index past the end.
    pub fn name(&self, index: usize) -> Option<&str> {
        self.sockets.get(index)?.name.as_deref()
    }

    /// Takes socket `index` (from 0, in the order of the unit's `Listen*=`
    /// lines) as a server, TCP or Unix as it is.
    ///
    /// Returns `Ok(None)` if `index` is past the end or was taken already.
    /// A Unix socket's file belongs to the service manager: astra never
    /// removes it.
    ///
    /// # Errors
    ///
    /// `InvalidInput`, naming the descriptor, if it is not a listening stream
    /// socket of the TCP/IP or Unix family: a datagram or sequential-packet
    /// socket (`ListenDatagram=`, `ListenSequentialPacket=`), a connected
    /// socket (a unit with `Accept=yes`), or not a socket at all. It stays in
    /// the set; dropping the set closes it.
    pub fn take(&mut self, index: usize) -> io::Result<Option<Server>> {
        let Some(passed) = self.sockets.get_mut(index) else {
            return Ok(None);
        };
        let Some(socket) = &passed.socket else {
            return Ok(None);
        };
        let unix = is_listening_unix_socket(socket.as_fd()).map_err(|why| {
            let name = passed
                .name
                .as_deref()
                .map(|name| format!(" ({name})"))
                .unwrap_or_default();
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "astra: activated socket {index}{name}, descriptor {}, {why}",
                    passed.fd
                ),
            )
        })?;
        let socket = passed.socket.take().expect("checked above");
        Ok(Some(if unix {
            Server::from_unix_listener(UnixListener::from(socket))
        } else {
            Server::from_listener(TcpListener::from(socket))
        }))
    }

    /// Takes the first socket not taken yet that is named `name` (see
    /// [`ActivatedSockets::name`]). systemd gives every socket of one socket
    /// unit the same name, so calling this again takes the next one.
    ///
    /// Returns `Ok(None)` if no such socket is left.
    ///
    /// # Errors
    ///
    /// As [`ActivatedSockets::take`].
    pub fn take_named(&mut self, name: &str) -> io::Result<Option<Server>> {
        let index = self
            .sockets
            .iter()
            .position(|passed| passed.socket.is_some() && passed.name.as_deref() == Some(name));
        match index {
            Some(index) => self.take(index),
            None => Ok(None),
        }
    }
}

impl Server {
    /// Serves on the one socket the service manager passed (systemd socket
    /// activation), TCP or Unix.
    ///
    /// ```no_run
    /// use astra::{Body, Response, Server};
    ///
    /// Server::from_systemd()?
    ///     .serve(|_request, _info| Response::new(Body::new("Hello, World!")))?;
    /// # Ok::<(), std::io::Error>(())
    /// ```
    ///
    /// This is [`ActivatedSockets::from_env`] and then
    /// [`take`](ActivatedSockets::take)`(0)`, for units that listen on a
    /// single socket; see [`ActivatedSockets`] for several.
    ///
    /// # Errors
    ///
    /// - `NotFound`: no socket was passed (the program was not started by
    ///   socket activation);
    /// - `InvalidInput`: several were passed (they are closed; use
    ///   [`ActivatedSockets::take_named`]), or the socket cannot be served
    ///   (see [`ActivatedSockets::take`]);
    /// - whatever [`ActivatedSockets::from_env`] reports.
    pub fn from_systemd() -> io::Result<Server> {
        let mut sockets = ActivatedSockets::from_env()?;
        match sockets.len() {
            0 => Err(io::Error::new(
                io::ErrorKind::NotFound,
                "astra: the service manager passed no socket (LISTEN_FDS is unset, \
                 or LISTEN_PID names another process)",
            )),
            1 => Ok(sockets.take(0)?.expect("an untaken socket")),
            n => {
                let names: Vec<&str> = (0..n)
                    .map(|i| sockets.name(i).unwrap_or("unnamed"))
                    .collect();
                Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!(
                        "astra: the service manager passed {n} sockets ({}); \
                         take each with ActivatedSockets::from_env and take_named",
                        names.join(", ")
                    ),
                ))
            }
        }
    }
}

/// Reads the protocol's variables. `None`: no sockets for this process.
fn parse(
    fds: Option<&OsStr>,
    pid: Option<&OsStr>,
    names: Option<&OsStr>,
    our_pid: u32,
) -> io::Result<Option<Listen>> {
    let (Some(fds), Some(pid)) = (fds, pid) else {
        return Ok(None);
    };
    let number = |var: &str, value: &OsStr| {
        value
            .to_str()
            .and_then(|text| text.trim().parse::<u32>().ok())
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("astra: {var} is not a number: {value:?}"),
                )
            })
    };
    let pid = number("LISTEN_PID", pid)?;
    if pid != our_pid {
        log::debug!("LISTEN_PID is {pid}, not this process ({our_pid}): no sockets for us");
        return Ok(None);
    }
    let count = number("LISTEN_FDS", fds)? as usize;
    if count > (RawFd::MAX - FIRST_FD) as usize {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("astra: LISTEN_FDS is out of range: {count}"),
        ));
    }
    let names = match names {
        None => None,
        Some(value) => {
            let text = value.to_str().ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("astra: LISTEN_FDNAMES is not UTF-8: {value:?}"),
                )
            })?;
            let names: Vec<String> = if count == 0 && text.is_empty() {
                Vec::new()
            } else {
                text.split(':').map(str::to_owned).collect()
            };
            if names.len() != count {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "astra: LISTEN_FDNAMES names {} sockets, LISTEN_FDS counts {count}",
                        names.len()
                    ),
                ));
            }
            Some(names)
        }
    };
    Ok(Some(Listen { count, names }))
}

/// Marks a passed descriptor close-on-exec, so it does not leak into
/// processes a handler starts; fails if it is not open.
fn set_cloexec(fd: RawFd) -> io::Result<()> {
    let not_open = |err: io::Error| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("astra: LISTEN_FDS counts descriptor {fd}, which is not open: {err}"),
        )
    };
    // SAFETY: F_GETFD reads the descriptor's flags and has no other effect; on
    // a number that is not open it fails with EBADF, which we report.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
    if flags < 0 {
        return Err(not_open(io::Error::last_os_error()));
    }
    // SAFETY: F_SETFD changes only the close-on-exec flag of `fd`, which is
    // open (F_GETFD succeeded) and passed to this process for its own use.
    if unsafe { libc::fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC) } < 0 {
        return Err(not_open(io::Error::last_os_error()));
    }
    Ok(())
}

/// Checks that `fd` is a listening stream socket we can serve, and tells
/// whether it is a Unix one (else TCP). The error says what it is instead.
fn is_listening_unix_socket(fd: BorrowedFd<'_>) -> Result<bool, String> {
    // SAFETY: `stat` is plain data for which all zeroes is a valid value.
    let mut stat: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `fd` is open (borrowed from an `OwnedFd`), and fstat(2) writes
    // one `stat` through a pointer to that live local.
    if unsafe { libc::fstat(fd.as_raw_fd(), &mut stat) } != 0 {
        return Err(format!(
            "cannot be inspected: {}",
            io::Error::last_os_error()
        ));
    }
    if stat.st_mode & libc::S_IFMT != libc::S_IFSOCK {
        return Err("is not a socket".into());
    }
    let kind =
        socket_option(fd, libc::SO_TYPE).map_err(|err| format!("has no socket type: {err}"))?;
    if kind != libc::SOCK_STREAM {
        return Err(format!(
            "is not a stream socket (type {kind}; from ListenDatagram= or \
             ListenSequentialPacket=?): astra serves ListenStream= sockets"
        ));
    }
    let listening = socket_option(fd, libc::SO_ACCEPTCONN)
        .map_err(|err| format!("cannot say whether it listens: {err}"))?;
    if listening == 0 {
        return Err(
            "is not listening (a connection from a unit with Accept=yes?): \
             astra needs Accept=no"
                .into(),
        );
    }
    // SAFETY: `sockaddr_storage` is plain data for which all zeroes is valid.
    let mut addr: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // SAFETY: `fd` is open; getsockname(2) writes at most `len` bytes, the
    // size of `addr`, through a pointer to that live local, and the length it
    // used to `len`, another live local.
    let rc = unsafe {
        libc::getsockname(
            fd.as_raw_fd(),
            (&mut addr as *mut libc::sockaddr_storage).cast::<libc::sockaddr>(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(format!("has no address: {}", io::Error::last_os_error()));
    }
    match i32::from(addr.ss_family) {
        libc::AF_UNIX => Ok(true),
        libc::AF_INET | libc::AF_INET6 => Ok(false),
        family => Err(format!(
            "is of address family {family}, neither TCP/IP nor Unix"
        )),
    }
}

/// An integer socket option at `SOL_SOCKET` level.
fn socket_option(fd: BorrowedFd<'_>, option: libc::c_int) -> io::Result<libc::c_int> {
    let mut value: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `fd` is open; getsockopt(2) writes at most `len` bytes, the
    // size of `value`, through a pointer to that live local, and the length
    // it used to `len`, another live local.
    let rc = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            option,
            (&mut value as *mut libc::c_int).cast::<libc::c_void>(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_str(
        fds: Option<&str>,
        pid: Option<&str>,
        names: Option<&str>,
    ) -> io::Result<Option<Listen>> {
        parse(
            fds.map(OsStr::new),
            pid.map(OsStr::new),
            names.map(OsStr::new),
            42,
        )
    }

    #[test]
    fn sockets_are_ours_only_if_listen_pid_is_our_pid() {
        let ours = parse_str(Some("2"), Some("42"), None).unwrap();
        assert_eq!(
            ours,
            Some(Listen {
                count: 2,
                names: None
            })
        );
        assert_eq!(parse_str(Some("2"), Some("43"), None).unwrap(), None);
        assert_eq!(parse_str(Some("2"), None, None).unwrap(), None);
        assert_eq!(parse_str(None, Some("42"), None).unwrap(), None);
    }

    #[test]
    fn names_are_split_on_colons_and_must_match_the_count() {
        let listen = parse_str(Some("3"), Some("42"), Some("web:admin:web"))
            .unwrap()
            .unwrap();
        assert_eq!(
            listen.names.unwrap(),
            vec!["web".to_string(), "admin".into(), "web".into()]
        );
        let err = parse_str(Some("2"), Some("42"), Some("web")).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert!(err.to_string().contains("LISTEN_FDNAMES"), "{err}");
        let none = parse_str(Some("0"), Some("42"), Some("")).unwrap().unwrap();
        assert_eq!(none.count, 0);
    }

    #[test]
    fn bad_numbers_are_errors_that_name_the_variable() {
        for (fds, pid, var) in [
            ("x", "42", "LISTEN_FDS"),
            ("-1", "42", "LISTEN_FDS"),
            ("1", "pid", "LISTEN_PID"),
        ] {
            let err = parse_str(Some(fds), Some(pid), None).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidData);
            assert!(err.to_string().contains(var), "{err}");
        }
        let err = parse_str(Some("4294967295"), Some("42"), None).unwrap_err();
        assert!(err.to_string().contains("out of range"), "{err}");
    }
}
