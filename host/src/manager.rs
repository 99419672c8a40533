//! [`PluginManager`]: many plugins at once, by name, with a lifecycle, metrics, hot reload and a
//! graceful shutdown.
//!
//! ```no_run
//! use host::{ManagerConfig, Op, PluginManager};
//!
//! let config = ManagerConfig::from_file("calcplug.toml")?;
//! let manager = PluginManager::start(config)?;          // scans, loads, initializes
//! let basic = manager.get("basic").expect("loaded");     // a cheap handle for many threads
//! assert_eq!(basic.add(2.0, 3.0)?, 5.0);
//! assert_eq!(manager.call("basic", Op::Divide, 1.0, 4.0)?, 0.25);
//! print!("{}", manager.status().prometheus());
//! let report = manager.shutdown();                       // waits for calls in flight
//! assert!(report.failed.is_empty());
//! # Ok::<(), host::Error>(())
//! ```
//!
//! # Discovery and shadowing
//!
//! Every library in `discovery.paths` is loaded (through [`crate::load`], from a private copy,
//! see below); a refused file is recorded with its reason and never stops the scan. Two libraries
//! claiming the same name: the higher plugin version serves, the other is reported
//! [`Error::Shadowed`].
//!
//! # The call path
//!
//! A [`Handle`] call is: this thread's counter shard (a thread-local index; the thread owns the
//! shard), a plain store counting it entered, a compiler fence, the serving library (one atomic
//! load: see `manager/generations.rs`), one atomic load of its gate (which is closed unless
//! the library is `Ready`, and also picks the calls to time: one `test` of the call's ticket
//! for both), the plugin's own call, and a plain store counting it done. No lock, no
//! allocation, no syscall and no locked instruction unless the plugin fails; one in-process
//! call in `metrics.sample_every` (every call to another process) also reads the clock twice.
//! The compiler fence is enough because shutdown and reload, the rare side, pay for a
//! process-wide `membarrier(2)` instead (see `manager/fence.rs`).
//!
//! `cargo bench -p host --bench manager` compares `Plugin::add` on a release build of `basic`
//! with `Handle::add` (timing off, the default of 1 call in 1024 timed, 1 in 64, every call
//! timed) and `PluginManager::call` by name; `cargo xtask bench-report` records the default
//! against `Plugin::add` as the `metrics on` row of `BENCHMARKS.md`. Timing a call costs about
//! 100 ns (two clock reads, a histogram update, the cold path), which is why in-process calls
//! are sampled; a lookup by name costs about 50 ns (hashing the name), which is why
//! [`PluginManager::get`] hands out a [`Handle`].
//!
//! # Hot reload
//!
//! With `discovery.auto_scan`, a thread watches the directories (`notify`, with
//! `scan_interval` polling as a fallback). A new library is loaded; a changed library (new
//! size, modification time or inode) is loaded and initialized *first*, then swapped in
//! atomically: calls already running finish on the old library, new calls go to the new one,
//! and none fails because of the reload. The old library is shut down (and an out-of-process
//! one's runner stopped) once the calls that started before the swap have returned, waiting
//! at most `manager.shutdown_timeout`; calls that outlast that keep it until the manager shuts
//! down. A replacement that fails to load or initialize leaves the old one serving, with the
//! error recorded.
//!
//! # Platform-specific behaviour
//!
//! `dlopen` returns the already-mapped library for a path (or inode) it has seen, so the
//! manager maps every library from an in-memory image of its bytes (read once, checked under
//! the `[security]` policy, sealed; see `host::security`), or serves it from a runner fed a private
//! copy of those bytes: the new code is really picked up, and rewriting a watched file in place
//! cannot fault what is mapped.
//! Libraries are never unmapped (see ARCHITECTURE.md), so **every reload costs the new
//! library's mapped size for the rest of the process**: about the file's size in address space,
//! and in memory the image's bytes (the in-memory file holds the whole library) plus the pages
//! its code touches. The 0.7 MiB of resident memory per reload measured by the hot-reload test
//! (`cargo test -p tests --test it hot_reload -- --nocapture`, `reload` fixture, a 12.6 MB debug
//! build) predates the in-memory images; `BENCHMARKS.md` has the current per-reload figure.
//! A process meant to reload thousands of times should be restarted now and then.

