//! The host's layers, lowest first, and the test that keeps them: a module may use modules
//! of lower layers only, so no two modules can ever depend on each other in a cycle.
//!
//! Modules are named by path; a file belongs to the longest name listed that is a prefix of
//! its module path (`capabilities/kv/bindings.rs` is `capabilities::kv`). A `use` of
//! `crate::…` or `super::…` resolves the same way. Modules in one layer must not use each
//! other.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// Lowest first. Adding a module means adding it here, where it belongs.
const LAYERS: &[&[&str]] = &[
    &["budget", "file_lock", "log_batch", "metrics", "request_log"],
    &["storage"],
    &[
        "capabilities::wasi",
        "capabilities::http",
        "capabilities::kv",
        "capabilities::session",
        "capabilities::variables",
        "capabilities::vfs",
    ],
    &["capabilities"],
    &["config"],
    &["project", "deploy::registry"],
    &["state"],
    &["host"],
    &["app"],
    &["deploy::cache"],
    &["request::connection", "request::router"],
    &["request::failure"],
    &["request::body", "request::instance"],
    &["request"],
    &["request::server"],
    &["deploy::replica", "deploy::admin", "deploy::client"],
    &["deploy"],
    &["serve"],
];

/// The layer of module path `path`, and the name of the module that holds it.
fn layer_of(path: &[String]) -> Option<(usize, String)> {
    let mut best: Option<(usize, usize, &str)> = None;
    for (layer, names) in LAYERS.iter().enumerate() {
        for name in *names {
            let parts: Vec<&str> = name.split("::").collect();
            if parts.len() <= path.len()
                && parts.iter().zip(path).all(|(a, b)| a == b)
                && best.is_none_or(|(len, _, _)| parts.len() > len)
            {
                best = Some((parts.len(), layer, name));
            }
        }
    }
    best.map(|(_, layer, name)| (layer, name.to_string()))
}

/// The module path of a file under `src`: `capabilities/kv/mod.rs` is `capabilities::kv`.
fn module_path(src: &Path, file: &Path) -> Vec<String> {
    let rel = file.strip_prefix(src).expect("under src");
    let mut parts: Vec<String> = rel
        .iter()
        .map(|p| p.to_string_lossy().trim_end_matches(".rs").to_string())
        .collect();
    if parts.last().is_some_and(|p| p == "mod") {
        parts.pop();
    }
    parts
}

/// Every path that `code` names through `crate::` or `super::`, resolved from the module at
/// `here`, as far as a module could be named (the first two segments suffice for `LAYERS`).
fn references(code: &str, here: &[String]) -> Vec<Vec<String>> {
    // Unit tests (at the end of a file, by habit) are not part of the library, and
    // comments name modules without depending on them.
    let code = code.split("#[cfg(test)]\nmod ").next().unwrap_or_default();
    let code: String = code
        .lines()
        .map(|line| match line.find("//") {
            Some(at) => &line[..at],
            None => line,
        })
        .collect::<Vec<_>>()
        .join("\n");
    let mut found = Vec::new();
    for root in ["crate::", "super::"] {
        let mut rest = code.as_str();
        while let Some(at) = rest.find(root) {
            let before = rest[..at].chars().last();
            rest = &rest[at + root.len()..];
            if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':') {
                continue;
            }
            // `super` is the parent of the file's module (or, in an inline `mod tests`, the
            // file's module itself: a use of the module's own unit either way).
            let base: Vec<String> = match root {
                "crate::" => Vec::new(),
                _ => here[..here.len().saturating_sub(1)].to_vec(),
            };
            for tail in use_tree(rest) {
                let mut path = base.clone();
                path.extend(tail);
                found.push(path);
            }
        }
    }
    found
}

/// The paths of a use tree (`a::b`, `a::{b, c::d}`, `{a, b}`) at the start of `text`.
fn use_tree(text: &str) -> Vec<Vec<String>> {
    let text = text.trim_start();
    if let Some(inner) = text.strip_prefix('{') {
        let mut depth = 1;
        let mut end = 0;
        for (i, c) in inner.char_indices() {
            match c {
                '{' => depth += 1,
                '}' => {
                    depth -= 1;
                    if depth == 0 {
                        end = i;
                        break;
                    }
                }
                _ => {}
            }
        }
        let inner = &inner[..end];
        let mut items = Vec::new();
        let (mut depth, mut from) = (0, 0);
        for (i, c) in inner.char_indices() {
            match c {
                '{' => depth += 1,
                '}' => depth -= 1,
                ',' if depth == 0 => {
                    items.push(&inner[from..i]);
                    from = i + 1;
                }
                _ => {}
            }
        }
        items.push(&inner[from..]);
        return items
            .into_iter()
            .filter(|item| !item.trim().is_empty())
            .flat_map(use_tree)
            .collect();
    }
    let ident: String = text
        .chars()
        .take_while(|c| c.is_alphanumeric() || *c == '_')
        .collect();
    if ident.is_empty() || ident == "self" {
        return vec![Vec::new()];
    }
    let rest = &text[ident.len()..];
    match rest.strip_prefix("::") {
        Some(rest) => use_tree(rest)
            .into_iter()
            .map(|mut tail| {
                tail.insert(0, ident.clone());
                tail
            })
            .collect(),
        None => vec![vec![ident]],
    }
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("reading src") {
        let path = entry.expect("listing src").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Every use of a module at the same or a higher layer, as `from -> to (file)`.
fn violations(src: &Path) -> (Vec<String>, BTreeSet<String>) {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    files.sort();
    let mut bad = Vec::new();
    let mut unplaced = BTreeSet::new();
    for file in files {
        let here = module_path(src, &file);
        if here == ["main"] || here == ["lib"] || here == ["layers"] {
            continue;
        }
        let Some((layer, name)) = layer_of(&here) else {
            unplaced.insert(here.join("::"));
            continue;
        };
        let code = std::fs::read_to_string(&file).expect("reading a source file");
        for target in references(&code, &here) {
            if target.is_empty() {
                continue;
            }
            let Some((to_layer, to_name)) = layer_of(&target) else {
                // Items of lib.rs itself (`crate::App`) or modules not listed.
                if !matches!(target[0].as_str(), "App" | "Host" | "Router" | "server") {
                    unplaced.insert(target.join("::"));
                }
                continue;
            };
            if to_name != name && to_layer >= layer {
                bad.push(format!(
                    "{name} (layer {layer}) uses {to_name} (layer {to_layer}) in {}",
                    file.strip_prefix(src).unwrap().display()
                ));
            }
        }
    }
    bad.sort();
    bad.dedup();
    (bad, unplaced)
}

#[test]
fn modules_use_only_lower_layers() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let (bad, unplaced) = violations(&src);
    assert!(
        unplaced.is_empty(),
        "modules missing from LAYERS in host/src/layers.rs (add each where it belongs): {unplaced:?}"
    );
    assert!(
        bad.is_empty(),
        "a module uses one of its own layer or above, which is how cycles start; move the \
         code down, or pass what it needs in from above:\n{}",
        bad.join("\n")
    );
}

#[test]
fn use_trees_are_read_whole() {
    let paths = use_tree("{a::b, c::{d, e::F}, self};");
    assert_eq!(
        paths,
        [vec!["a", "b"], vec!["c", "d"], vec!["c", "e", "F"], vec![],]
    );
    let here = ["capabilities".to_string(), "kv".to_string()];
    assert_eq!(
        references("use super::Bucket; // crate::serve", &here),
        [vec!["capabilities".to_string(), "Bucket".to_string()]]
    );
}
