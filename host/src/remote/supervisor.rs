//! Supervision of a [`RemotePlugin`]'s runner: starting it (with backoff), counting its
//! failures once each, the circuit breaker, and retrying idempotent calls on a new runner.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use interface::{Config, ErrorCode};

use super::process::{describe_exit, start_process, Launch, Process, Transport};
use super::wire::{Request, Response};
use super::RemotePlugin;
use crate::Error;

/// What survives a restart: the config to replay, and the failure history.
#[derive(Debug, Default)]
pub(super) struct Supervisor {
    /// The config of the last successful `initialize`, replayed on a new runner.
    pub(super) config: Option<Config>,
    /// When runners failed (one entry per runner, or per failed start), within the window.
    pub(super) failures: Vec<Instant>,
    /// No restart before this (the backoff), while the circuit is closed.
    pub(super) next_start: Option<Instant>,
    /// Set by [`RemotePlugin::stop`]: no runner is started again.
    pub(super) stopped: bool,
    /// The delay before the next restart; back to zero once a runner has answered a call.
    pub(super) backoff: Duration,
    pub(super) breaker: Breaker,
    pub(super) generation: u64,
    /// Calls retried on a new process after theirs died, by operation.
    pub(super) retried: std::collections::BTreeMap<&'static str, u64>,
}

/// The circuit breaker's own state (what [`Circuit`] shows, plus when and how long).
#[derive(Debug, Clone, Copy, Default)]
pub(super) enum Breaker {
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

/// What a failed round trip means for the call.
enum Failed {
    /// The call fails with this error (a timeout, a broken runner).
    Final(Error),
    /// The runner died: an idempotent call may be retried on a new one.
    Retryable(Error),
}

impl RemotePlugin {
    /// Sends `request` to a live runner (starting one if needed), retrying on a new runner if
    /// the current one dies and the request is `idempotent`.
    pub(super) fn request(
        &self,
        op: &'static str,
        request: &Request,
        idempotent: bool,
    ) -> Result<Response, Error> {
        self.request_with(op, idempotent, |process| process.roundtrip(request))
    }

