//! A guest that attacks its host, for the host's containment tests: each request runs one
//! attack, and the test checks that the host survives it, stays within its limits and serves
//! the next request normally.
//!
//! Most attacks make the *host* hold memory on the guest's behalf (file contents, long names,
//! resource handles, listings, header maps, store results) while the guest's own linear memory
//! stays small (under ~40 MiB of the 64 MiB the manifest asks for). With the default step
//! count, each would grow an unaccounted host by about 1 GiB or more; a host that charges
//! such memory to the request answers with an error instead, which the guest reports. The
//! others probe the HTTP and kv surfaces: odd statuses, forged cookies, huge TTLs, a trap or
//! a hang in the middle of a body, floods of log lines.
//!
//! `GET /hostile?attack=NAME&n=N` runs attack `NAME` for up to `N` steps (`n` is optional;
//! each attack has a default). Unless said otherwise, the answer is `200` with the body
//! `NAME: done N steps` when every step succeeded, `NAME: stopped at step I: ERROR` (the
//! `Debug` of the error) at the first step the host refused, or `NAME: setup failed: WHAT:
//! ERROR` when the preparation before the steps was refused. Every handle an attack creates is
//! kept until the response is finished. A trap simply ends the request (the host answers 500).
//! An unknown attack answers `400` with the list of attacks; an `n` that is not a number, `400`.
//!
//! Filesystem (all in `/tmp`; 32 MiB files):
//! - `truncate` (n=40): create `f{i}`, `set-size` 32 MiB, then 0, close it.
//! - `truncate-open` (n=40): create `f{i}`, `set-size` 32 MiB, close it, reopen it with
//!   `truncate` (kept).
//! - `unlink-open` (n=40): create `f`, `set-size` 32 MiB, keep it open, unlink `f`.
//! - `rename-over-open` (n=40): create `a`, `set-size` 32 MiB, keep it open, create `b`,
//!   rename `b` over `a`.
//! - `long-names` (n=100): `create-directory-at` with a 16 MiB name (first 8 bytes: `i`).
//! - `descriptor-paths` (n=100): create a directory with a 16 MiB name once (setup), then
//!   open it n times.
//! - `dir-listings` (n=2000): create 990 files with 250-byte names (setup), then open n
//!   `read-directory` streams on `/tmp` without reading them.
//! - `deep-tree` (n=50000): `d/d/d/...` n levels deep, each created from a descriptor of its
//!   parent, which is then closed (not kept).
//! - `set-size-huge`: create `f`, `set-size(u64::MAX)`, then `write(b"x", 1 << 63)`; the body
//!   is `set-size: RESULT` and `write: RESULT` lines.
//! - `metadata-hash`: create `f`; the body is `LOWER UPPER` of `metadata-hash` for `f`, then
//!   for `/tmp`, one line each (in decimal; `err: ERROR` instead on failure).
//!
//! Key-value (`wasi:keyvalue` bucket `default` unless said otherwise; `tabula:host/kv`):
//! - `bucket-names` (n=100): `store.open` with a 16 MiB identifier (first 8 bytes: `i`).
//! - `bucket-key` (n=1): `store.open` with a 2 MiB identifier, then `set("k", "v")` in it;
//!   the bucket name counts toward the key limit, so the host should refuse.
//! - `cas-handles` (n=2000): set `big` to 1 MiB (setup), then `cas.new(bucket, "big")` n
//!   times.
//! - `get-many` (n=2000): set `big` to 1 MiB (setup), then one `batch.get-many` of n times
//!   `big`; `done N steps` means all n values came back.
//! - `list-keys` (n=4294967295): one `tabula:host/kv` `list-keys("", none, n)`; the body is
//!   `list-keys: K keys` (or `stopped at step 0`).
//! - `huge-ttl`: `tabula:host/kv` `set("t", "v")` with a TTL of `u64::MAX` ms, then of
//!   `i64::MAX + 1` ms; the body has one `ttl-ms=T: RESULT` line for each.
//!
//! Sessions (`tabula:host/session`):
//! - `session-values` (n=100000): `set("v{i}", "x")`: many small values in one session.
//! - `session-get` (n=0): answers the value of `v{n}`, or `none`.
//!
//! HTTP and logs:
//! - `fields` (n=20000): `fields.from-list` with 12 headers of 4000 bytes each (~48 KiB).
//! - `log-flood` (n=1000000): n lines of `line {i}\r` plus ANSI colour codes on stderr.
//! - `echo-path`: answers the path it was given (with the query) and, on a second line, its
//!   `tabula-route` header.
//! - `split-lines`: writes `part one, ` and `part two` + newline to stderr through two
//!   handles, then `unfinished` with no newline through a third: two lines, not four.
//! - `status-101`: answers `101` with an empty body (or `200` saying the status was refused).
//! - `set-cookie`: answers `200 ok` with `set-cookie: tabula_session_victim=aaa…; Path=/`,
//!   trying to plant a session cookie of the host's (or `200` saying the header was refused).
//! - `echo-cookie`: answers with the request's `cookie` values joined by `; `, so a test can
//!   see whether the host let its own session cookie through to the guest.
//! - `stream-trap`: answers `200`, writes 10 KiB of body, then traps without finishing it.
//! - `stream-hang`: answers `200`, writes 10 KiB of body, then spins forever.
//! - `stream-unfinished`: answers `200`, writes 10 KiB of body, then returns without
//!   finishing or dropping the body (its handles are leaked, as a guest's runtime may do).
//! - `stream-dropped`: answers `200`, writes 10 KiB of body, then drops the body without
//!   finishing it.
//! - `head-trap`: answers `200`, then traps before writing any body.
//! - `big-response` (n=64): answers `200` with n MiB of body, then finishes it properly.
//! - `spin`: spins forever before answering.
//! - `read-body`: reads the whole request body; the answer is its length.
//! - `ok`: answers `200 ok`, a baseline.

