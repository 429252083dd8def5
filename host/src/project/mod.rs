//! From paths on the command line to components: finds handler projects (directories with a
//! `tabula.toml`) and lone `.wasm` files, and builds projects for `wasm32-wasip2` with cargo.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

mod js;
mod manifest;
mod python;
mod rust;
mod sdk;
mod toolchain;

use crate::config::{AppSettings, AppSpec, VariableSetting, validate_variable_name};
pub use manifest::Lang;
use manifest::Manifest;
pub use sdk::user_cache_dir;

/// Something `tabula up`/`serve` was asked to serve.
#[derive(Debug, Clone)]
enum Source {
    /// A directory with a `tabula.toml`, to be built.
    Project {
        /// The project's directory.
        dir: PathBuf,
        /// Its `tabula.toml`.
        manifest: Box<Manifest>,
        /// Found in a directory of projects rather than named: skipped, with a warning,
        /// when its language's toolchain is not installed.
        listed: bool,
    },
    /// A ready component, served at `route`.
    Component {
        /// The app's name, from the file's or the route.
        name: String,
        /// Where it is served.
        route: String,
        /// The component file.
        path: PathBuf,
    },
}

/// Expands command-line paths into sources.
///
/// An argument is one of: a project directory (it has a `tabula.toml`); a directory of
/// projects (each subdirectory with a `tabula.toml`); a `.wasm` component, served at `/` and
/// named after the file; or `ROUTE=FILE.wasm` to serve a component elsewhere, named after the
/// route (`/api/v1=api.wasm` is app `api-v1`).
fn discover(args: &[String]) -> Result<Vec<Source>> {
    let mut sources = Vec::new();
    for arg in args {
        let (route, path) = match arg.split_once('=') {
            Some((route, path)) if route.starts_with('/') => (Some(route), Path::new(path)),
            _ => (None, Path::new(arg.as_str())),
        };
        if path.is_file() {
            // The name keys the app's state, so it follows the route when one is given:
            // the same component at `/a` and `/b` is two apps with two namespaces.
            let name = match route {
                Some(route) if route != "/" => app_name(&route.trim_matches('/').replace('/', "-")),
                _ => app_name(&path.file_stem().unwrap_or_default().to_string_lossy()),
            };
            sources.push(Source::Component {
                name,
                route: route.unwrap_or("/").to_string(),
                path: path.to_path_buf(),
            });
        } else if route.is_some() {
            bail!(
                "`{arg}`: `ROUTE=PATH` takes a .wasm file, and {} is not one",
                path.display()
            );
        } else if path.join(manifest::FILE_NAME).is_file() {
            sources.push(project(path, false)?);
        } else if path.is_dir() {
            let found = projects_in(path)?;
            if found.is_empty() {
                bail!(
                    "{} has no {} and no subdirectory with one: point at a handler project, \
                     a directory of projects, or a .wasm component",
                    path.display(),
                    manifest::FILE_NAME
                );
            }
            sources.extend(found);
        } else {
            bail!("{}: no such file or directory", path.display());
        }
    }
    Ok(sources)
}

/// A valid app name made from `text` (a file name, a route): every character outside
/// `[A-Za-z0-9_-]` becomes `_`, so `a+b.wasm` is app `a_b`.
fn app_name(text: &str) -> String {
    let name: String = text
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if name.is_empty() { "app".into() } else { name }
}

fn project(dir: &Path, listed: bool) -> Result<Source> {
    Ok(Source::Project {
        dir: dir.to_path_buf(),
        manifest: Box::new(Manifest::read(dir)?),
        listed,
    })
}

fn projects_in(dir: &Path) -> Result<Vec<Source>> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("listing {}", dir.display()))?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|p| p.join(manifest::FILE_NAME).is_file())
        .collect();
    dirs.sort();
    dirs.iter().map(|d| project(d, true)).collect()
}

/// Options for building projects.
#[derive(Debug, Clone, Default)]
pub struct BuildOptions {
    /// Cargo's `--target-dir`; `None` uses the project's own.
    pub target_dir: Option<PathBuf>,
    /// Variables from the command line, over the manifests' own.
    pub variables: Vec<CliVariable>,
}

