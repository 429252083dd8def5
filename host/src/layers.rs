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
    &[
        "budget",
        "file_lock",
        "listener",
        "log_batch",
        "metrics",
        "request::log",
    ],
    &["storage", "deploy::traffic"],
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
    &["request::state"],
    &["runtime"],
    &["app"],
    &["deploy::artifacts"],
    &["deploy::cache"],
    &["request::router"],
    &["request::failure"],
    &["request::body", "request::instance"],
    &["request"],
    &["request::front"],
    &["deploy::canary"],
    &["deploy::rollout"],
    &["deploy::replica", "deploy::admin", "deploy::client"],
    &["deploy::check"],
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

/// `code` without its unit tests (`#[cfg(test)] mod …`, inline or in a file of their own),
/// which are not part of the library, and without comments, which name modules without
/// depending on them. Only the test module is cut: code after it is read.
fn library_code(code: &str) -> String {
    let mut kept = String::new();
    let mut rest = code;
    while let Some(at) = rest.find("#[cfg(test)]") {
        kept.push_str(&rest[..at]);
        let after = rest[at + "#[cfg(test)]".len()..].trim_start();
        let item = after
            .trim_start_matches("pub ")
            .trim_start_matches("pub(crate) ");
        if !item.starts_with("mod ") {
            kept.push_str("#[cfg(test)]");
            rest = &rest[at + "#[cfg(test)]".len()..];
            continue;
        }
        let (open, semi) = (item.find('{'), item.find(';'));
        let end = match (open, semi) {
            (_, Some(semi)) if open.is_none_or(|open| semi < open) => semi + 1,
            (Some(open), _) => {
                let mut depth = 0;
                let mut end = item.len();
                for (i, c) in item[open..].char_indices() {
                    match c {
                        '{' => depth += 1,
                        '}' => {
                            depth -= 1;
                            if depth == 0 {
                                end = open + i + 1;
                                break;
                            }
                        }
                        _ => {}
                    }
                }
                end
            }
            _ => item.len(),
        };
        rest = &item[end..];
    }
    kept.push_str(rest);
    kept.lines()
        .map(|line| match line.find("//") {
            Some(at) => &line[..at],
            None => line,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The modules a file declares (`mod child;`, `pub mod child;`, `pub(crate) mod child;`).
fn child_modules(code: &str) -> Vec<String> {
    code.lines()
        .filter_map(|line| {
            let line = line.trim();
            let line = line
                .strip_prefix("pub(crate) ")
                .or_else(|| line.strip_prefix("pub "))
                .unwrap_or(line);
            let name = line.strip_prefix("mod ")?.strip_suffix(';')?;
            Some(name.trim().to_string())
        })
        .collect()
}

/// A path a file names, and whether it names it only to re-export it (`pub use child::X`,
/// the facade a module's `mod.rs` shows: not a use of the child by the parent).
struct Reference {
    path: Vec<String>,
    reexport: bool,
}

/// Every path that `code` names through `crate::`, `super::`, `self::` or a module it
/// declares (`use child::…`), resolved from the module at `here`, as far as a module could
/// be named (the first two segments suffice for `LAYERS`).
fn references(code: &str, here: &[String]) -> Vec<Reference> {
    let code = library_code(code);
    let mut roots: Vec<(String, Vec<String>)> = vec![
        ("crate::".into(), Vec::new()),
        // `super` is the parent of the file's module.
        (
            "super::".into(),
            here[..here.len().saturating_sub(1)].to_vec(),
        ),
        ("self::".into(), here.to_vec()),
    ];
    for child in child_modules(&code) {
        let mut path = here.to_vec();
        path.push(child.clone());
        // Only as the start of a `use`: a bare `child::` elsewhere names the same module.
        roots.push((format!("use {child}::"), path.clone()));
        roots.push((format!("use {child};"), path));
    }
    let mut found = Vec::new();
    for (root, base) in roots {
        let mut rest = code.as_str();
        while let Some(at) = rest.find(&root) {
            let before = rest[..at].chars().last();
            let reexport = root.starts_with("use ")
                && (rest[..at].ends_with("pub ") || rest[..at].ends_with("pub(crate) "));
            rest = &rest[at + root.len()..];
            if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':') {
                continue;
            }
            if root.ends_with(';') {
                found.push(Reference {
                    path: base.clone(),
                    reexport,
                });
                continue;
            }
            for tail in use_tree(rest) {
                let mut path = base.clone();
                path.extend(tail);
                found.push(Reference { path, reexport });
            }
        }
    }
    found
}

/// What `lib.rs` re-exports (`pub use app::App;`): name -> the path it stands for. A use of
/// `crate::App` is a use of `app`, wherever it is written.
fn reexports(lib: &str) -> Vec<(String, Vec<String>)> {
    let lib = library_code(lib);
    let mut found = Vec::new();
    let mut rest = lib.as_str();
    while let Some(at) = rest.find("pub use ") {
        rest = &rest[at + "pub use ".len()..];
        for path in use_tree(rest) {
            if let Some(name) = path.last() {
                found.push((name.clone(), path.clone()));
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

/// One source file: its module path, its name under `src`, its text.
struct Source {
    here: Vec<String>,
    file: String,
    code: String,
}

/// The files under `src`, but `lib.rs`, `main.rs` and this one.
fn sources(src: &Path) -> (Vec<Source>, String) {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    files.sort();
    let lib = std::fs::read_to_string(src.join("lib.rs")).expect("reading lib.rs");
    let sources = files
        .into_iter()
        .map(|file| Source {
            here: module_path(src, &file),
            file: file.strip_prefix(src).unwrap().display().to_string(),
            code: std::fs::read_to_string(&file).expect("reading a source file"),
        })
        .filter(|s| !matches!(s.here.as_slice(), [one] if one == "main" || one == "lib" || one == "layers"))
        .collect();
    (sources, lib)
}

/// Every use of a module at the same or a higher layer, as `from -> to (file)`; every module
/// not in `LAYERS`; and every cycle between the files of one module (`a.rs` uses `b.rs`,
/// which uses `a.rs`): files of one module are ordered too, or a module could hide a cycle
/// inside itself.
fn violations(sources: &[Source], lib: &str) -> (Vec<String>, BTreeSet<String>) {
    let reexported = reexports(lib);
    let mut bad = Vec::new();
    let mut unplaced = BTreeSet::new();
    // Uses between files of one module: file index -> file indexes.
    let mut within: Vec<BTreeSet<usize>> = vec![BTreeSet::new(); sources.len()];
    for (i, source) in sources.iter().enumerate() {
        let Some((layer, name)) = layer_of(&source.here) else {
            unplaced.insert(source.here.join("::"));
            continue;
        };
        for Reference {
            path: mut target,
            reexport,
        } in references(&source.code, &source.here)
        {
            if let [first, ..] = target.as_slice()
                && let Some((_, path)) = reexported.iter().find(|(n, _)| n == first)
            {
                target.splice(0..1, path.iter().cloned());
            }
            if target.is_empty() {
                continue;
            }
            let Some((to_layer, to_name)) = layer_of(&target) else {
                unplaced.insert(target.join("::"));
                continue;
            };
            if to_name != name && to_layer >= layer {
                bad.push(format!(
                    "{name} (layer {layer}) uses {to_name} (layer {to_layer}) in {}",
                    source.file
                ));
            }
            // Within one module, files are ordered too. Not counted: a parent re-exporting
            // a child, and generated bindings naming the host types they map WIT resources
            // to (`with:`), which is how bindgen is told, not code that calls them.
            if reexport || source.file.ends_with("bindings.rs") {
                continue;
            }
            // The file of the same module that defines what is named: the longest module
            // path that starts the target.
            let file = sources
                .iter()
                .enumerate()
                .filter(|(_, s)| target.starts_with(&s.here))
                .max_by_key(|(_, s)| s.here.len())
                .map(|(j, _)| j);
            if to_name == name
                && let Some(j) = file
                && j != i
            {
                within[i].insert(j);
            }
        }
    }
    for cycle in cycles(&within) {
        let files: Vec<&str> = cycle.iter().map(|&i| sources[i].file.as_str()).collect();
        bad.push(format!(
            "files of one module use each other in a cycle: {}",
            files.join(" -> ")
        ));
    }
    bad.sort();
    bad.dedup();
    (bad, unplaced)
}

/// The cycles of a directed graph, each once, as the nodes along it back to the first.
fn cycles(edges: &[BTreeSet<usize>]) -> Vec<Vec<usize>> {
    fn visit(
        node: usize,
        edges: &[BTreeSet<usize>],
        path: &mut Vec<usize>,
        done: &mut BTreeSet<usize>,
        found: &mut Vec<Vec<usize>>,
    ) {
        if let Some(at) = path.iter().position(|&n| n == node) {
            let mut cycle = path[at..].to_vec();
            cycle.push(node);
            found.push(cycle);
            return;
        }
        if done.contains(&node) {
            return;
        }
        path.push(node);
        for &next in &edges[node] {
            visit(next, edges, path, done, found);
        }
        path.pop();
        done.insert(node);
    }
    let (mut done, mut found) = (BTreeSet::new(), Vec::new());
    for node in 0..edges.len() {
        visit(node, edges, &mut Vec::new(), &mut done, &mut found);
    }
    found
}

#[test]
fn modules_use_only_lower_layers() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let (sources, lib) = sources(&src);
    let (bad, unplaced) = violations(&sources, &lib);
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
    let found: Vec<Vec<String>> = references("use super::Bucket; // crate::serve", &here)
        .into_iter()
        .map(|r| r.path)
        .collect();
    assert_eq!(
        found,
        [vec!["capabilities".to_string(), "Bucket".to_string()]]
    );
}

/// The holes this test once had, each a module edge added by hand that it let through. They
/// stay here so that none can reopen.
#[test]
fn the_holes_it_once_had_stay_closed() {
    let lib = "pub use app::App;\npub use request::router::{Router, Routes};\n";
    let source = |file: &str, code: &str| Source {
        here: module_path(Path::new("src"), Path::new(&format!("src/{file}"))),
        file: file.to_string(),
        code: code.to_string(),
    };
    let caught = |sources: Vec<Source>, expected: &str| {
        let (bad, unplaced) = violations(&sources, lib);
        assert!(unplaced.is_empty(), "{unplaced:?}");
        assert!(
            bad.iter().any(|b| b.contains(expected)),
            "expected `{expected}` among {bad:?}"
        );
    };
    // A re-export from lib.rs is the module that defines it.
    caught(
        vec![source("storage/mod.rs", "use crate::App;")],
        "storage (layer 1) uses app",
    );
    // A relative path through a module the file declares.
    caught(
        vec![source("request/mod.rs", "pub mod front;\nuse front::run;")],
        "uses request::front",
    );
    // Two files of one module that use each other.
    caught(
        vec![
            source("capabilities/kv/mod.rs", "mod draft;\nuse draft::Draft;"),
            source("capabilities/kv/draft.rs", "use super::Bucket;"),
        ],
        "capabilities/kv/mod.rs -> capabilities/kv/draft.rs -> capabilities/kv/mod.rs",
    );
    // Code after a test module is still the library's.
    caught(
        vec![source(
            "storage/mod.rs",
            "#[cfg(test)]\nmod tests {\n    use crate::serve::x;\n}\nuse crate::deploy::y;",
        )],
        "storage (layer 1) uses deploy",
    );
    // And what is fine stays fine: a test module's own uses, lower layers, one file.
    let (bad, _) = violations(
        &[source(
            "app.rs",
            "use crate::runtime::Runtime;\n#[cfg(test)]\nmod tests {\n    use crate::serve::x;\n}",
        )],
        lib,
    );
    assert!(bad.is_empty(), "{bad:?}");
}
