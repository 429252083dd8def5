//! The per-request filesystem through std::fs in a real guest: a fresh `/tmp` per request with
//! quotas, read-only assets at `/app`, no way out of either, and memory that goes back.

use tokio::task::JoinSet;

use crate::harness::{Server, client, get, request};

/// Served as a project (not a bare component) so that its manifest's assets are mounted.
fn fs_server(extra: &[&str]) -> Server {
    crate::harness::guests(); // built once, so this start only checks it is up to date
    let target = crate::harness::root().join("target/guests");
    Server::start(
        [
            "serve",
            "--store",
            "memory",
            "--target-dir",
            target.to_str().unwrap(),
        ]
        .iter()
        .chain(extra)
        .map(|s| s.to_string())
        .chain(["tests/guests/fstool".to_string()]),
    )
}

async fn call(server: &Server, method: &str, path: &str, body: &str) -> String {
    let reply = request(&client(), method, &server.url(path), body.to_string()).await;
    assert_eq!(reply.status, 200, "{path}: {}", reply.body);
    reply.body
}

#[tokio::test]
async fn std_fs_works_in_tmp_and_reads_assets() {
    let server = fs_server(&[]);
    assert_eq!(
        call(&server, "GET", "/fstool/exercise", "").await,
        "tmp empty: true\n\
         read back: hello, world\n\
         after append: hello, world!\n\
         len: 13\n\
         is_dir: true\n\
         ls /tmp/a: [\"b\", \"g.txt\"]\n\
         canonicalize: ok: \"/tmp/a/g.txt\"\n\
         gone: true\n\
         asset: hello from the assets\n\n"
    );
    assert_eq!(
        call(&server, "GET", "/fstool/read?path=/app/docs/a.txt", "").await,
        "nested\n\n"
    );
    assert_eq!(
        call(&server, "GET", "/fstool/ls?path=/app", "").await,
        "ok: [\"docs\", \"readme.txt\"]\n"
    );
}

#[tokio::test]
async fn a_file_written_in_one_request_is_gone_in_the_next() {
    let server = fs_server(&[]);
    assert_eq!(
        call(
            &server,
            "PUT",
            "/fstool/write?path=/tmp/note",
            "remember me"
        )
        .await,
        "ok: ()\n"
    );
    assert_eq!(
        call(&server, "GET", "/fstool/read?path=/tmp/note", "").await,
        "err: NotFound\n"
    );
    assert_eq!(
        call(&server, "GET", "/fstool/ls?path=/tmp", "").await,
        "ok: []\n"
    );
}

#[tokio::test]
async fn concurrent_requests_never_see_each_others_tmp() {
    let server = fs_server(&[]);
    let mut requests = JoinSet::new();
    for i in 0..40 {
        let url = server.url(&format!("/fstool/private?id=request-{i}"));
        requests.spawn(async move { get(&client(), &url).await });
    }
    while let Some(reply) = requests.join_next().await {
        let reply = reply.unwrap();
        assert_eq!(
            (reply.status, reply.body.as_str()),
            (200, "ok: \"true 1\"\n")
        );
    }
}

#[tokio::test]
async fn quotas_give_no_space_errors_not_traps() {
    let server = fs_server(&["--tmp-max-bytes", "2097152", "--tmp-max-files", "3"]);
    assert_eq!(
        call(&server, "PUT", "/fstool/fill?mib=2", "").await,
        "ok: 2097152\n"
    );
    // Past the byte quota the write fails and the guest goes on (200, not a trap). The host
    // reports insufficient-space; wasi-libc turns a failed stream write into EIO whatever the
    // cause, so std sees `Uncategorized` here (creating past the file quota, below, is ENOSPC).
    assert_eq!(
        call(&server, "PUT", "/fstool/fill?mib=3", "").await,
        "err: Uncategorized\n"
    );
    // Files count too, and each request starts from zero.
    for _ in 0..2 {
        assert_eq!(
            call(&server, "POST", "/fstool/many?n=3", "").await,
            "ok: ()\n"
        );
    }
    assert_eq!(
        call(&server, "POST", "/fstool/many?n=4", "").await,
        "err: StorageFull\n"
    );
    assert_eq!(
        call(&server, "GET", "/fstool/exercise", "")
            .await
            .lines()
            .next(),
        Some("tmp empty: true")
    );
}

