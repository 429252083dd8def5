//! Host bindings for `tabula:host/session` in `wit/`.

wasmtime::component::bindgen!({
    path: "../wit",
    inline: "
        package tabula:session-bindings;
        world session {
            import tabula:host/session@0.1.0;
        }
    ",
    imports: { default: async | trappable },
});
