//! The runner: the child process that loads one plugin library and serves it over a local
//! socket (go-plugin's plugin process).
//!
//! `calcplug-runner serve LIBRARY DIR` loads `LIBRARY` with every check of [`crate::load`], binds
//! `DIR/plugin.sock` (mode 0600; `DIR` is the host's private 0700 directory), prints one
//! handshake line on stdout, `CORE|APP|unix|SOCKET|WIRE`, and serves each connection on a
//! thread of its own. If loading fails it prints `error|REASON` instead and exits with 1.
//! It exits when its stdin closes, which happens when the host drops the handle or dies.
//! It refuses to start without the magic cookie in its environment: it is not meant to be run
//! by hand.

use std::ffi::OsString;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::UNIX_EPOCH;

use interface::{
    AngleUnit, BatchOp, BatchResult, Config, ErrorCode, OpCode, MAGIC_COOKIE_KEY,
    MAGIC_COOKIE_VALUE, PROTOCOL_VERSION,
};

use super::shm::{self, Asked, Region, RunnerLane};
use super::wire::{
    self, FrameError, Hello, Request, Response, WireMetadata, WireStatus, WIRE_NAME, WIRE_VERSION,
};
use super::CORE_PROTOCOL_VERSION;
use crate::{Error, Plugin};

/// The message a person gets when starting the runner by hand.
const NOT_BY_HAND: &str = "This binary is a calcplug plugin runner. It is not meant to be \
executed directly: run the program that uses the plugins (for example `calcplug --isolate`), \
which starts runners itself.";

/// Whether this program may serve as its own runner: set by [`serve_if_runner`].
static SELF_RUNNER: AtomicBool = AtomicBool::new(false);

/// Lets a host program be its own runner, as go-plugin plugins are their own servers: call it
/// first thing in `main`, and return its exit code when it gives one.
///
/// ```no_run
/// fn main() -> std::process::ExitCode {
///     if let Some(code) = host::remote::serve_if_runner() {
///         return code; // this process was started as a runner, and has served
///     }
///     // ... the host program, which may now use `RemotePlugin` with no runner binary beside it
///     # std::process::ExitCode::SUCCESS
/// }
/// ```
///
/// The host side starts every runner with `argv[0]` set to [`RUNNER_NAME`](super::RUNNER_NAME);
/// started so, this serves as the runner and returns its exit code. Otherwise it returns `None`
/// and records that this executable can serve: [`RemotePlugin`](super::RemotePlugin) then
/// re-executes it as the runner unless an explicit runner is configured (see
/// [`RemoteOptions::runner`](super::RemoteOptions::runner)).
pub fn serve_if_runner() -> Option<ExitCode> {
    if started_as_runner() {
        return Some(runner_main());
    }
    SELF_RUNNER.store(true, Ordering::Relaxed);
    None
}

/// Whether this process was started as a runner (`argv[0]` names
/// [`RUNNER_NAME`](super::RUNNER_NAME)): a program that is its own runner installs the
/// runner's log subscriber then, before [`serve_if_runner`].
pub fn started_as_runner() -> bool {
    std::env::args_os()
        .next()
        .is_some_and(|arg0| Path::new(&arg0).file_name() == Some(super::RUNNER_NAME.as_ref()))
}

/// Whether [`serve_if_runner`] ran in this process and found it is not a runner.
pub(super) fn self_runner_enabled() -> bool {
    SELF_RUNNER.load(Ordering::Relaxed)
}

