//! Support for calcplug's integration tests: builds the real plugin, fixture and CLI binaries
//! once per test run and says where they are.
//!
//! The build goes into cargo's own target directory (the one `cargo test` just built the
//! workspace into, `CARGO_TARGET_DIR` included), so the dependencies compiled for the tests serve
//! it too; cargo does not hold that directory's lock while test binaries run. The libraries are
//! then installed under `target/test-artifacts`.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use xtask::{ArtifactKind, BuildRequest, PackageSet};

/// Where the built artifacts are.
#[derive(Debug)]
pub struct Artifacts {
    /// The real plugins (`plugins/*`), as `cargo xtask build-plugins` installs them.
    pub plugin_dir: PathBuf,
    /// The fixture plugins (`tests/fixtures/*`), in a directory of their own.
    pub fixture_dir: PathBuf,
    /// The `hostile-*` fixtures, which crash any process that maps them: never scan this
    /// directory in process.
    pub hostile_dir: PathBuf,
    /// The `calcplug` binary.
    pub calcplug: PathBuf,
    /// The `calcplug-runner` binary of the out-of-process mode.
    pub runner: PathBuf,
    /// Libraries built by the frozen interface 1.0 workspace (`tests/compat`): `basic-v1_0`
    /// (the basic plugin as it was at 1.0) and `layout-broken`.
    pub compat_dir: PathBuf,
    /// The minimal host built against the frozen interface 1.0.
    pub old_host: PathBuf,
}

impl Artifacts {
    /// The library file of the real plugin or fixture crate `package` (e.g. `basic`,
    /// `bad-cookie`).
    ///
    /// # Panics
    ///
    /// If no such library was built: a test asked for a crate that does not exist.
    pub fn library(&self, package: &str) -> PathBuf {
        let file = library_file_name(package);
        [&self.plugin_dir, &self.fixture_dir, &self.hostile_dir, &self.compat_dir]
            .into_iter()
            .map(|dir| dir.join(&file))
            .find(|path| path.is_file())
            .unwrap_or_else(|| panic!("no library {file} was built for package {package}"))
    }
}

/// `lib{name}.so` (or `.dylib`, or `{name}.dll`) for a package whose lib target has the default
/// name.
pub fn library_file_name(package: &str) -> String {
    format!(
        "{}{}{}",
        std::env::consts::DLL_PREFIX,
        package.replace('-', "_"),
        std::env::consts::DLL_SUFFIX
    )
}

/// Builds (once per test binary) every plugin, every fixture and the `calcplug` binary.
///
/// # Panics
///
/// If the build fails: the tests cannot run without the libraries, and cargo has already
/// printed the compiler's errors.
pub fn artifacts() -> &'static Artifacts {
    static ARTIFACTS: OnceLock<Artifacts> = OnceLock::new();
    ARTIFACTS.get_or_init(|| match build_all() {
        Ok(artifacts) => artifacts,
        Err(err) => panic!("building the test plugins failed: {err:#}"),
    })
}

/// Builds (once per test binary) the Go peers of the gRPC interop tests: a go-plugin plugin and
/// a go-plugin host, with calcplug's magic cookie.
///
/// # Panics
///
/// If Go or go-plugin is not installed (the message says what to install) or the build fails.
pub fn go_peers() -> &'static xtask::peers::GoPeers {
    static PEERS: OnceLock<xtask::peers::GoPeers> = OnceLock::new();
    PEERS.get_or_init(|| {
        match xtask::peers::build_go_peers(
            &xtask::workspace_root(),
            &go_out(),
            interface::MAGIC_COOKIE_VALUE,
        ) {
            Ok(peers) => peers,
            Err(err) => panic!("{err:#}"),
        }
    })
}

/// Builds a one-file Go program (`package main`) beside the Go peers, so it can import
/// `calcshared`, `calcplug/v1` and go-plugin; returns the executable.
///
/// # Panics
///
/// As [`go_peers`] does, or with Go's errors when the program does not build.
pub fn go_program(name: &str, main_go: &str) -> PathBuf {
    go_peers();
    let root = xtask::workspace_root();
    let cookie = interface::MAGIC_COOKIE_VALUE;
    match xtask::peers::build_go_program(&root, &go_out(), name, main_go, cookie) {
        Ok(program) => program,
        Err(err) => panic!("{err:#}"),
    }
}

/// Where the Go peers and programs are built.
fn go_out() -> PathBuf {
    xtask::workspace_root().join("target").join("test-artifacts").join("go")
}