use std::any::Any;
use std::fmt::Debug;

use wasi::filesystem::preopens;
use wasi::filesystem::types::{Descriptor, DescriptorFlags, ErrorCode, OpenFlags, PathFlags};
use wasi::http::types::{
    Fields, IncomingRequest, OutgoingBody, OutgoingResponse, ResponseOutparam,
};
use wasi::io::streams::{OutputStream, StreamError};

mod bindings {
    wit_bindgen::generate!({
        path: "../../../wit",
        world: "tabula:host/host",
        // The world also imports wasi:keyvalue, from a package outside tabula:host.
        generate_all,
    });
}

use bindings::tabula::host::{kv, session};
use bindings::wasi::keyvalue::{atomics, batch, store};

const MIB: usize = 1 << 20;

/// Longest write `blocking-write-and-flush` accepts; hosts trap on more.
const MAX_BLOCKING_WRITE: usize = 4096;

/// Every attack, in the order of the module documentation.
const ATTACKS: &[&str] = &[
    "split-lines",
    "echo-path",
    "truncate",
    "truncate-open",
    "unlink-open",
    "rename-over-open",
    "long-names",
    "descriptor-paths",
    "dir-listings",
    "deep-tree",
    "set-size-huge",
    "metadata-hash",
    "bucket-names",
    "bucket-key",
    "cas-handles",
    "get-many",
    "list-keys",
    "huge-ttl",
    "session-values",
    "session-get",
    "fields",
    "log-flood",
    "status-101",
    "set-cookie",
    "echo-cookie",
    "stream-trap",
    "stream-hang",
    "stream-unfinished",
    "stream-dropped",
    "head-trap",
    "big-response",
    "spin",
    "read-body",
    "ok",
];

/// Handles kept alive until the response is finished, so the host holds whatever they cost
/// for the whole request.
#[derive(Default)]
struct Keep(Vec<Box<dyn Any>>);

impl Keep {
    fn push<T: Any>(&mut self, handle: T) {
        self.0.push(Box::new(handle));
    }
}

