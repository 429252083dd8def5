//! JavaScript projects (`lang = "js"`, an `app.js`): bundled with esbuild and made a
//! component by componentize-js, through the build script of tabula's JavaScript SDK
//! (`guest-sdk/js/build.mjs`), whose tools are installed once from the lockfile beside it.

use std::path::Path;
use std::process::Command;

use anyhow::Result;

use super::toolchain::{locked, require, run};

/// Builds the app in `dir` into `out`, with the SDK written out at `sdk`.
pub(super) fn build(dir: &Path, name: &str, out: &Path, sdk: &Path) -> Result<()> {
    let fix =
        "JavaScript projects need Node.js 20 or later and npm: e.g. `apt-get install nodejs npm`";
    require("node", fix)?;
    require("npm", fix)?;
    let tools = sdk.join("guest-sdk/js");
    locked(&tools, || {
        if tools
            .join("node_modules/@bytecodealliance/componentize-js")
            .is_dir()
        {
            return Ok(());
        }
        eprintln!(
            "tabula: installing the JavaScript build tools (componentize-js, esbuild) into {}; \
             this happens once",
            tools.display()
        );
        run(
            Command::new("npm")
                .args(["ci", "--no-audit", "--no-fund", "--loglevel=error"])
                .current_dir(&tools),
            "npm ci (installing componentize-js)",
        )
    })?;
    eprintln!(
        "tabula: building {name} ({}) with componentize-js",
        dir.display()
    );
    run(
        Command::new("node")
            .arg(tools.join("build.mjs"))
            .arg(dir)
            .arg(out),
        &format!("building {name}"),
    )
}

/// Writes a new JavaScript project: the counter example as `app.js`.
pub(super) fn scaffold(dir: &Path, app: &str) -> Result<()> {
    super::write_project(
        dir,
        &[
            (
                "tabula.toml",
                format!("name = \"{app}\"\nroute = \"/{app}\"\nlang = \"js\"\n"),
            ),
            (
                "app.js",
                include_str!("../../../examples/counter-js/app.js").replace("counter-js", app),
            ),
            (".gitignore", "/target\nnode_modules/\n".into()),
        ],
    )?;
    println!(
        "created {}: `tabula up {}` builds it with componentize-js (installed once, with npm) \
         and serves it at http://127.0.0.1:8080/{app}",
        dir.display(),
        dir.display()
    );
    Ok(())
}
