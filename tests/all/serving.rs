//! Serving components: routing, a fresh instance per request, failures that stay contained.

use bytes::Bytes;
use http_body_util::Full;
use tokio::task::JoinSet;

use crate::harness::{Server, client, get, guests, h2_client, run_tabula, send};

#[tokio::test]
async fn hello_answers_with_and_without_a_name() {
    let server = Server::serve(&["hello"]);
    let client = client();
    let reply = get(&client, &server.url("/hello")).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.body, "Hello, world!\n");
    assert_eq!(reply.headers["content-type"], "text/plain; charset=utf-8");
    let reply = get(&client, &server.url("/hello?name=Ada")).await;
    assert_eq!((reply.status, reply.body.as_str()), (200, "Hello, Ada!\n"));
}

const FRESH: &str = "{\"counter\":1,\"vec_len\":1}\n";

#[tokio::test]
async fn every_sequential_request_sees_a_fresh_instance() {
    let server = Server::serve(&["stateless"]);
    let client = client();
    for i in 0..200 {
        let reply = get(&client, &server.url("/stateless")).await;
        assert_eq!(reply.status, 200, "request {i}");
        assert_eq!(
            reply.body, FRESH,
            "request {i} saw memory of an earlier one"
        );
    }
}

#[tokio::test]
async fn every_concurrent_request_sees_a_fresh_instance() {
    let server = Server::serve(&["stateless"]);
    let client = client();
    let mut requests = JoinSet::new();
    for _ in 0..200 {
        let (client, url) = (client.clone(), server.url("/stateless"));
        requests.spawn(async move { get(&client, &url).await });
    }
    let mut fresh = 0;
    while let Some(reply) = requests.join_next().await {
        let reply = reply.unwrap();
        assert_eq!((reply.status, reply.body.as_str()), (200, FRESH));
        fresh += 1;
    }
    assert_eq!(fresh, 200);
}

#[tokio::test]
async fn http2_is_served_too() {
    let server = Server::serve(&["hello", "stateless"]);
    let client = h2_client();
    let mut requests = JoinSet::new();
    for _ in 0..50 {
        let (client, url) = (client.clone(), server.url("/stateless"));
        requests.spawn(async move { get(&client, &url).await });
    }
    while let Some(reply) = requests.join_next().await {
        assert_eq!(reply.unwrap().body, FRESH);
    }
    assert_eq!(
        get(&client, &server.url("/hello")).await.body,
        "Hello, world!\n"
    );
}

#[tokio::test]
async fn a_trapping_guest_gets_500_and_the_server_keeps_serving() {
    let server = Server::serve(&["trap", "hello"]);
    let client = client();
    for path in ["/trap/panic", "/trap/unreachable"] {
        let reply = get(&client, &server.url(path)).await;
        assert_eq!(reply.status, 500, "{path}");
        let reply = get(&client, &server.url("/trap/fine")).await;
        assert_eq!((reply.status, reply.body.as_str()), (200, "still here\n"));
    }
    assert_eq!(get(&client, &server.url("/hello")).await.status, 200);
    assert!(
        server.logged("this guest panics on purpose"),
        "the panic message is logged:\n{}",
        server.log()
    );
    assert!(
        server.logged("guest failed"),
        "the trap is logged:\n{}",
        server.log()
    );
}

#[tokio::test]
async fn unknown_routes_get_404() {
    let server = Server::serve(&["hello"]);
    let client = client();
    for path in ["/", "/nope", "/helloworld"] {
        assert_eq!(get(&client, &server.url(path)).await.status, 404, "{path}");
    }
    assert_eq!(
        get(&client, &server.url("/hello/sub/path")).await.status,
        200
    );
}

#[tokio::test]
async fn a_plain_wasi_component_without_our_sdk_runs_unmodified() {
    let server = Server::serve(&["plain"]);
    let client = client();
    let req = hyper::Request::post(server.url("/plain/x?y=1"))
        .header("user-agent", "tabula-test")
        .body(Full::new(Bytes::from_static(b"ignored")))
        .unwrap();
    let reply = send(&client, req).await;
    assert_eq!(reply.status, 200);
    assert_eq!(
        reply.body,
        "plain wasi: Method::Post /plain/x?y=1 agent=tabula-test\n"
    );
    assert!(
        server.logged("plain guest handling /plain/x?y=1"),
        "guest stdout reaches the host log:\n{}",
        server.log()
    );
}

#[tokio::test]
async fn outbound_http_is_denied_with_the_standard_error() {
    let server = Server::serve(&["plain"]);
    let reply = get(&client(), &server.url("/plain/outbound")).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.body, "outbound: ErrorCode::HttpRequestDenied\n");
}

#[tokio::test]
async fn guests_get_no_ambient_authority() {
    // The host process has environment variables, arguments and files; the guest sees none of
    // them, only its two in-memory directories.
    let server = Server::serve(&["plain"]);
    let reply = get(&client(), &server.url("/plain/ambient")).await;
    assert_eq!(reply.status, 200);
    assert_eq!(
        reply.body,
        "env=0 args=0 preopens=[\"/tmp\", \"/app\"] stdin=closed\n"
    );
}

