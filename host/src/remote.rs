//! Out-of-process plugins: the same plugin library, served by a child process (the runner) over
//! a local socket, behind the same API as [`Plugin`](crate::Plugin).
//!
//! This is go-plugin's model, offered for crash isolation: a plugin that segfaults, aborts or
//! hangs takes down its runner, not the host. Calls in flight then fail fast with
//! [`Error::PluginCrashed`] or [`Error::CallTimeout`]; the next call restarts the runner (with
//! exponential backoff, and a circuit that opens after too many failures in a window), replays
//! the last `initialize`, and calculations are retried on the new process up to
//! [`RemoteOptions::retries`] times (they are idempotent).
//!
//! Calls take a connection from a small pool (one per thread calling at once), write one frame
//! and read one frame: the same two wake-ups as a raw socket ping-pong, which is the floor.
//!
//! # Platform-specific behaviour
//!
//! Unix only (Unix domain sockets). The runner's socket lives in a private directory (0700)
//! the host creates and removes; the socket itself is 0600.

mod runner;
mod wire;

use std::io::{BufRead, BufReader};
use std::os::unix::fs::DirBuilderExt;
use std::os::unix::net::UnixStream;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant, UNIX_EPOCH};

use interface::{
    AngleUnit, BatchOp, BatchResult, Config, ConfigKey, ErrorCode, Metadata, Op, PluginState,
    Status, MAGIC_COOKIE_KEY, MAGIC_COOKIE_VALUE,
};
use parking_lot::{Mutex, RwLock};
use semver::Version;

pub use runner::{runner_main, serve_if_runner, started_as_runner};
use wire::{FrameError, Request, Response};

use crate::{Error, Extension};

/// go-plugin's "core protocol version": the version of the runner handshake line itself.
pub const CORE_PROTOCOL_VERSION: u32 = 1;

/// The runner binary's file name.
pub const RUNNER_NAME: &str = "calcplug-runner";

/// How an out-of-process plugin is run and supervised.
#[derive(Debug, Clone)]
pub struct RemoteOptions {
    /// The runner binary. `None`: `$CALCPLUG_RUNNER`; else this program itself if its `main`
    /// called [`serve_if_runner`] (as `calcplug` does); else `calcplug-runner` next to the
    /// current executable (or one directory up, for test binaries in `deps/`).
    pub runner: Option<PathBuf>,
    /// How long one call may take before the runner is declared hung, killed and restarted.
    pub call_timeout: Duration,
    /// How long the runner may take to load the library and print its handshake line.
    pub start_timeout: Duration,
    /// How many times a calculation that failed because the runner died is retried on a new
    /// runner.
    pub retries: u32,
    /// The delay before the first restart after a failure; it doubles with each failure.
    pub initial_backoff: Duration,
    /// The longest delay between restarts.
    pub max_backoff: Duration,
    /// After this many runner failures within `failure_window`, the circuit opens: calls fail
    /// at once with [`Error::CircuitOpen`], and no runner is started, for `circuit_cooldown`.
    /// A runner that dies is one failure however many callers noticed it.
    pub max_failures: u32,
    /// See `max_failures`.
    pub failure_window: Duration,
    /// How long an open circuit stays open before one trial runner is started (half-open).
    /// The trial's first answered call closes the circuit; its failure opens it again for
    /// twice as long, up to `max_circuit_cooldown`.
    pub circuit_cooldown: Duration,
    /// The longest an open circuit waits before a trial.
    pub max_circuit_cooldown: Duration,
}

impl Default for RemoteOptions {
    /// 5 s per call, 10 s to start, 3 retries, backoff from 50 ms to 5 s, circuit open after 5
    /// failures in 60 s, a trial after 1 s, then 2 s, then every 4 s while trials fail.
    fn default() -> RemoteOptions {
        RemoteOptions {
            runner: None,
            call_timeout: Duration::from_secs(5),
            start_timeout: Duration::from_secs(10),
            retries: 3,
            initial_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_secs(5),
            max_failures: 5,
            failure_window: Duration::from_secs(60),
            circuit_cooldown: Duration::from_secs(1),
            max_circuit_cooldown: Duration::from_secs(4),
        }
    }
}

/// A plugin served by a runner process, with the same API as [`Plugin`](crate::Plugin).
///
/// `Send + Sync`: calls from many threads run concurrently on separate connections.
/// Dropping it stops the runner (its stdin closes) and removes its socket directory.
#[derive(Debug)]
pub struct RemotePlugin {
    library: PathBuf,
    options: RemoteOptions,
    runner: PathBuf,
    name: String,
    version: Version,
    interface_version: Version,
    metadata: Metadata,
    extensions: Vec<Extension>,
    process: RwLock<Option<Arc<Process>>>,
    supervisor: Mutex<Supervisor>,
}

