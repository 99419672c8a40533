//! One plugin process: starting it and reading its handshake, its pool of connections, one
//! round trip, and ending it. The process is a calcplug runner serving a library over the
//! socket transport, or a plugin executable speaking go-plugin's gRPC protocol.

use std::ffi::OsString;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::DirBuilderExt;
use std::os::unix::net::UnixStream;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Weak};
use std::time::{Duration, Instant, UNIX_EPOCH};

use interface::{BatchOp, BatchResult, MAGIC_COOKIE_KEY, MAGIC_COOKIE_VALUE};
use parking_lot::Mutex;

use super::grpc::client::GrpcLink;
use super::grpc::handshake as grpc_handshake;
use super::grpc::mtls::{self, Credentials};
use super::shm::{self, HostLane, Region};
use super::wire::{self, FrameError, Request, Response};
use super::{runner, Channel, RemoteOptions, RUNNER_NAME};
use crate::Error;

/// How a plugin process is started, and what it speaks.
#[derive(Debug, Clone)]
pub(super) enum Launch {
    /// A calcplug runner (this program or `calcplug-runner`) serving a library over the socket
    /// transport.
    Runner(PathBuf),
    /// A plugin executable speaking go-plugin's gRPC protocol, with these arguments.
    Grpc(Vec<OsString>),
}

/// The connections to a plugin process.
#[derive(Debug)]
enum Link {
    /// calcplug's own transport: a pool of connections to the runner's socket, each with a
    /// shared-memory lane when the channel is [`Channel::SharedMemory`].
    Frames { socket: PathBuf, pool: Mutex<Vec<Connection>> },
    /// go-plugin's gRPC protocol.
    Grpc(GrpcLink),
}

/// Why a round trip failed.
#[derive(Debug)]
pub(crate) enum Transport {
    /// The connection closed: the runner is gone (or closing).
    Closed,
    /// No answer within the call timeout.
    Timeout,
    /// The runner sent something that is not a valid answer.
    Malformed(String),
}

/// One runner process and its connection pool.
#[derive(Debug)]
pub(super) struct Process {
    pub(super) pid: u32,
    child: Mutex<Child>,
    /// Closing it tells the runner to exit.
    stdin: Mutex<Option<ChildStdin>>,
    dir: PathBuf,
    link: Link,
    liveness: Arc<Liveness>,
    channel: Channel,
    /// Its failure was counted (see [`RemotePlugin::record_failure`](super::RemotePlugin)).
    pub(super) failed: AtomicBool,
    /// It answered a call (see [`RemotePlugin::record_answer`](super::RemotePlugin)).
    pub(super) answered: AtomicBool,
    next_id: AtomicU64,
    pub(super) hello: wire::Hello,
    call_timeout: Duration,
}

/// Whether a process is gone, and the lanes to wake when it goes: shared with its exit
/// watcher.
#[derive(Debug, Default)]
struct Liveness {
    dead: AtomicBool,
    lanes: Mutex<Vec<Weak<Region>>>,
}

impl Liveness {
    /// Marks the process dead and wakes every caller waiting on one of its lanes.
    fn died(&self) {
        self.dead.store(true, Ordering::Release);
        for lane in self.lanes.lock().drain(..) {
            if let Some(region) = lane.upgrade() {
                region.poke();
            }
        }
    }
}

/// One connection to the runner: one socket for both directions (unbuffered: a request is one
/// `write`), its receive buffer and its encoding buffer, both reused for every call; and its
/// shared-memory lane, through which its calls go once it has one.
#[derive(Debug)]
struct Connection {
    stream: UnixStream,
    inbox: wire::Inbox,
    outbuf: Vec<u8>,
    /// A lane's answer, copied out of the shared region before it is decoded.
    answer: Vec<u8>,
    lane: Option<HostLane>,
}

pub(super) fn start_process(
    launch: &Launch,
    path: &Path,
    label: &str,
    options: &RemoteOptions,
) -> Result<Process, Error> {
    match launch {
        Launch::Runner(runner) => start_runner(runner, path, label, options),
        Launch::Grpc(args) => start_grpc(path, args, label, options),
    }
}