impl Drop for Keep {
    fn drop(&mut self) {
        // Newest first: a child resource (a `cas`) goes before the parent it came from.
        while self.0.pop().is_some() {}
    }
}

/// Why an attack ended before its last step.
enum Stop {
    Setup(String),
    Step(u64, String),
}

/// Preparation an attack needs before its steps; a refusal there is reported as such.
fn setup<T, E: Debug>(what: &str, result: Result<T, E>) -> Result<T, Stop> {
    result.map_err(|e| Stop::Setup(format!("{what}: {e:?}")))
}

/// Runs `step(i)` for `i` in `0..n`, stopping at the first error.
fn steps<E: Debug>(n: u64, mut step: impl FnMut(u64) -> Result<(), E>) -> Result<(), Stop> {
    for i in 0..n {
        step(i).map_err(|e| Stop::Step(i, format!("{e:?}")))?;
    }
    Ok(())
}

fn report(name: &str, n: u64, result: Result<(), Stop>) -> String {
    match result {
        Ok(()) => format!("{name}: done {n} steps"),
        Err(Stop::Step(i, e)) => format!("{name}: stopped at step {i}: {e}"),
        Err(Stop::Setup(e)) => format!("{name}: setup failed: {e}"),
    }
}

/// A huge name whose first 8 bytes are a step number, so each step's name is new without
/// allocating another copy.
struct BigName(Vec<u8>);

impl BigName {
    fn new(len: usize) -> BigName {
        BigName(vec![b'x'; len])
    }

    fn numbered(&mut self, i: u64) -> &str {
        self.0[..8].copy_from_slice(format!("{:08}", i % 100_000_000).as_bytes());
        std::str::from_utf8(&self.0).expect("ASCII")
    }
}

// Filesystem.

fn tmp() -> Result<Descriptor, Stop> {
    preopens::get_directories()
        .into_iter()
        .find_map(|(dir, name)| (name == "/tmp").then_some(dir))
        .ok_or_else(|| Stop::Setup("no /tmp preopen".into()))
}

fn create_file(dir: &Descriptor, name: &str) -> Result<Descriptor, ErrorCode> {
    dir.open_at(
        PathFlags::empty(),
        name,
        OpenFlags::CREATE,
        DescriptorFlags::READ | DescriptorFlags::WRITE,
    )
}

fn open_dir(dir: &Descriptor, name: &str) -> Result<Descriptor, ErrorCode> {
    dir.open_at(
        PathFlags::empty(),
        name,
        OpenFlags::DIRECTORY,
        DescriptorFlags::READ | DescriptorFlags::MUTATE_DIRECTORY,
    )
}

const BIG_FILE: u64 = 32 * MIB as u64;

fn truncate(n: u64) -> Result<(), Stop> {
    let tmp = tmp()?;
    steps(n, |i| {
        let f = create_file(&tmp, &format!("f{i}"))?;
        f.set_size(BIG_FILE)?;
        f.set_size(0)
    })
}

fn truncate_open(n: u64, keep: &mut Keep) -> Result<(), Stop> {
    let tmp = tmp()?;
    steps(n, |i| {
        let name = format!("f{i}");
        create_file(&tmp, &name)?.set_size(BIG_FILE)?;
        keep.push(tmp.open_at(
            PathFlags::empty(),
            &name,
            OpenFlags::TRUNCATE,
            DescriptorFlags::READ | DescriptorFlags::WRITE,
        )?);
        Ok::<_, ErrorCode>(())
    })
}

fn unlink_open(n: u64, keep: &mut Keep) -> Result<(), Stop> {
    let tmp = tmp()?;
    steps(n, |_| {
        let f = create_file(&tmp, "f")?;
        f.set_size(BIG_FILE)?;
        keep.push(f);
        tmp.unlink_file_at("f")
    })
}

