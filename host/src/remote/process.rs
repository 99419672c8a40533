//! One runner process: starting it and reading its handshake, its pool of connections, one
//! round trip, and ending it.

use std::io::{BufRead, BufReader};
use std::os::unix::fs::DirBuilderExt;
use std::os::unix::net::UnixStream;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant, UNIX_EPOCH};

use interface::{MAGIC_COOKIE_KEY, MAGIC_COOKIE_VALUE};
use parking_lot::Mutex;

use super::wire::{self, FrameError, Request, Response};
use super::{runner, RemoteOptions, RUNNER_NAME};
use crate::Error;

/// Why a round trip failed.
#[derive(Debug)]
pub(super) enum Transport {
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
    socket: PathBuf,
    pool: Mutex<Vec<Connection>>,
    dead: AtomicBool,
    /// Its failure was counted (see [`RemotePlugin::record_failure`](super::RemotePlugin)).
    pub(super) failed: AtomicBool,
    /// It answered a call (see [`RemotePlugin::record_answer`](super::RemotePlugin)).
    pub(super) answered: AtomicBool,
    next_id: AtomicU64,
    pub(super) hello: wire::Hello,
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

pub(super) fn start_process(
    runner: &Path,
    library: &Path,
    label: &str,
    options: &RemoteOptions,
) -> Result<Process, Error> {
    let dir =
        private_dir().map_err(|source| Error::Io { source }.with_path(std::env::temp_dir()))?;
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
    let failed = |reason: String| Error::RunnerFailed { reason }.with_path(library.to_owned());
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
    pub(super) fn is_dead(&self) -> bool {
        self.dead.load(Ordering::Acquire)
    }

    pub(super) fn mark_dead(&self) {
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
    pub(super) fn roundtrip(&self, request: &Request) -> Result<Response, Transport> {
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
