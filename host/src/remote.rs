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
//! Calls take a connection from a small pool (one per thread calling at once). By default each
//! connection then moves to a shared-memory lane ([`Channel::SharedMemory`]): a call writes its
//! frame into memory both processes map and waits for the answer there, spinning briefly before
//! it sleeps on a futex, so a busy runner answers without a wake-up through the kernel and a
//! batch travels in place. With [`Channel::Socket`] (or where there is no memfd) a call writes
//! one frame and reads one frame on the socket: the same two wake-ups as a raw ping-pong.
//!
//! The same supervision runs plugin executables in any language that speak HashiCorp
//! go-plugin's gRPC protocol with the `calcplug.v1` contract
//! ([`RemotePlugin::spawn_command`]); and [`runner_main`] serves a library to go-plugin hosts
//! when started as `calcplug-runner --grpc LIBRARY`.
//!
//! # Platform-specific behaviour
//!
//! Unix only (Unix domain sockets). The runner's socket lives in a private directory (0700)
//! the host creates and removes; the socket itself is 0600.

mod balanced;
mod endpoint;
mod grpc;
mod hclog;
pub(crate) mod io;

// For `crate::fleet`, which serves a manager's plugins with the same `calcplug.v1` service.
pub use balanced::{Fleet, FleetOptions, Targets};
pub use endpoint::Endpoint;
pub(crate) use grpc::mtls::provider as grpc_mtls_provider;
pub(crate) use grpc::pb::calculator_server::CalculatorServer;
pub(crate) use grpc::server::{Resolve, Served, Target, TlsConnection};
pub(crate) use grpc::trace_context;
mod process;
mod runner;
mod shm;
mod supervisor;
mod wire;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use interface::{AngleUnit, BatchOp, BatchResult, Config, ErrorCode, Op, Status};
use parking_lot::{Mutex, RwLock};
use semver::Version;

use process::{start_process, Launch, Process};
pub use runner::{runner_main, serve_if_runner, started_as_runner};
pub use supervisor::Circuit;
use supervisor::{Breaker, Supervisor};
use wire::{Request, Response};

use crate::{Error, Extension, Identity};

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
    /// For plugin executables (go-plugin's gRPC protocol): ask for go-plugin's automatic
    /// mutual TLS, a fresh certificate on each side, each pinning the other's. A plugin that
    /// does not return its certificate is then refused.
    pub auto_mtls: bool,
    /// How calls reach a runner (plugin executables always use gRPC).
    pub channel: Channel,
}

/// How calls reach a runner once it is started (the handshake always uses its socket).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Channel {
    /// A lane of memory shared with the runner per connection, with futex wake-ups; the
    /// socket where this host or the runner cannot make one. Config: `transport = "shm"`.
    #[default]
    SharedMemory,
    /// One frame each way on the runner's Unix socket. Config: `transport = "socket"`.
    Socket,
}

impl Channel {
    /// Its name in `calcplug.toml` (`[isolation] transport`).
    pub fn name(self) -> &'static str {
        match self {
            Channel::SharedMemory => "shm",
            Channel::Socket => "socket",
        }
    }

    /// The channel a config name stands for.
    pub fn from_name(name: &str) -> Option<Channel> {
        [Channel::SharedMemory, Channel::Socket].into_iter().find(|c| c.name() == name)
    }
}

impl Default for RemoteOptions {
    /// 5 s per call, 10 s to start, 3 retries, backoff from 50 ms to 5 s, circuit open after 5
    /// failures in 60 s, a trial after 1 s, then 2 s, then every 4 s while trials fail;
    /// automatic mutual TLS with plugin executables; shared-memory lanes with runners.
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
            auto_mtls: true,
            channel: Channel::SharedMemory,
        }
    }
}

/// A plugin in a process of its own, with the same API as [`Plugin`](crate::Plugin): a library
/// served by a runner, or a plugin executable speaking go-plugin's gRPC protocol.
///
/// `Send + Sync`: calls from many threads run concurrently on separate connections.
/// Dropping it stops the process (a runner's stdin closes; a plugin executable is asked to shut
/// down through go-plugin's controller, then killed if it lingers) and removes its private
/// directory.
#[derive(Debug)]
pub struct RemotePlugin {
    identity: Identity,
    options: RemoteOptions,
    launch: Launch,
    process: RwLock<Option<Arc<Process>>>,
    supervisor: Mutex<Supervisor>,
}

/// The method of every operation, each a [`RemotePlugin::call`].
macro_rules! remote_operations {
    ($plugin:ident $( [$kind:ident $variant:ident $method:ident $code:literal ($($arg:ident: $ty:ident),*) $doc:literal $minor:literal] )*) => {
        impl $plugin {
            $(
                #[doc = concat!($doc, " (interface 1.", $minor, ").")]
                ///
                /// # Errors
                ///
                #[doc = concat!("As [`", stringify!($plugin), "::call`].")]
                pub fn $method(&self, $($arg: $ty),*) -> Result<f64, Error> {
                    let (a, b) = interface::__calculator_operand_pair!(($($arg: $ty),*));
                    self.call(Op::$variant, a, b)
                }
            )*
        }
    };
}

interface::calculator_ops!(flat remote_operations { RemotePlugin });
interface::calculator_ops!(flat remote_operations { Fleet });