/// Runs the runner with this process's arguments and environment; returns its exit code.
///
/// The `calcplug-runner` binary is this function; a host program that wants to be its own
/// runner calls [`serve_if_runner`] instead.
///
/// It installs no `tracing` subscriber (a library never does): the runner's logs reach the
/// host when the program installed one writing `LEVEL target: message` lines on stderr, which
/// the host re-emits under the target `calcplug::runner` (lines in any other shape are
/// forwarded at warn level as they are). `calcplug` and `calcplug-runner` install one.
pub fn runner_main() -> ExitCode {
    if std::env::var_os(MAGIC_COOKIE_KEY).as_deref() != Some(MAGIC_COOKIE_VALUE.as_ref()) {
        let _ = writeln!(io::stderr(), "{NOT_BY_HAND}");
        return ExitCode::from(1);
    }
    let args: Vec<OsString> = std::env::args_os().skip(1).collect();
    let (library, dir) = match args.as_slice() {
        [serve, library, dir] if serve == "serve" => (PathBuf::from(library), PathBuf::from(dir)),
        [grpc, library] if grpc == "--grpc" => {
            return match super::grpc::server::serve(Path::new(library)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(reason) => {
                    tracing::error!(library = %Path::new(library).display(), "{reason}");
                    let _ = writeln!(io::stderr(), "calcplug-runner: {reason}");
                    ExitCode::from(1)
                }
            };
        }
        _ => {
            let _ = writeln!(
                io::stderr(),
                "usage: calcplug-runner serve LIBRARY DIR (for calcplug hosts)\n       \
                 calcplug-runner --grpc LIBRARY (for go-plugin hosts)"
            );
            return ExitCode::from(2);
        }
    };
    match serve(&library, &dir) {
        Ok(()) => ExitCode::SUCCESS,
        Err(reason) => {
            let line = reason.replace('\n', " ");
            let _ = writeln!(io::stdout(), "error|{line}");
            tracing::warn!(library = %library.display(), "refused: {line}");
            ExitCode::from(1)
        }
    }
}

fn serve(library: &Path, dir: &Path) -> Result<(), String> {
    let plugin = Arc::new(crate::load(library).map_err(|err| err.to_string())?);
    let socket = dir.join("plugin.sock");
    let listener = UnixListener::bind(&socket)
        .map_err(|err| format!("{}: cannot listen: {err}", socket.display()))?;
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o600))
        .map_err(|err| format!("{}: cannot restrict permissions: {err}", socket.display()))?;

    // Exit when the host goes away: it holds our stdin, so EOF means it closed it or died.
    let watched = socket.clone();
    std::thread::Builder::new()
        .name("host-watch".to_owned())
        .spawn(move || {
            let mut sink = [0u8; 64];
            let mut stdin = io::stdin();
            while matches!(stdin.read(&mut sink), Ok(n) if n > 0) {}
            let _ = std::fs::remove_file(&watched);
            std::process::exit(0);
        })
        .map_err(|err| format!("cannot start the host watcher: {err}"))?;

    let mut out = io::stdout().lock();
    writeln!(
        out,
        "{CORE_PROTOCOL_VERSION}|{PROTOCOL_VERSION}|unix|{}|{WIRE_NAME}",
        socket.display()
    )
    .and_then(|()| out.flush())
    .map_err(|err| format!("cannot write the handshake line: {err}"))?;
    drop(out);
    tracing::info!(plugin = plugin.identity().name(), socket = %socket.display(), "serving");

    for stream in listener.incoming() {
        match stream {
            Ok(stream) => {
                let plugin = Arc::clone(&plugin);
                let spawned = std::thread::Builder::new()
                    .name("connection".to_owned())
                    .spawn(move || serve_connection(&plugin, stream));
                if let Err(err) = spawned {
                    tracing::error!(error = %err, "cannot start a connection thread");
                }
            }
            Err(err) => tracing::warn!(error = %err, "accept failed"),
        }
    }
    Ok(())
}

/// Answers the requests of one connection, in order, until it closes: per request one `read`
/// (when the frame arrives whole), the plugin's call and one `write`, with buffers reused.
fn serve_connection(plugin: &Plugin, mut stream: UnixStream) {
    let mut inbox = wire::Inbox::new();
    let mut outbuf = Vec::new();
    let mut greeted = false;
    loop {
        let envelope = match inbox.read_frame::<Request>(&mut stream) {
            Ok(envelope) => envelope,
            Err(FrameError::Closed) => return,
            Err(FrameError::Io(err)) => {
                tracing::debug!(error = %err, "connection failed");
                return;
            }
            Err(FrameError::Malformed(reason)) => {
                tracing::warn!(%reason, "malformed frame: closing the connection");
                return;
            }
        };
        let (response, close) =
            if let (true, Request::AttachLane { bytes }) = (greeted, &envelope.body) {
                match attach_lane(&mut stream, envelope.id, *bytes, &mut outbuf) {
                    Ok(Some(lane)) => return serve_lane(plugin, lane),
                    Ok(None) => continue,
                    Err(()) => return,
                }
            } else if greeted {
                (dispatch(plugin, envelope.body), false)
            } else {
                greet(plugin, envelope.body)
            };
        greeted = true;
        if let Err(reason) = wire::encode(&mut outbuf, envelope.id, &response) {
            tracing::error!(%reason, "cannot encode a response");
            return;
        }
        if wire::write_frame(&mut stream, &outbuf).is_err() || close {
            return;
        }
    }
}

