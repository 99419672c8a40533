//! Finding the plugin and fixture crates of the workspace with `cargo metadata`.
//!
//! Asking cargo rather than listing directories means that a stray folder under `plugins/` which is
//! not a workspace member is never built, and that the package name comes from its manifest.

use std::{
    collections::HashSet,
    path::{Path, PathBuf},
    process::Stdio,
};

use anyhow::{bail, Context};
use serde::Deserialize;

/// A workspace package selected by [`plugin_packages`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Package {
    /// The package name, as passed to `cargo build -p`.
    pub name: String,
    /// The directory that holds the package's `Cargo.toml`.
    pub manifest_dir: PathBuf,
}

/// Which group of plugin-like crates [`plugin_packages`] returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PackageSet {
    /// The real plugins, `<root>/plugins/*/Cargo.toml`.
    Plugins,
    /// The deliberately broken plugins used by the integration tests,
    /// `<root>/tests/fixtures/*/Cargo.toml`.
    Fixtures,
    /// Both [`PackageSet::Plugins`] and [`PackageSet::Fixtures`].
    All,
}

/// Returns the workspace packages of `set`, sorted by name.
///
/// A package belongs to a set when its manifest sits exactly one directory below the set's
/// directory, so `plugins/basic/Cargo.toml` is a plugin but `plugins/basic/inner/Cargo.toml` is not.
///
/// # Errors
///
/// Fails if `cargo metadata --no-deps` cannot be run in `root`, exits with an error, or prints
/// output that is not the JSON this function expects.
pub fn plugin_packages(root: &Path, set: PackageSet) -> anyhow::Result<Vec<Package>> {
    select_packages(&metadata_json(root)?, set)
}

/// Returns cargo's target directory for the workspace at `root`: `CARGO_TARGET_DIR`,
/// `build.target-dir` from a cargo config, or `<root>/target`, as cargo itself resolves it.
///
/// # Errors
///
/// As [`plugin_packages`].
pub fn target_directory(root: &Path) -> anyhow::Result<PathBuf> {
    let metadata: TargetDirectory = serde_json::from_str(&metadata_json(root)?)
        .context("failed to parse cargo metadata output")?;
    Ok(metadata.target_directory)
}

/// `cargo metadata --no-deps --format-version 1`, run in `root`.
fn metadata_json(root: &Path) -> anyhow::Result<String> {
    let output = crate::cargo_command(root)
        .args(["metadata", "--no-deps", "--format-version", "1"])
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("failed to run cargo metadata in {}", root.display()))?;
    if !output.status.success() {
        bail!("cargo metadata failed in {} ({})", root.display(), output.status);
    }
    String::from_utf8(output.stdout).context("cargo metadata printed invalid UTF-8")
}

#[derive(Deserialize)]
struct TargetDirectory {
    target_directory: PathBuf,
}

/// The parts of `cargo metadata --format-version 1` output that xtask reads.
#[derive(Deserialize)]
struct Metadata {
    packages: Vec<MetadataPackage>,
    workspace_members: Vec<String>,
    workspace_root: PathBuf,
}

#[derive(Deserialize)]
struct MetadataPackage {
    name: String,
    id: String,
    manifest_path: PathBuf,
}

/// Picks the packages of `set` out of `cargo metadata` JSON.
///
/// The set directories are joined onto the `workspace_root` that cargo itself reports, so they are
/// spelled the same way as the manifest paths they are compared with, symlinks included.
fn select_packages(metadata_json: &str, set: PackageSet) -> anyhow::Result<Vec<Package>> {
    let metadata: Metadata =
        serde_json::from_str(metadata_json).context("failed to parse cargo metadata output")?;
    let members: HashSet<&str> = metadata.workspace_members.iter().map(String::as_str).collect();
    let root = &metadata.workspace_root;
    let dirs = match set {
        PackageSet::Plugins => vec![root.join("plugins")],
        PackageSet::Fixtures => vec![root.join("tests").join("fixtures")],
        PackageSet::All => vec![root.join("plugins"), root.join("tests").join("fixtures")],
    };

    let mut packages: Vec<Package> = metadata
        .packages
        .into_iter()
        .filter(|package| members.contains(package.id.as_str()))
        .filter_map(|package| {
            let manifest_dir = package.manifest_path.parent()?.to_path_buf();
            let set_dir = manifest_dir.parent()?;
            dirs.iter()
                .any(|dir| dir == set_dir)
                .then_some(Package { name: package.name, manifest_dir })
        })
        .collect();
    packages.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(packages)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Trimmed from `cargo metadata --no-deps --format-version 1` (cargo 1.95) run in a workspace
    /// laid out like this one, plus a nested crate that must not count as a plugin.
    const METADATA: &str = r#"{
        "packages": [
            {"name": "host", "version": "0.1.0", "id": "path+file:///ws/host#0.1.0",
             "manifest_path": "/ws/host/Cargo.toml", "targets": []},
            {"name": "basic", "version": "0.1.0", "id": "path+file:///ws/plugins/basic#0.1.0",
             "manifest_path": "/ws/plugins/basic/Cargo.toml", "targets": []},
            {"name": "adder", "version": "0.1.0", "id": "path+file:///ws/plugins/add#adder@0.1.0",
             "manifest_path": "/ws/plugins/add/Cargo.toml", "targets": []},
            {"name": "nested", "version": "0.1.0",
             "id": "path+file:///ws/plugins/basic/nested#0.1.0",
             "manifest_path": "/ws/plugins/basic/nested/Cargo.toml", "targets": []},
            {"name": "not-a-plugin", "version": "0.1.0",
             "id": "path+file:///ws/tests/fixtures/not-a-plugin#0.1.0",
             "manifest_path": "/ws/tests/fixtures/not-a-plugin/Cargo.toml", "targets": []},
            {"name": "tests", "version": "0.1.0", "id": "path+file:///ws/tests#0.1.0",
             "manifest_path": "/ws/tests/Cargo.toml", "targets": []}
        ],
        "workspace_members": [
            "path+file:///ws/host#0.1.0",
            "path+file:///ws/plugins/basic#0.1.0",
            "path+file:///ws/plugins/add#adder@0.1.0",
            "path+file:///ws/plugins/basic/nested#0.1.0",
            "path+file:///ws/tests/fixtures/not-a-plugin#0.1.0",
            "path+file:///ws/tests#0.1.0"
        ],
        "workspace_root": "/ws",
        "target_directory": "/ws/target",
        "version": 1
    }"#;

    #[track_caller]
    fn check(set: PackageSet, expected: &[(&str, &str)]) {
        let actual = select_packages(METADATA, set).unwrap();
        let expected: Vec<Package> = expected
            .iter()
            .map(|(name, dir)| Package { name: name.to_string(), manifest_dir: PathBuf::from(dir) })
            .collect();
        assert_eq!(actual, expected);
    }

    #[test]
    fn selects_plugins_sorted_by_name() {
        check(PackageSet::Plugins, &[("adder", "/ws/plugins/add"), ("basic", "/ws/plugins/basic")]);
    }

    #[test]
    fn selects_fixtures() {
        check(PackageSet::Fixtures, &[("not-a-plugin", "/ws/tests/fixtures/not-a-plugin")]);
    }

    #[test]
    fn selects_all() {
        check(
            PackageSet::All,
            &[
                ("adder", "/ws/plugins/add"),
                ("basic", "/ws/plugins/basic"),
                ("not-a-plugin", "/ws/tests/fixtures/not-a-plugin"),
            ],
        );
    }
}
