//! Hostile deploys that aim at the compiler and the compile cache (issue 25, findings 4 and
//! 10): a small component that costs every replica half a minute and gigabytes to compile,
//! a shared `--cache-dir`, a cache entry copied over another component's, and interface
//! names the import check and the linker disagreed on. Every test here failed on the build
//! before the fix (run them against another build with `TABULA_TEST_BINARY`).

use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;

use crate::harness::{
    ADMIN_TOKEN, Server, TABULA, admin_cli, app_args, client, get, guests, peak_rss, root, send,
};

const MIB: u64 = 1 << 20;

/// A component holding one core module of `functions` functions of `body_bytes` bytes of
/// `nop` each, which nothing instantiates: wasmtime compiles every one of them anyway.
/// 400,000 empty ones are 1.6 MB, and took 31 s and +2.5 GiB to compile.
fn compile_bomb(functions: u32, body_bytes: usize) -> Vec<u8> {
    use wasm_encoder::{
        CodeSection, Component, Function, FunctionSection, Module, ModuleSection, TypeSection,
    };
    let mut types = TypeSection::new();
    types.ty().function([], []);
    let mut body = Function::new([]);
    for _ in 0..body_bytes {
        body.instructions().nop();
    }
    body.instructions().end();
    let (mut declared, mut code) = (FunctionSection::new(), CodeSection::new());
    for _ in 0..functions {
        declared.function(0);
        code.function(&body);
    }
    let mut module = Module::new();
    module.section(&types).section(&declared).section(&code);
    let mut component = Component::new();
    component.section(&ModuleSection(&module));
    component.finish()
}

/// A scratch directory of this test's own, empty.
fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("tabula-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// `tabula serve ARGS...` run to its end (it is expected to refuse to start; it is stopped
/// after two minutes), with the log at `info`: whether it succeeded, its stderr, and how long
/// it took.
fn serve_to_the_end(args: &[&str]) -> (bool, String, Duration) {
    let started = Instant::now();
    let mut child = Command::new(&*TABULA)
        .current_dir(root())
        .args(["serve", "--store", "memory", "--listen", "127.0.0.1:0"])
        .args(["--operator-listen", "off"])
        .args(args)
        .env("TABULA_LOG", "info")
        .env("TABULA_CACHE_DIR", "off")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running tabula");
    let mut stderr = child.stderr.take().unwrap();
    let log = std::thread::spawn(move || {
        let mut log = String::new();
        let _ = stderr.read_to_string(&mut log);
        log
    });
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if started.elapsed() > Duration::from_secs(120) {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let took = started.elapsed();
    let log = log.join().unwrap();
    (status.is_some_and(|s| s.success()), log, took)
}

#[tokio::test]
async fn a_compile_bomb_is_refused_before_it_is_compiled_and_deploys_go_on() {
    let server = Server::start(
        [
            "serve",
            "--store",
            "memory",
            "--admin-listen",
            "127.0.0.1:0",
        ]
        .map(String::from),
    );
    let before = peak_rss(server.pid());
    let bomb = compile_bomb(400_000, 0);
    assert!(bomb.len() < 2 * MIB as usize, "{} bytes", bomb.len());
    let upload = hyper::Request::post(format!("{}/v1/apps/bomb/versions", server.admin))
        .header("authorization", format!("Bearer {ADMIN_TOKEN}"))
        .body(Full::new(Bytes::from(bomb)))
        .unwrap();
    let started = Instant::now();
    let reply = send(&client(), upload).await;
    let took = started.elapsed();
    let grew = peak_rss(server.pid()).saturating_sub(before);
    assert_eq!(reply.status, 422, "{}", reply.body);
    assert!(
        reply.body.contains("400000 functions to compile")
            && reply.body.contains("--max-compile-functions"),
        "the refusal names what is too large and the flag: {}",
        reply.body
    );
    // It took 31 s and +2.5 GiB to be refused (for not exporting the handler) after
    // compiling it all.
    assert!(took < Duration::from_secs(5), "refused after {took:?}");
    assert!(grew < 256 * MIB, "peak RSS grew {} MiB", grew / MIB);

    // An ordinary deploy is not in the way of that, nor after it.
    let hello = guests()["hello"].wasm.display().to_string();
    let run = admin_cli(&server, &["deploy", &hello, "--name", "hello"]);
    assert!(run.ok, "{}\n{}", run.stdout, run.stderr);
    let answer = get(&client(), &server.url("/hello")).await;
    assert_eq!(
        (answer.status, answer.body.as_str()),
        (200, "Hello, world!\n")
    );
}

#[test]
fn a_component_over_a_compile_limit_is_refused_on_the_command_line_too() {
    let dir = scratch("bombs");
    let many = dir.join("many-functions.wasm");
    std::fs::write(&many, compile_bomb(400_000, 0)).unwrap();
    let (ok, log, took) = serve_to_the_end(&[&format!("/bomb={}", many.display())]);
    assert!(!ok, "a compile bomb was served:\n{log}");
    assert!(log.contains("--max-compile-functions"), "{log}");
    assert!(took < Duration::from_secs(5), "refused after {took:?}");

    // Few functions, much code: 2 MiB of `nop` in 2 functions, against a 1 MiB limit.
    let long = dir.join("much-code.wasm");
    std::fs::write(&long, compile_bomb(2, 1 << 20)).unwrap();
    let app = format!("/long={}", long.display());
    let (ok, log, _) = serve_to_the_end(&["--max-compile-code-mib", "1", &app]);
    assert!(
        !ok,
        "2 MiB of code was compiled under a 1 MiB limit:\n{log}"
    );
    assert!(
        log.contains("2.0 MiB of code to compile") && log.contains("TABULA_MAX_COMPILE_CODE_MIB"),
        "{log}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// The mode bits of `path`, with the sticky bit.
fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
}

/// Every file under `dir`, at any depth.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            found.extend(files_under(&path));
        } else {
            found.push(path);
        }
    }
    found
}