/// A variable from the command line, `--var [APP:]NAME=VALUE` or `--secret
/// [APP:]NAME=ENV_VAR`: for app APP, or for every app when none is named (the usual case, a
/// bare `.wasm`).
#[derive(Debug, Clone)]
pub struct CliVariable {
    app: Option<String>,
    name: String,
    setting: VariableSetting,
}

impl CliVariable {
    /// Parses `--var [APP:]NAME=VALUE`.
    pub fn value(arg: &str) -> Result<CliVariable, String> {
        CliVariable::parse(arg, "VALUE", |v| VariableSetting::Value(v.into()))
    }

    /// Parses `--secret [APP:]NAME=ENV_VAR`: the value is the host's `ENV_VAR`.
    pub fn secret(arg: &str) -> Result<CliVariable, String> {
        CliVariable::parse(arg, "ENV_VAR", |v| VariableSetting::Secret {
            env: v.into(),
        })
    }

    fn parse(
        arg: &str,
        what: &str,
        setting: impl FnOnce(&str) -> VariableSetting,
    ) -> Result<CliVariable, String> {
        let (target, value) = arg
            .split_once('=')
            .ok_or_else(|| format!("`{arg}` is not [APP:]NAME={what}"))?;
        let (app, name) = match target.split_once(':') {
            Some((app, name)) => (Some(app.to_string()), name),
            None => (None, target),
        };
        validate_variable_name(name).map_err(|e| e.to_string())?;
        Ok(CliVariable {
            app,
            name: name.into(),
            setting: setting(value),
        })
    }
}

/// Puts the command line's variables into the apps they are for.
fn apply_variables(specs: &mut [AppSpec], variables: &[CliVariable]) -> Result<()> {
    for var in variables {
        let mut found = false;
        for spec in specs.iter_mut() {
            if var.app.as_ref().is_none_or(|app| *app == spec.name) {
                spec.settings
                    .variables
                    .insert(var.name.clone(), var.setting.clone());
                found = true;
            }
        }
        if let (false, Some(app)) = (found, &var.app) {
            bail!(
                "variable `{app}:{}` is for app `{app}`, which is not among the apps given",
                var.name
            );
        }
    }
    Ok(())
}

/// The apps that command-line `paths` name (project directories, directories of projects, `.wasm` files, `ROUTE=FILE.wasm`), with every project among them
/// built: what `tabula up`, `serve` and `build` load.
pub fn build(paths: &[String], options: &BuildOptions) -> Result<Vec<AppSpec>> {
    let mut specs = build_all(&discover(paths)?, options)?;
    apply_variables(&mut specs, &options.variables)?;
    Ok(specs)
}

/// Builds every project among `sources` (components pass through) and returns what to load.
fn build_all(sources: &[Source], options: &BuildOptions) -> Result<Vec<AppSpec>> {
    let rust =
        |s: &Source| matches!(s, Source::Project { manifest, .. } if manifest.lang == Lang::Rust);
    if sources.iter().any(rust) {
        rust::ensure_target()?;
    }
    let mut specs = Vec::new();
    for source in sources {
        specs.push(match source {
            Source::Component { name, route, path } => AppSpec {
                name: name.clone(),
                route: route.clone(),
                wasm: path.clone(),
                settings: AppSettings::default(),
                assets: None,
            },
            Source::Project {
                dir,
                manifest,
                listed,
            } => AppSpec {
                name: manifest.name.clone(),
                route: manifest.route.clone(),
                wasm: match build_project(dir, manifest, options) {
                    Ok(wasm) => wasm,
                    // `tabula up examples` serves what it can build here, and says what not.
                    Err(e) if *listed && e.is::<toolchain::Missing>() => {
                        eprintln!(
                            "tabula: skipping {} ({}): {e}",
                            manifest.name,
                            dir.display()
                        );
                        continue;
                    }
                    Err(e) => return Err(e),
                },
                settings: manifest.settings.clone(),
                assets: manifest.assets.as_ref().map(|a| dir.join(a)),
            },
        });
    }
    Ok(specs)
}