fn rename_over_open(n: u64, keep: &mut Keep) -> Result<(), Stop> {
    let tmp = tmp()?;
    steps(n, |_| {
        let a = create_file(&tmp, "a")?;
        a.set_size(BIG_FILE)?;
        keep.push(a);
        keep.push(create_file(&tmp, "b")?);
        tmp.rename_at("b", &tmp, "a")
    })
}

fn long_names(n: u64) -> Result<(), Stop> {
    let tmp = tmp()?;
    let mut name = BigName::new(16 * MIB);
    steps(n, |i| tmp.create_directory_at(name.numbered(i)))
}

fn descriptor_paths(n: u64, keep: &mut Keep) -> Result<(), Stop> {
    let tmp = tmp()?;
    let name = "x".repeat(16 * MIB);
    setup("create-directory-at", tmp.create_directory_at(&name))?;
    steps(n, |_| {
        keep.push(tmp.open_at(
            PathFlags::empty(),
            &name,
            OpenFlags::DIRECTORY,
            DescriptorFlags::READ,
        )?);
        Ok::<_, ErrorCode>(())
    })
}

fn dir_listings(n: u64, keep: &mut Keep) -> Result<(), Stop> {
    let tmp = tmp()?;
    let mut name = BigName::new(250);
    for i in 0..990 {
        setup(&format!("file {i}"), create_file(&tmp, name.numbered(i)))?;
    }
    steps(n, |_| {
        keep.push(tmp.read_directory()?);
        Ok::<_, ErrorCode>(())
    })
}

fn deep_tree(n: u64) -> Result<(), Stop> {
    let mut dir = tmp()?;
    steps(n, |_| {
        dir.create_directory_at("d")?;
        // The parent's descriptor is dropped here: only the tree itself holds the levels.
        dir = open_dir(&dir, "d")?;
        Ok::<_, ErrorCode>(())
    })
}

fn set_size_huge() -> Result<String, Stop> {
    let f = setup("create", create_file(&tmp()?, "f"))?;
    let size = f.set_size(u64::MAX);
    let write = f.write(b"x", 1 << 63);
    Ok(format!("set-size: {size:?}\nwrite: {write:?}"))
}

fn metadata_hash() -> Result<String, Stop> {
    let tmp = tmp()?;
    let f = setup("create", create_file(&tmp, "f"))?;
    let line = |d: &Descriptor| match d.metadata_hash() {
        Ok(h) => format!("{} {}", h.lower, h.upper),
        Err(e) => format!("err: {e:?}"),
    };
    Ok(format!("{}\n{}", line(&f), line(&tmp)))
}

// Key-value.

/// The value `cas-handles` and `get-many` multiply: the largest the host allows by default.
const BIG_VALUE: usize = MIB;

fn big_bucket() -> Result<store::Bucket, Stop> {
    let bucket = setup("open default", store::open("default"))?;
    setup("set big", bucket.set("big", &vec![b'v'; BIG_VALUE]))?;
    Ok(bucket)
}

fn bucket_names(n: u64, keep: &mut Keep) -> Result<(), Stop> {
    let mut name = BigName::new(16 * MIB);
    steps(n, |i| {
        keep.push(store::open(name.numbered(i))?);
        Ok::<_, store::Error>(())
    })
}

fn bucket_key(n: u64, keep: &mut Keep) -> Result<(), Stop> {
    let mut name = BigName::new(2 * MIB);
    steps(n, |i| {
        let bucket = store::open(name.numbered(i))?;
        let set = bucket.set("k", b"v");
        keep.push(bucket);
        set
    })
}

fn cas_handles(n: u64, keep: &mut Keep) -> Result<(), Stop> {
    let bucket = big_bucket()?;
    let mut handles = Vec::new();
    let result = steps(n, |_| {
        handles.push(atomics::Cas::new(&bucket, "big")?);
        Ok::<_, store::Error>(())
    });
    // The bucket before its handles, so that they are dropped first.
    keep.push(bucket);
    keep.push(handles);
    result
}