/// What survives a restart: the config to replay, and the failure history.
#[derive(Debug, Default)]
struct Supervisor {
    /// The config of the last successful `initialize`, replayed on a new runner.
    config: Option<Config>,
    /// When runners failed (one entry per runner, or per failed start), within the window.
    failures: Vec<Instant>,
    /// No restart before this (the backoff), while the circuit is closed.
    next_start: Option<Instant>,
    /// Set by [`RemotePlugin::stop`]: no runner is started again.
    stopped: bool,
    /// The delay before the next restart; back to zero once a runner has answered a call.
    backoff: Duration,
    breaker: Breaker,
    generation: u64,
}

/// The circuit breaker's own state (what [`Circuit`] shows, plus when and how long).
#[derive(Debug, Clone, Copy, Default)]
enum Breaker {
    #[default]
    Closed,
    /// No runner is started before `until`; `cooldown` is how long this opening lasts.
    Open { until: Instant, cooldown: Duration },
    /// A trial runner was started; `cooldown` is the opening that preceded it.
    HalfOpen { cooldown: Duration },
}

/// The state of a [`RemotePlugin`]'s circuit breaker, as `calcplug status` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Circuit {
    /// Runners are started (and restarted) as calls need them.
    Closed,
    /// The runner failed too often: calls fail with [`Error::CircuitOpen`] until a trial runner
    /// may start, `next_trial_in` from now.
    Open {
        /// The time left before a call may start the trial runner.
        next_trial_in: Duration,
    },
    /// A trial runner is serving: its first answered call closes the circuit, its failure
    /// opens it again.
    HalfOpen,
}

impl std::fmt::Display for Circuit {
    /// `closed`, `open (next trial in 1.2s)`, `half-open`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Circuit::Closed => f.write_str("closed"),
            Circuit::Open { next_trial_in } => {
                write!(f, "open (next trial in {:.1}s)", next_trial_in.as_secs_f64())
            }
            Circuit::HalfOpen => f.write_str("half-open"),
        }
    }
}

/// Why [`RemotePlugin::live_process`] has no runner to offer.
enum Unavailable {
    /// Refused without trying (circuit open, stopped): final.
    Refused(Error),
    /// A start was tried and failed; it counts as a failure, and an idempotent call may try
    /// again.
    StartFailed(Error),
}

impl RemotePlugin {
    /// Starts a runner for the library at `path` and completes the handshake.
    ///
    /// # Errors
    ///
    /// [`Error::RunnerFailed`] with the runner's reason if it cannot load the library (every
    /// check of [`crate::load`] runs in the runner), [`Error::Spawn`] if the runner cannot be
    /// started.
    pub fn spawn(path: impl AsRef<Path>, options: RemoteOptions) -> Result<RemotePlugin, Error> {
        spawn_plugin(path.as_ref(), options)
    }

    /// The name the plugin is addressed by (from its metadata).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The plugin's own version.
    pub fn version(&self) -> &Version {
        &self.version
    }

    /// The interface version the plugin was built against.
    pub fn interface_version(&self) -> &Version {
        &self.interface_version
    }

    /// The plugin's metadata.
    pub fn metadata(&self) -> &Metadata {
        &self.metadata
    }

    /// The library file the runner serves.
    pub fn path(&self) -> &Path {
        &self.library
    }

    /// The extension groups the plugin's library has.
    pub fn extensions(&self) -> &[Extension] {
        &self.extensions
    }

    /// Whether the plugin can perform `op` (see [`Plugin::supports`](crate::Plugin::supports)).
    pub fn supports(&self, op: Op) -> bool {
        let present = !op.is_scientific() || self.extensions.contains(&Extension::Scientific);
        present && self.metadata.supports(op)
    }

    /// Whether the plugin implements the whole scientific extension.
    pub fn has_scientific(&self) -> bool {
        Op::SCIENTIFIC.iter().all(|op| self.supports(*op))
    }

    /// The runner's process id, if one is running.
    pub fn runner_pid(&self) -> Option<u32> {
        self.process.read().as_ref().filter(|p| !p.is_dead()).map(|p| p.pid)
    }

    /// How many runners have been started for this plugin (1 until the first restart).
    pub fn generation(&self) -> u64 {
        self.supervisor.lock().generation
    }

    /// The circuit breaker's state.
    pub fn circuit(&self) -> Circuit {
        match self.supervisor.lock().breaker {
            Breaker::Closed => Circuit::Closed,
            Breaker::Open { until, .. } => {
                Circuit::Open { next_trial_in: until.saturating_duration_since(Instant::now()) }
            }
            Breaker::HalfOpen { .. } => Circuit::HalfOpen,
        }
    }

