//! Host bindings for the guest contract in `wit/`: `tabula:host/{kv,session}` and
//! `wasi:keyvalue@0.2.0-draft2`. Generated once here; [`crate::kv`] and [`crate::session`]
//! implement the traits.

wasmtime::component::bindgen!({
    path: "../wit",
    world: "tabula:host/host",
    imports: { default: async | trappable },
    with: {
        "wasi:keyvalue/store.bucket": crate::kv::Bucket,
        "wasi:keyvalue/atomics.cas": crate::kv::Cas,
    },
});

/// `wasi:filesystem`, bound to the in-memory [`crate::vfs`] instead of host directories.
/// Its version matches wasmtime-wasi's, so ours shadows theirs in the linker.
pub mod filesystem {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "wasi:filesystem/imports@0.2.12",
        imports: { default: trappable },
        with: {
            "wasi:io": wasmtime_wasi_io::bindings::wasi::io,
            "wasi:clocks": wasmtime_wasi::p2::bindings::clocks,
            "wasi:filesystem/types.descriptor": crate::vfs::Descriptor,
            "wasi:filesystem/types.directory-entry-stream": crate::vfs::DirStream,
        },
        require_store_data_send: true,
    });
}
