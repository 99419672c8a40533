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
//! load: see `manager/generations.rs`), one atomic load of its state, the
//! plugin's own call, and a plain store counting it done. No lock, no allocation, no syscall
//! and no locked instruction unless the plugin fails; one call in `metrics.sample_every` also
//! reads the clock twice. The compiler fence is enough because shutdown and reload, the rare
//! side, pay for a process-wide `membarrier(2)` instead (see `manager/fence.rs`).
//!
//! `cargo bench -p host --bench manager` compares `Plugin::add` on a release build of `basic`
//! with `Handle::add` (timing off, 1 call in 64 timed, every call timed) and
//! `PluginManager::call` by name; `cargo xtask bench-report` records the default (1 in 64)
//! against `Plugin::add` as the `metrics on` row of `BENCHMARKS.md`, whose goal is under 10 ns.
//! Timing every call costs about 100 ns (two clock reads and four histogram updates), which is
//! why latency is sampled; a lookup by name costs about 50 ns (hashing the name), which is why
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
mod metrics;
mod state;
mod watch;

use std::collections::HashMap;
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use interface::{BatchOp, BatchResult, ErrorCode, Op, PluginState, Status};
use parking_lot::Mutex;
use semver::Version;

pub use metrics::{Latency, OpMetrics};
pub use state::{LifecycleState, StateMachine};

use crate::config::{ManagerConfig, Mode, PanicPolicy, RetryPolicy};
use crate::discovery::library_files;
use crate::remote::RemotePlugin;
use crate::security::LoadPolicy;
use crate::Error;
use backend::Backend;
use generations::Generations;
use metrics::{op_index, Metrics, ThreadShard, BATCH};

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

/// What [`PluginManager::shutdown`] did.
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

impl FileStamp {
    fn of(path: &Path) -> Option<FileStamp> {
        let meta = fs::metadata(path).ok()?;
        let id = {
            use std::os::unix::fs::MetadataExt;
            (meta.dev(), meta.ino())
        };
        Some(FileStamp { len: meta.len(), modified: meta.modified().ok(), id })
    }
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

impl Inner {
    fn unknown(&self, name: &str) -> Error {
        let mut available: Vec<String> = self.registry.load().keys().cloned().collect();
        available.sort();
        Error::UnknownPlugin { name: name.to_owned(), available }
    }

    fn scan(&self) -> ScanReport {
        let mut report = ScanReport::default();
        let mut control = self.control.lock();
        if self.closing.load(Ordering::SeqCst) {
            return report;
        }
        let _span = tracing::info_span!("scan").entered();

        // Which files are new or changed.
        let mut candidates = Vec::new();
        control.dir_errors.clear();
        for dir in self.config.paths() {
            match library_files(dir) {
                Ok(files) => {
                    for path in files {
                        let Some(stamp) = FileStamp::of(&path) else { continue };
                        if control.files.get(&path).is_some_and(|r| r.stamp == stamp) {
                            continue;
                        }
                        candidates.push((path, stamp));
                    }
                }
                Err(err) => {
                    tracing::warn!(error = %err, "cannot scan");
                    control.dir_errors.insert(dir.to_owned(), err.reason());
                    report.failed.push(err);
                }
            }
        }

        // Load each; group what loaded by name.
        let mut by_name: HashMap<String, Vec<(PathBuf, Generation)>> = HashMap::new();
        for (path, stamp) in candidates {
            match self.load_copy(&path) {
                Ok(generation) => {
                    control.files.insert(path.clone(), FileRecord { stamp, problem: None });
                    by_name
                        .entry(generation.plugin.name().to_owned())
                        .or_default()
                        .push((path, generation));
                }
                Err(err) => {
                    let failed_in = failed_step(&err);
                    let problem = FileProblem {
                        path: path.clone(),
                        shadowed: false,
                        failed_in,
                        reason: err.reason(),
                    };
                    // A changed library that serves a name and now fails: the old one stays.
                    if let Some(slot) = self.slot_served_from(&path) {
                        slot.reload_failures.fetch_add(1, Ordering::Relaxed);
                        *slot.last_error.lock() = Some(err.to_string());
                        tracing::warn!(plugin = %slot.name, error = %err, "reload failed; the old library keeps serving");
                    }
                    control.files.insert(path, FileRecord { stamp, problem: Some(problem) });
                    report.failed.push(err);
                }
            }
        }

        let mut names: Vec<String> = by_name.keys().cloned().collect();
        names.sort();
        for name in names {
            let Some(mut loaded) = by_name.remove(&name) else { continue };
            loaded.sort_by(|(_, a), (_, b)| b.plugin.version().cmp(a.plugin.version()));
            let slot = self.registry.load().get(&name).cloned();
            let mut loaded = loaded.into_iter();
            let Some((path, best)) = loaded.next() else { continue };
            // The best new library serves if the name is new, if the serving library's file
            // changed, or if it is a higher version than the one serving.
            let winner = match &slot {
                None => true,
                Some(slot) => {
                    let current = slot.generation();
                    let serving_changed = current.source == path
                        || loaded.as_slice().iter().any(|(p, _)| *p == current.source);
                    serving_changed || best.plugin.version() > current.plugin.version()
                }
            };
            let (winner_path, winner_version) = if winner {
                (path.clone(), best.plugin.version().clone())
            } else {
                let current = slot.as_ref().map(|s| s.generation());
                match current {
                    Some(current) => (current.source.clone(), current.plugin.version().clone()),
                    None => (path.clone(), best.plugin.version().clone()),
                }
            };
            let mut losers: Vec<(PathBuf, Generation)> = loaded.collect();
            if winner {
                self.serve(&name, slot, path, best, &mut control, &mut report);
            } else {
                losers.push((path, best));
            }
            for (path, generation) in losers {
                let err = Error::Shadowed {
                    path: path.clone(),
                    name: name.clone(),
                    version: generation.plugin.version().clone(),
                    winner_path: winner_path.clone(),
                    winner_version: Box::new(winner_version.clone()),
                };
                tracing::warn!(error = %err, "shadowed");
                if let Some(record) = control.files.get_mut(&path) {
                    record.problem = Some(FileProblem {
                        path: path.clone(),
                        shadowed: true,
                        failed_in: LifecycleState::Handshaking,
                        reason: err.reason(),
                    });
                }
                report.failed.push(err);
            }
        }
        report
    }