impl RemotePlugin {
    /// Starts the plugin at `path` and completes the handshake: a library (a file ending in
    /// [`LIBRARY_SUFFIX`](crate::LIBRARY_SUFFIX)) is served by a runner; any other file is run
    /// as a plugin executable speaking go-plugin's gRPC protocol (see
    /// [`RemotePlugin::spawn_command`]).
    ///
    /// # Errors
    ///
    /// [`Error::RunnerFailed`] with the runner's reason if it cannot load the library (every
    /// check of [`crate::load`] runs in the runner), [`Error::PluginHandshake`] if an executable
    /// does not complete go-plugin's handshake, [`Error::Spawn`] if the process cannot be
    /// started.
    pub fn spawn(path: impl AsRef<Path>, options: RemoteOptions) -> Result<RemotePlugin, Error> {
        let path = path.as_ref();
        if is_library(path) {
            let runner = find_runner(options.runner.as_deref())?;
            spawn_plugin(path, Launch::Runner(runner), options)
        } else {
            spawn_plugin(path, Launch::Grpc(Vec::new()), options)
        }
    }

    /// Starts the plugin executable `program` with `args`, as a go-plugin host does (the magic
    /// cookie and `PLUGIN_PROTOCOL_VERSIONS` in its environment, its handshake line read from
    /// its stdout), and talks to it over gRPC with the `calcplug.v1` contract. The executable
    /// may be written in any language; restarts, retries and the circuit breaker work as for a
    /// runner.
    ///
    /// # Errors
    ///
    /// [`Error::PluginHandshake`] naming what was expected and found, [`Error::Spawn`],
    /// [`Error::IncompatibleVersion`] for a plugin of another interface major version.
    pub fn spawn_command<I, A>(
        program: impl AsRef<Path>,
        args: I,
        options: RemoteOptions,
    ) -> Result<RemotePlugin, Error>
    where
        I: IntoIterator<Item = A>,
        A: Into<std::ffi::OsString>,
    {
        let args = args.into_iter().map(Into::into).collect();
        spawn_plugin(program.as_ref(), Launch::Grpc(args), options)
    }

    /// How the plugin's process talks: for a runner, its configured [`Channel`]'s name
    /// (`shm` or `socket`), for a plugin executable `grpc`.
    pub fn transport(&self) -> &'static str {
        match self.launch {
            Launch::Runner(_) => self.options.channel.name(),
            Launch::Grpc(_) => "grpc",
        }
    }

    /// How calls reach a runner: the configured [`Channel`] (plugin executables: gRPC).
    pub fn channel(&self) -> Channel {
        self.options.channel
    }

    /// What the plugin is: name, versions, metadata, library file, extension groups.
    pub fn identity(&self) -> &Identity {
        &self.identity
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
            Response::Status(raw) => Ok(raw.into_status()),
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

    /// Computes every item of `ops` into `results`: in place through a shared-memory lane (in
    /// chunks of a lane's size), or as one frame each way on the socket.
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
        match self.request_with("process_batch", true, |process| process.batch(ops, results))? {
            Response::Done => Ok(()),
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
            tracing::info!(plugin = %self.identity.name(), pid = process.pid, "{} stopped", self.noun());
            // Dropped here unless a call still holds it: the last holder ends the process.
            drop(process);
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
            plugin: self.identity.name().to_owned(),
            reason: format!("unexpected answer to {op}: {response:?}"),
        }
    }

    #[cold]
    fn call_error(&self, op: &'static str, code: ErrorCode, message: String) -> Error {
        Error::Call { plugin: self.identity.name().to_owned(), op, code, message }
    }
}

fn is_library(path: &Path) -> bool {
    path.file_name()
        .and_then(|name| name.to_str())
        .is_some_and(|name| name.ends_with(crate::LIBRARY_SUFFIX))
}

fn spawn_plugin(
    library: &Path,
    launch: Launch,
    options: RemoteOptions,
) -> Result<RemotePlugin, Error> {
    let _span = tracing::info_span!("spawn", path = %library.display()).entered();
    let library = std::path::absolute(library)
        .map_err(|source| Error::Io { error: source }.with_path(library.to_owned()))?;
    let label = library
        .file_name()
        .map_or_else(|| "plugin".to_owned(), |n| n.to_string_lossy().into_owned());
    let process = start_process(&launch, &library, &label, &options)?;
    let hello = process.hello.clone();
    let metadata = match process.roundtrip(&Request::Metadata) {
        Ok(Response::Metadata(raw)) => raw.into_metadata(),
        _ => {
            return Err(Error::RunnerFailed {
                reason: "the runner did not answer the metadata request".to_owned(),
            }
            .with_path(library))
        }
    };
    let bad = |reason: String| Error::BadMetadata { reason }.with_path(library.clone());
    let interface_version = Version::parse(&hello.interface_version)
        .map_err(|err| bad(format!("interface version {:?}: {err}", hello.interface_version)))?;
    let host_version = crate::host_interface_version();
    if !crate::interface_compatible(&host_version, &interface_version) {
        return Err(Error::IncompatibleVersion { host: host_version, found: interface_version }
            .with_path(library));
    }
    let extensions = hello
        .extensions
        .iter()
        .filter_map(|name| (name == Extension::Scientific.name()).then_some(Extension::Scientific))
        .collect();
    let identity = Identity::new(library, metadata, interface_version, extensions)?;
    tracing::info!(plugin = identity.name(), version = %identity.version(), pid = process.pid, "out-of-process plugin started");
    Ok(RemotePlugin {
        identity,
        launch,
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
