//! Host bindings for the kv interfaces: `tabula:host/kv` and `wasi:keyvalue@0.2.0-draft2`
//! from the guest contract in `wit/`, and the published versions in `host/wit/` that other
//! toolchains build against. Buckets and CAS handles are bound to this module's types in
//! every version, so a bucket is one thing whichever version opened it.

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
        "wasi:keyvalue/store.bucket": super::keyspace::Bucket,
        "wasi:keyvalue/atomics.cas": super::keyspace::Cas,
    },
});

/// `wasi:keyvalue@0.2.0-draft` (wasmCloud, wasmtime's `-Skeyvalue`).
pub mod draft {
    wasmtime::component::bindgen!({
        path: "wit/keyvalue-0.2.0-draft",
        world: "wasi:keyvalue/imports",
        imports: { default: async | trappable },
        with: { "wasi:keyvalue/store.bucket": crate::capabilities::kv::keyspace::Bucket },
    });
}

/// `batch` of the published `wasi:keyvalue@0.2.0-draft2`, whose `get-many` has another
/// shape than the copy in `wit/`; `store` is the one bound above.
pub mod published_batch {
    wasmtime::component::bindgen!({
        path: "wit/keyvalue-0.2.0-draft2",
        inline: "
            package tabula:published-batch;
            world batch { import wasi:keyvalue/batch@0.2.0-draft2; }
        ",
        imports: { default: async | trappable },
        with: {
            "wasi:keyvalue/store": crate::capabilities::kv::bindings::wasi::keyvalue::store,
        },
    });
}