    fn slot_served_from(&self, path: &Path) -> Option<Arc<Slot>> {
        self.registry.load().values().find(|slot| slot.generation().source == path).cloned()
    }

    /// Initializes `generation` and makes it serve `name`: a new slot, or a reload.
    fn serve(
        &self,
        name: &str,
        slot: Option<Arc<Slot>>,
        path: PathBuf,
        generation: Generation,
        control: &mut Control,
        report: &mut ScanReport,
    ) {
        let initialized = generation.initialize(&self.config);
        match slot {
            None => {
                let slot = Arc::new(Slot {
                    name: name.to_owned(),
                    generations: Generations::new(generation),
                    metrics: Metrics::new(self.config.sample_every()),
                    retry: self.config.retry().clone(),
                    on_panic: self.config.security().on_panic(),
                    reloads: AtomicU64::new(0),
                    reload_failures: AtomicU64::new(0),
                    last_error: Mutex::new(None),
                    health: Mutex::new(None),
                });
                if let Err(err) = initialized {
                    *slot.last_error.lock() = Some(err.to_string());
                    self.record_problem(control, &path, LifecycleState::Initializing, &err);
                    report.failed.push(err);
                } else {
                    report.loaded.push(name.to_owned());
                }
                self.registry.rcu(|registry| {
                    let mut registry = HashMap::clone(registry);
                    registry.insert(name.to_owned(), Arc::clone(&slot));
                    registry
                });
            }
            Some(slot) => {
                let _span = tracing::info_span!("reload", plugin = %name, path = %path.display(), version = %generation.plugin.version()).entered();
                if let Err(err) = initialized {
                    // The new library is dropped (and shut down); the old one keeps serving.
                    slot.reload_failures.fetch_add(1, Ordering::Relaxed);
                    *slot.last_error.lock() = Some(err.to_string());
                    tracing::warn!(error = %err, "reload failed: the new library did not initialize; the old one keeps serving");
                    self.record_problem(control, &path, LifecycleState::Initializing, &err);
                    report.failed.push(err);
                    return;
                }
                let old = slot.generations.replace(generation);
                slot.reloads.fetch_add(1, Ordering::Relaxed);
                tracing::info!(old = %old.plugin.version(), "reloaded");
                report.reloaded.push(name.to_owned());
                slot.retire(old, self.config.shutdown_timeout());
            }
        }
    }