    /// Initializes the plugin; the config is replayed on every restarted runner.
    ///
    /// # Errors
    ///
    /// As [`Plugin::initialize`](crate::Plugin::initialize), plus the process errors.
    pub fn initialize(&self, config: &Config) -> Result<(), Error> {
        let entries: Vec<(String, String)> =
            config.iter().map(|(k, v)| (k.to_owned(), v.to_owned())).collect();
        self.request("initialize", &Request::Initialize(entries), true)?;
        self.supervisor.lock().config = Some(config.clone());
        Ok(())
    }

    /// Shuts the plugin down. A runner that is not running is not started for this.
    ///
    /// # Errors
    ///
    /// As [`Plugin::shutdown`](crate::Plugin::shutdown).
    pub fn shutdown(&self) -> Result<(), Error> {
        self.supervisor.lock().config = None;
        let process = self.process.read().clone();
        match process {
            Some(process) if !process.is_dead() => {
                match process.roundtrip(&Request::Shutdown) {
                    Ok(response) => self.expect_done("shutdown", response),
                    // The runner died: the plugin is shut down either way.
                    Err(_) => Ok(()),
                }
            }
            _ => Ok(()),
        }
    }

    /// The plugin's status.
    ///
    /// # Errors
    ///
    /// As [`Plugin::status`](crate::Plugin::status), plus the process errors.
    pub fn status(&self) -> Result<Status, Error> {
        match self.request("status", &Request::Status, true)? {
            Response::Status(raw) => Ok(Status {
                state: PluginState::from_u8(raw.state).unwrap_or(PluginState::Error),
                message: raw.message,
                started_at: raw
                    .started_at_unix_nanos
                    .map(|nanos| UNIX_EPOCH + Duration::from_nanos(nanos)),
                uptime: Duration::from_nanos(raw.uptime_nanos),
                request_count: raw.request_count,
                average_latency: raw.average_latency_nanos.map(Duration::from_nanos),
            }),
            other => Err(self.unexpected("status", &other)),
        }
    }

    /// `op(a, b)`; `b` is ignored by one-operand operations.
    ///
    /// # Errors
    ///
    /// The plugin's [`Error::Call`], or [`Error::PluginCrashed`], [`Error::CallTimeout`],
    /// [`Error::CircuitOpen`], [`Error::Wire`] when the runner fails.
    pub fn call(&self, op: Op, a: f64, b: f64) -> Result<f64, Error> {
        let request = Request::Call { op: op.code().as_u8(), a, b };
        match self.request(op.name(), &request, true)? {
            Response::Value(value) => Ok(value),
            other => Err(self.unexpected(op.name(), &other)),
        }
    }

    /// `a + b`
    ///
    /// # Errors
    ///
    /// As [`RemotePlugin::call`].
    pub fn add(&self, a: f64, b: f64) -> Result<f64, Error> {
        self.call(Op::Add, a, b)
    }

    /// `a - b`
    ///
    /// # Errors
    ///
    /// As [`RemotePlugin::call`].
    pub fn subtract(&self, a: f64, b: f64) -> Result<f64, Error> {
        self.call(Op::Subtract, a, b)
    }

    /// `a * b`
    ///
    /// # Errors
    ///
    /// As [`RemotePlugin::call`].
    pub fn multiply(&self, a: f64, b: f64) -> Result<f64, Error> {
        self.call(Op::Multiply, a, b)
    }

    /// `a / b`
    ///
    /// # Errors
    ///
    /// As [`RemotePlugin::call`].
    pub fn divide(&self, a: f64, b: f64) -> Result<f64, Error> {
        self.call(Op::Divide, a, b)
    }

    /// Computes every item of `ops` into `results`; the batch travels as one frame each way.
    ///
    /// # Errors
    ///
    /// As [`Plugin::process_batch`](crate::Plugin::process_batch), plus the process errors.
    pub fn process_batch(&self, ops: &[BatchOp], results: &mut [BatchResult]) -> Result<(), Error> {
        if ops.len() != results.len() {
            return Err(self.call_error(
                "process_batch",
                ErrorCode::InvalidInput,
                format!("{} operations but {} result slots", ops.len(), results.len()),
            ));
        }
        let items = ops.iter().map(|op| (op.op.as_u8(), op.a, op.b)).collect();
        match self.request("process_batch", &Request::Batch(items), true)? {
            Response::Batch(answers) if answers.len() == results.len() => {
                for (slot, (code, value)) in results.iter_mut().zip(answers) {
                    *slot = match code {
                        0 => BatchResult::ok(value),
                        raw => {
                            BatchResult::err(ErrorCode::from_u8(raw).unwrap_or(ErrorCode::Internal))
                        }
                    };
                }
                Ok(())
            }
            other => Err(self.unexpected("process_batch", &other)),
        }
    }

