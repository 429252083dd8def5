//! A component written against the standard `wasi:keyvalue@0.2.0-draft2` interfaces (with
//! `wit-bindgen` and the `wasi` crate, no tabula SDK), as it would be for another runtime.
//!
//! `GET /wasikv/BUCKET/count` increments `count` in `BUCKET` through `atomics.increment`;
//! `GET /wasikv/BUCKET/exercise` runs store, batch and CAS calls and reports what it saw.

#[path = "../../common/respond.rs"]
mod respond;

use wasi::http::types::{IncomingRequest, ResponseOutparam};

mod bindings {
    wit_bindgen::generate!({
        path: "../../../wit/deps/keyvalue",
        world: "imports",
    });
}

use bindings::wasi::keyvalue::{atomics, batch, store};

fn exercise(bucket: &store::Bucket) -> Result<String, store::Error> {
    let mut out = String::new();
    bucket.set("a", b"1")?;
    out += &format!("get a={:?}\n", bucket.get("a")?.map(String::from_utf8));
    out += &format!(
        "exists a={} b={}\n",
        bucket.exists("a")?,
        bucket.exists("b")?
    );
    batch::set_many(
        bucket,
        &[("b".into(), b"2".to_vec()), ("c".into(), b"3".to_vec())],
    )?;
    let many = batch::get_many(bucket, &["a".into(), "b".into(), "zz".into()])?;
    out += &format!("get_many={many:?}\n");
    let mut keys = bucket.list_keys(None)?.keys;
    keys.sort();
    out += &format!("keys={keys:?}\n");
    let cas = atomics::Cas::new(bucket, "a")?;
    bucket.set("a", b"changed")?;
    match atomics::swap(cas, b"mine") {
        Ok(()) => out += "swap after a concurrent write: succeeded (wrong)\n",
        Err(atomics::CasError::CasFailed(fresh)) => {
            out += &format!(
                "swap failed, now {:?}\n",
                fresh.current()?.map(String::from_utf8)
            );
            atomics::swap(fresh, b"mine").map_err(|_| store::Error::Other("retry".into()))?;
            out += &format!("retried: a={:?}\n", bucket.get("a")?.map(String::from_utf8));
        }
        Err(atomics::CasError::StoreError(e)) => return Err(e),
    }
    batch::delete_many(bucket, &["a".into(), "b".into(), "c".into()])?;
    bucket.delete("missing")?;
    out += &format!("after delete: {:?}\n", bucket.list_keys(None)?.keys);
    Ok(out)
}

struct WasiKv;

impl wasi::exports::http::incoming_handler::Guest for WasiKv {
    fn handle(request: IncomingRequest, out: ResponseOutparam) {
        let path = request.path_with_query().unwrap_or_default();
        let mut parts = path.trim_start_matches("/wasikv/").splitn(2, '/');
        let bucket_name = parts.next().unwrap_or("default").to_string();
        let action = parts.next().unwrap_or("count").to_string();
        let result = store::open(&bucket_name).and_then(|bucket| match action.as_str() {
            "exercise" => exercise(&bucket),
            _ => atomics::increment(&bucket, "count", 1).map(|n| format!("{n}\n")),
        });
        match result {
            Ok(text) => respond::respond(out, 200, &text),
            Err(e) => respond::respond(out, 500, &format!("error: {e:?}\n")),
        }
    }
}

wasi::http::proxy::export!(WasiKv);