/// Answers [`Request::AttachLane`]: `Done`, then the host's memfd arrives, then `Done` once
/// it is mapped. The lane; `None` if the runner declined (an error was answered and the
/// connection stays on the socket); `Err` if the connection broke.
fn attach_lane(
    stream: &mut UnixStream,
    id: u64,
    bytes: u64,
    outbuf: &mut Vec<u8>,
) -> Result<Option<RunnerLane>, ()> {
    let answer = |stream: &mut UnixStream, outbuf: &mut Vec<u8>, response: &Response| {
        wire::encode(outbuf, id, response)
            .ok()
            .and_then(|()| wire::write_frame(stream, outbuf).ok())
            .ok_or(())
    };
    if bytes != shm::SIZE as u64 {
        let message = format!("a lane of {bytes} bytes asked, this runner makes {}", shm::SIZE);
        answer(stream, outbuf, &error(ErrorCode::Unsupported, message))?;
        return Ok(None);
    }
    answer(stream, outbuf, &Response::Done)?;
    let fd = shm::receive_fd(&*stream).map_err(|err| {
        tracing::warn!(error = %err, "no lane descriptor: closing the connection");
    })?;
    match Region::attach(fd) {
        Ok(region) => {
            answer(stream, outbuf, &Response::Done)?;
            Ok(Some(RunnerLane::new(region)))
        }
        Err(err) => {
            let message = format!("cannot map the lane: {err}");
            answer(stream, outbuf, &error(ErrorCode::Unsupported, message))?;
            Ok(None)
        }
    }
}

/// Answers the requests of one shared-memory lane until the host closes it: the same
/// dispatch as the socket's, and batches computed in place.
fn serve_lane(plugin: &Plugin, mut lane: RunnerLane) {
    let mut outbuf = Vec::new();
    loop {
        let (id, response) = match lane.next() {
            None => return,
            Some(Asked::Frame(payload)) => match wire::decode::<Request>(payload) {
                Ok(envelope) => (envelope.id, dispatch(plugin, envelope.body)),
                Err(err) => {
                    tracing::warn!(error = ?err, "malformed request in the lane: closing it");
                    return;
                }
            },
            Some(Asked::Batch(ops, results)) => match plugin.process_batch(ops, results) {
                Ok(()) => (0, Response::Done),
                Err(err) => (0, refusal(err)),
            },
        };
        if let Err(reason) = wire::encode(&mut outbuf, id, &response) {
            tracing::error!(%reason, "cannot encode a response");
            return;
        }
        if outbuf.len() - 4 > shm::ANSWER_BYTES {
            // Still an answer, so that the caller gets an error rather than a timeout.
            let smaller = shrunk(response, outbuf.len() - 4);
            if wire::encode(&mut outbuf, id, &smaller).is_err() {
                return;
            }
        }
        if !lane.answer(&outbuf[4..]) {
            tracing::error!(bytes = outbuf.len(), "an answer larger than the lane");
            return;
        }
    }
}

/// An answer of `bytes` too large for a lane, made to fit: an error's message cut (at a
/// character boundary), anything else an `Internal` error saying so.
fn shrunk(response: Response, bytes: usize) -> Response {
    const KEPT: usize = 64 << 10;
    match response {
        Response::Error { code, mut message } => {
            let mut end = KEPT.min(message.len());
            while !message.is_char_boundary(end) {
                end -= 1;
            }
            message.truncate(end);
            message.push_str(" … (cut: the message does not fit a shared-memory lane)");
            Response::Error { code, message }
        }
        _ => error(
            ErrorCode::Internal,
            format!(
                "an answer of {bytes} bytes does not fit a shared-memory lane ({} bytes); \
                 `[isolation] transport = \"socket\"` carries it",
                shm::ANSWER_BYTES
            ),
        ),
    }
}