/// Sets up (once per test binary) the Python plugin of the gRPC interop tests: a virtualenv
/// with grpcio (from PyPI when missing) and the generated code.
///
/// # Panics
///
/// If Python or the packages cannot be had; the message says what failed.
pub fn python_peer() -> &'static xtask::peers::PythonPeer {
    static PEER: OnceLock<xtask::peers::PythonPeer> = OnceLock::new();
    PEER.get_or_init(|| {
        let root = xtask::workspace_root();
        let out = root.join("target").join("test-artifacts").join("python");
        match xtask::peers::build_python_peer(&root, &out) {
            Ok(peer) => peer,
            Err(err) => panic!("{err:#}"),
        }
    })
}

fn build_all() -> anyhow::Result<Artifacts> {
    let root = xtask::workspace_root();
    let out = root.join("target").join("test-artifacts");
    let plugins = names(&root, PackageSet::Plugins)?;
    let fixtures = names(&root, PackageSet::Fixtures)?;
    let mut packages: Vec<String> = plugins.iter().chain(&fixtures).cloned().collect();
    // The `calcplug` package: the CLI and the calcplug-runner binary.
    packages.push("calcplug".to_owned());
    let built = xtask::build(
        &root,
        &BuildRequest { packages: &packages, release: false, target_dir: None, quiet: true },
    )?;
    let of = |set: &[String]| -> Vec<xtask::Artifact> {
        built
            .iter()
            .filter(|a| a.kind == ArtifactKind::Cdylib && set.contains(&a.package))
            .cloned()
            .collect()
    };
    let plugin_dir = out.join("plugins");
    let fixture_dir = out.join("fixtures");
    let hostile_dir = out.join("hostile");
    let (hostile, tame): (Vec<String>, Vec<String>) =
        fixtures.into_iter().partition(|name| name.starts_with("hostile-"));
    xtask::install(&of(&plugins), &plugin_dir)?;
    xtask::install(&of(&tame), &fixture_dir)?;
    xtask::install(&of(&hostile), &hostile_dir)?;
    let calcplug = built
        .iter()
        .find(|a| {
            a.kind == ArtifactKind::Bin && a.path.file_stem().is_some_and(|s| s == "calcplug")
        })
        .map(|a| a.path.clone())
        .ok_or_else(|| anyhow::anyhow!("cargo built no calcplug binary"))?;
    let runner = built
        .iter()
        .find(|a| {
            a.kind == ArtifactKind::Bin
                && a.path.file_stem().is_some_and(|s| s == "calcplug-runner")
        })
        .map(|a| a.path.clone())
        .ok_or_else(|| anyhow::anyhow!("cargo built no calcplug-runner binary"))?;
    let (compat_dir, old_host) = build_compat(&root, &out)?;
    Ok(Artifacts { plugin_dir, fixture_dir, hostile_dir, calcplug, runner, compat_dir, old_host })
}

/// Builds the frozen interface 1.0 workspace: a plugin and a host built against 1.0, and a
/// plugin whose 1.0 layout was broken.
///
/// Two cargo runs, because `layout-broken` turns on a feature of the frozen `interface` that
/// must not be unified into the other two.
fn build_compat(root: &Path, out: &Path) -> anyhow::Result<(PathBuf, PathBuf)> {
    let compat_root = root.join("tests").join("compat");
    let target_dir = out.join("compat");
    let mut built = Vec::new();
    for packages in [&["basic-v1_0", "host-v1_0"][..], &["layout-broken"][..]] {
        let packages: Vec<String> = packages.iter().map(|p| (*p).to_owned()).collect();
        built.extend(xtask::build(
            &compat_root,
            &BuildRequest {
                packages: &packages,
                release: false,
                target_dir: Some(&target_dir),
                quiet: true,
            },
        )?);
    }
    let libraries: Vec<_> =
        built.iter().filter(|a| a.kind == ArtifactKind::Cdylib).cloned().collect();
    let compat_dir = out.join("compat-plugins");
    xtask::install(&libraries, &compat_dir)?;
    let old_host = built
        .iter()
        .find(|a| a.kind == ArtifactKind::Bin && a.package == "host-v1_0")
        .map(|a| a.path.clone())
        .ok_or_else(|| anyhow::anyhow!("cargo built no host-v1_0 binary"))?;
    Ok((compat_dir, old_host))
}

fn names(root: &Path, set: PackageSet) -> anyhow::Result<Vec<String>> {
    Ok(xtask::plugin_packages(root, set)?.into_iter().map(|p| p.name).collect())
}
