//! `cargo xtask build-plugins`: builds the plugin crates and installs their libraries.

use std::path::Path;

use anyhow::bail;
use xtask::{Artifact, ArtifactKind, BuildRequest, Package, PackageSet};

use crate::{display_relative, flags};

/// The name prefix of fixtures that must never be mapped by a scan.
pub(crate) const HOSTILE_PREFIX: &str = "hostile-";

impl flags::BuildPlugins {
    pub(crate) fn run(&self) -> anyhow::Result<()> {
        let root = xtask::try_workspace_root()?;
        let plugins = xtask::plugin_packages(root, PackageSet::Plugins)?;
        if plugins.is_empty() {
            bail!("no plugin crates found under {}", root.join("plugins").display());
        }
        // `hostile-*` fixtures crash whatever process maps them: never install them where a
        // directory scan would load them (the tests build them into a directory of their own).
        let fixtures: Vec<Package> = if self.fixtures {
            xtask::plugin_packages(root, PackageSet::Fixtures)?
                .into_iter()
                .filter(|package| !package.name.starts_with(HOSTILE_PREFIX))
                .collect()
        } else {
            Vec::new()
        };

        // One cargo invocation for everything shares the dependency graph and the build lock.
        let names: Vec<String> =
            plugins.iter().chain(&fixtures).map(|package| package.name.clone()).collect();
        let artifacts = xtask::build(
            root,
            &BuildRequest {
                packages: &names,
                release: self.release,
                target_dir: None,
                quiet: false,
            },
        )?;

        let dir = xtask::plugin_dir(&xtask::target_directory(root)?, self.release);
        let count = install_set(root, &plugins, &artifacts, &dir)?;
        if let Some(key) = &self.sign {
            let key = xtask::signing::read_secret_key(key)?;
            for library in installed_libraries(&dir)? {
                let sig = xtask::signing::sign(&key, &library)?;
                println!("signed    {}", display_relative(root, &sig));
            }
        }
        let mut summary = format!(
            "installed {count} {} into {}",
            if count == 1 { "plugin" } else { "plugins" },
            display_relative(root, &dir)
        );
        if self.fixtures {
            let fixture_dir = dir.join("fixtures");
            let count = install_set(root, &fixtures, &artifacts, &fixture_dir)?;
            summary += &format!(
                " and {count} {} into {}",
                if count == 1 { "fixture" } else { "fixtures" },
                display_relative(root, &fixture_dir)
            );
        }
        println!("{summary}");
        Ok(())
    }
}

/// Installs the cdylibs of `packages` into `dir`, prints one line per library, and returns how
/// many were installed.
///
/// Every package must have produced a cdylib: a plugin crate without `crate-type = ["cdylib"]`
/// would otherwise be skipped without a word.
fn install_set(
    root: &Path,
    packages: &[Package],
    artifacts: &[Artifact],
    dir: &Path,
) -> anyhow::Result<usize> {
    let mut selected = Vec::new();
    for package in packages {
        let before = selected.len();
        selected.extend(artifacts.iter().filter(|artifact| {
            artifact.package == package.name && artifact.kind == ArtifactKind::Cdylib
        }));
        if selected.len() == before {
            bail!(
                "{}: package {} built no cdylib; is `crate-type = [\"cdylib\"]` set in its [lib] section?",
                display_relative(root, &package.manifest_dir.join("Cargo.toml")),
                package.name,
            );
        }
    }
    let selected: Vec<Artifact> = selected.into_iter().cloned().collect();
    let installed = xtask::install(&selected, dir)?;
    for (artifact, path) in selected.iter().zip(&installed) {
        println!("installed {} -> {}", artifact.package, display_relative(root, path));
    }
    Ok(installed.len())
}

/// The library files directly in `dir`.
pub(crate) fn installed_libraries(dir: &Path) -> anyhow::Result<Vec<std::path::PathBuf>> {
    let mut libraries = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_file() && path.to_string_lossy().ends_with(std::env::consts::DLL_SUFFIX) {
            libraries.push(path);
        }
    }
    libraries.sort();
    Ok(libraries)
}