fn greet(plugin: &Plugin, request: Request) -> (Response, bool) {
    match request {
        Request::Hello { wire_version } if wire_version == WIRE_VERSION => {
            let extensions = plugin.identity().extensions().iter().map(|e| e.name().to_owned()).collect();
            let hello = Hello {
                wire_version: WIRE_VERSION,
                interface_version: plugin.identity().interface_version().to_string(),
                extensions,
                pid: std::process::id(),
            };
            (Response::Hello(hello), false)
        }
        Request::Hello { wire_version } => (
            error(
                ErrorCode::Internal,
                format!("wire version mismatch: the runner speaks {WIRE_VERSION}, the host {wire_version}"),
            ),
            true,
        ),
        _ => (error(ErrorCode::Internal, "the first request must be Hello".to_owned()), true),
    }
}

fn dispatch(plugin: &Plugin, request: Request) -> Response {
    let result = match request {
        Request::Hello { .. } => {
            return error(ErrorCode::Internal, "Hello was already sent".to_owned())
        }
        Request::Metadata => Ok(Response::Metadata(metadata(plugin))),
        Request::Initialize(entries) => {
            let config: Config = entries.into_iter().collect();
            plugin.initialize(&config).map(|()| Response::Done)
        }
        Request::Shutdown => plugin.shutdown().map(|()| Response::Done),
        Request::Status => plugin.status().map(|status| {
            Response::Status(WireStatus {
                state: status.state as u8,
                message: status.message,
                started_at_unix_nanos: status
                    .started_at
                    .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                    .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)),
                uptime_nanos: u64::try_from(status.uptime.as_nanos()).unwrap_or(u64::MAX),
                request_count: status.request_count,
                average_latency_nanos: status
                    .average_latency
                    .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)),
            })
        }),
        Request::Call { op, a, b } => match OpCode::from_u8(op).op() {
            Some(op) => plugin.call(op, a, b).map(Response::Value),
            None => {
                return error(ErrorCode::Unsupported, format!("unknown operation code {op}"));
            }
        },
        Request::Batch(items) => {
            let ops: Vec<BatchOp> = items
                .into_iter()
                .map(|(op, a, b)| BatchOp { op: OpCode::from_u8(op), a, b })
                .collect();
            let mut results = vec![BatchResult::PENDING; ops.len()];
            plugin.process_batch(&ops, &mut results).map(|()| {
                Response::Batch(
                    results
                        .iter()
                        .map(|r| match r.result() {
                            Ok(value) => (0, value),
                            Err(code) => (code.as_u8(), f64::NAN),
                        })
                        .collect(),
                )
            })
        }
        Request::SetAngleUnit(raw) => match AngleUnit::from_u8(raw) {
            Some(unit) => plugin.set_angle_unit(unit).map(|()| Response::Done),
            None => {
                return error(ErrorCode::InvalidInput, format!("unknown angle unit code {raw}"))
            }
        },
        Request::AngleUnit => plugin.angle_unit().map(|unit| Response::AngleUnit(unit as u8)),
        Request::AttachLane { .. } => {
            return error(ErrorCode::Internal, "AttachLane is not a call".to_owned())
        }
    };
    result.unwrap_or_else(refusal)
}

/// The answer for a call the plugin refused.
fn refusal(err: Error) -> Response {
    match err {
        Error::Call { code, message, .. } => error(code, message),
        other => error(other.code().unwrap_or(ErrorCode::Internal), other.to_string()),
    }
}

fn metadata(plugin: &Plugin) -> WireMetadata {
    let meta = plugin.identity().metadata();
    WireMetadata {
        name: meta.name.clone(),
        version: meta.version.clone(),
        description: meta.description.clone(),
        operations: meta.operations.clone(),
        config: meta
            .config
            .iter()
            .map(|k| (k.key.clone(), k.default.clone(), k.description.clone()))
            .collect(),
    }
}

