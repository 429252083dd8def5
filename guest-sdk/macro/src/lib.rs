//! `#[handler]`: turns a function `fn(Request) -> impl IntoResponse` into the component's
//! `wasi:http/incoming-handler` export. Re-exported by `tabula-sdk`; use it from there.

use proc_macro::TokenStream;
use quote::quote;
use syn::{ItemFn, parse_macro_input};

/// Marks the function that handles every request of this component.
///
/// The function stays an ordinary function, callable from native tests; on `wasm32` the
/// attribute adds the export that the host calls.
#[proc_macro_attribute]
pub fn handler(attr: TokenStream, item: TokenStream) -> TokenStream {
    if !attr.is_empty() {
        return syn::Error::new(
            proc_macro2::Span::call_site(),
            "#[handler] takes no arguments",
        )
        .to_compile_error()
        .into();
    }
    let func = parse_macro_input!(item as ItemFn);
    if func.sig.inputs.len() != 1 || func.sig.asyncness.is_some() {
        return syn::Error::new_spanned(
            &func.sig,
            "#[handler] expects `fn name(req: tabula_sdk::Request) -> impl IntoResponse`",
        )
        .to_compile_error()
        .into();
    }
    let name = &func.sig.ident;
    quote! {
        // Natively only tests call the handler; on wasm32 the export below does.
        #[cfg_attr(not(target_arch = "wasm32"), allow(dead_code))]
        #func

        #[cfg(target_arch = "wasm32")]
        const _: () = {
            struct TabulaHandler;

            impl ::tabula_sdk::__private::Guest for TabulaHandler {
                fn handle(
                    request: ::tabula_sdk::__private::wasi::http::types::IncomingRequest,
                    out: ::tabula_sdk::__private::wasi::http::types::ResponseOutparam,
                ) {
                    ::tabula_sdk::__private::run(request, out, #name)
                }
            }

            ::tabula_sdk::__private::wasi::http::proxy::export!(
                TabulaHandler with_types_in ::tabula_sdk::__private::wasi
            );
        };
    }
    .into()
}
