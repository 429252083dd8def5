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
    super::scaffold_script(
        dir,
        app,
        &super::Script {
            lang: "js",
            file: "app.js",
            example: include_str!("../../../examples/counter-js/app.js"),
            example_name: "counter-js",
            ignore: "node_modules/",
            built_with: "componentize-js (installed once, with npm)",
        },
    )
}
