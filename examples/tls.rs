//! HTTPS with a certificate and key from PEM files, HTTP/2 by ALPN, and the
//! certificate reloaded from disk every hour.
//!
//! Make a self-signed pair for localhost (ECDSA P-256), then run it:
//!
//! ```sh
//! openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 30 -subj /CN=localhost -addext subjectAltName=DNS:localhost -keyout key.pem -out cert.pem
//! cargo run --release --features tls,http2 --example tls -- cert.pem key.pem
//! curl --cacert cert.pem https://localhost:3443/
//! ```

use std::time::Duration;

use astra::{Body, ConnectionInfo, Request, Response, Server, TlsConfig};

fn main() {
    let mut args = std::env::args().skip(1);
    let (Some(cert), Some(key)) = (args.next(), args.next()) else {
        eprintln!("usage: tls CERT_CHAIN.pem PRIVATE_KEY.pem [ADDR]");
        std::process::exit(2);
    };
    let addr = args.next().unwrap_or_else(|| "127.0.0.1:3443".into());
    let tls = match TlsConfig::from_pem_files(&cert, &key) {
        Ok(tls) => tls,
        Err(err) => {
            eprintln!("{err}");
            std::process::exit(1);
        }
    };
    let server = Server::bind(&addr).tls(tls);
    let handle = server.handle();
    // A renewed certificate (certbot, a secret mount) is picked up without a
    // restart; open connections keep the one they started with.
    std::thread::spawn(move || loop {
        std::thread::sleep(Duration::from_secs(60 * 60));
        match TlsConfig::from_pem_files(&cert, &key) {
            Ok(tls) => handle.reload_tls(tls).expect("the server has TLS"),
            Err(err) => eprintln!("keeping the current certificate: {err}"),
        }
    });
    println!(
        "listening on https://{}",
        server.local_addr().expect("bound address")
    );
    server
        .serve(|request: Request, info: ConnectionInfo| {
            let tls = info.tls().expect("every connection is TLS");
            Response::new(Body::new(format!(
                "Hello over {:?} ({:?}, {:?})\n",
                tls.protocol_version().expect("after the handshake"),
                request.version(),
                tls.server_name().unwrap_or("no SNI"),
            )))
        })
        .expect("serve failed");
}
