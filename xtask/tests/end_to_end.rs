//! Runs the library against a small scratch workspace laid out like calcplug's, and the `xtask`
//! binary in directories other than this checkout.
//!
//! The scratch workspace has no dependencies, so cargo needs no network, and it has its own target
//! directory, so the nested build never waits for the lock that `cargo test` holds on ours.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Output},
};

use xtask::{ArtifactKind, BuildRequest, PackageSet};

/// A scratch directory under the system temp directory, removed on drop.
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn write(root: &Path, path: &str, contents: &str) {
    let path = root.join(path);
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, contents).unwrap();
}

/// Creates the scratch workspace; `name` keeps tests that run in parallel apart.
fn scratch_workspace(name: &str) -> Scratch {
    let root = unique_dir(name);
    write(
        &root,
        "Cargo.toml",
        "[workspace]\nresolver = \"2\"\nmembers = [\"app\", \"plugins/*\", \"tests/fixtures/*\"]\n",
    );
    write(
        &root,
        "app/Cargo.toml",
        "[package]\nname = \"app\"\nversion = \"0.1.0\"\nedition = \"2021\"\n\n\
         [[bin]]\nname = \"app-cli\"\npath = \"src/main.rs\"\n",
    );
    write(&root, "app/src/main.rs", "fn main() {}\n");
    // The directory name differs from the package name on purpose: the package ID then spells the
    // name out, and the library's file name comes from `[lib] name`.
    write(
        &root,
        "plugins/adder/Cargo.toml",
        "[package]\nname = \"add-plugin\"\nversion = \"0.1.0\"\nedition = \"2021\"\n\n\
         [lib]\nname = \"adder\"\ncrate-type = [\"cdylib\", \"rlib\"]\n",
    );
    write(&root, "plugins/adder/src/lib.rs", "pub fn add(a: i32, b: i32) -> i32 { a + b }\n");
    write(
        &root,
        "tests/fixtures/broken/Cargo.toml",
        "[package]\nname = \"broken\"\nversion = \"0.1.0\"\nedition = \"2021\"\n\n\
         [lib]\ncrate-type = [\"cdylib\"]\n",
    );
    write(&root, "tests/fixtures/broken/src/lib.rs", "pub fn nothing() {}\n");
    Scratch(root)
}

#[test]
fn finds_builds_and_installs_plugins() {
    let scratch = scratch_workspace("build");
    let root = &scratch.0;

    let names = |set| -> Vec<String> {
        xtask::plugin_packages(root, set).unwrap().into_iter().map(|p| p.name).collect()
    };
    assert_eq!(names(PackageSet::Plugins), ["add-plugin"]);
    assert_eq!(names(PackageSet::Fixtures), ["broken"]);
    assert_eq!(names(PackageSet::All), ["add-plugin", "broken"]);

    let packages = vec!["add-plugin".to_owned(), "broken".to_owned(), "app".to_owned()];
    let target_dir = root.join("target");
    let request = BuildRequest {
        packages: &packages,
        release: false,
        target_dir: Some(&target_dir),
        quiet: true,
    };
    let mut artifacts = xtask::build(root, &request).unwrap();
    artifacts.sort_by(|a, b| a.package.cmp(&b.package));

    let summary: Vec<(&str, ArtifactKind, String)> = artifacts
        .iter()
        .map(|a| {
            let file = a.path.file_name().unwrap().to_string_lossy().into_owned();
            (a.package.as_str(), a.kind, file)
        })
        .collect();
    let (prefix, suffix) = (std::env::consts::DLL_PREFIX, std::env::consts::DLL_SUFFIX);
    let exe = std::env::consts::EXE_SUFFIX;
    assert_eq!(
        summary,
        [
            ("add-plugin", ArtifactKind::Cdylib, format!("{prefix}adder{suffix}")),
            ("app", ArtifactKind::Bin, format!("app-cli{exe}")),
            ("broken", ArtifactKind::Cdylib, format!("{prefix}broken{suffix}")),
        ]
    );
    assert!(artifacts.iter().all(|a| a.path.starts_with(&target_dir) && a.path.is_file()));

    assert_eq!(xtask::target_directory(root).unwrap(), cargo_target_dir(root));
    let dir = xtask::plugin_dir(&target_dir, false);
    let installed = xtask::install(&artifacts, &dir).unwrap();
    assert_eq!(
        installed,
        [dir.join(format!("{prefix}adder{suffix}")), dir.join(format!("{prefix}broken{suffix}"))]
    );
}

#[test]
fn reports_failed_builds_by_package() {
    let scratch = scratch_workspace("fail");
    let root = &scratch.0;
    let packages = vec!["no-such-package".to_owned()];
    let target_dir = root.join("target");
    let request = BuildRequest {
        packages: &packages,
        release: false,
        target_dir: Some(&target_dir),
        quiet: true,
    };
    let error = xtask::build(root, &request).unwrap_err();
    assert!(error.to_string().starts_with("failed to build no-such-package: "), "{error:#}");
}

/// Where cargo puts `root`'s builds: `CARGO_TARGET_DIR` when this test runs with it set.
fn cargo_target_dir(root: &Path) -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root.join("target"), PathBuf::from)
}

/// The binary compiled from this checkout finds the workspace it is started in, not this one:
/// checkouts that share a `CARGO_TARGET_DIR` share this binary (issue 25).
#[test]
fn root_is_the_workspace_around_the_current_directory() {
    let scratch = Scratch(unique_dir("root"));
    for copy in ["a", "b"] {
        write(&scratch.0, &format!("{copy}/Cargo.toml"), "[workspace]\n");
        fs::create_dir_all(scratch.0.join(copy).join("plugins/basic")).unwrap();
    }
    // The current directory is spelled with symlinks resolved (`/tmp` may be one).
    let scratch_dir = scratch.0.canonicalize().unwrap();
    for copy in ["a", "b"] {
        let output = xtask_root(&scratch_dir.join(copy).join("plugins/basic"));
        assert!(output.status.success(), "{}", describe(&output));
        let expected = format!("{}\n", scratch_dir.join(copy).display());
        assert_eq!(String::from_utf8_lossy(&output.stdout), expected, "{}", describe(&output));
    }
}

#[test]
fn root_outside_a_workspace_is_a_one_line_error() {
    let scratch = Scratch(unique_dir("no-root"));
    fs::create_dir_all(&scratch.0).unwrap();
    let dir = scratch.0.canonicalize().unwrap();
    let output = xtask_root(&dir);
    assert_eq!(output.status.code(), Some(1), "{}", describe(&output));
    assert!(output.stdout.is_empty(), "{}", describe(&output));
    let dir = dir.display();
    assert_eq!(
        String::from_utf8_lossy(&output.stderr),
        format!(
            "error: cannot find the workspace from {dir}: could not find `Cargo.toml` in `{dir}` \
             or any parent directory\n"
        ),
    );
}

/// A fresh path under the system temp directory; `name` keeps tests that run in parallel apart.
fn unique_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("xtask-e2e-{name}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    dir
}

/// Runs `xtask root` in `dir`, as `cargo xtask root` would: `cargo run` keeps the current
/// directory and sets `CARGO`, which this test inherits from `cargo test`.
fn xtask_root(dir: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_xtask")).arg("root").current_dir(dir).output().unwrap()
}

fn describe(output: &Output) -> String {
    format!(
        "{}\nstdout:\n{}\nstderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}