#[tokio::test]
async fn a_shared_cache_dir_keeps_its_mode_and_the_cache_stays_private() {
    // Like /tmp: everyone may write, the sticky bit keeps their files theirs.
    let shared = scratch("shared-cache");
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o1777)).unwrap();
    let cache_dir = shared.display().to_string();
    let mut args = ["serve", "--store", "memory", "--cache-dir", &cache_dir]
        .map(String::from)
        .to_vec();
    args.extend(app_args(&["hello"]));
    let mut server = Server::start(args.clone());
    let answer = get(&client(), &server.url("/hello")).await;
    assert_eq!(answer.status, 200);
    server.terminate();
    assert_eq!(
        mode(&shared),
        0o1777,
        "tabula changed the mode of a directory it did not make"
    );
    let compiled: Vec<PathBuf> = files_under(&shared)
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "cwasm"))
        .collect();
    assert_eq!(compiled.len(), 1, "{compiled:?}");
    let own = compiled[0].parent().unwrap();
    assert_ne!(own, shared, "compiled code straight in a shared directory");
    assert_eq!(mode(own), 0o700, "the cache's own directory is private");

    // A directory of that name that anyone may write is refused, and left as it is.
    std::fs::remove_dir_all(own).unwrap();
    std::fs::create_dir(own).unwrap();
    std::fs::set_permissions(own, std::fs::Permissions::from_mode(0o777)).unwrap();
    let (ok, log, _) = serve_to_the_end(&["--cache-dir", &cache_dir, &app_args(&["hello"])[0]]);
    assert!(!ok, "served from a cache anyone may write:\n{log}");
    assert!(
        log.contains("is not a private directory") && log.contains("--cache-dir"),
        "{log}"
    );
    assert_eq!(mode(own), 0o777);
    let _ = std::fs::remove_dir_all(&shared);
}

/// The cache's files, by stem (`DIGEST-FINGERPRINT`), without the lock files.
fn cache_entries(dir: &Path) -> Vec<PathBuf> {
    files_under(dir)
        .into_iter()
        .filter(|p| p.extension().is_none_or(|e| e != "lock"))
        .collect()
}

#[tokio::test]
async fn a_cache_entry_copied_over_another_components_is_not_served_as_it() {
    let dir = scratch("swapped-cache");
    let cache_dir = dir.display().to_string();
    let serve = |app: &str| {
        let mut args = ["serve", "--store", "memory", "--cache-dir", &cache_dir]
            .map(String::from)
            .to_vec();
        args.extend(app_args(&[app]));
        Server::start(args)
    };
    let mut hello = serve("hello");
    hello.terminate();
    let hello_files = cache_entries(&dir);
    let mut stateless = serve("stateless");
    let own = get(&client(), &stateless.url("/stateless")).await;
    assert_eq!(own.status, 200);
    assert_ne!(own.body, "Hello, world!\n");
    stateless.terminate();
    let stateless_files: Vec<PathBuf> = cache_entries(&dir)
        .into_iter()
        .filter(|p| !hello_files.contains(p))
        .collect();
    assert_eq!(
        stateless_files.len(),
        hello_files.len(),
        "{stateless_files:?}"
    );

    // Someone who can write the cache puts hello's entry, whole, where stateless's was.
    for target in &stateless_files {
        let source = hello_files
            .iter()
            .find(|p| p.extension() == target.extension())
            .unwrap();
        std::fs::copy(source, target).unwrap();
    }
    let again = serve("stateless");
    let answer = get(&client(), &again.url("/stateless")).await;
    assert_eq!(
        (answer.status, &answer.body),
        (200, &own.body),
        "another component's code was served as stateless"
    );
    assert!(again.logged("not this component's"), "{}", again.log());
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_wasmcloud_component_reads_its_config_through_wasi_config_runtime() {
    // wasmCloud 1.x imports `wasi:config/runtime@0.2.0-draft`: it passed the import check,
    // then failed to link with wasmtime's own message.
    let mut args = ["serve", "--store", "memory", "--var", "greeting=hi"]
        .map(String::from)
        .to_vec();
    args.extend(app_args(&["wasmcloudconfig"]));
    let server = Server::start(args);
    let c = client();
    let answer = get(&c, &server.url("/wasmcloudconfig/greeting")).await;
    assert_eq!((answer.status, answer.body.as_str()), (200, "hi\n"));
    let answer = get(&c, &server.url("/wasmcloudconfig/missing")).await;
    assert_eq!((answer.status, answer.body.as_str()), (200, "-\n"));
}

#[test]
fn a_refused_component_is_not_logged_as_ready() {
    let (ok, log, _) = serve_to_the_end(&[&app_args(&["forbidden"])[0]]);
    assert!(!ok, "{log}");
    assert!(
        log.contains("imports interfaces tabula does not provide"),
        "{log}"
    );
    assert!(!log.contains("component ready"), "{log}");
}
