//! tiny_http with a pool of 2 x cores threads, each looping on `recv()`.

use std::sync::Arc;

use astra_bench::{route, Route, HELLO, ONE_K};
use tiny_http::{Request, Response, Server};

fn answer(mut request: Request) {
    let which = route(request.method().as_str(), request.url());
    let result = match which {
        Route::Hello => request.respond(Response::from_string(HELLO)),
        Route::Sleep(how_long) => {
            std::thread::sleep(how_long);
            request.respond(Response::from_string(HELLO))
        }
        Route::OneK => request.respond(Response::from_data(&ONE_K[..])),
        Route::Echo => {
            let mut total: u64 = 0;
            let mut buf = vec![0u8; 64 * 1024];
            let mut failed = false;
            {
                let reader = request.as_reader();
                loop {
                    match reader.read(&mut buf) {
                        Ok(0) => break,
                        Ok(n) => total += n as u64,
                        Err(err) if err.kind() == std::io::ErrorKind::Interrupted => {}
                        Err(err) => {
                            eprintln!("echo: body error: {err}");
                            failed = true;
                            break;
                        }
                    }
                }
            }
            if failed {
                request.respond(Response::from_string("bad body").with_status_code(400))
            } else {
                request.respond(Response::from_string(total.to_string()))
            }
        }
        Route::NotFound => request.respond(Response::empty(404)),
    };
    if let Err(err) = result {
        if std::env::var_os("BENCH_VERBOSE").is_some() {
            eprintln!("respond: {err}");
        }
    }
}

fn main() {
    let addr = astra_bench::listen_addr();
    let server = match Server::http(addr.as_str()) {
        Ok(server) => Arc::new(server),
        Err(err) => {
            eprintln!("tiny_http: bind {addr}: {err}");
            std::process::exit(1);
        }
    };
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let workers: Vec<_> = (0..2 * cores)
        .map(|_| {
            let server = Arc::clone(&server);
            std::thread::spawn(move || loop {
                match server.recv() {
                    Ok(request) => answer(request),
                    Err(err) => eprintln!("tiny_http: recv: {err}"),
                }
            })
        })
        .collect();
    for worker in workers {
        let _ = worker.join();
    }
}
