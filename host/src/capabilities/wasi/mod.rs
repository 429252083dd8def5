//! WASI 0.2 as toolchains link it (cli, clocks, random, io, sockets), with no ambient
//! authority: no preopened host directories, environment variables, arguments, stdin or
//! network. stdout and stderr go to the host's log ([`log`]), within the request's bounds.
//! The filesystem is [`super::vfs`]'s, which shadows wasmtime-wasi's.

mod log;

use std::sync::Arc;

use wasmtime::component::Linker;
use wasmtime_wasi::{WasiCtx, WasiView};
use wasmtime_wasi_io::IoView;

use log::{GuestLog, GuestOutput};

/// What WASI gives a request of `app`: the builder's defaults (nothing of the host's), except
/// that sockets are refused outright instead of per address; stdout and stderr go to the
/// log, `log_bytes` and `log_lines` at most, with the app's `secrets` hidden.
pub fn guest_ctx(
    app: &Arc<str>,
    secrets: &Arc<[String]>,
    log_bytes: usize,
    log_lines: usize,
) -> WasiCtx {
    let output = GuestOutput::new(app, secrets, log_bytes, log_lines);
    WasiCtx::builder()
        .stdout(GuestLog::stdout(&output))
        .stderr(GuestLog::stderr(&output))
        .allow_tcp(false)
        .allow_udp(false)
        .allow_ip_name_lookup(false)
        .build()
}

/// Adds all of WASI 0.2 that toolchains link. Streams and pollables reach the resource table
/// through [`IoView`], without the WASI context, which is then only built for a guest that
/// asks for clocks, random or stdio.
pub fn add_to_linker<T: WasiView + IoView + 'static>(
    linker: &mut Linker<T>,
) -> wasmtime::Result<()> {
    wasmtime_wasi::p2::add_to_linker_async(linker)?;
    linker.allow_shadowing(true);
    wasmtime_wasi_io::add_to_linker_async(linker)?;
    linker.allow_shadowing(false);
    Ok(())
}
