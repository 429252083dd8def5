//! A component written against the published `wasi:keyvalue@0.2.0-draft2` (the
//! WebAssembly/wasi-keyvalue repository, whose `batch.get-many` returns
//! `list<option<tuple<string, list<u8>>>>`), with `wit-bindgen` and the `wasi` crate, no
//! tabula SDK.
//!
//! `GET /kvpublished/BUCKET/exercise` runs store, atomics (with CAS) and batch calls and
//! reports what it saw, in the words the other versions' guests use; `GET
//! /kvpublished/BUCKET/page?n=N` writes N keys and lists them back page by page; `GET
//! /kvpublished/BUCKET/across` writes through this version and reads through
//! `0.2.0-draft`, and back: both versions must see one bucket.

#[path = "../../common/keyvalue.rs"]
mod keyvalue;
#[path = "../../common/respond.rs"]
mod respond;

use wasi::http::types::{IncomingRequest, ResponseOutparam};

mod bindings {
    wit_bindgen::generate!({
        path: "../../../host/wit/keyvalue-0.2.0-draft2",
        world: "imports",
    });
}

/// The older version too, to show both name the same data.
mod draft {
    wit_bindgen::generate!({
        path: "../../../host/wit/keyvalue-0.2.0-draft",
        world: "imports",
    });
}

use bindings::wasi::keyvalue::{atomics, store};
use keyvalue::show;

fn across(name: &str, bucket: &store::Bucket) -> Result<String, store::Error> {
    let old = draft::wasi::keyvalue::store::open(name)
        .map_err(|e| store::Error::Other(format!("{e:?}")))?;
    bucket.set("across", b"from draft2")?;
    let seen = old
        .get("across")
        .map_err(|e| store::Error::Other(format!("{e:?}")))?;
    old.set("across", b"from draft")
        .map_err(|e| store::Error::Other(format!("{e:?}")))?;
    let back = bucket.get("across")?;
    bucket.delete("across")?;
    Ok(format!(
        "draft saw {}; draft2 saw {}\n",
        show(seen),
        show(back)
    ))
}

fn exercise(bucket: &store::Bucket) -> Result<String, store::Error> {
    let mut out = keyvalue::common(bucket)?;
    let cas = atomics::Cas::new(bucket, "a")?;
    bucket.set("a", b"changed")?;
    match atomics::swap(cas, b"mine") {
        Ok(()) => out += "swap after a concurrent write: succeeded (wrong)\n",
        Err(atomics::CasError::CasFailed(fresh)) => {
            out += &format!("swap failed, now {}\n", show(fresh.current()?));
            atomics::swap(fresh, b"mine").map_err(|_| store::Error::Other("retry".into()))?;
            out += &format!("retried: a={}\n", show(bucket.get("a")?));
        }
        Err(atomics::CasError::StoreError(e)) => return Err(e),
    }
    Ok(out + &keyvalue::clean_up(bucket)?)
}

fn page(bucket: &store::Bucket, n: usize) -> Result<String, store::Error> {
    keyvalue::page(
        bucket,
        n,
        |c: Option<&String>| bucket.list_keys(c.map(String::as_str)),
        |r| r.cursor.clone(),
    )
}

struct KvPublished;

impl wasi::exports::http::incoming_handler::Guest for KvPublished {
    fn handle(request: IncomingRequest, out: ResponseOutparam) {
        let path = request.path_with_query().unwrap_or_default();
        let (path, query) = path.split_once('?').unwrap_or((&path, ""));
        let mut parts = path.trim_start_matches("/kvpublished/").splitn(2, '/');
        let bucket_name = parts.next().unwrap_or("default").to_string();
        let action = parts.next().unwrap_or("exercise").to_string();
        let n = query
            .strip_prefix("n=")
            .and_then(|n| n.parse().ok())
            .unwrap_or(10);
        let result = store::open(&bucket_name).and_then(|bucket| match action.as_str() {
            "page" => page(&bucket, n),
            "across" => across(&bucket_name, &bucket),
            _ => exercise(&bucket),
        });
        match result {
            Ok(text) => respond::respond(out, 200, &text),
            Err(e) => respond::respond(out, 500, &format!("error: {e:?}\n")),
        }
    }
}

wasi::http::proxy::export!(KvPublished);