    /// [`RemotePlugin::process_batch`] into a new vector.
    ///
    /// # Errors
    ///
    /// As [`RemotePlugin::process_batch`].
    pub fn batch(&self, ops: &[BatchOp]) -> Result<Vec<BatchResult>, Error> {
        let mut results = vec![BatchResult::PENDING; ops.len()];
        self.process_batch(ops, &mut results)?;
        Ok(results)
    }

    /// Sets the angle unit (interface 1.1).
    ///
    /// # Errors
    ///
    /// As [`Plugin::set_angle_unit`](crate::Plugin::set_angle_unit), plus the process errors.
    pub fn set_angle_unit(&self, unit: AngleUnit) -> Result<(), Error> {
        let response = self.request("set_angle_unit", &Request::SetAngleUnit(unit as u8), true)?;
        self.expect_done("set_angle_unit", response)
    }

    /// The angle unit (interface 1.1).
    ///
    /// # Errors
    ///
    /// As [`Plugin::angle_unit`](crate::Plugin::angle_unit), plus the process errors.
    pub fn angle_unit(&self) -> Result<AngleUnit, Error> {
        match self.request("angle_unit", &Request::AngleUnit, true)? {
            Response::AngleUnit(raw) => AngleUnit::from_u8(raw).ok_or_else(|| {
                self.call_error(
                    "angle_unit",
                    ErrorCode::Internal,
                    format!("unknown angle unit code {raw}"),
                )
            }),
            other => Err(self.unexpected("angle_unit", &other)),
        }
    }

    /// Sends `request` to a live runner (starting one if needed), retrying on a new runner if
    /// the current one dies and the request is `idempotent`.
    fn request(
        &self,
        op: &'static str,
        request: &Request,
        idempotent: bool,
    ) -> Result<Response, Error> {
        let mut attempt = 0;
        loop {
            let error = match self.live_process() {
                Ok(process) => match process.roundtrip(request) {
                    Ok(response) => {
                        if !process.answered.load(Ordering::Relaxed) {
                            self.record_answer(&process);
                        }
                        if let Response::Error { code, message } = response {
                            let code = ErrorCode::from_u8(code).unwrap_or(ErrorCode::Internal);
                            return Err(self.call_error(op, code, message));
                        }
                        return Ok(response);
                    }
                    Err(failure) => match self.fail(&process, op, failure) {
                        Failed::Final(error) => return Err(error),
                        Failed::Retryable(error) => error,
                    },
                },
                Err(Unavailable::Refused(error)) => return Err(error),
                Err(Unavailable::StartFailed(error)) => error,
            };
            if !idempotent || attempt >= self.options.retries {
                return Err(error);
            }
            attempt += 1;
            tracing::warn!(plugin = %self.name, op, attempt, error = %error, "retrying on a new runner");
        }
    }

    /// Turns a failed round trip into the call's error, ending the runner and counting the
    /// failure once for the runner, whichever caller notices first.
    #[cold]
    fn fail(&self, process: &Process, op: &'static str, failure: Transport) -> Failed {
        match failure {
            Transport::Timeout => {
                tracing::error!(plugin = %self.name, op, timeout = ?self.options.call_timeout, "call timed out: killing the runner");
                self.record_failure(process);
                process.kill();
                Failed::Final(Error::CallTimeout {
                    plugin: self.name.clone(),
                    op,
                    after: self.options.call_timeout,
                })
            }
            Transport::Malformed(reason) => {
                self.record_failure(process);
                process.kill();
                Failed::Final(Error::Wire { plugin: self.name.clone(), reason })
            }
            Transport::Closed => {
                let status = process.wait_for_exit(Duration::from_secs(2));
                let first = self.record_failure(process);
                let status = match status {
                    Some(status) => describe_exit(status),
                    None => {
                        process.kill();
                        "closed the connection and did not exit (killed)".to_owned()
                    }
                };
                if first {
                    tracing::error!(plugin = %self.name, op, %status, pid = process.pid, "runner died");
                }
                Failed::Retryable(Error::PluginCrashed { plugin: self.name.clone(), status })
            }
        }
    }

    /// Ends the runner now rather than when this is dropped, and starts no other: calls made
    /// after this fail with [`Error::Stopped`]. Calls already running keep their connection
    /// until they return. The plugin manager stops the runner of a library it replaced once the
    /// last call on it returned.
    pub fn stop(&self) {
        let process = {
            let mut supervisor = self.supervisor.lock();
            supervisor.stopped = true;
            supervisor.config = None;
            self.process.write().take()
        };
        if let Some(process) = process {
            tracing::info!(plugin = %self.name, pid = process.pid, "runner stopped");
            // Dropped here unless a call still holds it: the last holder ends the process.
            drop(process);
        }
    }