fn start_runner(
    runner: &Path,
    library: &Path,
    label: &str,
    options: &RemoteOptions,
) -> Result<Process, Error> {
    let dir = private_dir()
        .map_err(|source| Error::Io { error: source }.with_path(std::env::temp_dir()))?;
    let mut command = Command::new(runner);
    // What `serve_if_runner` recognises; `ps` shows the process as a runner either way.
    command.arg0(RUNNER_NAME).arg("serve").arg(library).arg(&dir).stdin(Stdio::piped());
    let (mut process, _) = Process::spawn(command, runner, dir, label, options)?;
    let failed = |reason: String| Error::RunnerFailed { reason }.with_path(library.to_owned());
    let line = process.handshake_line(options.start_timeout, "runner").map_err(failed)?;
    let socket = runner::parse_handshake(&line).map_err(failed)?;
    if socket.parent() != Some(process.dir.as_path()) {
        process.kill();
        return Err(failed(format!(
            "the runner listens on {}, outside the directory it was given",
            socket.display()
        )));
    }
    process.link = Link::Frames { socket, pool: Mutex::new(Vec::new()) };
    match process.roundtrip(&Request::Hello { wire_version: wire::WIRE_VERSION }) {
        Ok(Response::Hello(hello)) if hello.wire_version == wire::WIRE_VERSION => {
            process.hello = hello;
            // The handshake's connection has no lane; the calls' connections get one.
            if let Link::Frames { pool, .. } = &process.link {
                pool.lock().clear();
            }
        }
        Ok(Response::Error { message, .. }) => return Err(failed(message)),
        Ok(other) => return Err(failed(format!("unexpected answer to Hello: {other:?}"))),
        Err(err) => return Err(failed(format!("handshake failed: {err:?}"))),
    }
    Ok(process)
}

