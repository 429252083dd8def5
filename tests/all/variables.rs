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
            "token=TABULA_SECRET_TEST_TOKEN",
            "--secret",
            "greeter:api_key=TABULA_SECRET_TEST_TOKEN",
        ],
        &[("TABULA_SECRET_TEST_TOKEN", SECRET)],
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
        "token=TABULA_SECRET_NEVER_SET_4e2",
    ]);
    assert!(!status.success());
    assert!(
        stderr.contains("`TABULA_SECRET_NEVER_SET_4e2`, which is not set"),
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

/// A secret of several lines (a PEM key, with `\r\n` endings) printed by the guest shows
/// none of its lines in the log, though the log cuts it line by line.
#[tokio::test]
async fn a_secret_of_several_lines_is_hidden_line_by_line() {
    let lines = [
        "-----BEGIN PRIVATE KEY-----",
        "MIIEvQIBADANBgkqhkiG9w0BAQEFAASC",
        "BKcwggSjAgEAAoIBAQC7VJTUt9Us8cKj",
        "-----END PRIVATE KEY-----",
    ];
    let pem = format!("{}\r\n", lines.join("\r\n"));
    let server = serve(
        &[
            &format!("/wasiconfig={}", wasm("wasiconfig")),
            "--secret",
            "key=TABULA_SECRET_TEST_PEM",
        ],
        &[("TABULA_SECRET_TEST_PEM", &pem)],
    );
    assert_eq!(body(&server, "/wasiconfig").await, format!("key={pem}\n"));
    assert!(server.logged("key=[secret]"), "{}", server.log());
    for line in lines {
        assert!(
            !server.log().contains(line),
            "a line of the secret is in the log, `{line}`:\n{}",
            server.log()
        );
    }
}

/// A secret may name only the variables the operator set aside for apps: by default those
/// that start with `TABULA_SECRET_`, never tabula's own settings. A deploy naming the admin
/// token is refused with the rule and the flag, and the guest never sees the token.
#[tokio::test]
async fn a_secret_names_only_what_the_operator_allows() {
    let redis = crate::redis_server::RedisServer::start();
    let server = Server::start_with_env(
        [
            "serve",
            "--store",
            &redis.url(),
            "--admin-listen",
            "127.0.0.1:0",
        ]
        .map(String::from),
        &[],
    );
    let config = wasm("wasiconfig");
    for env in ["TABULA_ADMIN_TOKEN", "TABULA_STORE", "HOME"] {
        let run = crate::harness::admin_cli(
            &server,
            &[
                "deploy",
                &config,
                "--name",
                "cfg",
                "--route",
                "/wasiconfig",
                "--secret",
                &format!("tok={env}"),
            ],
        );
        assert!(!run.ok, "a deploy read `{env}`:\n{}", run.stdout);
        assert!(
            run.stderr.contains(env) && run.stderr.contains("--secret-prefix"),
            "{}",
            run.stderr
        );
    }
    assert_eq!(
        get(&client(), &server.url("/wasiconfig")).await.status,
        404,
        "no refused deploy is served"
    );

    // `serve` refuses the same at start, and the operator may choose the prefix.
    let wasiconfig = format!("/wasiconfig={config}");
    let (status, stderr) = run_tabula(&[
        "serve",
        "--store",
        "memory",
        &wasiconfig,
        "--secret",
        "tok=TABULA_ADMIN_TOKEN",
    ]);
    assert!(!status.success());
    assert!(stderr.contains("tabula's own settings"), "{stderr}");
    let acme = serve(
        &[
            &wasiconfig,
            "--secret-prefix",
            "ACME_",
            "--secret",
            "tok=ACME_TEST_TOKEN",
        ],
        &[("ACME_TEST_TOKEN", SECRET)],
    );
    assert_eq!(body(&acme, "/wasiconfig/tok").await, format!("{SECRET}\n"));
}
