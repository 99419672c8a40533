//! Small helpers shared by the test modules.

use std::path::{Path, PathBuf};
use std::process::Command;

use host::{Config, Plugin};

pub(crate) use tests::artifacts;

/// The library of `package`, loaded and initialized with `config`.
#[track_caller]
pub(crate) fn ready(package: &str, config: &Config) -> Plugin {
    let plugin = load(package);
    plugin.initialize(config).unwrap_or_else(|err| panic!("initialize {package}: {err}"));
    plugin
}

/// The library of `package`, loaded, not initialized.
#[track_caller]
pub(crate) fn load(package: &str) -> Plugin {
    let path = artifacts().library(package);
    host::load(&path).unwrap_or_else(|err| panic!("load {}: {err}", path.display()))
}

/// A fresh scratch directory, removed when dropped.
pub(crate) fn scratch() -> tempfile::TempDir {
    tempfile::Builder::new().prefix("calcplug-test-").tempdir().expect("create a scratch directory")
}

/// Copies `from` into `dir` under `name` and returns the new path.
pub(crate) fn copy_as(from: &Path, dir: &Path, name: &str) -> PathBuf {
    let to = dir.join(name);
    std::fs::copy(from, &to).unwrap_or_else(|err| panic!("copy {}: {err}", from.display()));
    to
}

/// The `calcplug` binary, in an environment without the variables that would point it
/// elsewhere (`CALCPLUG_LOG`, `CALCPLUG_PLUGIN_PATH`, `CALCPLUG_CONFIG`, `CALCPLUG_RUNNER`):
/// the one way the tests run the CLI.
pub(crate) fn calcplug() -> Command {
    let mut command = Command::new(&artifacts().calcplug);
    // Nothing of the caller's environment that the CLI reads: every CALCPLUG_ variable (config
    // keys among them) and the OpenTelemetry exporter's.
    for (key, _) in std::env::vars_os() {
        let name = key.to_string_lossy();
        if name.starts_with("CALCPLUG_") || name.starts_with("OTEL_") {
            command.env_remove(&key);
        }
    }
    command
}