/// Starts a plugin executable the way a go-plugin host does, and connects to it over gRPC.
fn start_grpc(
    program: &Path,
    args: &[OsString],
    label: &str,
    options: &RemoteOptions,
) -> Result<Process, Error> {
    let failed = |reason: String| Error::PluginHandshake { reason }.with_path(program.to_owned());
    let dir = private_dir()
        .map_err(|source| Error::Io { error: source }.with_path(std::env::temp_dir()))?;
    let credentials = match options.auto_mtls {
        true => Some(Credentials::generate().map_err(failed)?),
        false => None,
    };
    let mut command = Command::new(program);
    if let Some(credentials) = &credentials {
        command.env(mtls::CLIENT_CERT_ENV, credentials.pem());
    }
    command
        .args(args)
        .env(grpc_handshake::PROTOCOL_VERSIONS_ENV, interface::PROTOCOL_VERSION.to_string())
        .env("PLUGIN_MIN_PORT", "10000")
        .env("PLUGIN_MAX_PORT", "25000")
        .env(grpc_handshake::UNIX_SOCKET_DIR_ENV, &dir)
        .stdin(Stdio::null());
    let (mut process, tail) = Process::spawn(command, program, dir, label, options)?;
    let line = match process.handshake_line(options.start_timeout, "plugin") {
        Ok(line) => line,
        Err(reason) => return Err(failed(tail.explain(reason))),
    };
    let handshake = match grpc_handshake::parse(&line, interface::PROTOCOL_VERSION) {
        Ok(handshake) => handshake,
        Err(reason) => {
            process.kill();
            return Err(failed(reason));
        }
    };
    let tls = match (credentials, handshake.certificate) {
        (Some(ours), Some(theirs)) => Some(mtls::client_config(&ours, theirs).map_err(failed)?),
        (Some(_), None) => {
            process.kill();
            return Err(failed(
                "expected the plugin's certificate in the handshake line's last field \
                 (automatic mutual TLS), found none: the plugin does not support AutoMTLS; set \
                 `auto_mtls = false` to talk to it without TLS"
                    .to_owned(),
            ));
        }
        (None, _) => None,
    };
    let link = GrpcLink::connect(handshake.address, tls, options.start_timeout)
        .and_then(|link| link.interface(options.start_timeout).map(|interface| (link, interface)));
    match link {
        Ok((link, (interface_version, extensions))) => {
            process.hello.interface_version = interface_version;
            process.hello.extensions = extensions;
            process.link = Link::Grpc(link);
        }
        Err(reason) => {
            process.kill();
            return Err(failed(reason));
        }
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
    /// Starts `command` (its stdin already set) with the magic cookie in its environment and
    /// its stderr forwarded to the log; the process, not yet connected, and the tail of its
    /// stderr. `dir` is its private directory, removed with it.
    fn spawn(
        mut command: Command,
        program: &Path,
        dir: PathBuf,
        label: &str,
        options: &RemoteOptions,
    ) -> Result<(Process, runner::LogTail), Error> {
        let mut child = command
            .env(MAGIC_COOKIE_KEY, MAGIC_COOKIE_VALUE)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|source| {
                let _ = std::fs::remove_dir_all(&dir);
                Error::Spawn { runner: program.to_owned(), error: source }
            })?;
        let pid = child.id();
        let tail = runner::LogTail::default();
        if let Some(stderr) = child.stderr.take() {
            let (label, tail) = (label.to_owned(), tail.clone());
            let _ = std::thread::Builder::new()
                .name(format!("plugin-log-{pid}"))
                .spawn(move || runner::forward_logs(&label, stderr, &tail));
        }
        let stdin = child.stdin.take();
        let liveness = Arc::new(Liveness::default());
        watch_exit(pid, &liveness);
        let process = Process {
            pid,
            child: Mutex::new(child),
            stdin: Mutex::new(stdin),
            dir,
            link: Link::Frames { socket: PathBuf::new(), pool: Mutex::new(Vec::new()) },
            liveness,
            channel: options.channel,
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
        Ok((process, tail))
    }

    /// The first line the process prints on stdout, within `limit`; its later output is
    /// drained into the log so that it never blocks on a full pipe.
    fn handshake_line(&self, limit: Duration, what: &str) -> Result<String, String> {
        let stdout = self.child.lock().stdout.take();
        let Some(stdout) = stdout else { return Err(format!("the {what} has no stdout")) };
        let (sender, receiver) = mpsc::channel();
        let pid = self.pid;
        let _ = std::thread::Builder::new().name(format!("plugin-stdout-{pid}")).spawn(move || {
            let mut reader = BufReader::new(stdout);
            let mut line = String::new();
            let result = reader.read_line(&mut line).map(|_| line);
            let _ = sender.send(result);
            for line in reader.lines() {
                let Ok(line) = line else { return };
                tracing::debug!(target: "calcplug::runner", pid, "stdout: {line}");
            }
        });
        match receiver.recv_timeout(limit) {
            Ok(Ok(line)) if !line.is_empty() => Ok(line),
            Ok(Ok(_)) | Ok(Err(_)) | Err(mpsc::RecvTimeoutError::Disconnected) => {
                let status = self.wait_for_exit(Duration::from_secs(2));
                let why = status.map_or_else(|| "no output".to_owned(), describe_exit);
                Err(format!("the {what} exited before its handshake ({why})"))
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                self.kill();
                Err(format!("the {what} printed no handshake within {limit:?}"))
            }
        }
    }

    pub(super) fn is_dead(&self) -> bool {
        self.liveness.dead.load(Ordering::Acquire)
    }

    pub(super) fn mark_dead(&self) {
        self.liveness.dead.store(true, Ordering::Release);
        match &self.link {
            Link::Frames { pool, .. } => pool.lock().clear(),
            Link::Grpc(link) => link.clear(),
        }
    }

    /// A new connection to the runner's socket, greeted, and moved to a lane if `channel` is
    /// [`Channel::SharedMemory`].
    fn connect(&self, socket: &Path, channel: Channel) -> Result<Connection, Transport> {
        let stream = UnixStream::connect(socket).map_err(|_| Transport::Closed)?;
        // Set once per connection: a call on it costs no syscall beyond its `write` and `read`.
        stream.set_read_timeout(Some(self.call_timeout)).map_err(|_| Transport::Closed)?;
        let mut connection = Connection {
            stream,
            inbox: wire::Inbox::new(),
            outbuf: Vec::new(),
            answer: Vec::new(),
            lane: None,
        };
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
            if channel == Channel::SharedMemory {
                self.attach_lane(&mut connection)?;
            }
        }
        Ok(connection)
    }

    /// Moves `connection`'s calls to a new shared-memory lane (see [`Request::AttachLane`]).
    /// Where this host cannot make one, or the runner declines, the connection stays on the
    /// socket.
    fn attach_lane(&self, connection: &mut Connection) -> Result<(), Transport> {
        let region = match Region::create() {
            Ok(region) => Arc::new(region),
            Err(err) => {
                tracing::debug!(pid = self.pid, error = %err, "no shared-memory lane: using the socket");
                return Ok(());
            }
        };
        // `Done` goes on, an error declines (the connection stays on the socket).
        let agreed = |response: Response, step: &str| match response {
            Response::Done => Ok(true),
            Response::Error { message, .. } => {
                tracing::debug!(pid = self.pid, %message, "no shared-memory lane ({step}): using the socket");
                Ok(false)
            }
            other => Err(Transport::Malformed(format!("unexpected answer to {step}: {other:?}"))),
        };
        let asked = self.exchange(connection, &Request::AttachLane { bytes: shm::SIZE as u64 })?;
        if !agreed(asked, "AttachLane")? {
            return Ok(());
        }
        if shm::send_fd(&connection.stream, region.fd()).is_err() {
            return Err(Transport::Closed);
        }
        let mapped = match connection.inbox.read_frame::<Response>(&mut connection.stream) {
            Ok(envelope) => envelope.body,
            Err(FrameError::Malformed(reason)) => return Err(Transport::Malformed(reason)),
            Err(_) => return Err(Transport::Closed),
        };
        if !agreed(mapped, "the lane's descriptor")? {
            return Ok(());
        }
        let mut lanes = self.liveness.lanes.lock();
        lanes.retain(|lane| lane.strong_count() > 0);
        lanes.push(Arc::downgrade(&region));
        drop(lanes);
        if self.is_dead() {
            // The watcher may have run before the lane was registered.
            return Err(Transport::Closed);
        }
        connection.lane = Some(HostLane::new(region));
        Ok(())
    }

    /// One request and its answer, on a pooled connection (a new one if none is idle); the
    /// answer must come within `call_timeout`.
    pub(super) fn roundtrip(&self, request: &Request) -> Result<Response, Transport> {
        if let Link::Grpc(link) = &self.link {
            if self.is_dead() {
                return Err(Transport::Closed);
            }
            return link.roundtrip(request, self.call_timeout);
        }
        self.with_connection(|connection| self.exchange(connection, request))
    }

    /// Runs `exchange` on a pooled connection (a new one if none is idle), which goes back to
    /// the pool unless the process died meanwhile.
    fn with_connection(
        &self,
        exchange: impl FnOnce(&mut Connection) -> Result<Response, Transport>,
    ) -> Result<Response, Transport> {
        let Link::Frames { socket, pool } = &self.link else { return Err(Transport::Closed) };
        if self.is_dead() {
            return Err(Transport::Closed);
        }
        let pooled = pool.lock().pop();
        let mut connection = match pooled {
            Some(connection) => connection,
            None => self.connect(socket, self.channel)?,
        };
        let response = exchange(&mut connection)?;
        if !self.is_dead() {
            pool.lock().push(connection);
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
        if let Some(lane) = &mut connection.lane {
            let deadline = Instant::now() + self.call_timeout;
            let payload = &connection.outbuf[4..];
            if payload.len() > shm::REQUEST_BYTES {
                return self.exchange_apart(request);
            }
            let answer = &mut connection.answer;
            lane.exchange(payload, answer, deadline, || self.is_dead())?;
            return match wire::decode::<Response>(answer) {
                Ok(envelope) if envelope.id == id => Ok(envelope.body),
                Ok(envelope) => {
                    Err(Transport::Malformed(format!("answer {} to request {id}", envelope.id)))
                }
                Err(FrameError::Malformed(reason)) => Err(Transport::Malformed(reason)),
                Err(_) => Err(Transport::Closed),
            };
        }
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

    /// `request` on a connection of its own without a lane: for a request too large for one.
    #[cold]
    fn exchange_apart(&self, request: &Request) -> Result<Response, Transport> {
        let Link::Frames { socket, .. } = &self.link else { return Err(Transport::Closed) };
        let mut connection = self.connect(socket, Channel::Socket)?;
        self.exchange(&mut connection, request)
    }

    /// A batch: in place through a lane, chunk by chunk, where the connection has one; else
    /// one [`Request::Batch`] frame each way. `Response::Done` once `results` is filled, or
    /// the plugin's (or an unexpected) answer.
    pub(super) fn batch(
        &self,
        ops: &[BatchOp],
        results: &mut [BatchResult],
    ) -> Result<Response, Transport> {
        let items = || Request::Batch(ops.iter().map(|op| (op.op.as_u8(), op.a, op.b)).collect());
        let response = match &self.link {
            Link::Grpc(_) => self.roundtrip(&items())?,
            Link::Frames { .. } => self.with_connection(|connection| match connection.lane {
                Some(_) => self.batch_in_lane(connection, ops, results),
                None => self.exchange(connection, &items()),
            })?,
        };
        Ok(match response {
            Response::Batch(answers) if answers.len() == results.len() => {
                wire::fill_batch(results, answers);
                Response::Done
            }
            other => other,
        })
    }

    fn batch_in_lane(
        &self,
        connection: &mut Connection,
        ops: &[BatchOp],
        results: &mut [BatchResult],
    ) -> Result<Response, Transport> {
        let Some(lane) = &mut connection.lane else { return Err(Transport::Closed) };
        let deadline = Instant::now() + self.call_timeout;
        let mut refusal = None;
        let accept = |answer: &[u8]| match wire::decode::<Response>(answer) {
            Ok(envelope) => match envelope.body {
                Response::Done => Ok(true),
                other => {
                    refusal = Some(other);
                    Ok(false)
                }
            },
            Err(FrameError::Malformed(reason)) => Err(Transport::Malformed(reason)),
            Err(_) => Err(Transport::Closed),
        };
        lane.batch(ops, results, &mut connection.answer, deadline, || self.is_dead(), accept)?;
        Ok(refusal.unwrap_or(Response::Done))
    }

    /// Waits up to `limit` for the runner to exit; its status if it did.
    pub(super) fn wait_for_exit(&self, limit: Duration) -> Option<ExitStatus> {
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

    pub(super) fn kill(&self) {
        self.mark_dead();
        let mut child = self.child.lock();
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.liveness.dead.store(true, Ordering::Release);
        match &self.link {
            Link::Frames { pool, .. } => pool.lock().clear(),
            // go-plugin's way: the controller's `Shutdown`, then a kill if it lingers.
            Link::Grpc(link) => link.shutdown(Duration::from_millis(500)),
        }
        // Closing stdin asks a runner to exit; give it a moment, then make sure.
        self.stdin.get_mut().take();
        if self.wait_for_exit(Duration::from_millis(500)).is_none() {
            let child = self.child.get_mut();
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Starts a thread that waits for process `pid` to end, without reaping it (the `Child` does),
/// and then marks it dead and wakes the callers waiting on its lanes: a runner that dies
/// mid-call is noticed at once, not at the call's timeout.
fn watch_exit(pid: u32, liveness: &Arc<Liveness>) {
    use rustix::process::{pidfd_open, waitid, Pid, PidfdFlags, WaitId, WaitIdOptions};
    let liveness = Arc::clone(liveness);
    let Some(raw) = i32::try_from(pid).ok().and_then(Pid::from_raw) else { return };
    // A pidfd names this process even after it is reaped and its number reused.
    let pidfd = pidfd_open(raw, PidfdFlags::empty()).ok();
    let _ = std::thread::Builder::new().name(format!("plugin-exit-{pid}")).spawn(move || {
        let options = WaitIdOptions::EXITED | WaitIdOptions::NOWAIT;
        loop {
            let waited = match &pidfd {
                Some(fd) => waitid(WaitId::PidFd(std::os::fd::AsFd::as_fd(fd)), options),
                None => waitid(WaitId::Pid(raw), options),
            };
            // Exited, or already reaped (`ECHILD`): either way it is gone.
            match waited {
                Err(rustix::io::Errno::INTR) => continue,
                _ => break,
            }
        }
        liveness.died();
    });
}

/// "killed by signal 9 (SIGKILL)", "exited with code 3".
pub(super) fn describe_exit(status: ExitStatus) -> String {
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
