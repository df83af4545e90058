//! Pieces shared by the benchmark servers: the routes' constants and argv handling.
//!
//! Every server answers the same routes:
//!
//! * `GET /` — `Hello, World!`
//! * `GET /sleep` — blocks (or, for async servers, awaits a timer) 10 ms, then `Hello, World!`
//! * `GET /sleep50` — the same for 50 ms
//! * `GET /sleep3s` — the same for 3 s
//! * `GET /1k` — 1024 bytes
//! * `POST /echo` — reads the whole body as a stream, counting bytes, and answers
//!   the count as decimal text
//! * anything else — 404

use std::time::Duration;

/// Default listen address when argv[1] is absent.
pub const DEFAULT_ADDR: &str = "127.0.0.1:8080";

/// Body of `GET /` and of the sleeping routes.
pub const HELLO: &str = "Hello, World!";

/// How long `GET /sleep` waits.
pub const SLEEP: Duration = Duration::from_millis(10);

/// How long `GET /sleep50` waits.
pub const SLEEP50: Duration = Duration::from_millis(50);

/// How long `GET /sleep3s` waits.
pub const SLEEP3S: Duration = Duration::from_secs(3);

/// Body of `GET /1k`.
pub static ONE_K: [u8; 1024] = [b'x'; 1024];

/// The listen address: argv[1], or [`DEFAULT_ADDR`].
pub fn listen_addr() -> String {
    std::env::args()
        .nth(1)
        .unwrap_or_else(|| DEFAULT_ADDR.to_string())
}

/// The TLS servers' certificate chain and private key, PEM files: argv[2] and
/// argv[3], else `$BENCH_TLS_CERT` and `$BENCH_TLS_KEY`. The environment is
/// there so that `run.sh` can start every server with the same one argument.
pub fn tls_paths() -> Result<(String, String), String> {
    let from = |n: usize, var: &str| {
        std::env::args()
            .nth(n)
            .or_else(|| std::env::var(var).ok())
            .ok_or_else(|| format!("no {var} (argv[{n}] or ${var})"))
    };
    Ok((from(2, "BENCH_TLS_CERT")?, from(3, "BENCH_TLS_KEY")?))
}

/// Which route a request is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    Hello,
    /// `/sleep`, `/sleep50` and `/sleep3s`: wait this long, then `Hello, World!`.
    Sleep(Duration),
    OneK,
    Echo,
    NotFound,
}

/// Maps a method and path to a [`Route`].
pub fn route(method: &str, path: &str) -> Route {
    match (method, path) {
        ("GET", "/") => Route::Hello,
        ("GET", "/sleep") => Route::Sleep(SLEEP),
        ("GET", "/sleep50") => Route::Sleep(SLEEP50),
        ("GET", "/sleep3s") => Route::Sleep(SLEEP3S),
        ("GET", "/1k") => Route::OneK,
        ("POST", "/echo") => Route::Echo,
        _ => Route::NotFound,
    }
}

/// The tungstenite configuration of the WebSocket peers (`tungstenite_blocking`,
/// `tokio_tungstenite`): `None`, tungstenite's defaults, unless
/// `$BENCH_WS_READ_BUFFER` is set, when their read buffer is that many bytes.
///
/// `run.sh` never sets it. It is a control for S15: tungstenite's default
/// read buffer is 128 KiB and zero-filled on the first read, so it is most of
/// what an idle socket costs those servers; astra's messages mode uses 4 KiB.
/// Set to 4096, the peers show what is left once that setting is the same.
pub fn ws_config() -> Option<tungstenite::protocol::WebSocketConfig> {
    let bytes: usize = std::env::var("BENCH_WS_READ_BUFFER").ok()?.parse().ok()?;
    Some(tungstenite::protocol::WebSocketConfig::default().read_buffer_size(bytes))
}

/// Raises this process's open-file soft limit to its hard limit, for the load
/// helpers that hold thousands of connections; says so on stderr if it cannot.
pub fn raise_nofile() {
    // SAFETY: getrlimit/setrlimit with a valid pointer to a local struct.
    unsafe {
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 {
            limit.rlim_cur = limit.rlim_max;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                eprintln!("setrlimit: {}", std::io::Error::last_os_error());
            }
        }
    }
}
