//! Building packages with `cargo build` and reading what it produced from its JSON messages.
//!
//! Artifact paths come from the `filenames` and `executable` fields of cargo's
//! `compiler-artifact` messages (Cargo reference, "External tools", "JSON messages") rather than
//! from guessing `lib{name}.so`, so `.so`, `.dylib` and `.dll` naming, renamed `[lib]` targets and
//! custom target directories are all handled by cargo itself.

use std::{
    io::Read,
    path::{Path, PathBuf},
    process::Stdio,
};

use anyhow::{bail, Context};
use serde::Deserialize;

/// What to build; the argument of [`build`].
#[derive(Debug, Clone, Copy)]
pub struct BuildRequest<'a> {
    /// The packages to build, each passed to cargo as `-p <name>`.
    pub packages: &'a [String],
    /// Builds with `--release` when true, with the dev profile otherwise.
    pub release: bool,
    /// Passed to cargo as `--target-dir`, when set.
    ///
    /// Code that runs under `cargo test` must set this to a directory of its own: cargo holds the
    /// lock on its target directory while test binaries run, so a nested build into the same
    /// directory blocks forever (rust-lang/rust#35816).
    pub target_dir: Option<&'a Path>,
    /// Passes `--quiet` to cargo, which hides its progress lines but not compiler errors.
    pub quiet: bool,
}

/// A file produced by [`build`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Artifact {
    /// The name of the package the file belongs to.
    pub package: String,
    /// Whether the file is a dynamic library or an executable.
    pub kind: ArtifactKind,
    /// The absolute path of the file, inside the target directory.
    pub path: PathBuf,
}

/// The kind of an [`Artifact`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArtifactKind {
    /// A `cdylib` target: `.so` on Linux, `.dylib` on macOS, `.dll` on Windows.
    Cdylib,
    /// A `bin` target.
    Bin,
}

/// Builds `req.packages` in the workspace at `root` and returns their `cdylib` and `bin` artifacts.
///
/// Runs `$CARGO build --message-format=json-render-diagnostics -p <name>...` in `root`. Compiler
/// diagnostics are rendered on the inherited stderr, so build errors reach the user unchanged,
/// while stdout carries the JSON messages. Artifacts of dependencies are dropped: only files of the
/// requested packages are returned, in the order cargo reported them.
///
/// # Errors
///
/// Fails if `req.packages` is empty, if cargo cannot be started, if cargo exits unsuccessfully
/// (the message names the packages), or if its output cannot be parsed.
pub fn build(root: &Path, req: &BuildRequest<'_>) -> anyhow::Result<Vec<Artifact>> {
    if req.packages.is_empty() {
        bail!("no packages to build");
    }
    let mut command = crate::cargo_command(root);
    command.args(["build", "--message-format=json-render-diagnostics"]);
    for package in req.packages {
        command.arg("--package").arg(package);
    }
    if req.release {
        command.arg("--release");
    }
    if let Some(target_dir) = req.target_dir {
        command.arg("--target-dir").arg(target_dir);
    }
    if req.quiet {
        command.arg("--quiet");
    }
    command.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::inherit());

    let names = req.packages.join(", ");
    let mut child =
        command.spawn().with_context(|| format!("failed to run cargo build for {names}"))?;
    let mut stdout = String::new();
    // Reading stdout to its end before waiting keeps cargo from blocking on a full pipe.
    let read = child.stdout.take().map(|mut pipe| pipe.read_to_string(&mut stdout));
    let status =
        child.wait().with_context(|| format!("failed to wait for cargo build of {names}"))?;
    if !status.success() {
        bail!("failed to build {names}: cargo build exited with {status}");
    }
    if let Some(read) = read {
        read.context("failed to read the output of cargo build")?;
    }

    let mut artifacts = parse_artifacts(&stdout)?;
    artifacts.retain(|artifact| req.packages.contains(&artifact.package));
    Ok(artifacts)
}

