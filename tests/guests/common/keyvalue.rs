//! Shared by the guests written against the published `wasi:keyvalue` WIT (0.2.0-draft and
//! 0.2.0-draft2): the calls both versions have, reported in the words the tests expect.
//! Included with `#[path]` into each guest, where `crate::bindings` is its version's.

use std::collections::BTreeSet;

use crate::bindings::wasi::keyvalue::{atomics, batch, store};

pub fn show(value: Option<Vec<u8>>) -> String {
    value.map_or("-".into(), |v| String::from_utf8_lossy(&v).into_owned())
}

/// store, batch and atomics calls on a bucket, and what they answered.
pub fn common(bucket: &store::Bucket) -> Result<String, store::Error> {
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
    Ok(out)
}

/// Deletes what [`common`] wrote, and says what is left.
pub fn clean_up(bucket: &store::Bucket) -> Result<String, store::Error> {
    batch::delete_many(bucket, &["a".into(), "b".into(), "c".into(), "n".into()])?;
    bucket.delete("missing")?;
    Ok(format!(
        "after delete: {:?}\n",
        bucket.list_keys(None)?.keys
    ))
}

/// Writes `n` keys, lists them back page by page through `list` (a version's `list-keys`,
/// with its own cursor type), and deletes them.
pub fn page<C>(
    bucket: &store::Bucket,
    n: usize,
    list: impl Fn(Option<&C>) -> Result<store::KeyResponse, store::Error>,
    cursor_of: impl Fn(&store::KeyResponse) -> Option<C>,
) -> Result<String, store::Error> {
    let pairs: Vec<(String, Vec<u8>)> = (0..n)
        .map(|i| (format!("p{i:05}"), b"x".to_vec()))
        .collect();
    batch::set_many(bucket, &pairs)?;
    let (mut seen, mut pages, mut cursor) = (BTreeSet::new(), 0, None);
    loop {
        let response = list(cursor.as_ref())?;
        pages += 1;
        cursor = cursor_of(&response);
        seen.extend(response.keys);
        if cursor.is_none() {
            break;
        }
    }
    let keys: Vec<String> = seen.into_iter().collect();
    batch::delete_many(bucket, &keys)?;
    Ok(format!(
        "listed {} distinct keys in {pages} pages\n",
        keys.len()
    ))
}