    /// The running process, or a new one (respecting the backoff and the circuit).
    fn live_process(&self) -> Result<Arc<Process>, Unavailable> {
        if let Some(process) = self.process.read().as_ref() {
            if !process.is_dead() {
                return Ok(Arc::clone(process));
            }
        }
        let mut supervisor = self.supervisor.lock();
        if supervisor.stopped {
            return Err(Unavailable::Refused(Error::Stopped { plugin: self.name.clone() }));
        }
        // Another thread may have restarted it while we waited for the lock (a runner is only
        // marked dead with this lock held, so this check is final).
        if let Some(process) = self.process.read().as_ref() {
            if !process.is_dead() {
                return Ok(Arc::clone(process));
            }
        }
        let now = Instant::now();
        match supervisor.breaker {
            Breaker::Open { until, .. } if now < until => {
                let window = self.options.failure_window;
                supervisor.failures.retain(|t| now.duration_since(*t) < window);
                return Err(Unavailable::Refused(Error::CircuitOpen {
                    plugin: self.name.clone(),
                    failures: supervisor.failures.len(),
                    window,
                    next_trial_in: until - now,
                }));
            }
            Breaker::Open { cooldown, .. } => {
                tracing::info!(plugin = %self.name, "circuit half-open: starting a trial runner");
                supervisor.breaker = Breaker::HalfOpen { cooldown };
            }
            // The backoff applies between restarts while the circuit is closed; a trial
            // waited out its cooldown already.
            Breaker::Closed | Breaker::HalfOpen { .. } => {
                if let Some(next) = supervisor.next_start {
                    if next > now {
                        std::thread::sleep(next - now);
                    }
                }
            }
        }
        supervisor.generation += 1;
        let process = match self.start_replaying(&supervisor) {
            Ok(process) => Arc::new(process),
            Err(error) => {
                tracing::error!(plugin = %self.name, error = %error, "the runner did not start");
                self.count_failure(&mut supervisor);
                return Err(Unavailable::StartFailed(error));
            }
        };
        tracing::info!(plugin = %self.name, pid = process.pid, generation = supervisor.generation, "runner started");
        *self.process.write() = Some(Arc::clone(&process));
        Ok(process)
    }

    /// Starts a runner and replays the last `initialize` on it.
    fn start_replaying(&self, supervisor: &Supervisor) -> Result<Process, Error> {
        let process = start_process(&self.runner, &self.library, &self.name, &self.options)?;
        if let Some(config) = &supervisor.config {
            let entries = config.iter().map(|(k, v)| (k.to_owned(), v.to_owned())).collect();
            match process.roundtrip(&Request::Initialize(entries)) {
                Ok(Response::Done) => {}
                Ok(other) => return Err(self.unexpected("initialize (replayed)", &other)),
                Err(_) => {
                    return Err(Error::PluginCrashed {
                        plugin: self.name.clone(),
                        status: "died while being initialized again".to_owned(),
                    })
                }
            }
        }
        Ok(process)
    }

    /// Marks `process` dead and counts its failure, once per runner however many callers saw
    /// it fail. Returns whether this caller was the first.
    fn record_failure(&self, process: &Process) -> bool {
        let mut supervisor = self.supervisor.lock();
        let first = !process.failed.swap(true, Ordering::AcqRel);
        process.mark_dead();
        if first {
            self.count_failure(&mut supervisor);
        }
        first
    }

    /// One runner failure: it grows the backoff, and opens the circuit after `max_failures`
    /// within the window, or again when a trial runner fails.
    fn count_failure(&self, supervisor: &mut Supervisor) {
        let now = Instant::now();
        let window = self.options.failure_window;
        supervisor.failures.retain(|t| now.duration_since(*t) < window);
        supervisor.failures.push(now);
        supervisor.backoff = if supervisor.backoff.is_zero() {
            self.options.initial_backoff
        } else {
            (supervisor.backoff * 2).min(self.options.max_backoff)
        };
        supervisor.next_start = Some(now + supervisor.backoff);
        let cooldown = match supervisor.breaker {
            Breaker::HalfOpen { cooldown } => {
                Some((cooldown * 2).min(self.options.max_circuit_cooldown))
            }
            Breaker::Closed if supervisor.failures.len() >= self.options.max_failures as usize => {
                Some(self.options.circuit_cooldown.min(self.options.max_circuit_cooldown))
            }
            Breaker::Closed | Breaker::Open { .. } => None,
        };
        if let Some(cooldown) = cooldown {
            tracing::error!(
                plugin = %self.name,
                failures = supervisor.failures.len(),
                ?window,
                ?cooldown,
                "circuit open: no runner is started until the next trial"
            );
            supervisor.breaker = Breaker::Open { until: now + cooldown, cooldown };
        }
    }

