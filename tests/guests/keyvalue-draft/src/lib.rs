//! A component written against the published `wasi:keyvalue@0.2.0-draft` (what wasmCloud's
//! key-value examples and wasmtime's `-Skeyvalue` link), with `wit-bindgen` and the `wasi`
//! crate, no tabula SDK.
//!
//! `GET /kvdraft/BUCKET/exercise` runs store, atomics and batch calls and reports what it
//! saw, in the words the other versions' guests use; `GET /kvdraft/BUCKET/page?n=N` writes N
//! keys and lists them back page by page through the `u64` cursor.

#[path = "../../common/respond.rs"]
mod respond;

use wasi::http::types::{IncomingRequest, ResponseOutparam};

mod bindings {
    wit_bindgen::generate!({
        path: "../../../host/wit/keyvalue-0.2.0-draft",
        world: "imports",
    });
}

use bindings::wasi::keyvalue::{atomics, batch, store};

fn show(value: Option<Vec<u8>>) -> String {
    value.map_or("-".into(), |v| String::from_utf8_lossy(&v).into_owned())
}

fn exercise(bucket: &store::Bucket) -> Result<String, store::Error> {
    let mut out = String::new();
    bucket.set("a", b"1")?;
    out += &format!("get a={}\n", show(bucket.get("a")?));
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
    let many: Vec<String> = many
        .into_iter()
        .map(|e| e.map_or("none".into(), |(k, v)| format!("{k}={}", show(Some(v)))))
        .collect();
    out += &format!("get_many {}\n", many.join(" "));
    let mut keys = bucket.list_keys(None)?.keys;
    keys.sort();
    out += &format!("keys {}\n", keys.join(" "));
    atomics::increment(bucket, "n", 5)?;
    out += &format!("increment n={}\n", atomics::increment(bucket, "n", 2)?);
    batch::delete_many(bucket, &["a".into(), "b".into(), "c".into(), "n".into()])?;
    bucket.delete("missing")?;
    out += &format!("after delete: {:?}\n", bucket.list_keys(None)?.keys);
    Ok(out)
}

fn page(bucket: &store::Bucket, n: usize) -> Result<String, store::Error> {
    let pairs: Vec<(String, Vec<u8>)> = (0..n)
        .map(|i| (format!("p{i:05}"), b"x".to_vec()))
        .collect();
    batch::set_many(bucket, &pairs)?;
    let (mut seen, mut pages, mut cursor) = (std::collections::BTreeSet::new(), 0, None);
    loop {
        let response = bucket.list_keys(cursor)?;
        pages += 1;
        seen.extend(response.keys);
        match response.cursor {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    let keys: Vec<String> = seen.into_iter().collect();
    batch::delete_many(bucket, &keys)?;
    Ok(format!(
        "listed {} distinct keys in {pages} pages\n",
        keys.len()
    ))
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
