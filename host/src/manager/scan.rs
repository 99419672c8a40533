//! Scanning the plugin directories and loading what changed; the status snapshot; the
//! shutdown sequence.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;

use super::backend::Backend;
use super::generations::Generations;
use super::metrics::Metrics;
use super::{
    fence, Control, FileProblem, FileRecord, FileStamp, Generation, Inner, LifecycleState,
    ManagerStatus, PluginStatus, ScanReport, ShutdownReport, Slot, StateMachine,
};
use crate::config::Mode;
use crate::discovery::library_files;
use crate::remote::RemotePlugin;
use crate::Error;

impl Inner {
    pub(super) fn unknown(&self, name: &str) -> Error {
        let mut available: Vec<String> = self.registry.load().keys().cloned().collect();
        available.sort();
        Error::UnknownPlugin { name: name.to_owned(), available }
    }

    pub(super) fn scan(&self) -> ScanReport {
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
                        .entry(generation.plugin.identity().name().to_owned())
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

        // Plugin executables named in the config: started when new, again when their program
        // changed; a failure is recorded against the program and not retried until it changes.
        for (name, command) in self.config.commands() {
            let program = crate::config::locate(&command.program);
            let stamp = FileStamp::of(&program);
            if control.commands.get(name).is_some_and(|seen| *seen == stamp) {
                continue;
            }
            control.commands.insert(name.to_owned(), stamp.clone());
            match self.load_command(name, command, &program) {
                Ok(generation) => {
                    control.files.remove(&program);
                    by_name.entry(name.to_owned()).or_default().push((program, generation));
                }
                Err(err) => {
                    if let Some(slot) = self.registry.load().get(name) {
                        slot.reload_failures.fetch_add(1, Ordering::Relaxed);
                        *slot.last_error.lock() = Some(err.to_string());
                    }
                    let problem = FileProblem {
                        path: program.clone(),
                        shadowed: false,
                        failed_in: failed_step(&err),
                        reason: err.reason(),
                    };
                    if let Some(stamp) = stamp {
                        control.files.insert(program, FileRecord { stamp, problem: Some(problem) });
                    }
                    report.failed.push(err);
                }
            }
        }

        // Fleets of `calcplug serve` instances named in the config: connected once, tried again
        // at each scan until they connect.
        for (name, options) in self.config.fleets() {
            if control.fleets.contains(name) {
                continue;
            }
            match self.load_fleet(name, options) {
                Ok(generation) => {
                    control.fleets.insert(name.to_owned());
                    control.fleet_errors.remove(name);
                    let source = generation.source.clone();
                    by_name.entry(name.to_owned()).or_default().push((source, generation));
                }
                Err(err) => {
                    if let Some(slot) = self.registry.load().get(name) {
                        *slot.last_error.lock() = Some(err.to_string());
                    }
                    let (targets, reason) = err.place_and_reason();
                    let problem = FileProblem {
                        path: targets.unwrap_or_else(|| PathBuf::from(name)),
                        shadowed: false,
                        failed_in: failed_step(&err),
                        reason: format!("fleet `{name}`: {reason}"),
                    };
                    control.fleet_errors.insert(name.to_owned(), problem);
                    report.failed.push(err);
                }
            }
        }

        let mut names: Vec<String> = by_name.keys().cloned().collect();
        names.sort();
        for name in names {
            let Some(mut loaded) = by_name.remove(&name) else { continue };
            loaded.sort_by(|(_, a), (_, b)| {
                b.plugin.identity().version().cmp(a.plugin.identity().version())
            });
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
                    serving_changed
                        || best.plugin.identity().version() > current.plugin.identity().version()
                }
            };
            let (winner_path, winner_version) = if winner {
                (path.clone(), best.plugin.identity().version().clone())
            } else {
                let current = slot.as_ref().map(|s| s.generation());
                match current {
                    Some(current) => {
                        (current.source.clone(), current.plugin.identity().version().clone())
                    }
                    None => (path.clone(), best.plugin.identity().version().clone()),
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
                    name: name.clone(),
                    version: generation.plugin.identity().version().clone(),
                    winner_path: winner_path.clone(),
                    winner_version: Box::new(winner_version.clone()),
                }
                .with_path(path.clone());
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

    pub(super) fn slot_served_from(&self, path: &Path) -> Option<Arc<Slot>> {
        self.registry.load().values().find(|slot| slot.generation().source == path).cloned()
    }

    /// Initializes `generation` and makes it serve `name`: a new slot, or a reload.
    pub(super) fn serve(
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
                    metrics: Metrics::new(),
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
                let _span = tracing::info_span!("reload", plugin = %name, path = %path.display(), version = %generation.plugin.identity().version()).entered();
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
                tracing::info!(old = %old.plugin.identity().version(), "reloaded");
                report.reloaded.push(name.to_owned());
                slot.retire(old, self.config.shutdown_timeout());
            }
        }
    }

    pub(super) fn record_problem(
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
    pub(super) fn load_copy(&self, source: &Path) -> Result<Generation, Error> {
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
                state.rename(plugin.identity().name());
                Ok(Generation::new(plugin, source.to_owned(), state))
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

    /// Starts the plugin executable configured as `name`, which must call itself `name`.
    fn load_command(
        &self,
        name: &str,
        command: &crate::PluginCommand,
        program: &Path,
    ) -> Result<Generation, Error> {
        let _span = tracing::info_span!("command", plugin = name).entered();
        let state = StateMachine::new(name.to_owned());
        let _ = state.transition(LifecycleState::Validating);
        let started = self.config.start_command(name, command);
        let started = started.map(|plugin| (Backend::Remote(Box::new(plugin)), program.to_owned()));
        started_generation(state, started, "refused")
    }

    /// Connects to the fleet configured as `name`.
    fn load_fleet(
        &self,
        name: &str,
        options: &crate::fleet::FleetOptions,
    ) -> Result<Generation, Error> {
        let _span = tracing::info_span!("fleet", plugin = name).entered();
        let state = StateMachine::new(name.to_owned());
        let _ = state.transition(LifecycleState::Validating);
        let connected = crate::fleet::Fleet::connect(name, options.clone()).map(|fleet| {
            let source = fleet.identity().path().to_owned();
            (Backend::Fleet(Box::new(fleet)), source)
        });
        started_generation(state, connected, "cannot reach the fleet")
    }

    /// Loads `source`: in a runner if this plugin is configured out of process (the runner
    /// reports the plugin's name, which decides), else in this process. Either way from the
    /// bytes the `[security]` checks passed, so that each load maps a fresh image and a file
    /// rewritten afterwards changes nothing.
    pub(super) fn load_backend(&self, source: &Path) -> Result<Backend, Error> {
        if !self.config.any_out_of_process() {
            return crate::security::load_from_memory(source, &self.policy).map(Backend::Local);
        }
        let bytes = crate::security::checked_bytes(source, &self.policy)?;
        // The runner serves a private copy of exactly the checked bytes, kept for its restarts.
        let number = self.next_copy.fetch_add(1, Ordering::Relaxed) + 1;
        let file_name =
            source.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let copy = self.copies.join(format!("{number}-{file_name}"));
        fs::write(&copy, &bytes).map_err(|err| Error::Io { error: err }.with_path(copy.clone()))?;
        let remote = RemotePlugin::spawn(&copy, self.config.isolation().options().clone())?;
        if self.config.mode_of(remote.identity().name()) == Mode::OutOfProcess {
            return Ok(Backend::Remote(Box::new(remote)));
        }
        // Configured in process: the runner was its probe; map the same bytes here.
        drop(remote);
        let _ = fs::remove_file(&copy);
        crate::loader::load_bytes(source, bytes).map(Backend::Local)
    }

    pub(super) fn status(&self) -> ManagerStatus {
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
        problems.extend(control.fleet_errors.values().cloned());
        problems.sort_by(|a, b| a.path.cmp(&b.path));
        ManagerStatus { plugins, problems, uptime: self.started.elapsed() }
    }

    pub(super) fn shutdown(&self) -> ShutdownReport {
        let _span = tracing::info_span!("manager_shutdown").entered();
        let _control = self.control.lock();
        let mut report = ShutdownReport::default();
        let slots: Vec<Arc<Slot>> = self.registry.load().values().cloned().collect();
        // Stop accepting calls: a call that entered before this is in the counters below, a
        // call entering after it sees the state (`fence::heavy` pairs with the call's
        // `fence::light`).
        for slot in &slots {
            let _ = slot.generation().transition(LifecycleState::ShuttingDown);
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
                Ok(()) => report.closed.push(serving.plugin.identity().name().to_owned()),
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
pub(super) fn failed_step(err: &Error) -> LifecycleState {
    match err.without_path() {
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

pub(super) fn copies_dir() -> Result<PathBuf, Error> {
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    let dir = std::env::temp_dir().join(format!("calcplug-{}-{nanos}", std::process::id()));
    fs::create_dir_all(&dir)
        .map_err(|source| Error::Io { error: source }.with_path(dir.clone()))?;
    Ok(dir)
}

impl FileStamp {
    pub(super) fn of(path: &Path) -> Option<FileStamp> {
        let meta = fs::metadata(path).ok()?;
        let id = {
            use std::os::unix::fs::MetadataExt;
            (meta.dev(), meta.ino())
        };
        Some(FileStamp { len: meta.len(), modified: meta.modified().ok(), id })
    }
}

/// The generation of a plugin started in one step (an executable, a fleet): through `Loading`
/// and `Handshaking` to a generation, or to `Error` with `refused` logged.
fn started_generation(
    state: StateMachine,
    started: Result<(Backend, std::path::PathBuf), Error>,
    refused: &str,
) -> Result<Generation, Error> {
    let _ = state.transition(LifecycleState::Loading);
    let _ = state.transition(LifecycleState::Handshaking);
    match started {
        Ok((plugin, source)) => Ok(Generation::new(plugin, source, state)),
        Err(err) => {
            let _ = state.transition(LifecycleState::Error);
            tracing::warn!(error = %err, "{refused}");
            Err(err)
        }
    }
}
