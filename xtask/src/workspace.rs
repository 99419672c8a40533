//! Finding the workspace that xtask was started in, at run time, with `cargo locate-project`.
//!
//! Checkouts that share one `CARGO_TARGET_DIR` can share one compiled xtask, so a root compiled
//! into it (`CARGO_MANIFEST_DIR`) may belong to another checkout. `cargo run` keeps
//! the caller's current directory, so the workspace around it is the one `cargo xtask` was run in.

use std::{
    path::{Path, PathBuf},
    sync::OnceLock,
};

use anyhow::{bail, Context};

/// Returns the root of the cargo workspace around the current directory: the directory that holds
/// the workspace's `Cargo.toml`, as `cargo locate-project --workspace` reports it.
///
/// It is found at run time rather than taken from `CARGO_MANIFEST_DIR`, because checkouts sharing
/// a `CARGO_TARGET_DIR` share one compiled xtask, whose compiled-in path names whichever checkout
/// built it. The lookup runs once per process, from the current directory of the first call.
///
/// # Errors
///
/// Fails with a one-line message naming the current directory when it is not inside a cargo
/// workspace, when cargo cannot be run or when it rejects the workspace's manifests.
pub fn try_workspace_root() -> anyhow::Result<&'static Path> {
    static ROOT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    match ROOT.get_or_init(|| locate().map_err(|err| format!("{err:#}"))) {
        Ok(root) => Ok(root),
        Err(message) => Err(anyhow::Error::msg(message.clone())),
    }
}

/// Returns [`try_workspace_root`], for tests and benches: cargo runs them in their package's
/// directory, which is inside the workspace.
///
/// # Panics
///
/// If [`try_workspace_root`] fails; the panic message is its error.
pub fn workspace_root() -> PathBuf {
    match try_workspace_root() {
        Ok(root) => root.to_path_buf(),
        Err(err) => panic!("{err:#}"),
    }
}

/// Runs `$CARGO locate-project --workspace --message-format plain` in the current directory.
fn locate() -> anyhow::Result<PathBuf> {
    let dir = std::env::current_dir()
        .context("cannot find the workspace: cannot read the current directory")?;
    let output = crate::cargo_command(&dir)
        .args(["locate-project", "--workspace", "--message-format", "plain"])
        .output();
    let output = match output {
        Ok(output) => output,
        Err(err) => bail!(
            "cannot find the workspace from {}: cannot run {}: {err}",
            dir.display(),
            crate::cargo().to_string_lossy()
        ),
    };
    if !output.status.success() {
        let mut reason = one_line(&String::from_utf8_lossy(&output.stderr));
        if reason.is_empty() {
            reason = format!("cargo locate-project exited with {}", output.status);
        }
        bail!("cannot find the workspace from {}: {reason}", dir.display());
    }
    // Cargo prints the manifest path as UTF-8 (it refuses others) followed by a newline.
    let stdout = String::from_utf8_lossy(&output.stdout);
    let manifest = Path::new(stdout.trim_end_matches(['\n', '\r']));
    match manifest.parent() {
        Some(root) if manifest.is_absolute() && manifest.ends_with("Cargo.toml") => {
            Ok(root.to_path_buf())
        }
        _ => bail!(
            "cannot find the workspace from {}: cargo locate-project printed {stdout:?}, not the \
             path of a Cargo.toml",
            dir.display()
        ),
    }
}

/// Folds cargo's error output into one line, the way anyhow's `{:#}` joins a chain: `error: `
/// prefixes, `Caused by:` headings, warnings and source snippets are dropped, and what remains is
/// joined with `: `.
fn one_line(stderr: &str) -> String {
    let mut parts: Vec<String> = Vec::new();
    for line in stderr.lines().map(str::trim) {
        let line = line.strip_prefix("error: ").unwrap_or(line);
        if line.is_empty()
            || line == "Caused by:"
            || line.starts_with("warning: ")
            || is_snippet(line)
        {
            continue;
        }
        match line.strip_prefix("--> ") {
            Some(location) => parts.push(format!("at {location}")),
            None => parts.push(line.to_owned()),
        }
    }
    parts.join(": ")
}

/// Whether `line` (trimmed) is part of a source snippet under a diagnostic: a `|` gutter, with or
/// without a line number before it.
fn is_snippet(line: &str) -> bool {
    line.trim_start_matches(|c: char| c.is_ascii_digit()).trim_start().starts_with('|')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workspace_root_contains_this_crate() {
        // Cargo runs unit tests in the package's directory, `<root>/xtask`.
        let root = try_workspace_root().unwrap();
        assert!(root.is_absolute(), "{}", root.display());
        assert!(root.join("xtask").join("Cargo.toml").is_file(), "{}", root.display());
        assert_eq!(workspace_root(), root);
    }

    #[test]
    fn cargo_errors_fold_into_one_line() {
        // Cargo 1.95's stderr for: no manifest, a TOML error, a broken member.
        let cases = [
            (
                "error: could not find `Cargo.toml` in `/tmp/none` or any parent directory\n",
                "could not find `Cargo.toml` in `/tmp/none` or any parent directory",
            ),
            (
                "error: unclosed table, expected `]`\n --> ../../Cargo.toml:1:11\n  |\n\
                 1 | [workspace\n  |           ^\n",
                "unclosed table, expected `]`: at ../../Cargo.toml:1:11",
            ),
            (
                "warning: unused manifest key: x\nerror: failed to load manifest for workspace \
                 member `/ws/a`\n\nCaused by:\n  failed to read `/ws/a/Cargo.toml`\n\n\
                 Caused by:\n  No such file or directory (os error 2)\n",
                "failed to load manifest for workspace member `/ws/a`: failed to read \
                 `/ws/a/Cargo.toml`: No such file or directory (os error 2)",
            ),
        ];
        for (stderr, expected) in cases {
            assert_eq!(one_line(stderr), expected);
        }
    }
}
