//! `wasi:http` for guests: the incoming handler's types, with outbound requests denied
//! ([`DenyOutbound`]) and every header-fields resource a guest builds charged to its
//! request's budget.

use std::sync::Arc;

use wasmtime::StoreContextMut;
use wasmtime::component::{Linker, Resource, ResourceTable};
use wasmtime_wasi_http::p2::bindings::http::types::HostFields;
use wasmtime_wasi_http::{
    FieldMap, WasiBody, WasiHttpCtx, WasiHttpCtxView, WasiHttpHooks, WasiHttpView,
};

use crate::budget::{Budget, Charge};

/// The most a header-fields resource a guest builds may hold. wasmtime's default is 128 KiB;
/// this matches the host's default limit on a request's whole head.
const FIELD_SIZE_LIMIT: usize = 64 << 10;

/// The interface whose header-fields constructors [`add_to_linker`] wraps, in the version
/// wasmtime-wasi-http registers (guests importing any 0.2.x find it by semver).
const HTTP_TYPES: &str = "wasi:http/types@0.2.12";

/// One request's `wasi:http` state.
pub struct Http {
    ctx: WasiHttpCtx,
    hooks: DenyOutbound,
    /// What the header fields the guest has built reserve of the request's budget.
    fields: Charge,
}

impl Http {
    /// The state of a request whose host memory is `budget`.
    pub fn new(budget: &Arc<Budget>) -> Http {
        let mut ctx = WasiHttpCtx::new();
        ctx.set_field_size_limit(FIELD_SIZE_LIMIT);
        Http {
            ctx,
            hooks: DenyOutbound,
            fields: budget.empty_charge(),
        }
    }

    /// The view wasmtime-wasi-http's host functions work through.
    pub fn view<'a>(&'a mut self, table: &'a mut ResourceTable) -> WasiHttpCtxView<'a> {
        WasiHttpCtxView {
            ctx: &mut self.ctx,
            table,
            hooks: &mut self.hooks,
        }
    }

    /// Reserves a header-fields resource's worth of the budget, for the rest of the request:
    /// wasmtime owns the fields and does not say when they go, so they are charged at their
    /// limit when made and never given back. A guest that builds more than its budget allows
    /// is stopped, rather than the host growing without bound.
    fn reserve_fields(&mut self) -> wasmtime::Result<()> {
        let reserved = self.fields.amount() + FIELD_SIZE_LIMIT as u64;
        self.fields
            .resize(reserved)
            .map_err(|e| wasmtime::Error::msg(format!("too many header fields built: {e}")))
    }
}

/// Guests get no outbound HTTP: every `outgoing-handler.handle` fails with the standard
/// `HTTP-request-denied` error code, which guests can recognise and report.
struct DenyOutbound;

impl WasiHttpHooks for DenyOutbound {
    fn send_request(
        &mut self,
        _request: http::Request<WasiBody>,
        _options: Option<wasmtime_wasi_http::RequestOptions>,
        _fut: Box<dyn Future<Output = Result<(), wasmtime_wasi_http::Error>> + Send>,
    ) -> Box<
        dyn Future<
                Output = Result<
                    (
                        http::Response<WasiBody>,
                        Box<dyn Future<Output = Result<(), wasmtime_wasi_http::Error>> + Send>,
                    ),
                    wasmtime_wasi_http::Error,
                >,
            > + Send,
    > {
        Box::new(async { Err(wasmtime_wasi_http::Error::HttpRequestDenied) })
    }
}

/// Adds `wasi:http` (not the rest of the proxy world: [`super::wasi`] adds that), then wraps
/// the three ways a guest builds a header-fields resource (`new`, `from-list`, `clone`) so
/// each reserves its worth of the request's budget first (see [`Http::reserve_fields`]).
/// Without it thousands of full fields were the quickest way for one request to take
/// gigabytes of host memory. `get` hands out the request's [`Http`].
pub fn add_to_linker<T: WasiHttpView + 'static>(
    linker: &mut Linker<T>,
    get: fn(&mut T) -> &mut Http,
) -> wasmtime::Result<()> {
    wasmtime_wasi_http::p2::add_only_http_to_linker_async(linker)?;
    linker.allow_shadowing(true);
    let mut types = linker.instance(HTTP_TYPES)?;
    types.func_wrap(
        "[constructor]fields",
        move |mut store: StoreContextMut<'_, T>, (): ()| {
            let data = store.data_mut();
            get(data).reserve_fields()?;
            Ok((HostFields::new(&mut data.http())?,))
        },
    )?;
    types.func_wrap(
        "[static]fields.from-list",
        move |mut store: StoreContextMut<'_, T>, (entries,): (Vec<(String, Vec<u8>)>,)| {
            let data = store.data_mut();
            get(data).reserve_fields()?;
            match HostFields::from_list(&mut data.http(), entries) {
                Ok(fields) => Ok((Ok(fields),)),
                Err(e) => Ok((Err(e.downcast()?),)),
            }
        },
    )?;
    types.func_wrap(
        "[method]fields.clone",
        move |mut store: StoreContextMut<'_, T>, (fields,): (Resource<FieldMap>,)| {
            let data = store.data_mut();
            get(data).reserve_fields()?;
            Ok((HostFields::clone(&mut data.http(), fields)?,))
        },
    )?;
    linker.allow_shadowing(false);
    Ok(())
}