fn error(code: ErrorCode, message: String) -> Response {
    Response::Error { code: code.as_u8(), message }
}

/// Reads the runner's handshake line: `CORE|APP|unix|SOCKET|WIRE`, or `error|REASON`.
pub(super) fn parse_handshake(line: &str) -> Result<PathBuf, String> {
    let line = line.trim_end();
    if let Some(reason) = line.strip_prefix("error|") {
        return Err(reason.to_owned());
    }
    let parts: Vec<&str> = line.split('|').collect();
    let [core, app, network, address, wire_name] = parts.as_slice() else {
        return Err(format!("malformed handshake line {line:?}"));
    };
    if *core != CORE_PROTOCOL_VERSION.to_string() {
        return Err(format!("core protocol {core}, this host speaks {CORE_PROTOCOL_VERSION}"));
    }
    if *app != PROTOCOL_VERSION.to_string() {
        return Err(format!("protocol version {app}, this host speaks {PROTOCOL_VERSION}"));
    }
    if *network != "unix" {
        return Err(format!("network type {network:?}, this host speaks unix"));
    }
    if *wire_name != WIRE_NAME {
        return Err(format!("wire protocol {wire_name:?}, this host speaks {WIRE_NAME:?}"));
    }
    Ok(PathBuf::from(address))
}

/// The last lines a plugin process wrote on stderr, for the error when it fails to start:
/// a go-plugin plugin started with the wrong cookie says why there, and exits.
#[derive(Debug, Clone, Default)]
pub(super) struct LogTail(Arc<parking_lot::Mutex<std::collections::VecDeque<String>>>);

impl LogTail {
    const KEEP: usize = 3;

    fn push(&self, line: &str) {
        let mut lines = self.0.lock();
        if lines.len() == Self::KEEP {
            lines.pop_front();
        }
        lines.push_back(line.chars().take(300).collect());
    }

    /// `reason`, and what the process last said on stderr, if anything.
    pub(super) fn explain(&self, reason: String) -> String {
        // The reader thread may still be reading the last lines of a process that just exited.
        std::thread::sleep(std::time::Duration::from_millis(20));
        let lines = self.0.lock();
        if lines.is_empty() {
            reason
        } else {
            let said: Vec<&str> = lines.iter().map(String::as_str).collect();
            let said = said.join(" / ");
            // go-plugin's words for a plugin started without the cookie it was built with.
            let cookie = if said.contains("This binary is a plugin.") {
                format!(
                    " (go-plugin's refusal of a magic cookie it was not built with: calcplug \
                     sets {}={:?}; build the plugin with that MagicCookieKey and \
                     MagicCookieValue)",
                    interface::MAGIC_COOKIE_KEY,
                    interface::MAGIC_COOKIE_VALUE
                )
            } else {
                String::new()
            };
            format!("{reason}; it said on stderr: {said}{cookie}")
        }
    }
}

/// Reads lines from `input` (a plugin process's stderr) and re-emits them as `tracing` events
/// of the host, tagged with the plugin, at the level the process logged them at: calcplug
/// runners write `LEVEL message`, go-plugin plugins hclog's JSON (`@level`, `@message`) or
/// `[LEVEL] message` text; anything else is forwarded at warn level as it is.
pub(super) fn forward_logs(plugin: &str, input: impl Read, tail: &LogTail) {
    for line in BufReader::new(input).lines() {
        let Ok(line) = line else { return };
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let (level, message) = log_level(line);
        tail.push(if level.is_empty() { line } else { &message });
        match level {
            "ERROR" => tracing::error!(target: "calcplug::runner", plugin, "{message}"),
            "WARN" => tracing::warn!(target: "calcplug::runner", plugin, "{message}"),
            "INFO" => tracing::info!(target: "calcplug::runner", plugin, "{message}"),
            "DEBUG" => tracing::debug!(target: "calcplug::runner", plugin, "{message}"),
            "TRACE" => tracing::trace!(target: "calcplug::runner", plugin, "{message}"),
            // Anything the plugin printed itself (a panic message, say).
            _ => tracing::warn!(target: "calcplug::runner", plugin, "{line}"),
        }
    }
}

