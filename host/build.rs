//! Embeds what `tabula build` needs to build Python and JavaScript projects on a machine that
//! has only the `tabula` binary: the WIT of the guest contract (`wit/`) and the Python and
//! JavaScript SDKs (`guest-sdk/python`, `guest-sdk/js`). `project::sdk` writes them out.

use std::fmt::Write;
use std::path::{Path, PathBuf};

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
    let dest = PathBuf::from(std::env::var("OUT_DIR").unwrap()).join("sdk_files.rs");
    std::fs::write(dest, out).unwrap();
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
