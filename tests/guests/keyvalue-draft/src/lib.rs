//! A component written against the published `wasi:keyvalue@0.2.0-draft` (what wasmCloud's
//! key-value examples and wasmtime's `-Skeyvalue` link), with `wit-bindgen` and the `wasi`
//! crate, no tabula SDK.
//!
//! `GET /kvdraft/BUCKET/exercise` runs store, atomics and batch calls and reports what it
//! saw, in the words the other versions' guests use; `GET /kvdraft/BUCKET/page?n=N` writes N
//! keys and lists them back page by page through the `u64` cursor.

#[path = "../../common/keyvalue.rs"]
mod keyvalue;
#[path = "../../common/respond.rs"]
mod respond;

use wasi::http::types::{IncomingRequest, ResponseOutparam};

mod bindings {
    wit_bindgen::generate!({
        path: "../../../host/wit/keyvalue-0.2.0-draft",
        world: "imports",
    });
}

use bindings::wasi::keyvalue::store;

fn exercise(bucket: &store::Bucket) -> Result<String, store::Error> {
    Ok(keyvalue::common(bucket)? + &keyvalue::clean_up(bucket)?)
}

fn page(bucket: &store::Bucket, n: usize) -> Result<String, store::Error> {
    keyvalue::page(
        bucket,
        n,
        |c: Option<&u64>| bucket.list_keys(c.copied()),
        |r| r.cursor,
    )
}

struct KvDraft;

impl wasi::exports::http::incoming_handler::Guest for KvDraft {
    fn handle(request: IncomingRequest, out: ResponseOutparam) {
        let path = request.path_with_query().unwrap_or_default();
        let (path, query) = path.split_once('?').unwrap_or((&path, ""));
        let mut parts = path.trim_start_matches("/kvdraft/").splitn(2, '/');
        let bucket_name = parts.next().unwrap_or("default").to_string();
        let action = parts.next().unwrap_or("exercise").to_string();
        let n = query
            .strip_prefix("n=")
            .and_then(|n| n.parse().ok())
            .unwrap_or(10);
        let result = store::open(&bucket_name).and_then(|bucket| match action.as_str() {
            "page" => page(&bucket, n),
            "bogus-cursor" => bucket
                .list_keys(Some(n as u64))
                .map(|r| format!("{:?}\n", r.keys)),
            _ => exercise(&bucket),
        });
        match result {
            Ok(text) => respond::respond(out, 200, &text),
            Err(e) => respond::respond(out, 500, &format!("error: {e:?}\n")),
        }
    }
}

wasi::http::proxy::export!(KvDraft);