/// Extracts the `cdylib` and `bin` artifacts from cargo's JSON messages, one message per line.
///
/// Only `compiler-artifact` messages are read; other messages and lines that are not JSON objects
/// are skipped. A target counts as a `cdylib` or `bin` by its `kind`, not its `crate_types`: build
/// scripts have `crate_types: ["bin"]` but `kind: ["custom-build"]`, and proc-macros are `.so`
/// files of kind `proc-macro`. For a `cdylib` the path is the entry of `filenames` that ends with
/// [`std::env::consts::DLL_SUFFIX`], which skips the `.rlib` of a `["cdylib", "rlib"]` crate and
/// the import library that comes with a Windows `.dll`. For a `bin` it is `executable`.
///
/// The package name is read from `package_id`. Since cargo 1.77 that field is a package ID
/// specification, `<source-url>#<name>@<version>`, which leaves the name out when it equals the
/// last segment of the URL path (`path+file:///ws/plugins/basic#1.0.0`). Older cargo used
/// `<name> <version> (<source-url>)`; both are accepted. `target.name` is not used because it is
/// the crate name (`[lib] name`, with `-` turned into `_`) or the binary's name, neither of which
/// has to match the package.
///
/// # Errors
///
/// Fails if a line that looks like a JSON object is not a valid cargo message, or if a `cdylib`
/// artifact has no file with the platform's library suffix.
pub fn parse_artifacts(json_lines: &str) -> anyhow::Result<Vec<Artifact>> {
    let mut artifacts = Vec::new();
    for (index, line) in json_lines.lines().enumerate() {
        let line = line.trim();
        if !line.starts_with('{') {
            continue;
        }
        let message: Message = serde_json::from_str(line)
            .with_context(|| format!("line {}: invalid cargo JSON message", index + 1))?;
        if message.reason != "compiler-artifact" {
            continue;
        }
        let (Some(package_id), Some(target)) = (message.package_id, message.target) else {
            bail!("line {}: compiler-artifact message without package_id or target", index + 1);
        };
        let package = package_name(&package_id).with_context(|| {
            format!("line {}: cannot read a package name from {package_id:?}", index + 1)
        })?;
        let is_kind = |kind: &str| target.kind.iter().any(|k| k == kind);

        if is_kind("cdylib") {
            let Some(path) = message.filenames.iter().find(|file| has_dll_suffix(file)).cloned()
            else {
                bail!(
                    "line {}: cdylib {} of {package} has no {} file among {:?}",
                    index + 1,
                    target.name,
                    std::env::consts::DLL_SUFFIX,
                    message.filenames,
                );
            };
            artifacts.push(Artifact { package: package.clone(), kind: ArtifactKind::Cdylib, path });
        }
        if is_kind("bin") {
            if let Some(path) = message.executable {
                artifacts.push(Artifact { package, kind: ArtifactKind::Bin, path });
            }
        }
    }
    Ok(artifacts)
}

/// The parts of a cargo JSON message that xtask reads.
///
/// Every field but `reason` is optional, because only `compiler-artifact` messages carry them.
#[derive(Deserialize)]
struct Message {
    reason: String,
    #[serde(default)]
    package_id: Option<String>,
    #[serde(default)]
    target: Option<Target>,
    #[serde(default)]
    filenames: Vec<PathBuf>,
    #[serde(default)]
    executable: Option<PathBuf>,
}

#[derive(Deserialize)]
struct Target {
    kind: Vec<String>,
    name: String,
}

fn has_dll_suffix(path: &Path) -> bool {
    path.file_name()
        .and_then(|name| name.to_str())
        .is_some_and(|name| name.ends_with(std::env::consts::DLL_SUFFIX))
}