mod backend;
mod fence;
mod generations;
mod handle;
mod metrics;
pub(crate) mod prometheus;
mod report;
mod scan;
mod slot;

mod watch;

use std::collections::HashMap;
use std::fs;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use arc_swap::ArcSwap;
use interface::Op;
use parking_lot::Mutex;

pub use crate::lifecycle::{LifecycleState, StateMachine};
pub use metrics::{Latency, OpMetrics};
pub use report::{FileProblem, Health, ManagerStatus, PluginStatus, ScanReport, ShutdownReport};

use crate::config::{ManagerConfig, PanicPolicy, RetryPolicy};
use crate::security::LoadPolicy;
use crate::Error;
use backend::Backend;
use generations::Generations;
use metrics::Metrics;
use scan::copies_dir;

/// Many plugins, loaded from the configured directories, addressed by name.
///
/// Shut it down with [`PluginManager::shutdown`]; dropping it does the same.
pub struct PluginManager {
    inner: Arc<Inner>,
    background: Mutex<Option<watch::Background>>,
}

/// A cheap, cloneable handle to one managed plugin, usable from many threads at once.
///
/// It follows hot reloads: a call always goes to the library serving the name at that moment.
/// Its methods mirror [`Plugin`](crate::Plugin)'s, with the retry policy applied.
#[derive(Clone)]
pub struct Handle {
    slot: Arc<Slot>,
}

struct Inner {
    config: ManagerConfig,
    registry: ArcSwap<HashMap<String, Arc<Slot>>>,
    /// Serializes scans, reloads and shutdown.
    control: Mutex<Control>,
    closing: AtomicBool,
    copies: PathBuf,
    next_copy: AtomicU64,
    started: Instant,
    /// What a library must pass before it is mapped (`[security]`).
    policy: LoadPolicy,
}

#[derive(Default)]
struct Control {
    /// Every library file seen, with its stamp when last looked at and what became of it.
    files: HashMap<PathBuf, FileRecord>,
    /// Directories that could not be listed at the last scan.
    dir_errors: HashMap<PathBuf, String>,
    /// Each plugin executable (`[plugins.NAME] command`) started, by name, with the stamp of its
    /// program then: it is started again when the program changes.
    commands: HashMap<String, Option<FileStamp>>,
    /// Each fleet (`[plugins.NAME] endpoints` or `discovery`) connected, by name; one that
    /// failed to connect is tried again at the next scan.
    fleets: std::collections::HashSet<String>,
    /// Why each fleet that has not connected yet could not, by name: shown as a problem whose
    /// path is the fleet's targets.
    fleet_errors: HashMap<String, FileProblem>,
}

struct FileRecord {
    stamp: FileStamp,
    problem: Option<FileProblem>,
}

/// What tells a changed file: size, modification time and (on Unix) device and inode.
#[derive(Debug, Clone, PartialEq, Eq)]
struct FileStamp {
    len: u64,
    modified: Option<SystemTime>,
    id: (u64, u64),
}

/// One plugin name: stable across reloads, so handles follow them.
struct Slot {
    name: String,
    /// Every library that served the name, and the one serving now.
    generations: Generations,
    metrics: Metrics,
    retry: RetryPolicy,
    on_panic: PanicPolicy,
    reloads: AtomicU64,
    reload_failures: AtomicU64,
    last_error: Mutex<Option<String>>,
    health: Mutex<Option<Health>>,
}

/// One loaded library instance serving a name.
struct Generation {
    plugin: Backend,
    source: PathBuf,
    state: StateMachine,
    /// While `state` is `Ready`, the mask that picks the timed calls
    /// ([`metrics::sample_mask`]); 0 in every other state. So the fast path tests a call's
    /// ticket once for both ([`metrics::passes`]); a library in another process, whose calls
    /// are all timed (mask 0), never takes it, and the other path checks the state first.
    /// Opened in `initialize`, before the library is published; closed before the state leaves
    /// `Ready` ([`Generation::transition`]).
    gate: AtomicU64,
    loaded_at: Instant,
    /// Calls running on it from threads without a counter shard of their own (beyond
    /// `metrics::SHARDS` at once), which a reload waits for separately.
    shared: AtomicU64,
}

