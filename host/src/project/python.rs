//! Python projects (`lang = "python"`, an `app.py`): made a component by componentize-py,
//! against the guest contract's `tabula:host/app` world, with tabula's Python SDK
//! (`guest-sdk/python`) on the module path.

use std::path::Path;
use std::process::Command;

use anyhow::Result;

use super::toolchain::{require, run};

/// The componentize-py release the SDK is written and tested against.
const COMPONENTIZE_PY: &str = "componentize-py==0.25.1";

/// Builds the app in `dir` into `out`, with the SDK written out at `sdk`.
pub(super) fn build(dir: &Path, name: &str, out: &Path, sdk: &Path) -> Result<()> {
    require(
        "componentize-py",
        &format!("Python projects are built with it: `pip install {COMPONENTIZE_PY}`"),
    )?;
    eprintln!(
        "tabula: building {name} ({}) with componentize-py",
        dir.display()
    );
    run(
        Command::new("componentize-py")
            .arg("-d")
            .arg(sdk.join("wit"))
            .args(["-w", "tabula:host/app", "componentize"])
            .arg("-p")
            .arg(dir)
            .arg("-p")
            .arg(sdk.join("guest-sdk/python"))
            .arg("app")
            .arg("-o")
            .arg(out),
        &format!("building {name} with componentize-py"),
    )
}

/// Writes a new Python project: the counter example as `app.py`.
pub(super) fn scaffold(dir: &Path, app: &str) -> Result<()> {
    super::scaffold_script(
        dir,
        app,
        &super::Script {
            lang: "python",
            file: "app.py",
            example: include_str!("../../../examples/counter-py/app.py"),
            example_name: "counter-py",
            ignore: "__pycache__/",
            built_with: &format!("componentize-py (`pip install {COMPONENTIZE_PY}`)"),
        },
    )
}
