//! The flag reference, `docs/cli.md`, is the `--help` of every command of the real binary, so
//! it cannot drift from the flags: this test renders it again from the binary and fails, with
//! a diff, when the file differs. After changing a flag or a command, regenerate it with
//! `TABULA_BLESS=1 cargo test --release -p tabula --test all -- docs::`.

use std::fmt::Write as _;
use std::process::{Command, Stdio};

use crate::harness::{TABULA, root};

/// The command that rewrites `docs/cli.md`, named in the failure message and the file.
const BLESS: &str = "TABULA_BLESS=1 cargo test --release -p tabula --test all -- docs::";

/// clap wraps help text to the terminal's width (`wrap_help`); with no terminal on stdin,
/// stdout or stderr it reads `COLUMNS`, so a fixed width gives the same file everywhere.
const COLUMNS: &str = "100";

#[test]
fn cli_reference_is_the_binarys_help() {
    let rendered = render();
    let path = root().join("docs/cli.md");
    if std::env::var_os("TABULA_BLESS").is_some() {
        std::fs::write(&path, &rendered).expect("writing docs/cli.md");
        eprintln!("docs: wrote {}", path.display());
        return;
    }
    let on_disk = std::fs::read_to_string(&path).unwrap_or_default();
    if on_disk != rendered {
        panic!(
            "docs/cli.md is not the binary's `--help` (- the file, + the binary):\n{}\n\
             If the binary is right, regenerate the file with:\n    {BLESS}",
            diff(&on_disk, &rendered)
        );
    }
}

/// Every relative link in the README and `docs/` names a file that exists, and every `#anchor`
/// a heading of its page: the docs link into the code, and the code moves.
#[test]
fn links_point_at_files_and_headings_that_exist() {
    let mut pages = vec![root().join("README.md")];
    for entry in std::fs::read_dir(root().join("docs")).expect("listing docs/") {
        let path = entry.expect("listing docs/").path();
        if path.extension().is_some_and(|e| e == "md") {
            pages.push(path);
        }
    }
    let mut broken = Vec::new();
    for page in &pages {
        let text = std::fs::read_to_string(page).expect("reading a page");
        let shown = page.strip_prefix(root()).unwrap().display().to_string();
        for target in links(&text) {
            if target.contains("://") || target.starts_with("mailto:") {
                continue;
            }
            let (path, anchor) = target.split_once('#').unwrap_or((target.as_str(), ""));
            let file = if path.is_empty() {
                page.clone()
            } else {
                page.parent().unwrap().join(path)
            };
            if !file.exists() {
                broken.push(format!("{shown}: {target}: no such file"));
            } else if !anchor.is_empty() {
                let headings = std::fs::read_to_string(&file)
                    .map(|text| anchors(&text))
                    .unwrap_or_default();
                if !headings.iter().any(|h| h == anchor) {
                    broken.push(format!("{shown}: {target}: no such heading"));
                }
            }
        }
    }
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
}

/// The lines of `markdown` outside fenced code blocks.
fn prose(markdown: &str) -> impl Iterator<Item = &str> {
    let mut fenced = false;
    markdown.lines().filter(move |line| {
        if line.starts_with("```") {
            fenced = !fenced;
            return false;
        }
        !fenced
    })
}

/// The targets of the inline links (`[text](target)`) in `markdown`.
fn links(markdown: &str) -> Vec<String> {
    let prose: Vec<&str> = prose(markdown).collect();
    // Joined, since a link's text may wrap onto the next line.
    let text = prose.join("\n");
    text.match_indices("](")
        .filter_map(|(at, _)| {
            let rest = &text[at + 2..];
            rest.find(')').map(|end| rest[..end].to_string())
        })
        .collect()
}

/// The anchors GitHub makes for the headings of `markdown`: lower case, punctuation other
/// than `-` and `_` dropped, spaces made `-`.
fn anchors(markdown: &str) -> Vec<String> {
    prose(markdown)
        .filter(|line| line.starts_with('#'))
        .map(|line| {
            line.trim_start_matches('#')
                .trim()
                .to_lowercase()
                .chars()
                .filter(|c| c.is_alphanumeric() || matches!(c, ' ' | '-' | '_'))
                .map(|c| if c == ' ' { '-' } else { c })
                .collect()
        })
        .collect()
}

