//! Workspace automation shared by the `cargo xtask` binary and the integration tests.
//!
//! This library finds the plugin and fixture crates of the workspace, builds them through
//! `$CARGO`, and installs the resulting `cdylib`s into a plugin directory. It never prints:
//! every function returns data and leaves reporting to the caller, so the `tests` crate can use it
//! to build the fixture plugins before it loads them.
//!
//! ```no_run
//! use xtask::{BuildRequest, PackageSet};
//!
//! # fn main() -> anyhow::Result<()> {
//! let root = xtask::try_workspace_root()?;
//! let names: Vec<String> = xtask::plugin_packages(root, PackageSet::Fixtures)?
//!     .into_iter()
//!     .map(|package| package.name)
//!     .collect();
//! let request = BuildRequest {
//!     packages: &names,
//!     release: false,
//!     target_dir: Some(&root.join("target/fixtures")),
//!     quiet: true,
//! };
//! let artifacts = xtask::build(root, &request)?;
//! xtask::install(&artifacts, &root.join("target/fixtures/plugins"))?;
//! # Ok(())
//! # }
//! ```

mod build;
mod install;
mod metadata;
pub mod peers;
pub mod signing;
mod workspace;

use std::{
    ffi::OsString,
    path::{Path, PathBuf},
    process::Command,
};

pub use crate::{
    build::{build, parse_artifacts, Artifact, ArtifactKind, BuildRequest},
    install::install,
    metadata::{plugin_packages, target_directory, Package, PackageSet},
    workspace::{try_workspace_root, workspace_root},
};

/// Returns the cargo executable to run: `$CARGO` if it is set, otherwise `cargo`.
///
/// Cargo sets `CARGO` for the processes it runs (`cargo run`, `cargo test`), so nested builds use
/// the same toolchain as the command that started them.
pub fn cargo() -> OsString {
    std::env::var_os("CARGO").unwrap_or_else(|| OsString::from("cargo"))
}

/// Returns a [`Command`] that runs [`cargo()`] with `root` as its working directory.
///
/// Every cargo invocation in xtask goes through this helper so that each one names its working
/// directory: only [`try_workspace_root`] runs cargo in the caller's current directory, to find
/// the workspace that every other invocation then runs in.
pub fn cargo_command(root: &Path) -> Command {
    let mut command = Command::new(cargo());
    command.current_dir(root);
    command
}

/// Returns the directory that `cargo xtask build-plugins` installs plugins into:
/// `<target>/plugins/release` or `<target>/plugins/debug`, where `<target>` is cargo's target
/// directory ([`target_directory`]). `calcplug` looks there, next to its own binary's profile
/// directory, so the two agree whatever `CARGO_TARGET_DIR` says.
pub fn plugin_dir(target_directory: &Path, release: bool) -> PathBuf {
    let profile = if release { "release" } else { "debug" };
    target_directory.join("plugins").join(profile)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plugin_dir_is_per_profile() {
        let target = Path::new("/cache/target");
        assert_eq!(plugin_dir(target, true), Path::new("/cache/target/plugins/release"));
        assert_eq!(plugin_dir(target, false), Path::new("/cache/target/plugins/debug"));
    }
}