fn get_many(n: u64, keep: &mut Keep) -> Result<(), Stop> {
    let bucket = big_bucket()?;
    let keys = vec!["big".to_string(); n as usize];
    let result = batch::get_many(&bucket, &keys);
    keep.push(bucket);
    match result {
        Ok(values) if values.len() == keys.len() => Ok(()),
        Ok(values) => Err(Stop::Step(
            values.len() as u64,
            format!("only {} values came back", values.len()),
        )),
        Err(e) => Err(Stop::Step(0, format!("{e:?}"))),
    }
}

fn list_keys(n: u64) -> String {
    let limit = u32::try_from(n).unwrap_or(u32::MAX);
    match kv::list_keys("", None, limit) {
        Ok(page) => format!("list-keys: {} keys", page.keys.len()),
        Err(e) => format!("list-keys: stopped at step 0: {e:?}"),
    }
}

fn huge_ttl() -> String {
    [u64::MAX, i64::MAX as u64 + 1]
        .map(|ttl| format!("ttl-ms={ttl}: {:?}", kv::set("t", b"v", Some(ttl))))
        .join("\n")
}

// Sessions.

fn session_values(n: u64) -> Result<(), Stop> {
    steps(n, |i| session::set(&format!("v{i}"), b"x"))
}

fn session_get(n: u64) -> String {
    match session::get(&format!("v{n}")) {
        Ok(Some(value)) => String::from_utf8_lossy(&value).into_owned(),
        Ok(None) => "none".into(),
        Err(e) => format!("session-get: {e:?}"),
    }
}

// HTTP and logs.

fn fields(n: u64, keep: &mut Keep) -> Result<(), Stop> {
    let entries: Vec<(String, Vec<u8>)> = (0..12)
        .map(|j| (format!("x-a{j}"), vec![b'a'; 4000]))
        .collect();
    steps(n, |_| {
        keep.push(Fields::from_list(&entries)?);
        Ok::<_, wasi::http::types::HeaderError>(())
    })
}

fn log_flood(n: u64) -> Result<(), Stop> {
    let stderr = wasi::cli::stderr::get_stderr();
    let mut buf = String::with_capacity(MAX_BLOCKING_WRITE);
    // The first line in `buf`, so a failed write reports the step it would have completed.
    let mut first = 0;
    let flush = |buf: &mut String, first: u64| {
        let result = stderr.blocking_write_and_flush(buf.as_bytes());
        buf.clear();
        result.map_err(|e| Stop::Step(first, format!("{e:?}")))
    };
    for i in 0..n {
        let line = format!("line {i}\r\x1b[31mred\x1b[0m\n");
        if buf.len() + line.len() > MAX_BLOCKING_WRITE {
            flush(&mut buf, first)?;
            first = i;
        }
        buf.push_str(&line);
    }
    flush(&mut buf, first)
}

/// Writes `bytes` in pieces `blocking-write-and-flush` accepts.
fn write_all(stream: &OutputStream, bytes: &[u8]) -> Result<(), StreamError> {
    bytes
        .chunks(MAX_BLOCKING_WRITE)
        .try_for_each(|chunk| stream.blocking_write_and_flush(chunk))
}

/// Sends the head of a response and opens its body.
fn start(out: ResponseOutparam, status: u16, headers: Fields) -> (OutgoingBody, OutputStream) {
    let response = OutgoingResponse::new(headers);
    response.set_status_code(status).expect("a valid status");
    let body = response.body().expect("the body, once");
    ResponseOutparam::set(out, Ok(response));
    let stream = body.write().expect("the body's stream, once");
    (body, stream)
}

fn respond(out: ResponseOutparam, status: u16, headers: Fields, text: &str) {
    let (body, stream) = start(out, status, headers);
    if let Err(e) = write_all(&stream, text.as_bytes()) {
        eprintln!("hostile: writing the response: {e:?}");
    }
    drop(stream);
    if let Err(e) = OutgoingBody::finish(body, None) {
        eprintln!("hostile: finishing the response: {e:?}");
    }
}