    /// The first answer from a runner: it works, so the backoff starts over, and a trial
    /// runner closes the circuit.
    #[cold]
    fn record_answer(&self, process: &Process) {
        let mut supervisor = self.supervisor.lock();
        if process.answered.swap(true, Ordering::Relaxed) || process.is_dead() {
            return;
        }
        supervisor.backoff = Duration::ZERO;
        supervisor.next_start = None;
        if let Breaker::HalfOpen { .. } = supervisor.breaker {
            tracing::info!(plugin = %self.name, pid = process.pid, "circuit closed: the trial runner answered");
            supervisor.breaker = Breaker::Closed;
            supervisor.failures.clear();
        }
    }

    fn expect_done(&self, op: &'static str, response: Response) -> Result<(), Error> {
        match response {
            Response::Done => Ok(()),
            Response::Error { code, message } => Err(self.call_error(
                op,
                ErrorCode::from_u8(code).unwrap_or(ErrorCode::Internal),
                message,
            )),
            other => Err(self.unexpected(op, &other)),
        }
    }

    #[cold]
    fn unexpected(&self, op: &str, response: &Response) -> Error {
        Error::Wire {
            plugin: self.name.clone(),
            reason: format!("unexpected answer to {op}: {response:?}"),
        }
    }

    #[cold]
    fn call_error(&self, op: &'static str, code: ErrorCode, message: String) -> Error {
        Error::Call { plugin: self.name.clone(), op, code, message }
    }
}

fn spawn_plugin(library: &Path, options: RemoteOptions) -> Result<RemotePlugin, Error> {
    let _span = tracing::info_span!("spawn", library = %library.display()).entered();
    let library = std::path::absolute(library)
        .map_err(|source| Error::Io { path: library.to_owned(), source })?;
    let runner = find_runner(options.runner.as_deref())?;
    let label = library
        .file_name()
        .map_or_else(|| "plugin".to_owned(), |n| n.to_string_lossy().into_owned());
    let process = start_process(&runner, &library, &label, &options)?;
    let hello = process.hello.clone();
    let metadata = match process.roundtrip(&Request::Metadata) {
        Ok(Response::Metadata(raw)) => Metadata {
            name: raw.name,
            version: raw.version,
            description: raw.description,
            operations: raw.operations,
            config: raw
                .config
                .into_iter()
                .map(|(key, default, description)| ConfigKey { key, default, description })
                .collect(),
        },
        _ => {
            return Err(Error::RunnerFailed {
                path: library,
                reason: "the runner did not answer the metadata request".to_owned(),
            })
        }
    };
    let bad = |reason: String| Error::BadMetadata { path: library.clone(), reason };
    let version = Version::parse(&metadata.version).map_err(|err| {
        bad(format!("plugin version {:?} is not semver: {err}", metadata.version))
    })?;
    let interface_version = Version::parse(&hello.interface_version)
        .map_err(|err| bad(format!("interface version {:?}: {err}", hello.interface_version)))?;
    let extensions = hello
        .extensions
        .iter()
        .filter_map(|name| (name == Extension::Scientific.name()).then_some(Extension::Scientific))
        .collect();
    tracing::info!(plugin = %metadata.name, %version, pid = process.pid, "out-of-process plugin started");
    Ok(RemotePlugin {
        name: metadata.name.clone(),
        library,
        runner,
        version,
        interface_version,
        extensions,
        metadata,
        process: RwLock::new(Some(Arc::new(process))),
        supervisor: Mutex::new(Supervisor { generation: 1, ..Supervisor::default() }),
        options,
    })
}

fn find_runner(explicit: Option<&Path>) -> Result<PathBuf, Error> {
    if let Some(path) = explicit {
        return Ok(path.to_owned());
    }
    if let Some(path) = std::env::var_os("CALCPLUG_RUNNER") {
        return Ok(PathBuf::from(path));
    }
    if runner::self_runner_enabled() {
        if let Ok(exe) = std::env::current_exe() {
            return Ok(exe);
        }
    }
    let mut looked = Vec::new();
    if let Ok(exe) = std::env::current_exe() {
        for dir in exe.ancestors().skip(1).take(2) {
            let candidate = dir.join(RUNNER_NAME);
            if candidate.is_file() {
                return Ok(candidate);
            }
            looked.push(candidate);
        }
    }
    Err(Error::RunnerNotFound { looked })
}