    fn record_problem(
        &self,
        control: &mut Control,
        path: &Path,
        failed_in: LifecycleState,
        err: &Error,
    ) {
        if let Some(record) = control.files.get_mut(path) {
            record.problem = Some(FileProblem {
                path: path.to_owned(),
                shadowed: false,
                failed_in,
                reason: err.reason(),
            });
        }
    }

    /// Loads `source` under the `[security]` policy, recording the loading states.
    fn load_copy(&self, source: &Path) -> Result<Generation, Error> {
        let state = StateMachine::new(source.display().to_string());
        let step = |to: LifecycleState| {
            // The steps below follow the table; a refusal would be a bug, and is logged.
            let _ = state.transition(to);
        };
        step(LifecycleState::Validating);
        // Loading validates, maps and handshakes in one call; the machine records the steps it
        // went through, and attributes a failure to the step whose check failed.
        let result = self.load_backend(source);
        match result {
            Ok(plugin) => {
                step(LifecycleState::Loading);
                step(LifecycleState::Handshaking);
                let mut state = state;
                state.rename(plugin.name());
                Ok(Generation {
                    plugin,
                    source: source.to_owned(),
                    state,
                    loaded_at: Instant::now(),
                    shared: AtomicU64::new(0),
                })
            }
            Err(err) => {
                let err = err.with_path(source);
                let failed_in = failed_step(&err);
                if failed_in != LifecycleState::Validating {
                    step(LifecycleState::Loading);
                }
                if failed_in == LifecycleState::Handshaking {
                    step(LifecycleState::Handshaking);
                }
                step(LifecycleState::Error);
                tracing::warn!(error = %err, "refused");
                Err(err)
            }
        }
    }

    /// Loads `source`: in a runner if this plugin is configured out of process (the runner
    /// reports the plugin's name, which decides), else in this process. Either way from the
    /// bytes the `[security]` checks passed, so that each load maps a fresh image and a file
    /// rewritten afterwards changes nothing.
    fn load_backend(&self, source: &Path) -> Result<Backend, Error> {
        if !self.config.any_out_of_process() {
            return crate::security::load_from_memory(source, &self.policy).map(Backend::Local);
        }
        let bytes = crate::security::checked_bytes(source, &self.policy)?;
        // The runner serves a private copy of exactly the checked bytes, kept for its restarts.
        let number = self.next_copy.fetch_add(1, Ordering::Relaxed) + 1;
        let file_name =
            source.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let copy = self.copies.join(format!("{number}-{file_name}"));
        fs::write(&copy, &bytes).map_err(|err| Error::Io { path: copy.clone(), source: err })?;
        let remote = RemotePlugin::spawn(&copy, self.config.isolation().options().clone())?;
        if self.config.mode_of(remote.name()) == Mode::OutOfProcess {
            return Ok(Backend::Remote(Box::new(remote)));
        }
        // Configured in process: the runner was its probe; map the same bytes here.
        drop(remote);
        let _ = fs::remove_file(&copy);
        crate::loader::load_bytes(source, bytes).map(Backend::Local)
    }

    fn status(&self) -> ManagerStatus {
        let registry = self.registry.load();
        let mut plugins: Vec<PluginStatus> = registry.values().map(|slot| slot.status()).collect();
        plugins.sort_by(|a, b| a.name.cmp(&b.name));
        let control = self.control.lock();
        let mut problems: Vec<FileProblem> =
            control.files.values().filter_map(|r| r.problem.clone()).collect();
        problems.extend(control.dir_errors.iter().map(|(path, reason)| FileProblem {
            path: path.clone(),
            shadowed: false,
            failed_in: LifecycleState::Discovered,
            reason: reason.clone(),
        }));
        problems.sort_by(|a, b| a.path.cmp(&b.path));
        ManagerStatus { plugins, problems, uptime: self.started.elapsed() }
    }