impl PluginManager {
    /// Checks the configured directories, loads and initializes every plugin in them, and, with
    /// `auto_scan` or a `health_interval`, starts the background thread.
    ///
    /// Files that are refused do not make this fail: they are in [`PluginManager::status`].
    ///
    /// # Errors
    ///
    /// [`Error::Config`] for a plugin directory that does not exist; [`Error::Io`] if the
    /// private copy directory cannot be created; [`Error::Watch`] if a directory cannot be
    /// watched.
    pub fn start(config: ManagerConfig) -> Result<PluginManager, Error> {
        let _span =
            tracing::info_span!("manager_start", config = %config.origin().display()).entered();
        config.check_paths()?;
        // Before any call: calls skip a full fence only once this has registered.
        fence::enable();
        let copies = copies_dir()?;
        let policy = config.security().load_policy()?;
        let inner = Arc::new(Inner {
            config,
            registry: ArcSwap::from_pointee(HashMap::new()),
            control: Mutex::new(Control::default()),
            closing: AtomicBool::new(false),
            copies,
            next_copy: AtomicU64::new(0),
            started: Instant::now(),
            policy,
        });
        let manager = PluginManager { inner, background: Mutex::new(None) };
        let report = manager.scan();
        tracing::info!(
            loaded = report.loaded.len(),
            refused = report.failed.len(),
            "manager started"
        );
        let config = &manager.inner.config;
        if config.auto_scan() || config.health_interval().is_some() {
            let background = watch::Background::spawn(&manager.inner)?;
            *manager.background.lock() = Some(background);
        }
        Ok(manager)
    }

    /// The configuration the manager runs with.
    pub fn config(&self) -> &ManagerConfig {
        &self.inner.config
    }

    /// Scans the directories now: loads new libraries, replaces changed ones (see the module
    /// documentation), records refused ones. Unchanged files are not touched.
    pub fn scan(&self) -> ScanReport {
        self.inner.scan()
    }

    /// The plugin serving `name`, if any.
    pub fn get(&self, name: &str) -> Option<Handle> {
        self.inner.registry.load().get(name).map(|slot| Handle { slot: Arc::clone(slot) })
    }

    /// The names of the managed plugins, sorted.
    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.inner.registry.load().keys().cloned().collect();
        names.sort();
        names
    }

    /// `op(a, b)` on the plugin `name`, with the retry policy.
    ///
    /// # Errors
    ///
    /// [`Error::UnknownPlugin`]; else as [`Handle::call`].
    pub fn call(&self, name: &str, op: Op, a: f64, b: f64) -> Result<f64, Error> {
        let registry = self.inner.registry.load();
        match registry.get(name) {
            Some(slot) => slot.call(op, a, b),
            None => Err(self.inner.unknown(name)),
        }
    }

    /// Checks the plugin `name` now.
    ///
    /// # Errors
    ///
    /// [`Error::UnknownPlugin`].
    pub fn health(&self, name: &str) -> Result<Health, Error> {
        match self.get(name) {
            Some(handle) => Ok(handle.health()),
            None => Err(self.inner.unknown(name)),
        }
    }

    /// A snapshot of every plugin, its metrics, and every refused or shadowed file.
    pub fn status(&self) -> ManagerStatus {
        self.inner.status()
    }

    /// Stops accepting calls, waits for calls in flight (at most `manager.shutdown_timeout`),
    /// then calls each plugin's `shutdown`. Calling it again does nothing.
    pub fn shutdown(&self) -> ShutdownReport {
        if self.inner.closing.swap(true, Ordering::SeqCst) {
            return ShutdownReport::default();
        }
        if let Some(background) = self.background.lock().take() {
            background.stop();
        }
        self.inner.shutdown()
    }
}

impl Drop for PluginManager {
    fn drop(&mut self) {
        let report = self.shutdown();
        for err in &report.failed {
            tracing::warn!(error = %err, "shutdown failed");
        }
        // The copies are deleted after loading on Unix; elsewhere they are still mapped and the
        // removal fails, which is fine: they are in the system's temporary directory.
        let _ = fs::remove_dir_all(&self.inner.copies);
    }
}

impl std::fmt::Debug for PluginManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PluginManager").field("plugins", &self.names()).finish_non_exhaustive()
    }
}