/// `docs/cli.md`: `tabula --help`, then the `--help` of each command `tabula --help` lists.
fn render() -> String {
    let top = help(&[]);
    let commands = commands(&top);
    assert!(
        commands.iter().any(|c| c == "serve"),
        "no commands found in `tabula --help`:\n{top}"
    );
    let mut md = String::new();
    md.push_str("# Command-line reference\n\n");
    writeln!(
        md,
        "<!-- Generated from the binary's `--help` by tests/all/docs.rs, which fails when this\n     \
         file differs from it. Do not edit by hand; regenerate with:\n     {BLESS} -->\n"
    )
    .unwrap();
    md.push_str(
        "The `--help` of every `tabula` command, at a width of 100 columns (`-h` gives a \
         summary).\nThe flags of `up` and `serve` are explained by topic in \
         [operating.md](operating.md).\n\n",
    );
    let sections: Vec<(String, String)> = std::iter::once(("tabula".to_string(), top))
        .chain(
            commands
                .iter()
                .map(|c| (format!("tabula {c}"), help(&[c.as_str()]))),
        )
        .collect();
    for (title, _) in &sections {
        writeln!(md, "- [`{title}`](#{})", title.replace(' ', "-")).unwrap();
    }
    for (title, text) in &sections {
        write!(md, "\n## `{title}`\n\n```text\n{text}```\n").unwrap();
    }
    md
}

/// The subcommands listed under `Commands:` in `tabula --help`, except `help` itself.
fn commands(top: &str) -> Vec<String> {
    top.lines()
        .skip_while(|line| *line != "Commands:")
        .skip(1)
        .take_while(|line| !line.is_empty())
        // A command's line is indented by two; its wrapped description, by more.
        .filter_map(|line| line.strip_prefix("  ").filter(|l| !l.starts_with(' ')))
        .filter_map(|line| line.split_whitespace().next())
        .filter(|name| *name != "help")
        .map(str::to_string)
        .collect()
}

/// `tabula ARGS --help`, as a user reading it in a 100-column terminal would see it, with
/// the trailing spaces of clap's blank lines taken off.
fn help(args: &[&str]) -> String {
    let mut command = Command::new(&*TABULA);
    command
        .args(args)
        .arg("--help")
        .env("COLUMNS", COLUMNS)
        .env("NO_COLOR", "1")
        .env_remove("CLICOLOR_FORCE")
        .stdin(Stdio::null());
    // clap shows a set variable's value (`[env: TABULA_LOG=debug]`): the reference shows none.
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("TABULA_") {
            command.env_remove(name);
        }
    }
    let output = command.output().expect("running tabula --help");
    assert!(
        output.status.success(),
        "`tabula {} --help` failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr)
    );
    let text = String::from_utf8(output.stdout).expect("--help is UTF-8");
    text.lines()
        .map(|line| line.trim_end().to_string() + "\n")
        .collect()
}

/// The lines that differ between `old` and `new`, each with two lines of context, as in a
/// unified diff: `-` only in `old`, `+` only in `new`.
fn diff(old: &str, new: &str) -> String {
    let (a, b): (Vec<&str>, Vec<&str>) = (old.lines().collect(), new.lines().collect());
    // Longest common subsequence, from the end: lcs[i][j] is that of a[i..] and b[j..].
    let mut lcs = vec![vec![0u32; b.len() + 1]; a.len() + 1];
    for i in (0..a.len()).rev() {
        for j in (0..b.len()).rev() {
            lcs[i][j] = if a[i] == b[j] {
                lcs[i + 1][j + 1] + 1
            } else {
                lcs[i + 1][j].max(lcs[i][j + 1])
            };
        }
    }
    let mut lines = Vec::new();
    let (mut i, mut j) = (0, 0);
    while i < a.len() || j < b.len() {
        if i < a.len() && j < b.len() && a[i] == b[j] {
            lines.push((' ', a[i]));
            (i, j) = (i + 1, j + 1);
        } else if i < a.len() && (j == b.len() || lcs[i + 1][j] >= lcs[i][j + 1]) {
            lines.push(('-', a[i]));
            i += 1;
        } else {
            lines.push(('+', b[j]));
            j += 1;
        }
    }
    let changed: Vec<usize> = (0..lines.len()).filter(|&k| lines[k].0 != ' ').collect();
    let near = |k: usize| changed.iter().any(|&c| c.abs_diff(k) <= 2);
    let mut out = String::new();
    let mut shown = 0;
    let mut last = None;
    for (k, (sign, line)) in lines.iter().enumerate().filter(|&(k, _)| near(k)) {
        if shown == 80 {
            out.push_str("... (more differences)\n");
            break;
        }
        if last.is_some_and(|l| l + 1 != k) {
            out.push_str("...\n");
        }
        writeln!(out, "{sign} {line}").unwrap();
        (shown, last) = (shown + 1, Some(k));
    }
    out
}
