//! `wasi:filesystem`, bound to the in-memory filesystem instead of host directories. Its
//! version matches wasmtime-wasi's, so ours shadows theirs in the linker.

wasmtime::component::bindgen!({
    path: "../wit",
    world: "wasi:filesystem/imports@0.2.12",
    imports: { default: trappable },
    with: {
        "wasi:io": wasmtime_wasi_io::bindings::wasi::io,
        "wasi:clocks": wasmtime_wasi::p2::bindings::clocks,
        "wasi:filesystem/types.descriptor": super::descriptor::Descriptor,
        "wasi:filesystem/types.directory-entry-stream": super::descriptor::DirStream,
    },
    require_store_data_send: true,
});