    fn shutdown(&self) -> ShutdownReport {
        let _span = tracing::info_span!("manager_shutdown").entered();
        let _control = self.control.lock();
        let mut report = ShutdownReport::default();
        let slots: Vec<Arc<Slot>> = self.registry.load().values().cloned().collect();
        // Stop accepting calls: a call that entered before this is in the counters below, a
        // call entering after it sees the state (`fence::heavy` pairs with the call's
        // `fence::light`).
        for slot in &slots {
            let _ = slot.generation().state.transition(LifecycleState::ShuttingDown);
        }
        fence::heavy();
        let timeout = self.config.shutdown_timeout();
        let deadline = Instant::now() + timeout;
        for slot in &slots {
            while slot.metrics.in_flight() > 0 && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(1));
            }
            let in_flight = slot.metrics.in_flight();
            if in_flight > 0 {
                let err = Error::Timeout { plugin: slot.name.clone(), waited: timeout, in_flight };
                tracing::warn!(error = %err, "shutting down anyway");
                report.failed.push(err);
            }
        }
        for slot in &slots {
            let serving = slot.generation();
            match serving.close() {
                Ok(()) => report.closed.push(serving.plugin.name().to_owned()),
                Err(err) => report.failed.push(err),
            }
            // Its runner ends now, not when the last `Handle` to it is dropped.
            serving.plugin.release();
            // Replaced libraries whose calls outlasted the reload's wait (see `Slot::retire`);
            // for the others, already closed, this does nothing.
            for replaced in slot.generations.iter().filter(|g| !std::ptr::eq(*g, serving)) {
                if let Err(err) = replaced.close() {
                    report.failed.push(err);
                }
                replaced.plugin.release();
            }
        }
        report.closed.sort();
        tracing::info!(
            closed = report.closed.len(),
            failed = report.failed.len(),
            "manager shut down"
        );
        report
    }
}

/// The lifecycle step a load error comes from.
fn failed_step(err: &Error) -> LifecycleState {
    match err {
        Error::Open { .. }
        | Error::MissingRootModule { .. }
        | Error::AbiStableMismatch { .. }
        | Error::IncompatibleVersion { .. }
        | Error::AbiMismatch { .. }
        | Error::RootModule { .. } => LifecycleState::Loading,
        Error::BadCookie { .. }
        | Error::ProtocolMismatch { .. }
        | Error::BadMetadata { .. }
        | Error::Setup { .. } => LifecycleState::Handshaking,
        _ => LifecycleState::Validating,
    }
}

fn copies_dir() -> Result<PathBuf, Error> {
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    let dir = std::env::temp_dir().join(format!("calcplug-{}-{nanos}", std::process::id()));
    fs::create_dir_all(&dir).map_err(|source| Error::Io { path: dir.clone(), source })?;
    Ok(dir)
}

impl Generation {
    fn initialize(&self, config: &ManagerConfig) -> Result<(), Error> {
        let _ = self.state.transition(LifecycleState::Initializing);
        let plugin_config = config.plugin(self.plugin.name());
        match self.plugin.initialize(&plugin_config) {
            Ok(()) => {
                let _ = self.state.transition(LifecycleState::Ready);
                Ok(())
            }
            Err(err) => {
                let _ = self.state.transition(LifecycleState::Error);
                Err(err)
            }
        }
    }

    /// Moves to `ShuttingDown` (unless already there), calls the plugin's `shutdown`, moves to
    /// `Closed`. Does nothing once closed.
    fn close(&self) -> Result<(), Error> {
        match self.state.state() {
            LifecycleState::Closed => return Ok(()),
            LifecycleState::ShuttingDown => {}
            _ => {
                if self.state.transition(LifecycleState::ShuttingDown).is_err() {
                    // Never initialized (a shadowed library): nothing to shut down.
                    return Ok(());
                }
            }
        }
        let result = self.plugin.shutdown();
        let _ = self.state.transition(LifecycleState::Closed);
        result
    }
}

impl Drop for Generation {
    fn drop(&mut self) {
        if matches!(
            self.state.state(),
            LifecycleState::Ready | LifecycleState::Error | LifecycleState::ShuttingDown
        ) {
            if let Err(err) = self.close() {
                tracing::warn!(error = %err, "shutdown failed");
            }
        }
    }
}

impl Slot {
    /// The library serving the name now.
    #[inline(always)]
    fn generation(&self) -> &Generation {
        self.generations.serving()
    }