fn status_101(out: ResponseOutparam) {
    let response = OutgoingResponse::new(Fields::new());
    if response.set_status_code(101).is_err() {
        return respond(
            out,
            200,
            Fields::new(),
            "status-101: set-status-code refused",
        );
    }
    let body = response.body().expect("the body, once");
    ResponseOutparam::set(out, Ok(response));
    if let Err(e) = OutgoingBody::finish(body, None) {
        eprintln!("hostile: finishing the response: {e:?}");
    }
}

fn set_cookie(out: ResponseOutparam) {
    let cookie = format!("tabula_session_victim={}; Path=/", "a".repeat(64));
    match Fields::from_list(&[("set-cookie".to_string(), cookie.into_bytes())]) {
        Ok(headers) => respond(out, 200, headers, "ok"),
        Err(e) => respond(
            out,
            200,
            Fields::new(),
            &format!("set-cookie: refused: {e:?}"),
        ),
    }
}

fn echo_cookie(request: &IncomingRequest) -> String {
    let values = request.headers().get("cookie");
    let joined = values.join(&b"; "[..]);
    String::from_utf8_lossy(&joined).into_owned()
}

/// Answers 200 and sends 10 KiB of body without finishing it; the caller then misbehaves
/// while holding the body open.
fn start_10k(out: ResponseOutparam) -> (OutgoingBody, OutputStream) {
    let (body, stream) = start(out, 200, Fields::new());
    if let Err(e) = write_all(&stream, &[b'x'; 10 * 1024]) {
        eprintln!("hostile: writing the response: {e:?}");
    }
    (body, stream)
}

fn spin() -> ! {
    loop {
        std::hint::black_box(0);
    }
}

fn big_response(out: ResponseOutparam, mib: u64) {
    let (body, stream) = start(out, 200, Fields::new());
    let chunk = [b'x'; 64 * 1024];
    let chunks = mib * (MIB / chunk.len()) as u64;
    if let Err(e) = (0..chunks).try_for_each(|_| write_all(&stream, &chunk)) {
        eprintln!("hostile: writing the response: {e:?}");
    }
    drop(stream);
    if let Err(e) = OutgoingBody::finish(body, None) {
        eprintln!("hostile: finishing the response: {e:?}");
    }
}

fn read_body(request: &IncomingRequest) -> String {
    let Ok(body) = request.consume() else {
        return "read-body: the body was already taken".into();
    };
    let Ok(stream) = body.stream() else {
        return "read-body: the body stream was already taken".into();
    };
    let mut len = 0u64;
    loop {
        match stream.blocking_read(64 * 1024) {
            Ok(bytes) => len += bytes.len() as u64,
            Err(StreamError::Closed) => break,
            Err(e) => return format!("read-body: stopped after {len} bytes: {e:?}"),
        }
    }
    drop(stream);
    drop(wasi::http::types::IncomingBody::finish(body));
    len.to_string()
}

// The request.

/// `attack` and `n` from the query string. Names and numbers need no percent-decoding.
fn parse_query(path_with_query: &str) -> (String, Option<Result<u64, String>>) {
    let query = path_with_query.split_once('?').map_or("", |(_, q)| q);
    let mut attack = String::new();
    let mut n = None;
    for pair in query.split('&') {
        match pair.split_once('=') {
            Some(("attack", v)) => attack = v.to_string(),
            Some(("n", v)) => n = Some(v.parse().map_err(|_| v.to_string())),
            _ => {}
        }
    }
    (attack, n)
}

/// How many steps an attack takes when the query does not say: enough to hold ~1 GiB of
/// host memory where nothing charges it to the request.
fn default_n(attack: &str) -> u64 {
    match attack {
        "truncate" | "truncate-open" | "unlink-open" | "rename-over-open" => 40,
        "long-names" | "descriptor-paths" | "bucket-names" => 100,
        "dir-listings" | "cas-handles" | "get-many" => 2000,
        "deep-tree" => 50_000,
        "fields" => 20_000,
        "log-flood" => 1_000_000,
        "list-keys" => u32::MAX.into(),
        "session-values" => 100_000,
        "session-get" => 0,
        "big-response" => 64,
        _ => 1,
    }
}