/// Builds the project in `dir` with its language's tools and returns its component.
fn build_project(dir: &Path, manifest: &Manifest, options: &BuildOptions) -> Result<PathBuf> {
    let name = manifest.name.as_str();
    let build = match manifest.lang {
        Lang::Rust => return rust::build(dir, name, options),
        Lang::Python => python::build,
        Lang::Js => js::build,
    };
    let sdk = sdk::unpacked()?;
    let out = toolchain::Output::new(dir, name, options.target_dir.as_deref(), &sdk)?;
    if !out.is_current() {
        build(dir, name, &out.wasm, &sdk)?;
        out.built()?;
    }
    Ok(out.wasm)
}

/// `tabula new NAME --lang LANG`: a handler project in a new directory `NAME` (the app's
/// name), a kv counter with a test where the language has a native one, that builds and
/// deploys as it is.
pub fn scaffold(name: &str, lang: Lang) -> Result<()> {
    let dir = Path::new(name);
    let app = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    crate::config::validate_name(&app)?;
    if dir.exists() {
        bail!("{} already exists: pick a new name", dir.display());
    }
    match lang {
        Lang::Rust => rust::scaffold(dir, &app),
        Lang::Python => python::scaffold(dir, &app),
        Lang::Js => js::scaffold(dir, &app),
    }
}

/// A new project in a scripting language: one source file, the counter example, renamed.
struct Script<'a> {
    /// `lang` in `tabula.toml`.
    lang: &'a str,
    /// The source file's name.
    file: &'a str,
    /// The example it starts as, and the name to replace in it.
    example: &'a str,
    example_name: &'a str,
    /// What `.gitignore` adds to `/target`.
    ignore: &'a str,
    /// What builds it, and how it is installed.
    built_with: &'a str,
}

/// Writes a new project of `script`'s language for app `app` into `dir`.
fn scaffold_script(dir: &Path, app: &str, script: &Script) -> Result<()> {
    write_project(
        dir,
        &[
            (
                "tabula.toml",
                format!(
                    "name = \"{app}\"\nroute = \"/{app}\"\nlang = \"{}\"\n",
                    script.lang
                ),
            ),
            (
                script.file,
                script.example.replace(script.example_name, app),
            ),
            (".gitignore", format!("/target\n{}\n", script.ignore)),
        ],
    )?;
    println!(
        "created {}: `tabula up {}` builds it with {} and serves it at \
         http://127.0.0.1:8080/{app}",
        dir.display(),
        dir.display(),
        script.built_with
    );
    Ok(())
}

/// Writes `files` (path in the project, contents) into the new project `dir`.
fn write_project(dir: &Path, files: &[(&str, String)]) -> Result<()> {
    for (file, text) in files {
        let path = dir.join(file);
        std::fs::create_dir_all(path.parent().expect("in the project"))
            .with_context(|| format!("creating {}", dir.display()))?;
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

/// The projects among command-line `paths`, by app name: what `tabula up` watches.
pub fn projects(paths: &[String]) -> Result<Vec<(String, PathBuf)>> {
    Ok(discover(paths)?
        .into_iter()
        .filter_map(|source| match source {
            Source::Project { dir, manifest, .. } => Some((manifest.name, dir)),
            Source::Component { .. } => None,
        })
        .collect())
}

/// A fingerprint of a project's sources (every file's path, size and modification time,
/// outside `target/`, `node_modules/`, `__pycache__/` and hidden directories): it changes when a source does.
pub fn fingerprint(dir: &Path) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    let mut stack = vec![dir.to_path_buf()];
    let mut files = Vec::new();
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let name = entry.file_name();
            if name == "target"
                || name == "node_modules"
                || name == "__pycache__"
                || name.to_string_lossy().starts_with('.')
            {
                continue;
            }
            match entry.metadata() {
                Ok(meta) if meta.is_dir() => stack.push(path),
                Ok(meta) => files.push((path, meta.len(), meta.modified().ok())),
                Err(_) => {}
            }
        }
    }
    files.sort();
    files.hash(&mut hasher);
    hasher.finish()
}

#[cfg(test)]
mod tests {
    use super::app_name;

    #[test]
    fn any_file_name_makes_a_valid_app_name() {
        for (file, name) in [
            ("a+b", "a_b"),
            ("hello.v2", "hello_v2"),
            ("my app", "my_app"),
            ("", "app"),
            ("ünï", "_n_"),
            ("api-v1", "api-v1"),
        ] {
            assert_eq!(app_name(file), name);
            crate::config::validate_name(&app_name(file)).unwrap();
        }
    }
}
