//! Embeds what `tabula build` needs to build Python and JavaScript projects on a machine that
//! has only the `tabula` binary: the WIT of the guest contract (`wit/`) and the Python and
//! JavaScript SDKs (`guest-sdk/python`, `guest-sdk/js`). `project::sdk` writes them out.
//!
//! And builds the probe `tabula check` deploys (`host/probe`) into a component, embedded by
//! `deploy::check`, so that an operator with only the binary can check a fleet. It is built
//! here rather than committed: `.wasm` files stay out of the repository.

use std::fmt::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap())
        .parent()
        .unwrap()
        .to_path_buf();
    let mut files = Vec::new();
    for dir in ["wit", "guest-sdk/python", "guest-sdk/js"] {
        println!("cargo:rerun-if-changed={}", root.join(dir).display());
        collect(&root.join(dir), &mut files);
    }
    files.sort();
    let mut out = String::from("/// The embedded files, by path from the repository's root.\n");
    out += "pub const FILES: &[(&str, &[u8])] = &[\n";
    for file in &files {
        let rel = file
            .strip_prefix(&root)
            .unwrap()
            .to_string_lossy()
            .replace('\\', "/");
        println!("cargo:rerun-if-changed={}", file.display());
        writeln!(
            out,
            "    ({rel:?}, include_bytes!({:?})),",
            file.display().to_string()
        )
        .unwrap();
    }
    out += "];\n";
    let out_dir = PathBuf::from(std::env::var("OUT_DIR").unwrap());
    std::fs::write(out_dir.join("sdk_files.rs"), out).unwrap();
    build_probe(&root, &out_dir);
}

/// Builds `host/probe` for `wasm32-wasip2` into `OUT_DIR/probe.wasm`: in a target directory of
/// its own (the outer build holds the lock on ours), stripped (it is embedded), and without
/// the outer build's flags, target and wrappers (e.g. a musl target's `crt-static`, or
/// clippy's driver), which are for the host.
fn build_probe(root: &Path, out_dir: &Path) {
    let probe = root.join("host/probe");
    println!("cargo:rerun-if-changed={}", probe.display());
    let target_dir = out_dir.join("probe-target");
    let status = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
        .args([
            "build",
            "--release",
            "--target",
            "wasm32-wasip2",
            "--manifest-path",
        ])
        .arg(probe.join("Cargo.toml"))
        .arg("--target-dir")
        .arg(&target_dir)
        .env("CARGO_PROFILE_RELEASE_DEBUG", "false")
        .env("CARGO_PROFILE_RELEASE_STRIP", "true")
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("CARGO_BUILD_RUSTFLAGS")
        .env_remove("CARGO_BUILD_TARGET")
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("CARGO_BUILD_TARGET_DIR")
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .status()
        .expect("running cargo to build host/probe");
    assert!(
        status.success(),
        "building host/probe (the component `tabula check` deploys) failed; it needs the \
         wasm32-wasip2 target: `rustup target add wasm32-wasip2`"
    );
    let built = target_dir.join("wasm32-wasip2/release/tabula_check_probe.wasm");
    std::fs::copy(&built, out_dir.join("probe.wasm"))
        .unwrap_or_else(|e| panic!("copying {}: {e}", built.display()));
}

/// Every file under `dir` but what tools generate there (installed packages, caches).
fn collect(dir: &Path, files: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        if matches!(name.as_str(), "node_modules" | "__pycache__" | ".gitignore")
            || name.starts_with('.')
        {
            continue;
        }
        if path.is_dir() {
            collect(&path, files);
        } else {
            files.push(path);
        }
    }
}