struct Hostile;

impl wasi::exports::http::incoming_handler::Guest for Hostile {
    fn handle(request: IncomingRequest, out: ResponseOutparam) {
        let (attack, n) = parse_query(&request.path_with_query().unwrap_or_default());
        let n = match n.transpose() {
            Ok(n) => n,
            Err(bad) => {
                let text = format!("bad n: {bad:?}");
                return respond(out, 400, Fields::new(), &text);
            }
        };
        let name = attack.as_str();
        let n = n.unwrap_or_else(|| default_n(name));
        let mut keep = Keep::default();
        let text = match name {
            "truncate" => report(name, n, truncate(n)),
            "truncate-open" => report(name, n, truncate_open(n, &mut keep)),
            "unlink-open" => report(name, n, unlink_open(n, &mut keep)),
            "rename-over-open" => report(name, n, rename_over_open(n, &mut keep)),
            "long-names" => report(name, n, long_names(n)),
            "descriptor-paths" => report(name, n, descriptor_paths(n, &mut keep)),
            "dir-listings" => report(name, n, dir_listings(n, &mut keep)),
            "deep-tree" => report(name, n, deep_tree(n)),
            "set-size-huge" => set_size_huge().unwrap_or_else(|e| report(name, 1, Err(e))),
            "metadata-hash" => metadata_hash().unwrap_or_else(|e| report(name, 1, Err(e))),
            "bucket-names" => report(name, n, bucket_names(n, &mut keep)),
            "bucket-key" => report(name, n, bucket_key(n, &mut keep)),
            "cas-handles" => report(name, n, cas_handles(n, &mut keep)),
            "get-many" => report(name, n, get_many(n, &mut keep)),
            "list-keys" => list_keys(n),
            "huge-ttl" => huge_ttl(),
            "session-values" => report(name, n, session_values(n)),
            "session-get" => session_get(n),
            "fields" => report(name, n, fields(n, &mut keep)),
            "log-flood" => report(name, n, log_flood(n)),
            "split-lines" => {
                for part in ["part one, ", "part two\n", "unfinished"] {
                    let stderr = wasi::cli::stderr::get_stderr();
                    let _ = stderr.blocking_write_and_flush(part.as_bytes());
                }
                "ok".to_string()
            }
            "status-101" => return status_101(out),
            "set-cookie" => return set_cookie(out),
            "echo-cookie" => echo_cookie(&request),
            "echo-path" => {
                let route = request.headers().get("tabula-route");
                let route: Vec<String> = route
                    .iter()
                    .map(|v| String::from_utf8_lossy(v).into_owned())
                    .collect();
                format!(
                    "{}\n{}",
                    request.path_with_query().unwrap_or_default(),
                    route.join(",")
                )
            }
            "stream-trap" => {
                let _open = start_10k(out);
                panic!("stream-trap: trapping mid-body");
            }
            "stream-hang" => {
                let _open = start_10k(out);
                spin()
            }
            "stream-unfinished" => {
                std::mem::forget(start_10k(out));
                return;
            }
            "stream-dropped" => {
                let (body, stream) = start_10k(out);
                drop(stream);
                drop(body);
                return;
            }
            "head-trap" => {
                let _open = start(out, 200, Fields::new());
                panic!("head-trap: trapping after the response head");
            }
            "big-response" => return big_response(out, n),
            "spin" => spin(),
            "read-body" => read_body(&request),
            "ok" => "ok".to_string(),
            _ => {
                let text = format!(
                    "unknown attack {attack:?}; pass ?attack= one of: {}",
                    ATTACKS.join(", ")
                );
                return respond(out, 400, Fields::new(), &text);
            }
        };
        respond(out, 200, Fields::new(), &text);
        drop(keep);
    }
}

wasi::http::proxy::export!(Hostile);