    /// [`RemotePlugin::request`] for any exchange with the process.
    pub(super) fn request_with(
        &self,
        op: &'static str,
        idempotent: bool,
        mut exchange: impl FnMut(&Process) -> Result<Response, Transport>,
    ) -> Result<Response, Error> {
        let mut attempt = 0;
        loop {
            let error = match self.live_process() {
                Ok(process) => {
                    if attempt > 0 {
                        *self.supervisor.lock().retried.entry(op).or_default() += 1;
                    }
                    match exchange(&process) {
                        Ok(response) => {
                            if !process.answered.load(Ordering::Relaxed) {
                                self.record_answer(&process);
                            }
                            if attempt > 0 {
                                tracing::info!(plugin = %self.identity.name(), op, attempt, pid = process.pid, "answered on a new {}", self.noun());
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
                    }
                }
                Err(Unavailable::Refused(error)) => return Err(error),
                Err(Unavailable::StartFailed(error)) => error,
            };
            if !idempotent || attempt >= self.options.retries {
                return Err(error);
            }
            attempt += 1;
            tracing::info!(plugin = %self.identity.name(), op, attempt, error = %error, "retrying on a new {}", self.noun());
        }
    }

    /// What the plugin's process is called in the logs: a runner, or the plugin executable's
    /// own process.
    pub(super) fn noun(&self) -> &'static str {
        match self.launch {
            Launch::Runner(_) => "runner",
            Launch::Grpc(_) => "plugin process",
        }
    }

    /// Calls retried on a new process after theirs died, by operation: each retry sent to a
    /// new process counts (one refused by an open circuit does not).
    pub fn retried(&self) -> Vec<(&'static str, u64)> {
        self.supervisor.lock().retried.iter().map(|(op, n)| (*op, *n)).collect()
    }

    /// Turns a failed round trip into the call's error, ending the runner and counting the
    /// failure once for the runner, whichever caller notices first.
    #[cold]
    fn fail(&self, process: &Process, op: &'static str, failure: Transport) -> Failed {
        match failure {
            Transport::Timeout => {
                tracing::error!(plugin = %self.identity.name(), op, timeout = ?self.options.call_timeout, "call timed out: killing the {}", self.noun());
                self.record_failure(process);
                process.kill();
                Failed::Final(Error::CallTimeout {
                    plugin: self.identity.name().to_owned(),
                    op,
                    after: self.options.call_timeout,
                })
            }
            Transport::Malformed(reason) => {
                self.record_failure(process);
                process.kill();
                Failed::Final(Error::Wire { plugin: self.identity.name().to_owned(), reason })
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
                // A warning: an idempotent call is retried on a new process, and a call that
                // fails for good says so to its caller.
                if first {
                    tracing::warn!(plugin = %self.identity.name(), op, %status, pid = process.pid, "{} died", self.noun());
                }
                Failed::Retryable(Error::PluginCrashed {
                    plugin: self.identity.name().to_owned(),
                    status,
                })
            }
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
            return Err(Unavailable::Refused(Error::Stopped {
                plugin: self.identity.name().to_owned(),
            }));
        }
        // Another thread may have restarted it while we waited for the lock (a runner is only
        // marked dead with this lock held, so this check is final).
        if let Some(process) = self.process.read().as_ref() {
            if !process.is_dead() {
                return Ok(Arc::clone(process));
            }
            // Dead, and no call saw it fail: it died between calls (its exit watcher noticed).
            // That is a failure like any other, for the backoff and the circuit.
            if !process.failed.swap(true, Ordering::AcqRel) {
                let status = process
                    .wait_for_exit(Duration::from_millis(100))
                    .map_or_else(|| "ended".to_owned(), describe_exit);
                tracing::warn!(plugin = %self.identity.name(), %status, pid = process.pid, "{} died between calls", self.noun());
                self.count_failure(&mut supervisor);
            }
        }
        let now = Instant::now();
        match supervisor.breaker {
            Breaker::Open { until, .. } if now < until => {
                let window = self.options.failure_window;
                supervisor.failures.retain(|t| now.duration_since(*t) < window);
                return Err(Unavailable::Refused(Error::CircuitOpen {
                    plugin: self.identity.name().to_owned(),
                    failures: supervisor.failures.len(),
                    window,
                    next_trial_in: until - now,
                }));
            }
            Breaker::Open { cooldown, .. } => {
                tracing::info!(plugin = %self.identity.name(), "circuit half-open: starting a trial runner");
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
                tracing::error!(plugin = %self.identity.name(), error = %error, "the {} did not start", self.noun());
                self.count_failure(&mut supervisor);
                return Err(Unavailable::StartFailed(error));
            }
        };
        tracing::info!(plugin = %self.identity.name(), pid = process.pid, generation = supervisor.generation, "{} started", self.noun());
        *self.process.write() = Some(Arc::clone(&process));
        Ok(process)
    }

    /// Starts a runner and replays the last `initialize` on it.
    fn start_replaying(&self, supervisor: &Supervisor) -> Result<Process, Error> {
        let process =
            start_process(&self.launch, self.identity.path(), self.identity.name(), &self.options)?;
        if let Some(config) = &supervisor.config {
            let entries = config.iter().map(|(k, v)| (k.to_owned(), v.to_owned())).collect();
            match process.roundtrip(&Request::Initialize(entries)) {
                Ok(Response::Done) => {}
                Ok(other) => return Err(self.unexpected("initialize (replayed)", &other)),
                Err(_) => {
                    return Err(Error::PluginCrashed {
                        plugin: self.identity.name().to_owned(),
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
                plugin = %self.identity.name(),
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
            tracing::info!(plugin = %self.identity.name(), pid = process.pid, "circuit closed: the trial runner answered");
            supervisor.breaker = Breaker::Closed;
            supervisor.failures.clear();
        }
    }
}
