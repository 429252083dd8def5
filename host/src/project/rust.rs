//! Rust projects: built with cargo for `wasm32-wasip2` against the tabula SDK, and the
//! project `tabula new` writes.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};
use serde::Deserialize;

use super::BuildOptions;

/// The Rust target guests are compiled for.
const WASM_TARGET: &str = "wasm32-wasip2";

/// Makes sure the `wasm32-wasip2` standard library is installed, installing it with rustup
/// when it is not (machines may set `RUSTUP_AUTO_INSTALL=0`, so nothing else will).
pub(super) fn ensure_target() -> Result<()> {
    let sysroot = Command::new("rustc")
        .args(["--print", "sysroot"])
        .output()
        .context("running `rustc --print sysroot`: is Rust installed (https://rustup.rs)?")?;
    let sysroot = PathBuf::from(String::from_utf8_lossy(&sysroot.stdout).trim());
    if sysroot.join("lib/rustlib").join(WASM_TARGET).is_dir() {
        return Ok(());
    }
    eprintln!(
        "tabula: the {WASM_TARGET} target is missing; running `rustup target add {WASM_TARGET}`"
    );
    let status = Command::new("rustup")
        .args(["target", "add", WASM_TARGET])
        .status()
        .context("running rustup: install the target with `rustup target add wasm32-wasip2`")?;
    if !status.success() {
        bail!("`rustup target add {WASM_TARGET}` failed ({status}); run it by hand and retry");
    }
    Ok(())
}

/// One line of `cargo build --message-format=json`, the parts we read.
#[derive(Deserialize)]
struct CargoMessage {
    reason: String,
    #[serde(default)]
    manifest_path: Option<PathBuf>,
    #[serde(default)]
    filenames: Vec<PathBuf>,
}

/// Builds the project in `dir` and returns the path of its component.
pub(super) fn build(dir: &Path, name: &str, options: &BuildOptions) -> Result<PathBuf> {
    let manifest_path = dir.join("Cargo.toml").canonicalize().with_context(|| {
        format!(
            "{} has a tabula.toml but no Cargo.toml (for Python or JavaScript, say \
                 `lang = \"python\"` or `lang = \"js\"` in it)",
            dir.display()
        )
    })?;
    eprintln!(
        "tabula: building {name} ({}) for {WASM_TARGET}",
        dir.display()
    );
    let mut cargo = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cargo
        .args(["build", "--release", "--target", WASM_TARGET])
        .arg("--manifest-path")
        .arg(&manifest_path)
        .arg("--message-format=json-render-diagnostics")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    if let Some(target_dir) = &options.target_dir {
        cargo.arg("--target-dir").arg(target_dir);
    }
    let output = cargo
        .spawn()
        .context("running cargo: is Rust installed (https://rustup.rs)?")?
        .wait_with_output()?;
    if !output.status.success() {
        bail!("building {name} failed: cargo's errors are above");
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    stdout
        .lines()
        .filter_map(|line| serde_json::from_str::<CargoMessage>(line).ok())
        .filter(|m| m.reason == "compiler-artifact")
        .filter(|m| m.manifest_path.as_deref() == Some(manifest_path.as_path()))
        .flat_map(|m| m.filenames)
        .find(|f| f.extension().is_some_and(|e| e == "wasm"))
        .with_context(|| {
            format!(
                "building {name} produced no .wasm: its Cargo.toml needs \
                 `[lib] crate-type = [\"cdylib\"]`"
            )
        })
}

/// Where `tabula new` points projects for the SDK: `TABULA_SDK_DIR`, else the SDK beside the
/// sources this binary was built from.
fn sdk_dir() -> Result<PathBuf> {
    let dir = std::env::var_os("TABULA_SDK_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../guest-sdk"));
    dir.join("Cargo.toml")
        .is_file()
        .then(|| dir.canonicalize())
        .transpose()?
        .with_context(|| {
            format!(
                "the tabula SDK is not at {}: set TABULA_SDK_DIR to its directory (guest-sdk/ \
                 in tabula's sources)",
                dir.display()
            )
        })
}

/// `tabula new NAME`: a handler project in a new directory `NAME`, with a unit test, that
/// builds, tests and deploys as it is. Its lockfile is the one tabula was built with, so the
/// build needs nothing that is not already on this machine.
pub(super) fn scaffold(dir: &Path, app: &str) -> Result<()> {
    let sdk = sdk_dir()?;
    let files = [
        (
            "Cargo.toml",
            format!(
                "[package]\nname = \"{app}\"\nversion = \"0.1.0\"\nedition = \"2024\"\npublish = false\n\n\
                 [lib]\n# cdylib: the component; rlib: native unit tests with `cargo test`.\n\
                 crate-type = [\"cdylib\", \"rlib\"]\n\n[dependencies]\n\
                 tabula-sdk = {{ path = {:?} }}\n\n# A project of its own, even inside another workspace.\n[workspace]\n",
                sdk.display().to_string()
            ),
        ),
        (
            "Cargo.lock",
            include_str!("../../../Cargo.lock").to_string(),
        ),
        (
            "tabula.toml",
            format!("name = \"{app}\"\nroute = \"/{app}\"\n"),
        ),
        (".gitignore", "/target\n".to_string()),
        ("src/lib.rs", SCAFFOLD_LIB.replace("APP", app)),
    ];
    super::write_project(dir, &files)?;
    println!(
        "created {}: `cd {} && cargo test` runs its test natively, `tabula up` serves it \
         at http://127.0.0.1:8080/{app}, `tabula deploy` sends it to your hosts",
        dir.display(),
        dir.display()
    );
    Ok(())
}

/// The handler `tabula new` writes: a counter kept in kv, with a native test.
const SCAFFOLD_LIB: &str = r#"//! APP: a tabula handler. Each request runs in a fresh instance; what outlives it goes
//! through `kv` or `session`.

use tabula_sdk::{Request, Response, handler, kv};

#[handler]
fn handle(req: Request) -> Result<Response, tabula_sdk::Error> {
    let name = req.query_param("name").unwrap_or_else(|| "world".into());
    let visits = kv::increment("visits", 1)?;
    Ok(Response::text(format!("Hello, {name}! Visit {visits}.\n")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greets_and_counts() {
        let first = handle(Request::get("/APP?name=Ada")).unwrap();
        assert_eq!(first.body_text(), "Hello, Ada! Visit 1.\n");
        let second = handle(Request::get("/APP")).unwrap();
        assert_eq!(second.body_text(), "Hello, world! Visit 2.\n");
    }
}
"#;
