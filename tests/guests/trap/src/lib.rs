//! A guest that misbehaves on purpose, for the host's fault tests:
//! `/trap/panic` panics, `/trap/unreachable` executes `unreachable`, `/trap/loop` spins
//! forever, `/trap/memory` allocates until memory runs out, `/trap/stack` recurses until the
//! stack overflows, `/trap/huge?mib=N` answers with an N MiB body, `/trap/sleep?ms=N` takes
//! N ms to answer, `/trap/flaky` panics on half of its requests at random (a bad version for
//! the canary tests), and anything else answers 200 so a test can see the host still serves.

use tabula_sdk::{Request, Response, handler};

#[handler]
fn trap(req: Request) -> Response {
    let number = |name: &str, default: u64| {
        req.query_param(name)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(default)
    };
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
        "/trap/memory" => {
            let mut hoard: Vec<Vec<u8>> = Vec::new();
            loop {
                hoard.push(vec![1u8; 1 << 20]);
                std::hint::black_box(&hoard);
            }
        }
        "/trap/stack" => Response::text(format!("{}\n", recurse(std::hint::black_box(0)))),
        "/trap/huge" => {
            Response::new(200).with_body(vec![b'x'; (number("mib", 64) << 20) as usize])
        }
        "/trap/sleep" => {
            std::thread::sleep(std::time::Duration::from_millis(number("ms", 100)));
            Response::text("slept\n")
        }
        "/trap/flaky" => {
            // A random bit from the hasher's seed, which std draws from `wasi:random`.
            use std::hash::BuildHasher;
            if std::collections::hash_map::RandomState::new().hash_one(0u8) & 1 == 1 {
                panic!("this guest fails half its requests on purpose");
            }
            Response::text("flaky, but not this time\n")
        }
        _ => Response::text("still here\n"),
    }
}

/// Never returns: each frame keeps a buffer alive so the recursion cannot be optimised away.
#[allow(unconditional_recursion)]
fn recurse(depth: u64) -> u64 {
    let frame = std::hint::black_box([depth; 64]);
    recurse(depth + 1) + frame[depth as usize % 64]
}