    /// Waits (at most `timeout`) for the calls that may run on `old`, a library just replaced,
    /// then shuts it down. Calls that started after the swap run on the new library and are
    /// not waited for, so a busy plugin does not hold a reload up. If calls still run on `old`
    /// when the time is up, it is shut down with the manager instead.
    fn retire(&self, old: &Generation, timeout: Duration) {
        // The swap is written; after this, every call that read the old library is counted.
        fence::heavy();
        let marks = self.metrics.marks();
        let done = || self.metrics.passed(&marks) && old.shared.load(Ordering::SeqCst) == 0;
        let deadline = Instant::now() + timeout;
        while !done() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_micros(200));
        }
        if !done() {
            tracing::warn!(plugin = %self.name, "calls still run on the replaced library; it shuts down with the manager");
            return;
        }
        if let Err(err) = old.close() {
            tracing::warn!(error = %err, "the replaced library's shutdown failed");
        }
        old.plugin.release();
    }

    fn state(&self) -> LifecycleState {
        let state = self.generation().state.state();
        if state == LifecycleState::Ready && self.metrics.in_flight() > 0 {
            LifecycleState::Processing
        } else {
            state
        }
    }

    /// One try of a call: the hot path.
    #[inline(always)]
    fn try_once<T>(
        &self,
        op: usize,
        name: &'static str,
        f: &impl Fn(&Backend) -> Result<T, Error>,
    ) -> Result<T, Error> {
        if let Some(shard) = self.metrics.own_shard() {
            let ticket = shard.enter();
            return self.call_on(self.generation(), shard, ticket, op, name, f);
        }
        self.try_slow(op, name, f)
    }

    /// [`Slot::try_once`] for every thread but those on the fast path: a thread's first call,
    /// threads beyond the shards, no `membarrier`.
    #[cold]
    #[inline(never)]
    fn try_slow<T>(
        &self,
        op: usize,
        name: &'static str,
        f: &impl Fn(&Backend) -> Result<T, Error>,
    ) -> Result<T, Error> {
        let shard = self.metrics.shard();
        let ticket = shard.enter();
        let pinned = if shard.is_owned() { None } else { Some(self.pin_shared()) };
        let generation = pinned.unwrap_or_else(|| self.generation());
        let result = self.call_on(generation, shard, ticket, op, name, f);
        if let Some(pinned) = pinned {
            pinned.shared.fetch_sub(1, Ordering::Release);
        }
        result
    }

    /// The serving library, counted in its `shared` calls, for a thread without a counter shard
    /// of its own: a reload cannot tell that thread's calls apart from the other threads' in the
    /// shared shard, so it waits for the library's own count instead.
    #[cold]
    #[inline(never)]
    fn pin_shared(&self) -> &Generation {
        loop {
            let generation = self.generation();
            generation.shared.fetch_add(1, Ordering::SeqCst);
            // A reload that swapped in between may have found no call on this one: check.
            if std::ptr::eq(self.generation(), generation) {
                return generation;
            }
            generation.shared.fetch_sub(1, Ordering::SeqCst);
        }
    }

    /// The call itself, on `generation`, counted in `shard`.
    #[inline(always)]
    fn call_on<T>(
        &self,
        generation: &Generation,
        shard: ThreadShard<'_>,
        ticket: u64,
        op: usize,
        name: &'static str,
        f: &impl Fn(&Backend) -> Result<T, Error>,
    ) -> Result<T, Error> {
        if !generation.state.is_ready() {
            shard.reject();
            return Err(self.refused(name, generation.state.state()));
        }
        let started = if self.metrics.sampled(ticket) { Some(Instant::now()) } else { None };
        let result = f(&generation.plugin);
        if let Some(started) = started {
            self.metrics.record_latency(op, started);
        }
        // `Ok(value)` is rebuilt rather than `result` returned: that writes a `T` into the
        // caller's slot instead of copying the whole `Result` (`Error` is over 100 bytes).
        match result {
            Ok(value) => {
                shard.finish(op);
                Ok(value)
            }
            Err(err) => {
                if let Some(code) = err.code() {
                    shard.error(op, code);
                    if code == ErrorCode::PluginPanicked {
                        self.panicked(generation, &err);
                    }
                }
                shard.finish(op);
                Err(err)
            }
        }
    }

    /// A call with the retry policy.
    #[inline(always)]
    fn run<T>(
        &self,
        op: usize,
        name: &'static str,
        f: impl Fn(&Backend) -> Result<T, Error>,
    ) -> Result<T, Error> {
        match self.try_once(op, name, &f) {
            Ok(value) => Ok(value),
            Err(err) => self.retry(op, name, &f, err),
        }
    }

    #[cold]
    #[inline(never)]
    fn retry<T>(
        &self,
        op: usize,
        name: &'static str,
        f: &impl Fn(&Backend) -> Result<T, Error>,
        mut err: Error,
    ) -> Result<T, Error> {
        let mut retry = 0;
        loop {
            let retryable = matches!(err, Error::Call { .. })
                && err.code().is_some_and(|code| self.retry.retryable().contains(&code));
            if !retryable || retry >= self.retry.max_retries() {
                return Err(err);
            }
            let delay = self.retry.delay(retry);
            tracing::debug!(plugin = %self.name, op = name, error = %err, retry = retry + 1, ?delay, "retrying");
            self.metrics.shard().retry(op);
            std::thread::sleep(delay);
            retry += 1;
            match self.try_once(op, name, f) {
                Ok(value) => return Ok(value),
                Err(next) => err = next,
            }
        }
    }

    /// A plugin panicked: record it, and with `on_panic = "disable"` stop serving it.
    #[cold]
    #[inline(never)]
    fn panicked(&self, generation: &Generation, err: &Error) {
        *self.last_error.lock() = Some(err.to_string());
        match self.on_panic {
            PanicPolicy::KeepServing => {
                tracing::warn!(plugin = %self.name, error = %err, "plugin panicked; it keeps serving (on_panic = keep-serving)");
            }
            PanicPolicy::Disable => {
                tracing::warn!(plugin = %self.name, error = %err, "plugin panicked; disabled until it is reloaded (on_panic = disable)");
                let _ = generation.state.transition(LifecycleState::Error);
            }
        }
    }

    #[cold]
    fn refused(&self, op: &'static str, state: LifecycleState) -> Error {
        match state {
            LifecycleState::ShuttingDown | LifecycleState::Closed => {
                Error::ShuttingDown { plugin: self.name.clone(), op }
            }
            state => Error::NotServing { plugin: self.name.clone(), op, state },
        }
    }

    fn call(&self, op: Op, a: f64, b: f64) -> Result<f64, Error> {
        self.run(op_index(op), op.name(), |plugin| plugin.call(op, a, b))
    }

    fn health(&self) -> Health {
        let state = self.state();
        let generation = self.generation();
        let (status, mut problem) = match generation.plugin.status() {
            Ok(status) => {
                let problem = (status.state != PluginState::Ready).then(|| {
                    format!("the plugin says it is {} ({})", status.state, status.message)
                });
                (Some(status), problem)
            }
            Err(err) => (None, Some(format!("the plugin cannot report its status: {err}"))),
        };
        if !matches!(state, LifecycleState::Ready | LifecycleState::Processing) {
            problem = Some(format!("the manager has it {state}"));
        }
        let health = Health { name: self.name.clone(), state, status, problem };
        *self.health.lock() = Some(health.clone());
        health
    }

    fn status(&self) -> PluginStatus {
        let generation = self.generation();
        PluginStatus {
            name: self.name.clone(),
            version: generation.plugin.version().clone(),
            source: generation.source.clone(),
            state: self.state(),
            mode: if generation.plugin.is_isolated() {
                Mode::OutOfProcess
            } else {
                Mode::InProcess
            },
            runner_pid: generation.plugin.runner_pid(),
            circuit: generation.plugin.circuit(),
            generation: self.reloads.load(Ordering::Relaxed) + 1,
            uptime: generation.loaded_at.elapsed(),
            in_flight: self.metrics.in_flight(),
            rejected: self.metrics.rejected(),
            reloads: self.reloads.load(Ordering::Relaxed),
            reload_failures: self.reload_failures.load(Ordering::Relaxed),
            last_error: self.last_error.lock().clone(),
            health: self.health.lock().clone(),
            ops: self.metrics.snapshot(),
        }
    }
}