/// Returns the package name encoded in a cargo `package_id`, in either of the formats described
/// on [`parse_artifacts`].
fn package_name(package_id: &str) -> Option<String> {
    // The format of cargo before 1.77: `basic 1.0.0 (path+file:///ws/plugins/basic)`.
    if let Some((name, _)) = package_id.split_once(' ') {
        return Some(name.to_owned());
    }
    // A package ID specification: `<url>#<name>@<version>`, or `<url>#<version>` when the name is
    // the last segment of the URL path.
    let (url, fragment) = package_id.split_once('#')?;
    if let Some((name, _version)) = fragment.split_once('@') {
        return Some(name.to_owned());
    }
    let path = url.split(['?', '#']).next()?;
    let last = path.trim_end_matches('/').rsplit('/').next()?;
    (!last.is_empty()).then(|| last.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Messages captured from `cargo build --message-format=json-render-diagnostics -p basic`
    /// (cargo 1.95) in this workspace, with `/work/main` and the target directory shortened to
    /// `/ws` and most dependencies removed. The `calcplug` line was captured from a workspace with
    /// a `[[bin]]` target and an odd directory name. On macOS and Windows only the library suffix
    /// differs, so the test substitutes it.
    const MESSAGES: &str = r#"
{"reason":"compiler-artifact","package_id":"registry+https://github.com/rust-lang/crates.io-index#proc-macro2@1.0.107","manifest_path":"/cargo/registry/src/proc-macro2-1.0.107/Cargo.toml","target":{"kind":["custom-build"],"crate_types":["bin"],"name":"build-script-build","src_path":"/cargo/registry/src/proc-macro2-1.0.107/build.rs","edition":"2021","doc":false,"doctest":false,"test":false},"profile":{"opt_level":"0","debuginfo":0,"debug_assertions":true,"overflow_checks":true,"test":false},"features":["default","proc-macro"],"filenames":["/ws/target/debug/build/proc-macro2-01fa69198b2170f5/build-script-build"],"executable":null,"fresh":false}
{"reason":"build-script-executed","package_id":"registry+https://github.com/rust-lang/crates.io-index#quote@1.0.47","linked_libs":[],"linked_paths":[],"cfgs":[],"env":[],"out_dir":"/ws/target/debug/build/quote-f13889c230d54603/out"}
{"reason":"compiler-artifact","package_id":"registry+https://github.com/rust-lang/crates.io-index#serde_derive@1.0.229","manifest_path":"/cargo/registry/src/serde_derive-1.0.229/Cargo.toml","target":{"kind":["proc-macro"],"crate_types":["proc-macro"],"name":"serde_derive","src_path":"/cargo/registry/src/serde_derive-1.0.229/src/lib.rs","edition":"2021","doc":true,"doctest":true,"test":true},"profile":{"opt_level":"0","debuginfo":0,"debug_assertions":true,"overflow_checks":true,"test":false},"features":["default"],"filenames":["/ws/target/debug/deps/libserde_derive-f1abc8161ed4ac8f.so"],"executable":null,"fresh":false}
{"reason":"compiler-artifact","package_id":"path+file:///ws/interface#1.0.0","manifest_path":"/ws/interface/Cargo.toml","target":{"kind":["lib"],"crate_types":["lib"],"name":"interface","src_path":"/ws/interface/src/lib.rs","edition":"2021","doc":true,"doctest":true,"test":true},"profile":{"opt_level":"0","debuginfo":2,"debug_assertions":true,"overflow_checks":true,"test":false},"features":["plugin"],"filenames":["/ws/target/debug/deps/libinterface-382148b5fcd7ebfd.rlib","/ws/target/debug/deps/libinterface-382148b5fcd7ebfd.rmeta"],"executable":null,"fresh":false}
{"reason":"compiler-artifact","package_id":"path+file:///ws/plugins/basic#1.0.0","manifest_path":"/ws/plugins/basic/Cargo.toml","target":{"kind":["cdylib","rlib"],"crate_types":["cdylib","rlib"],"name":"basic","src_path":"/ws/plugins/basic/src/lib.rs","edition":"2021","doc":true,"doctest":true,"test":true},"profile":{"opt_level":"0","debuginfo":2,"debug_assertions":true,"overflow_checks":true,"test":false},"features":[],"filenames":["/ws/target/debug/libbasic.so","/ws/target/debug/libbasic.rlib"],"executable":null,"fresh":false}
{"reason":"compiler-artifact","package_id":"path+file:///ws/cli#host@0.1.0","manifest_path":"/ws/cli/Cargo.toml","target":{"kind":["bin"],"crate_types":["bin"],"name":"calcplug","src_path":"/ws/cli/src/main.rs","edition":"2021","doc":true,"doctest":false,"test":true},"profile":{"opt_level":"0","debuginfo":2,"debug_assertions":true,"overflow_checks":true,"test":false},"features":[],"filenames":["/ws/target/debug/calcplug"],"executable":"/ws/target/debug/calcplug","fresh":true}
{"reason":"build-finished","success":true}
"#;

    #[test]
    fn parses_cdylibs_and_bins_only() {
        let messages = MESSAGES.replace(".so\"", &format!("{}\"", std::env::consts::DLL_SUFFIX));
        let artifacts = parse_artifacts(&messages).unwrap();
        let lib = format!("/ws/target/debug/libbasic{}", std::env::consts::DLL_SUFFIX);
        assert_eq!(
            artifacts,
            [
                Artifact {
                    package: "basic".to_owned(),
                    kind: ArtifactKind::Cdylib,
                    path: PathBuf::from(lib),
                },
                Artifact {
                    package: "host".to_owned(),
                    kind: ArtifactKind::Bin,
                    path: PathBuf::from("/ws/target/debug/calcplug"),
                },
            ]
        );
    }

    #[test]
    fn skips_lines_that_are_not_json() {
        assert_eq!(parse_artifacts("\n   Compiling basic v1.0.0\n").unwrap(), []);
    }

    #[test]
    fn rejects_broken_json() {
        let error = parse_artifacts("{\"reason\":").unwrap_err();
        assert_eq!(error.to_string(), "line 1: invalid cargo JSON message");
    }

    #[test]
    fn reads_package_names_from_package_ids() {
        let cases = [
            ("path+file:///ws/plugins/basic#1.0.0", Some("basic")),
            ("path+file:///ws/plugins/add#adder@0.1.0", Some("adder")),
            ("path+file:///ws/tests/fixtures/not-a-plugin#0.1.0", Some("not-a-plugin")),
            ("registry+https://github.com/rust-lang/crates.io-index#serde@1.0.229", Some("serde")),
            ("git+https://github.com/o/repo.git?branch=main#thing@0.2.0", Some("thing")),
            ("basic 1.0.0 (path+file:///ws/plugins/basic)", Some("basic")),
            ("no-fragment", None),
        ];
        for (id, expected) in cases {
            assert_eq!(package_name(id).as_deref(), expected, "{id}");
        }
    }
}
