//! Host bindings for the kv interfaces of the guest contract in `wit/`: `tabula:host/kv` and
//! `wasi:keyvalue@0.2.0-draft2`, with the buckets and CAS handles bound to this module's
//! types.

wasmtime::component::bindgen!({
    path: "../wit",
    inline: "
        package tabula:kv-bindings;
        world kv {
            import tabula:host/kv@0.1.0;
            import wasi:keyvalue/store@0.2.0-draft2;
            import wasi:keyvalue/atomics@0.2.0-draft2;
            import wasi:keyvalue/batch@0.2.0-draft2;
        }
    ",
    imports: { default: async | trappable },
    with: {
        "wasi:keyvalue/store.bucket": super::Bucket,
        "wasi:keyvalue/atomics.cas": super::Cas,
    },
});
