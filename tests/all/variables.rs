//! Per-app variables through `wasi:config/store` and the SDK's `config`: from the manifest,
//! from the command line, with a deploy; secrets by reference, never in the log, the metrics
//! or the store.

use crate::harness::{Server, client, get, guests, root, run_tabula};

/// A secret's value, unlike anything else a test logs.
const SECRET: &str = "s3cr3t-7c1d-value";

fn wasm(name: &str) -> String {
    guests()[name].wasm.display().to_string()
}

fn serve(args: &[&str], env: &[(&str, &str)]) -> Server {
    let target = root().join("target/guests");
    Server::start_with_env(
        [
            "serve",
            "--store",
            "memory",
            "--target-dir",
            target.to_str().unwrap(),
        ]
        .iter()
        .chain(args)
        .map(|s| s.to_string()),
        env,
    )
}

async fn body(server: &Server, path: &str) -> String {
    let reply = get(&client(), &server.url(path)).await;
    assert_eq!(reply.status, 200, "{path}: {}", reply.body);
    reply.body
}

#[tokio::test]
async fn variables_come_from_the_manifest_and_the_command_line() {
    // The project's tabula.toml says `greeting = "Welcome"`; the code's default is "Hello".
    let manifest = serve(&["examples/greeter"], &[]);
    assert_eq!(body(&manifest, "/greeter").await, "Welcome, world!\n");
    let flag = serve(&["examples/greeter", "--var", "greeting=Howdy"], &[]);
    assert_eq!(
        body(&flag, "/greeter?name=Ada").await,
        "Howdy, Ada!\n",
        "the flag wins"
    );

    // A bare component has no manifest: only what the command line gives, for every app or
    // for the one it names.
    let greeter = format!("/greeter={}", wasm("greeter"));
    let bare = serve(&[&greeter], &[]);
    assert_eq!(body(&bare, "/greeter").await, "Hello, world!\n");
    let config = format!("/wasiconfig={}", wasm("wasiconfig"));
    let named = serve(
        &[
            &greeter,
            &config,
            "--var",
            "greeter:greeting=Hi",
            "--var",
            "shared=1",
        ],
        &[],
    );
    assert_eq!(body(&named, "/greeter").await, "Hi, world!\n");
    assert_eq!(
        body(&named, "/wasiconfig").await,
        "shared=1\n",
        "`greeter:` is for greeter only; the unprefixed one is for both"
    );
    assert_eq!(body(&named, "/wasiconfig/greeting").await, "-\n");
}

#[tokio::test]
async fn secrets_reach_the_guest_and_never_the_log_or_metrics() {
    let server = serve(
        &[
            &format!("/wasiconfig={}", wasm("wasiconfig")),
            &format!("/greeter={}", wasm("greeter")),
            "--var",
            "wasiconfig:plain=visible",
            "--secret",
            "token=TABULA_TEST_TOKEN",
            "--secret",
            "greeter:api_key=TABULA_TEST_TOKEN",
        ],
        &[("TABULA_TEST_TOKEN", SECRET)],
    );
    // The guest reads it (through Spin's version of wasi:config) and prints every variable.
    assert_eq!(
        body(&server, "/wasiconfig").await,
        format!("plain=visible\ntoken={SECRET}\n")
    );
    // The SDK's config reads it too.
    let c = client();
    let private = server.url("/greeter/private");
    assert_eq!(get(&c, &private).await.status, 401);
    let req = hyper::Request::get(&private)
        .header("authorization", format!("Bearer {SECRET}"))
        .body(Default::default())
        .unwrap();
    assert_eq!(crate::harness::send(&c, req).await.status, 200);

    let metrics = get(&c, &server.operator_url("/metrics")).await.body;
    assert!(!metrics.contains(SECRET), "the secret is in the metrics");
    // What the guest printed is logged, with the secret hidden.
    assert!(server.logged("token=[secret]"), "{}", server.log());
    assert!(server.logged("plain=visible"), "{}", server.log());
    assert!(
        !server.log().contains(SECRET),
        "the secret is in the log:\n{}",
        server.log()
    );
}

#[test]
fn a_secret_that_is_not_set_stops_the_start_and_names_its_variable() {
    let config = format!("/wasiconfig={}", wasm("wasiconfig"));
    let (status, stderr) = run_tabula(&[
        "serve",
        "--store",
        "memory",
        &config,
        "--secret",
        "token=TABULA_TEST_NEVER_SET_4e2",
    ]);
    assert!(!status.success());
    assert!(
        stderr.contains("`TABULA_TEST_NEVER_SET_4e2`, which is not set"),
        "{stderr}"
    );
}

#[test]
fn bad_variables_are_refused_with_the_fix() {
    let config = format!("/wasiconfig={}", wasm("wasiconfig"));
    let (status, stderr) = run_tabula(&["serve", "--store", "memory", &config, "--var", "a b=1"]);
    assert!(!status.success());
    assert!(stderr.contains("not a valid variable name"), "{stderr}");
    let (status, stderr) = run_tabula(&["serve", "--store", "memory", &config, "--var", "x"]);
    assert!(!status.success());
    assert!(stderr.contains("is not [APP:]NAME=VALUE"), "{stderr}");
    let (status, stderr) =
        run_tabula(&["serve", "--store", "memory", &config, "--var", "nope:x=1"]);
    assert!(!status.success());
    assert!(
        stderr.contains("app `nope`, which is not among the apps given"),
        "{stderr}"
    );
}