#[tokio::test]
async fn a_guest_that_never_answers_gets_500() {
    let server = Server::serve(&["plain"]);
    let client = client();
    assert_eq!(
        get(&client, &server.url("/plain/noresponse")).await.status,
        500
    );
    assert_eq!(get(&client, &server.url("/plain/ok")).await.status, 200);
    assert!(
        server.logged("without setting a response"),
        "{}",
        server.log()
    );
}

#[test]
fn malformed_components_are_refused_at_start_with_a_clear_error() {
    let dir = std::env::temp_dir().join(format!("tabula-bad-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let garbage = dir.join("garbage.wasm");
    std::fs::write(&garbage, b"this is not wasm").unwrap();
    let core = dir.join("core.wasm");
    std::fs::write(&core, b"\0asm\x01\0\0\0").unwrap();

    let (status, stderr) = run_tabula(&["serve", "--store", "memory", garbage.to_str().unwrap()]);
    assert!(!status.success());
    assert!(stderr.contains("compiling the component"), "{stderr}");

    let (status, stderr) = run_tabula(&["serve", "--store", "memory", core.to_str().unwrap()]);
    assert!(!status.success());
    assert!(
        stderr.contains("not a component") && stderr.contains("wasm32-wasip2"),
        "{stderr}"
    );

    let (status, stderr) = run_tabula(&["serve", "--store", "memory", "/nowhere/at/all"]);
    assert!(!status.success());
    assert!(stderr.contains("no such file or directory"), "{stderr}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn imports_tabula_does_not_provide_are_refused_at_load_with_their_names() {
    let forbidden = guests()["forbidden"].wasm.display().to_string();
    let (status, stderr) = run_tabula(&["serve", "--store", "memory", &forbidden]);
    assert!(!status.success());
    assert!(
        stderr.contains("imports interfaces tabula does not provide: acme:secret/vault"),
        "{stderr}"
    );
}

/// An interface tabula serves, in a version it does not: refused at load with the version
/// it does serve, not with the linker's "resource implementation is missing".
#[test]
fn imports_in_a_version_tabula_does_not_serve_are_refused_with_the_one_it_does() {
    let old = guests()["oldkv"].wasm.display().to_string();
    let (status, stderr) = run_tabula(&["serve", "--store", "memory", &old]);
    assert!(!status.success());
    assert!(
        stderr.contains(
            "wasi:keyvalue/store@0.1.0 (a version tabula does not serve: it serves \
             wasi:keyvalue@0.2.0-draft or wasi:keyvalue@0.2.0-draft2)"
        ),
        "{stderr}"
    );
}

/// A WASI 0.3 component (an async `wasi:http/handler@0.3.0` export, as spin-sdk 7
/// builds) is refused with a message that names WASI 0.3 and what to build, not wasmtime's
/// "requires the component model async feature". Both from the command line and a deploy.
#[test]
fn wasi_03_components_are_refused_naming_wasi_03() {
    let p3 = guests()["wasip3"].wasm.display().to_string();
    let (status, stderr) = run_tabula(&["serve", "--store", "memory", &p3]);
    assert!(!status.success());
    for needle in [
        "this is a WASI 0.3 component (",
        "wasi:http/handler@0.3.0",
        "tabula serves WASI 0.2 (wasmtime's 0.3 support is still experimental): build it for WASI 0.2",
    ] {
        assert!(stderr.contains(needle), "{needle}: {stderr}");
    }
    assert!(!stderr.contains("async feature"), "{stderr}");
}

/// A component named on the command line is compiled once: a restart loads it from the
/// compile cache (`--cache-dir`), as a replica does a deployed one.
#[tokio::test]
async fn a_component_on_the_command_line_is_compiled_once_across_restarts() {
    let cache = std::env::temp_dir().join(format!("tabula-fixed-cache-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&cache);
    let args: Vec<String> = [
        "serve",
        "--store",
        "memory",
        "--cache-dir",
        cache.to_str().unwrap(),
    ]
    .iter()
    .map(|s| s.to_string())
    .chain(crate::harness::app_args(&["hello"]))
    .collect();
    for cached in [false, true] {
        let mut server = Server::start(args.clone());
        let reply = get(&client(), &server.url("/hello")).await;
        assert_eq!(reply.body, "Hello, world!\n");
        let line = format!("cached={cached}");
        assert!(server.logged(&line), "{line}: {}", server.log());
        server.terminate();
    }
    std::fs::remove_dir_all(&cache).unwrap();
}

#[test]
fn two_apps_on_one_route_are_refused() {
    let hello = guests()["hello"].wasm.display().to_string();
    let (status, stderr) = run_tabula(&[
        "serve",
        "--store",
        "memory",
        &format!("/a={hello}"),
        &format!("/a={hello}"),
    ]);
    assert!(!status.success());
    assert!(stderr.contains("two apps are named `a`"), "{stderr}");
}

#[tokio::test]
async fn up_builds_a_project_directory_and_serves_it() {
    let target = crate::harness::root().join("target/guests");
    let server = Server::start(
        // Two projects, not all of examples/: its Python and JavaScript apps take their
        // toolchains and a minute to build and compile (polyglot.rs covers them).
        [
            "up",
            "examples/hello",
            "examples/stateless",
            "--target-dir",
            target.to_str().unwrap(),
        ]
        .iter()
        .map(|s| s.to_string()),
    );
    let client = client();
    assert_eq!(
        get(&client, &server.url("/hello?name=up")).await.body,
        "Hello, up!\n"
    );
    assert_eq!(get(&client, &server.url("/stateless")).await.body, FRESH);
}

#[tokio::test]
async fn an_endless_loop_is_stopped_at_the_deadline() {
    let server = Server::start(
        ["serve", "--store", "memory", "--request-timeout", "1"]
            .iter()
            .map(|s| s.to_string())
            .chain(crate::harness::app_args(&["trap", "hello"])),
    );
    let client = client();
    let started = std::time::Instant::now();
    // More spinning guests than the server has worker threads.
    let looping: Vec<_> = (0..4)
        .map(|_| {
            let (client, url) = (client.clone(), server.url("/trap/loop"));
            tokio::spawn(async move { get(&client, &url).await })
        })
        .collect();
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    // While they spin, others are served: guests yield to the host every epoch tick.
    for _ in 0..20 {
        assert_eq!(get(&client, &server.url("/hello")).await.status, 200);
    }
    assert!(
        looping.iter().all(|l| !l.is_finished()),
        "hello was only served after the loops were stopped"
    );
    for l in looping {
        assert_eq!(l.await.unwrap().status, 500);
    }
    let took = started.elapsed();
    assert!(
        took < std::time::Duration::from_secs(5),
        "the loops ran {took:?}"
    );
    assert!(
        server.logged("exceeded its deadline of 1s"),
        "{}",
        server.log()
    );
}

#[test]
fn sigterm_stops_the_server_cleanly() {
    let mut server = Server::serve(&["hello"]);
    let status = server.terminate();
    assert!(
        status.success(),
        "tabula exited with {status} after SIGTERM"
    );
    assert!(server.logged("shutting down"), "{}", server.log());
}

#[test]
fn serve_insists_on_a_store() {
    let hello = guests()["hello"].wasm.display().to_string();
    let (status, stderr) = run_tabula(&["serve", &hello]);
    assert!(!status.success());
    assert!(stderr.contains("needs --store"), "{stderr}");
}

/// `--access-log` takes its value only after `=`; given after a space, the value would be an
/// app path, and the error names the fix.
#[test]
fn an_access_log_value_after_a_space_is_refused_with_the_fix() {
    let (status, stderr) = run_tabula(&["serve", "--store", "memory", "--access-log", "off"]);
    assert!(!status.success());
    assert!(stderr.contains("`--access-log=off`"), "{stderr}");
}

/// Two `tabula up` on one machine, on components whose file names are not app names: both
/// start (each operator listener on a port of its own, printed), and each serves its app.
#[tokio::test]
async fn two_ups_on_one_machine_and_any_file_name() {
    use std::io::BufRead;
    let dir = std::env::temp_dir().join(format!("tabula-names-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("a+b.wasm");
    std::fs::copy(&guests()["hello"].wasm, &file).unwrap();
    let mut children = Vec::new();
    let mut seen = Vec::new();
    for _ in 0..2 {
        let mut child = std::process::Command::new(&*crate::harness::TABULA)
            .args(["up", &file.display().to_string(), "--listen", "127.0.0.1:0"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
        let (mut operator, mut serving, mut app) = (None, None, None);
        for line in lines.by_ref().map_while(Result::ok) {
            if let Some(addr) = line.strip_prefix("tabula: operator on ") {
                operator = Some(addr.to_string());
            } else if let Some(addr) = line.strip_prefix("tabula: serving on ") {
                serving = Some(addr.to_string());
            } else if serving.is_some() {
                app = Some(line);
                break;
            }
        }
        let (operator, serving) = (
            operator.expect("an operator port"),
            serving.expect("started"),
        );
        assert!(
            app.as_deref()
                .unwrap_or("")
                .trim_start()
                .starts_with("a_b "),
            "{app:?}"
        );
        let reply = get(&client(), &format!("{serving}/")).await;
        assert_eq!(
            (reply.status, reply.body.as_str()),
            (200, "Hello, world!\n")
        );
        let health = get(&client(), &format!("{operator}/healthz")).await;
        assert_eq!(health.status, 200);
        seen.push(operator);
        children.push(child);
    }
    assert_ne!(seen[0], seen[1], "each has its own operator port");
    for mut child in children {
        let _ = child.kill();
        let _ = child.wait();
    }
    let _ = std::fs::remove_dir_all(&dir);
}
