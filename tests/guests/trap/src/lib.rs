//! A guest that fails on purpose, for the host's fault tests: `/trap/panic` panics,
//! `/trap/unreachable` executes `unreachable`, `/trap/loop` spins forever, anything else answers 200 so a test can see the host is still serving.

use tabula_sdk::{Request, Response, handler};

#[handler]
fn trap(req: Request) -> Response {
    match req.path() {
        "/trap/panic" => panic!("this guest panics on purpose"),
        "/trap/unreachable" => {
            #[cfg(target_arch = "wasm32")]
            core::arch::wasm32::unreachable();
            #[cfg(not(target_arch = "wasm32"))]
            unreachable!()
        }
        "/trap/loop" => {
            let mut n: u64 = 0;
            loop {
                n = std::hint::black_box(n.wrapping_add(1));
            }
        }
        _ => Response::text("still here\n"),
    }
}