/// What a failed round trip means for the call.
enum Failed {
    /// The call fails with this error (a timeout, a broken runner).
    Final(Error),
    /// The runner died: an idempotent call may be retried on a new one.
    Retryable(Error),
}

/// Why a round trip failed.
#[derive(Debug)]
enum Transport {
    /// The connection closed: the runner is gone (or closing).
    Closed,
    /// No answer within the call timeout.
    Timeout,
    /// The runner sent something that is not a valid answer.
    Malformed(String),
}

/// One runner process and its connection pool.
#[derive(Debug)]
struct Process {
    pid: u32,
    child: Mutex<Child>,
    /// Closing it tells the runner to exit.
    stdin: Mutex<Option<ChildStdin>>,
    dir: PathBuf,
    socket: PathBuf,
    pool: Mutex<Vec<Connection>>,
    dead: AtomicBool,
    /// Its failure was counted (see [`RemotePlugin::record_failure`]).
    failed: AtomicBool,
    /// It answered a call (see [`RemotePlugin::record_answer`]).
    answered: AtomicBool,
    next_id: AtomicU64,
    hello: wire::Hello,
    call_timeout: Duration,
}

/// One connection to the runner: one socket for both directions (unbuffered: a request is one
/// `write`), its receive buffer and its encoding buffer, both reused for every call.
#[derive(Debug)]
struct Connection {
    stream: UnixStream,
    inbox: wire::Inbox,
    outbuf: Vec<u8>,
}

fn start_process(
    runner: &Path,
    library: &Path,
    label: &str,
    options: &RemoteOptions,
) -> Result<Process, Error> {
    let dir = private_dir().map_err(|source| Error::Io { path: std::env::temp_dir(), source })?;
    let mut child = Command::new(runner)
        // What `serve_if_runner` recognises; `ps` shows the process as a runner either way.
        .arg0(RUNNER_NAME)
        .arg("serve")
        .arg(library)
        .arg(&dir)
        .env(MAGIC_COOKIE_KEY, MAGIC_COOKIE_VALUE)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| {
            let _ = std::fs::remove_dir_all(&dir);
            Error::Spawn { runner: runner.to_owned(), source }
        })?;
    let pid = child.id();
    if let Some(stderr) = child.stderr.take() {
        let label = label.to_owned();
        let _ = std::thread::Builder::new()
            .name(format!("runner-log-{pid}"))
            .spawn(move || runner::forward_logs(&label, stderr));
    }
    let stdin = child.stdin.take();
    let mut process = Process {
        pid,
        child: Mutex::new(child),
        stdin: Mutex::new(stdin),
        dir,
        socket: PathBuf::new(),
        pool: Mutex::new(Vec::new()),
        dead: AtomicBool::new(false),
        failed: AtomicBool::new(false),
        answered: AtomicBool::new(false),
        next_id: AtomicU64::new(1),
        hello: wire::Hello {
            wire_version: 0,
            interface_version: String::new(),
            extensions: Vec::new(),
            pid,
        },
        call_timeout: options.call_timeout,
    };
    let failed = |reason: String| Error::RunnerFailed { path: library.to_owned(), reason };
    let stdout = process.child.lock().stdout.take();
    let Some(stdout) = stdout else { return Err(failed("the runner has no stdout".to_owned())) };
    let (sender, receiver) = mpsc::channel();
    let _ = std::thread::Builder::new().name(format!("runner-handshake-{pid}")).spawn(move || {
        let mut line = String::new();
        let result = BufReader::new(stdout).read_line(&mut line).map(|_| line);
        let _ = sender.send(result);
    });
    let line = match receiver.recv_timeout(options.start_timeout) {
        Ok(Ok(line)) if !line.is_empty() => line,
        Ok(Ok(_)) | Ok(Err(_)) | Err(mpsc::RecvTimeoutError::Disconnected) => {
            let status = process.wait_for_exit(Duration::from_secs(2));
            let why = status.map_or_else(|| "no output".to_owned(), describe_exit);
            return Err(failed(format!("the runner exited before its handshake ({why})")));
        }
        Err(mpsc::RecvTimeoutError::Timeout) => {
            process.kill();
            return Err(failed(format!(
                "the runner printed no handshake within {:?}",
                options.start_timeout
            )));
        }
    };
    process.socket = runner::parse_handshake(&line).map_err(failed)?;
    if process.socket.parent() != Some(process.dir.as_path()) {
        process.kill();
        return Err(failed(format!(
            "the runner listens on {}, outside the directory it was given",
            process.socket.display()
        )));
    }
    match process.roundtrip(&Request::Hello { wire_version: wire::WIRE_VERSION }) {
        Ok(Response::Hello(hello)) if hello.wire_version == wire::WIRE_VERSION => {
            process.hello = hello
        }
        Ok(Response::Error { message, .. }) => return Err(failed(message)),
        Ok(other) => return Err(failed(format!("unexpected answer to Hello: {other:?}"))),
        Err(err) => return Err(failed(format!("handshake failed: {err:?}"))),
    }
    Ok(process)
}

