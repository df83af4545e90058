// The routes for astra-shaped servers (`ours` and `astra04`), included by both
// binaries after `use <crate> as astra_api;`. Written against the 0.4 API only.

use astra_bench::{route, Route, HELLO, ONE_K};
use astra_api::{Body, ConnectionInfo, Request, Response, ResponseBuilder};

fn handle(mut request: Request, _info: ConnectionInfo) -> Response {
    match route(request.method().as_str(), request.uri().path()) {
        Route::Hello => Response::new(Body::new(HELLO)),
        Route::Sleep(how_long) => {
            std::thread::sleep(how_long);
            Response::new(Body::new(HELLO))
        }
        Route::OneK => Response::new(Body::new(&ONE_K[..])),
        Route::Echo => {
            let mut total: u64 = 0;
            for chunk in request.body_mut() {
                match chunk {
                    Ok(bytes) => total += bytes.len() as u64,
                    Err(err) => {
                        eprintln!("echo: body error: {err}");
                        return ResponseBuilder::new()
                            .status(400)
                            .body(Body::new("bad body"))
                            .unwrap();
                    }
                }
            }
            Response::new(Body::new(total.to_string()))
        }
        Route::NotFound => ResponseBuilder::new()
            .status(404)
            .body(Body::empty())
            .unwrap(),
    }
}