impl Handle {
    /// The plugin's name.
    pub fn name(&self) -> &str {
        &self.slot.name
    }

    /// The version of the library serving the name now.
    pub fn version(&self) -> Version {
        self.slot.generation().plugin.version().clone()
    }

    /// The library file serving the name now.
    pub fn source(&self) -> PathBuf {
        self.slot.generation().source.clone()
    }

    /// Which load of this name serves now: 1 for the first library, +1 per reload.
    pub fn generation(&self) -> u64 {
        self.slot.reloads.load(Ordering::Relaxed) + 1
    }

    /// The lifecycle state: `Processing` while calls are in flight. Never blocks.
    pub fn state(&self) -> LifecycleState {
        self.slot.state()
    }

    /// Checks the plugin's health now (its own status, and the manager's state for it).
    pub fn health(&self) -> Health {
        self.slot.health()
    }

    /// This plugin's status and metrics.
    pub fn status(&self) -> PluginStatus {
        self.slot.status()
    }

    /// `a + b`
    ///
    /// # Errors
    ///
    /// As [`Handle::call`].
    #[inline]
    pub fn add(&self, a: f64, b: f64) -> Result<f64, Error> {
        self.slot.run(op_index(Op::Add), "add", |plugin| plugin.add(a, b))
    }

    /// `a - b`
    ///
    /// # Errors
    ///
    /// As [`Handle::call`].
    #[inline]
    pub fn subtract(&self, a: f64, b: f64) -> Result<f64, Error> {
        self.slot.run(op_index(Op::Subtract), "subtract", |plugin| plugin.subtract(a, b))
    }