/// A fresh directory only this user can enter, for the runner's socket.
fn private_dir() -> std::io::Result<PathBuf> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let base = std::env::temp_dir();
    loop {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let nanos =
            std::time::SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
        let dir = base.join(format!("calcplug-{}-{n}-{nanos:x}", std::process::id()));
        match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
            Ok(()) => return Ok(dir),
            Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(err) => return Err(err),
        }
    }
}

impl Process {
    fn is_dead(&self) -> bool {
        self.dead.load(Ordering::Acquire)
    }

    fn mark_dead(&self) {
        self.dead.store(true, Ordering::Release);
        self.pool.lock().clear();
    }

    fn connect(&self) -> Result<Connection, Transport> {
        let stream = UnixStream::connect(&self.socket).map_err(|_| Transport::Closed)?;
        // Set once per connection: a call on it costs no syscall beyond its `write` and `read`.
        stream.set_read_timeout(Some(self.call_timeout)).map_err(|_| Transport::Closed)?;
        let mut connection = Connection { stream, inbox: wire::Inbox::new(), outbuf: Vec::new() };
        if !self.hello.interface_version.is_empty() {
            // Every connection but the first (which performs the handshake) greets too.
            match self
                .exchange(&mut connection, &Request::Hello { wire_version: wire::WIRE_VERSION })?
            {
                Response::Hello(_) => {}
                other => {
                    return Err(Transport::Malformed(format!(
                        "unexpected answer to Hello: {other:?}"
                    )))
                }
            }
        }
        Ok(connection)
    }

    /// One request and its answer, on a pooled connection (a new one if none is idle); the
    /// answer must come within `call_timeout`.
    fn roundtrip(&self, request: &Request) -> Result<Response, Transport> {
        if self.is_dead() {
            return Err(Transport::Closed);
        }
        let pooled = self.pool.lock().pop();
        let mut connection = match pooled {
            Some(connection) => connection,
            None => self.connect()?,
        };
        let response = self.exchange(&mut connection, request)?;
        if !self.is_dead() {
            self.pool.lock().push(connection);
        }
        Ok(response)
    }

    fn exchange(
        &self,
        connection: &mut Connection,
        request: &Request,
    ) -> Result<Response, Transport> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        wire::encode(&mut connection.outbuf, id, request).map_err(Transport::Malformed)?;
        if wire::write_frame(&mut connection.stream, &connection.outbuf).is_err() {
            return Err(Transport::Closed);
        }
        match connection.inbox.read_frame::<Response>(&mut connection.stream) {
            Ok(envelope) if envelope.id == id => Ok(envelope.body),
            Ok(envelope) => {
                Err(Transport::Malformed(format!("answer {} to request {id}", envelope.id)))
            }
            Err(FrameError::Closed) => Err(Transport::Closed),
            Err(FrameError::Io(err))
                if matches!(
                    err.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                Err(Transport::Timeout)
            }
            Err(FrameError::Io(_)) => Err(Transport::Closed),
            Err(FrameError::Malformed(reason)) => Err(Transport::Malformed(reason)),
        }
    }

    /// Waits up to `limit` for the runner to exit; its status if it did.
    fn wait_for_exit(&self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Ok(Some(status)) = self.child.lock().try_wait() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn kill(&self) {
        self.mark_dead();
        let mut child = self.child.lock();
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.dead.store(true, Ordering::Release);
        self.pool.get_mut().clear();
        // Closing stdin asks the runner to exit; give it a moment, then make sure.
        self.stdin.get_mut().take();
        if self.wait_for_exit(Duration::from_millis(500)).is_none() {
            let child = self.child.get_mut();
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// "killed by signal 9 (SIGKILL)", "exited with code 3".
fn describe_exit(status: ExitStatus) -> String {
    if let Some(signal) = status.signal() {
        let name = match signal {
            4 => " (SIGILL)",
            6 => " (SIGABRT)",
            7 => " (SIGBUS)",
            8 => " (SIGFPE)",
            9 => " (SIGKILL)",
            11 => " (SIGSEGV)",
            15 => " (SIGTERM)",
            _ => "",
        };
        return format!("killed by signal {signal}{name}");
    }
    match status.code() {
        Some(code) => format!("exited with code {code}"),
        None => format!("{status}"),
    }
}