#[tokio::test]
async fn assets_are_read_only() {
    let server = fs_server(&[]);
    for (method, path) in [
        ("PUT", "/fstool/write?path=/app/readme.txt"),
        ("PUT", "/fstool/write?path=/app/new.txt"),
        ("POST", "/fstool/mkdir?path=/app/dir"),
        ("POST", "/fstool/rm?path=/app/readme.txt"),
        ("POST", "/fstool/rmdir?path=/app/docs"),
        ("POST", "/fstool/rename?from=/app/readme.txt&to=/app/x.txt"),
    ] {
        assert_eq!(
            call(&server, method, path, "x").await,
            "err: ReadOnlyFilesystem\n",
            "{method} {path}"
        );
    }
    assert_eq!(
        call(&server, "GET", "/fstool/read?path=/app/readme.txt", "").await,
        "hello from the assets\n\n"
    );
    assert_eq!(
        call(
            &server,
            "POST",
            "/fstool/rename?from=/app/readme.txt&to=/tmp/stolen.txt",
            ""
        )
        .await,
        "err: ReadOnlyFilesystem\n"
    );
}

#[tokio::test]
async fn paths_cannot_escape() {
    let server = fs_server(&[]);
    for path in [
        "/tmp/../app/readme.txt",
        "/app/../../etc/passwd",
        "/etc/passwd",
        "/tmp/../../etc/hostname",
        "/proc/self/environ",
    ] {
        let answer = call(&server, "GET", &format!("/fstool/read?path={path}"), "").await;
        assert!(answer.starts_with("err: "), "{path}: {answer}");
    }
    let answer = call(&server, "PUT", "/fstool/write?path=/tmp/../escape", "x").await;
    assert!(answer.starts_with("err: "), "{answer}");
}

#[tokio::test]
async fn memory_returns_after_many_large_file_requests() {
    let server = fs_server(&["--tmp-max-bytes", "33554432"]);
    let round = || async {
        for _ in 0..5 {
            assert_eq!(
                call(&server, "PUT", "/fstool/fill?mib=16", "").await,
                "ok: 16777216\n"
            );
        }
    };
    round().await;
    let baseline = crate::harness::rss(server.pid());
    for _ in 0..4 {
        round().await;
    }
    let after = crate::harness::rss(server.pid());
    assert!(
        after <= baseline + (32 << 20),
        "RSS grew from {} MiB to {} MiB over 20 requests writing 16 MiB each",
        baseline >> 20,
        after >> 20
    );
}

#[tokio::test]
async fn the_report_and_site_examples_work() {
    crate::harness::guests();
    let target = crate::harness::root().join("target/guests");
    let server = Server::start(
        [
            "serve",
            "--store",
            "memory",
            "--target-dir",
            target.to_str().unwrap(),
            "examples/report",
            "examples/site",
        ]
        .iter()
        .map(|s| s.to_string()),
    );
    let csv = "item,qty,price\ntea,2,3.5\nscones,4,1.25\n";
    let summary = "rows: 2\nqty: sum 6, mean 3\nprice: sum 4.75, mean 2.375\n";
    assert_eq!(call(&server, "POST", "/report", csv).await, summary);
    assert_eq!(
        call(&server, "GET", "/report", "").await,
        summary,
        "kept in kv"
    );

    let c = client();
    let index = get(&c, &server.url("/site/")).await;
    assert_eq!(index.status, 200);
    assert_eq!(index.headers["content-type"], "text/html; charset=utf-8");
    assert!(
        index.body.contains("Served from read-only assets"),
        "{}",
        index.body
    );
    let css = get(&c, &server.url("/site/css/style.css")).await;
    assert_eq!(
        (css.status, css.headers["content-type"].to_str().unwrap()),
        (200, "text/css; charset=utf-8")
    );
    assert_eq!(get(&c, &server.url("/site/nope.html")).await.status, 404);
    assert_eq!(
        get(&c, &server.url("/site/../etc/passwd")).await.status,
        404
    );
}
