//! Python and JavaScript handlers, first-class: built by `tabula build` with their toolchains
//! (componentize-py from PyPI, componentize-js from npm: `.ci/run` installs both), served by
//! the real binary on a real Redis, keeping state in kv and sessions and reading config.

use std::path::Path;

use crate::harness::{Server, client, root, send};
use crate::redis_server::RedisServer;

/// Builds the project at `dir` with `tabula build` and returns its component.
pub(crate) fn build(dir: &Path) -> String {
    let target = root().join("target/guests");
    let output = std::process::Command::new(&*crate::harness::TABULA)
        .current_dir(root())
        .arg("build")
        .arg(dir)
        .arg("--target-dir")
        .arg(&target)
        .output()
        .expect("running tabula build");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "building {} failed. Python projects need `pip install componentize-py==0.25.1`; \
         JavaScript ones need Node.js 20+ and npm (`apt-get install nodejs npm`). \
         tabula said:\n{stderr}",
        dir.display()
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    stdout
        .split('\t')
        .nth(2)
        .unwrap_or_else(|| panic!("no component in {stdout:?}"))
        .trim()
        .to_string()
}

/// GETs `path` as a visitor holding `cookie` (and keeps what the answer sets).
async fn visit(server: &Server, path: &str, cookie: &mut Option<String>) -> String {
    let mut req = hyper::Request::get(server.url(path));
    if let Some(cookie) = cookie.as_ref() {
        req = req.header("cookie", cookie);
    }
    let reply = send(&client(), req.body(Default::default()).unwrap()).await;
    assert_eq!(reply.status, 200, "{path}: {}", reply.body);
    if let Some(set) = reply.headers.get("set-cookie") {
        let set = set.to_str().unwrap();
        *cookie = Some(set.split(';').next().unwrap().to_string());
    }
    reply.body.replace(' ', "")
}

#[tokio::test]
async fn python_and_javascript_apps_keep_state_and_read_config() {
    let py = build(&root().join("examples/counter-py"));
    let js = build(&root().join("examples/counter-js"));
    let redis = RedisServer::start();
    let replica = || {
        Server::start(
            [
                "serve",
                "--store",
                &redis.url(),
                &format!("/counter-py={py}"),
                &format!("/counter-js={js}"),
                "--var",
                "greeting=Howdy",
            ]
            .map(String::from),
        )
    };
    let (a, b) = (replica(), replica());
    for app in ["/counter-py", "/counter-js"] {
        let (mut ada, mut bob) = (None, None);
        assert_eq!(
            visit(&a, app, &mut ada).await,
            r#"{"greeting":"Howdy","visits":1,"yours":1}"#
        );
        assert!(ada.is_some(), "{app}: the session cookie is set");
        assert_eq!(
            visit(&b, app, &mut ada).await,
            r#"{"greeting":"Howdy","visits":2,"yours":2}"#,
            "{app}: the other replica has the count and the session"
        );
        assert_eq!(
            visit(&a, app, &mut bob).await,
            r#"{"greeting":"Howdy","visits":3,"yours":1}"#
        );
        assert_eq!(visit(&b, &format!("{app}/value"), &mut None).await, "3\n");
    }
}

#[tokio::test]
async fn tabula_new_makes_python_and_javascript_projects_that_build_and_serve() {
    let scratch = root().join("target/guests/new-projects");
    std::fs::create_dir_all(&scratch).unwrap();
    for (lang, app) in [("python", "hellopy"), ("js", "hellojs")] {
        let dir = scratch.join(app);
        std::fs::remove_dir_all(&dir).ok();
        let status = std::process::Command::new(&*crate::harness::TABULA)
            .current_dir(&scratch)
            .args(["new", app, "--lang", lang])
            .status()
            .unwrap();
        assert!(status.success(), "tabula new {app} --lang {lang}");
        let wasm = build(&dir);
        let server = Server::start(
            ["serve", "--store", "memory", &format!("/{app}={wasm}")].map(String::from),
        );
        assert_eq!(
            visit(&server, &format!("/{app}"), &mut None).await,
            r#"{"greeting":"Hello","visits":1,"yours":1}"#,
            "{lang}"
        );
    }
}

/// Without the language's toolchain, a project named on the command line fails with the
/// install command; one found in a directory of projects (`tabula up examples`) is skipped
/// with the same words, so the rest still serve.
#[test]
fn a_missing_toolchain_names_its_install_and_a_listed_project_is_skipped() {
    let dir = root().join("target/guests/no-toolchain");
    std::fs::remove_dir_all(&dir).ok();
    std::fs::create_dir_all(dir.join("app")).unwrap();
    std::fs::write(dir.join("app/tabula.toml"), "lang = \"python\"\n").unwrap();
    std::fs::write(dir.join("app/app.py"), "IncomingHandler = None\n").unwrap();
    let tabula = |path: &Path| {
        std::process::Command::new(&*crate::harness::TABULA)
            .arg("build")
            .arg(path)
            .arg("--target-dir")
            .arg(dir.join("target"))
            // A PATH where no componentize-py is.
            .env("PATH", "/usr/bin:/bin")
            .output()
            .unwrap()
    };
    let fix = "`componentize-py` is not installed: Python projects are built with it: `pip \
               install componentize-py==0.25.1`";
    let named = tabula(&dir.join("app"));
    assert!(!named.status.success());
    assert!(String::from_utf8_lossy(&named.stderr).contains(fix));
    let listed = tabula(&dir);
    assert!(listed.status.success());
    let stderr = String::from_utf8_lossy(&listed.stderr);
    assert!(stderr.contains("tabula: skipping app ("), "{stderr}");
    assert!(stderr.contains(fix), "{stderr}");
}
