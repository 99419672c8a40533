//! What the manager reports: a scan, a shutdown, a health check, and the status snapshot
//! `calcplug status` prints.

use std::path::PathBuf;
use std::time::Duration;

use interface::Status;
use semver::Version;

use super::{LifecycleState, OpMetrics};
use crate::config::Mode;
use crate::Error;

/// What a scan did.
#[derive(Debug, Default)]
pub struct ScanReport {
    /// Plugins that started serving a name for the first time.
    pub loaded: Vec<String>,
    /// Plugins whose library was replaced by a new one.
    pub reloaded: Vec<String>,
    /// Files (or directories) that were refused or shadowed, and replacements that failed.
    pub failed: Vec<Error>,
}

/// What [`PluginManager::shutdown`](super::PluginManager::shutdown) did.
#[derive(Debug, Default)]
pub struct ShutdownReport {
    /// Plugins shut down cleanly.
    pub closed: Vec<String>,
    /// Plugins whose calls did not finish in time ([`Error::Timeout`]) or whose `shutdown`
    /// failed.
    pub failed: Vec<Error>,
}

/// A plugin's health: the manager's view and the plugin's own.
#[derive(Debug, Clone)]
pub struct Health {
    /// The plugin.
    pub name: String,
    /// The manager's lifecycle state for it.
    pub state: LifecycleState,
    /// What the plugin says about itself, if it could say.
    pub status: Option<Status>,
    /// Why it is not healthy, if it is not.
    pub problem: Option<String>,
}

impl Health {
    /// Whether it is serving and says it is ready.
    pub fn is_healthy(&self) -> bool {
        self.problem.is_none()
    }
}

/// A snapshot of everything the manager knows, for `calcplug status`.
#[derive(Debug, Clone)]
pub struct ManagerStatus {
    /// One entry per plugin name, sorted by name.
    pub plugins: Vec<PluginStatus>,
    /// Files and directories that are refused or shadowed, sorted by path.
    pub problems: Vec<FileProblem>,
    /// How long the manager has been running.
    pub uptime: Duration,
}

/// One managed plugin in a [`ManagerStatus`].
#[derive(Debug, Clone)]
pub struct PluginStatus {
    /// Its name.
    pub name: String,
    /// The version of the library serving it.
    pub version: Version,
    /// The library file serving it (the file in the plugin directory, not the private copy).
    pub source: PathBuf,
    /// Its lifecycle state.
    pub state: LifecycleState,
    /// Where it runs: in this process, or in a `calcplug-runner` child.
    pub mode: Mode,
    /// How calls reach it: `in-process`, `shm` or `socket` (a calcplug runner, through
    /// shared-memory lanes or its socket), `grpc` (a plugin
    /// executable speaking go-plugin's protocol) or `fleet` (`calcplug serve` instances on
    /// other machines; its `mode` is then `OutOfProcess`).
    pub transport: &'static str,
    /// The process id of its runner, out of process while one runs.
    pub runner_pid: Option<u32>,
    /// Its runner's circuit breaker, out of process.
    pub circuit: Option<crate::remote::Circuit>,
    /// How many libraries have served it (1 until the first reload).
    pub generation: u64,
    /// How long the serving library has been loaded.
    pub uptime: Duration,
    /// Calls running now.
    pub in_flight: u64,
    /// Calls the manager refused (not ready, shutting down).
    pub rejected: u64,
    /// Successful reloads.
    pub reloads: u64,
    /// Replacements that failed (the old library kept serving).
    pub reload_failures: u64,
    /// The last load, initialize or reload error, if any.
    pub last_error: Option<String>,
    /// The last health check, if one ran.
    pub health: Option<Health>,
    /// Per-operation metrics, for the operations called at least once.
    pub ops: Vec<OpMetrics>,
}

/// A library file (or plugin directory) that does not serve.
#[derive(Debug, Clone)]
pub struct FileProblem {
    /// The file or directory.
    pub path: PathBuf,
    /// Whether it loaded fine but another library with a higher version serves its name.
    pub shadowed: bool,
    /// The state it failed in.
    pub failed_in: LifecycleState,
    /// Why, in one line.
    pub reason: String,
}