    /// `a * b`
    ///
    /// # Errors
    ///
    /// As [`Handle::call`].
    #[inline]
    pub fn multiply(&self, a: f64, b: f64) -> Result<f64, Error> {
        self.slot.run(op_index(Op::Multiply), "multiply", |plugin| plugin.multiply(a, b))
    }

    /// `a / b`
    ///
    /// # Errors
    ///
    /// As [`Handle::call`].
    #[inline]
    pub fn divide(&self, a: f64, b: f64) -> Result<f64, Error> {
        self.slot.run(op_index(Op::Divide), "divide", |plugin| plugin.divide(a, b))
    }

    /// `op(a, b)`; errors with a retryable code are retried per the `[retry]` policy.
    ///
    /// # Errors
    ///
    /// [`Error::Call`] with the plugin's code (after the retries, for a retryable one);
    /// [`Error::ShuttingDown`] once the manager shuts down; [`Error::NotServing`] if the
    /// plugin's `initialize` failed.
    pub fn call(&self, op: Op, a: f64, b: f64) -> Result<f64, Error> {
        self.slot.call(op, a, b)
    }

    /// [`Plugin::process_batch`](crate::Plugin::process_batch) through the manager (counted as one `process_batch` call).
    ///
    /// # Errors
    ///
    /// As [`Plugin::process_batch`](crate::Plugin::process_batch), and as [`Handle::call`].
    pub fn process_batch(&self, ops: &[BatchOp], results: &mut [BatchResult]) -> Result<(), Error> {
        let results = std::cell::RefCell::new(results);
        self.slot.run(BATCH, "process_batch", |plugin| {
            plugin.process_batch(ops, &mut results.borrow_mut())
        })
    }
}

impl std::fmt::Debug for Handle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Handle").field("name", &self.slot.name).finish_non_exhaustive()
    }
}

impl std::fmt::Debug for PluginManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PluginManager").field("plugins", &self.names()).finish_non_exhaustive()
    }
}

