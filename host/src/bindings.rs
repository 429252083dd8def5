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