/// The level (upper case, or "" when none is recognised) and the message of one log line.
fn log_level(line: &str) -> (&'static str, String) {
    const LEVELS: [&str; 5] = ["ERROR", "WARN", "INFO", "DEBUG", "TRACE"];
    let known = |level: &str| LEVELS.into_iter().find(|l| l.eq_ignore_ascii_case(level));
    if line.starts_with('{') {
        if let Some(fields) = super::hclog::parse(line) {
            let level = fields.iter().find(|(k, _)| k == "@level").and_then(|(_, v)| known(v));
            let message = fields.iter().find(|(k, _)| k == "@message").map(|(_, v)| v.clone());
            if let (Some(level), Some(mut message)) = (level, message) {
                for (key, value) in fields.iter().filter(|(k, _)| !k.starts_with('@')) {
                    message.push_str(&format!(" {key}={value}"));
                }
                return (level, message);
            }
        }
    }
    if let Some(rest) = line.strip_prefix('[') {
        if let Some((level, message)) = rest.split_once(']') {
            if let Some(level) = known(level) {
                return (level, message.trim_start().to_owned());
            }
        }
    }
    let (level, rest) = line.split_once(' ').unwrap_or(("", line));
    match LEVELS.into_iter().find(|l| *l == level) {
        Some(level) => (level, rest.trim_start().to_owned()),
        None => ("", line.to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        #[test]
        fn fuzz_handshake_lines_never_panic(line in ".{0,200}") {
            let _ = parse_handshake(&line);
        }

        /// Handshake-shaped lines, each field valid or not: accepted exactly when every field
        /// is right, and otherwise refused naming the first field that is wrong.
        #[test]
        fn fuzz_handshake_fields_are_each_checked(
            core in "(1|[0-9]{1,3})",
            app in "([0-9]{1,3})",
            network in "(unix|tcp|[a-z]{0,5})",
            address in "/[a-z/]{0,30}",
            wire in "(calcplug-postcard|[a-z-]{0,12})",
            extra in proptest::option::of("[a-z]{0,4}"),
        ) {
            let app = if app.len() == 1 { PROTOCOL_VERSION.to_string() } else { app };
            let mut line = format!("{core}|{app}|{network}|{address}|{wire}");
            if let Some(extra) = &extra {
                line = format!("{line}|{extra}");
            }
            let result = parse_handshake(&format!("{line}\n"));
            let first_wrong = if extra.is_some() {
                Some("malformed handshake line")
            } else if core != CORE_PROTOCOL_VERSION.to_string() {
                Some("core protocol")
            } else if app != PROTOCOL_VERSION.to_string() {
                Some("protocol version")
            } else if network != "unix" {
                Some("network type")
            } else if wire != WIRE_NAME {
                Some("wire protocol")
            } else {
                None
            };
            match (first_wrong, result) {
                (None, Ok(path)) => proptest::prop_assert_eq!(path, PathBuf::from(&address)),
                (Some(field), Err(reason)) => {
                    proptest::prop_assert!(reason.starts_with(field), "{line}: {reason}")
                }
                (expected, got) => proptest::prop_assert!(false, "{line}: {expected:?} but {got:?}"),
            }
        }
    }

    #[test]
    fn handshake_lines() {
        let ok = format!("1|{PROTOCOL_VERSION}|unix|/tmp/x/plugin.sock|{WIRE_NAME}\n");
        assert_eq!(parse_handshake(&ok), Ok(PathBuf::from("/tmp/x/plugin.sock")));
        assert_eq!(
            parse_handshake("error|libx.so: no such file"),
            Err("libx.so: no such file".into())
        );
        assert!(parse_handshake("1|9|unix|/s|calcplug-postcard")
            .unwrap_err()
            .contains("protocol version 9"));
        assert!(parse_handshake("garbage").unwrap_err().contains("malformed"));
        let tcp = format!("1|{PROTOCOL_VERSION}|tcp|127.0.0.1:1|{WIRE_NAME}");
        assert!(parse_handshake(&tcp).unwrap_err().contains("network type"));
    }
}