impl ManagerStatus {
    /// The status in the Prometheus text exposition format (version 0.0.4): `# HELP` and
    /// `# TYPE` before each family, label values escaped.
    pub fn prometheus(&self) -> String {
        let mut out = String::new();
        let mut family = |name: &str, kind: &str, help: &str, samples: Vec<(String, String)>| {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} {kind}");
            for (series, value) in samples {
                let _ = writeln!(out, "{series} {value}");
            }
        };
        let plugin_labels = |p: &PluginStatus| format!("plugin=\"{}\"", escape(&p.name));
        family(
            "calcplug_plugin_info",
            "gauge",
            "Managed plugins: version, library file and lifecycle state (value always 1).",
            self.plugins
                .iter()
                .map(|p| {
                    (
                        format!(
                            "calcplug_plugin_info{{{},version=\"{}\",path=\"{}\",state=\"{}\"}}",
                            plugin_labels(p),
                            escape(&p.version.to_string()),
                            escape(&p.source.display().to_string()),
                            p.state
                        ),
                        "1".to_owned(),
                    )
                })
                .collect(),
        );
        let per_plugin = |f: &dyn Fn(&PluginStatus) -> String| -> Vec<(String, String)> {
            self.plugins.iter().map(|p| (format!("{{{}}}", plugin_labels(p)), f(p))).collect()
        };
        let named = |name: &str, samples: Vec<(String, String)>| -> Vec<(String, String)> {
            samples.into_iter().map(|(labels, v)| (format!("{name}{labels}"), v)).collect()
        };
        family(
            "calcplug_plugin_up",
            "gauge",
            "1 if the plugin is serving calls (ready or processing), else 0.",
            named(
                "calcplug_plugin_up",
                per_plugin(&|p| {
                    u8::from(matches!(p.state, LifecycleState::Ready | LifecycleState::Processing))
                        .to_string()
                }),
            ),
        );
        family(
            "calcplug_plugin_uptime_seconds",
            "gauge",
            "Seconds since the serving library was loaded.",
            named("calcplug_plugin_uptime_seconds", per_plugin(&|p| float(p.uptime.as_secs_f64()))),
        );
        family(
            "calcplug_plugin_in_flight_calls",
            "gauge",
            "Calls running now.",
            named("calcplug_plugin_in_flight_calls", per_plugin(&|p| p.in_flight.to_string())),
        );
        family(
            "calcplug_plugin_reloads_total",
            "counter",
            "Successful hot reloads.",
            named("calcplug_plugin_reloads_total", per_plugin(&|p| p.reloads.to_string())),
        );
        family(
            "calcplug_plugin_reload_failures_total",
            "counter",
            "Replacement libraries that failed to load or initialize (the old one kept serving).",
            named(
                "calcplug_plugin_reload_failures_total",
                per_plugin(&|p| p.reload_failures.to_string()),
            ),
        );
        family(
            "calcplug_plugin_rejected_calls_total",
            "counter",
            "Calls refused by the manager (plugin not ready, or shutting down).",
            named("calcplug_plugin_rejected_calls_total", per_plugin(&|p| p.rejected.to_string())),
        );
        let mut calls = Vec::new();
        let mut errors = Vec::new();
        let mut retries = Vec::new();
        let mut latency = Vec::new();
        let mut latency_max = Vec::new();
        for p in &self.plugins {
            for op in &p.ops {
                let labels = format!("{},op=\"{}\"", plugin_labels(p), escape(op.op));
                calls.push((format!("calcplug_calls_total{{{labels}}}"), op.calls.to_string()));
                retries.push((
                    format!("calcplug_call_retries_total{{{labels}}}"),
                    op.retries.to_string(),
                ));
                for (code, n) in &op.errors {
                    errors.push((
                        format!("calcplug_call_errors_total{{{labels},code=\"{}\"}}", code.name()),
                        n.to_string(),
                    ));
                }
                if let Some(l) = &op.latency {
                    for (q, v) in [("0.5", l.p50), ("0.99", l.p99)] {
                        latency.push((
                            format!("calcplug_call_latency_seconds{{{labels},quantile=\"{q}\"}}"),
                            float(v.as_secs_f64()),
                        ));
                    }
                    latency.push((
                        format!("calcplug_call_latency_seconds_sum{{{labels}}}"),
                        float(l.sum.as_secs_f64()),
                    ));
                    latency.push((
                        format!("calcplug_call_latency_seconds_count{{{labels}}}"),
                        l.sampled.to_string(),
                    ));
                    latency_max.push((
                        format!("calcplug_call_latency_max_seconds{{{labels}}}"),
                        float(l.max.as_secs_f64()),
                    ));
                }
            }
        }
        family(
            "calcplug_calls_total",
            "counter",
            "Calls that reached the plugin, by operation (each retry counts).",
            calls,
        );
        family(
            "calcplug_call_errors_total",
            "counter",
            "Failed calls, by operation and error code.",
            errors,
        );
        family(
            "calcplug_call_retries_total",
            "counter",
            "Retries made by the retry policy, by operation.",
            retries,
        );
        family(
            "calcplug_call_latency_seconds",
            "summary",
            "Latency of the sampled calls (quantiles within 12.5%).",
            latency,
        );
        family("calcplug_call_latency_max_seconds", "gauge", "Slowest sampled call.", latency_max);
        family(
            "calcplug_refused_libraries",
            "gauge",
            "Library files (or directories) that are refused or shadowed.",
            vec![("calcplug_refused_libraries".to_owned(), self.problems.len().to_string())],
        );
        out
    }
}

/// Escapes a Prometheus label value: backslash, double quote and newline.
fn escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// A Prometheus float sample value.
fn float(value: f64) -> String {
    if value.is_finite() {
        format!("{value}")
    } else if value.is_nan() {
        "NaN".to_owned()
    } else if value > 0.0 {
        "+Inf".to_owned()
    } else {
        "-Inf".to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape("a\\b\"c\nd"), "a\\\\b\\\"c\\nd");
    }
}
