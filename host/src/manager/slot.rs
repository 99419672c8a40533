//! The call path: a `Slot` per plugin name, the `Generation` (library) serving it now, admission,
//! retries, metrics, and retiring a replaced library.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use interface::{ErrorCode, Op, PluginState};

use super::backend::Backend;
use super::metrics::{op_index, passes, sample_mask, timed, ThreadShard};
use super::{fence, Generation, Health, LifecycleState, PluginStatus, Slot};
use crate::config::{ManagerConfig, Mode, PanicPolicy};
use crate::{Error, Plugin};

/// Where [`Slot::run`] left its fast path.
pub(super) enum Detour<'s, 'g> {
    /// Before counting the call: the thread has no counter shard of its own yet, or none.
    Unentered,
    /// Counted as entered, not called: the library is not `Ready` or in process, or the call is
    /// timed.
    Entered { generation: &'g Generation, shard: ThreadShard<'s>, ticket: u64 },
}

impl Generation {
    /// A newly loaded (or started, or connected) plugin, serving from now.
    pub(super) fn new(
        plugin: Backend,
        source: std::path::PathBuf,
        state: crate::StateMachine,
    ) -> Generation {
        Generation {
            plugin,
            source,
            state,
            gate: std::sync::atomic::AtomicU64::new(0),
            loaded_at: Instant::now(),
            shared: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// Initializes the plugin; once it is `Ready`, opens the gate. Before the library is
    /// published: nothing else moves its state meanwhile.
    pub(super) fn initialize(&self, config: &ManagerConfig) -> Result<(), Error> {
        let _ = self.transition(LifecycleState::Initializing);
        let plugin_config = config.plugin(self.plugin.identity().name());
        match self.plugin.initialize(&plugin_config) {
            Ok(()) => {
                if self.state.transition(LifecycleState::Ready).is_ok() {
                    let mask = sample_mask(config.sample_every(), !self.plugin.is_isolated());
                    self.gate.store(mask, Ordering::SeqCst);
                }
                Ok(())
            }
            Err(err) => {
                let _ = self.transition(LifecycleState::Error);
                Err(err)
            }
        }
    }

    /// Moves the state to `to` (not `Ready`: see [`Generation::initialize`]), closing the gate
    /// first: a call that passes the gate after this sees the new state.
    pub(super) fn transition(&self, to: LifecycleState) -> Result<LifecycleState, Error> {
        self.gate.store(0, Ordering::SeqCst);
        self.state.transition(to)
    }

    /// Moves to `ShuttingDown` (unless already there), calls the plugin's `shutdown`, moves to
    /// `Closed`. Does nothing once closed.
    pub(super) fn close(&self) -> Result<(), Error> {
        match self.state.state() {
            LifecycleState::Closed => return Ok(()),
            LifecycleState::ShuttingDown => {}
            _ => {
                if self.transition(LifecycleState::ShuttingDown).is_err() {
                    // Never initialized (a shadowed library): nothing to shut down.
                    return Ok(());
                }
            }
        }
        let result = self.plugin.shutdown();
        let _ = self.transition(LifecycleState::Closed);
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
    pub(super) fn generation(&self) -> &Generation {
        self.generations.serving()
    }

    /// Waits (at most `timeout`) for the calls that may run on `old`, a library just replaced,
    /// then shuts it down. Calls that started after the swap run on the new library and are
    /// not waited for, so a busy plugin does not hold a reload up. If calls still run on `old`
    /// when the time is up, it is shut down with the manager instead.
    pub(super) fn retire(&self, old: &Generation, timeout: Duration) {
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

    pub(super) fn state(&self) -> LifecycleState {
        let state = self.generation().state.state();
        if state == LifecycleState::Ready && self.metrics.in_flight() > 0 {
            LifecycleState::Processing
        } else {
            state
        }
    }

    /// One try of a call, on whichever backend serves: the retries' path, and the first try's
    /// when [`Slot::run`] cannot take its fast path.
    pub(super) fn try_once<T>(
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
    pub(super) fn try_slow<T>(
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
    pub(super) fn pin_shared(&self) -> &Generation {
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
    pub(super) fn call_on<T>(
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
        if timed(ticket, generation.gate.load(Ordering::Relaxed)) {
            return self.call_timed(generation, shard, op, f);
        }
        self.account(generation, shard, op, f(&generation.plugin))
    }

    /// [`Slot::call_on`] for a call that is timed, kept off the fast path.
    #[cold]
    #[inline(never)]
    pub(super) fn call_timed<T>(
        &self,
        generation: &Generation,
        shard: ThreadShard<'_>,
        op: usize,
        f: &impl Fn(&Backend) -> Result<T, Error>,
    ) -> Result<T, Error> {
        let started = Instant::now();
        let result = f(&generation.plugin);
        self.metrics.record_latency(op, started);
        self.account(generation, shard, op, result)
    }

    /// Counts a finished call (and its error).
    #[inline(always)]
    pub(super) fn account<T>(
        &self,
        generation: &Generation,
        shard: ThreadShard<'_>,
        op: usize,
        result: Result<T, Error>,
    ) -> Result<T, Error> {
        // `Ok(value)` is rebuilt rather than `result` returned: that writes a `T` into the
        // caller's slot instead of copying the whole `Result` (`Error` is over 100 bytes).
        match result {
            Ok(value) => {
                shard.finish(op);
                Ok(value)
            }
            Err(err) => {
                match err.code() {
                    Some(code) => {
                        shard.error(op, code);
                        if code == ErrorCode::PluginPanicked {
                            self.panicked(generation, &err);
                        }
                    }
                    None => self.metrics.failure(op, &err),
                }
                shard.finish(op);
                Err(err)
            }
        }
    }

    /// A call with the retry policy: the hot path.
    ///
    /// `local` is the call on an in-process plugin, its error boxed, `any` the same call on
    /// whichever backend serves. A thread with a counter shard of its own, on a `Ready` library
    /// in this process, on a call that is not timed, calls `local` and hands its value straight
    /// back; everything else (a first call, timing, another process, an error, retries) leaves
    /// through a cold function ([`Slot::detour`], [`Slot::failed`]). So the value of a call does
    /// not travel through the `Result`s of the other paths (an `Error` is over 100 bytes, and
    /// merging with them would put it on the stack). The box is why `local` differs from `any`:
    /// `Result<f64, Box<Error>>` is two registers, so the fast path stores no `Ok` for the
    /// plugin's error path to share (the plugin's errors allocate their message anyway).
    #[inline(always)]
    pub(super) fn run<T>(
        &self,
        op: usize,
        name: &'static str,
        local: impl Fn(&Plugin) -> Result<T, Box<Error>>,
        any: impl Fn(&Backend) -> Result<T, Error> + Copy,
    ) -> Result<T, Error> {
        let Some(shard) = self.metrics.own_shard() else {
            return self.detour(Detour::Unentered, op, name, any);
        };
        let ticket = shard.enter();
        let generation = self.generation();
        if let Backend::Local(plugin) = &generation.plugin {
            // `Ready` and not timed, in one test.
            if passes(ticket, generation.gate.load(Ordering::Relaxed)) {
                return match local(plugin) {
                    Ok(value) => {
                        shard.finish(op);
                        Ok(value)
                    }
                    Err(err) => self.failed(generation, shard, op, name, any, *err),
                };
            }
        }
        self.detour(Detour::Entered { generation, shard, ticket }, op, name, any)
    }

    /// [`Slot::run`] off its fast path: the first try, then the retry policy.
    #[cold]
    #[inline(never)]
    pub(super) fn detour<T>(
        &self,
        detour: Detour<'_, '_>,
        op: usize,
        name: &'static str,
        f: impl Fn(&Backend) -> Result<T, Error> + Copy,
    ) -> Result<T, Error> {
        let first = match detour {
            Detour::Unentered => self.try_slow(op, name, &f),
            Detour::Entered { generation, shard, ticket } => {
                self.call_on(generation, shard, ticket, op, name, &f)
            }
        };
        first.or_else(|err| self.retry(op, name, &f, err))
    }

    /// [`Slot::run`]'s fast path got an error from the plugin: counted, then the retry policy.
    #[cold]
    #[inline(never)]
    pub(super) fn failed<T>(
        &self,
        generation: &Generation,
        shard: ThreadShard<'_>,
        op: usize,
        name: &'static str,
        f: impl Fn(&Backend) -> Result<T, Error> + Copy,
        err: Error,
    ) -> Result<T, Error> {
        self.account(generation, shard, op, Err(err)).or_else(|err| self.retry(op, name, &f, err))
    }

    #[cold]
    #[inline(never)]
    pub(super) fn retry<T>(
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
    pub(super) fn panicked(&self, generation: &Generation, err: &Error) {
        *self.last_error.lock() = Some(err.to_string());
        match self.on_panic {
            PanicPolicy::KeepServing => {
                tracing::warn!(plugin = %self.name, error = %err, "plugin panicked; it keeps serving (on_panic = keep-serving)");
            }
            PanicPolicy::Disable => {
                tracing::warn!(plugin = %self.name, error = %err, "plugin panicked; disabled until it is reloaded (on_panic = disable)");
                let _ = generation.transition(LifecycleState::Error);
            }
        }
    }

    #[cold]
    pub(super) fn refused(&self, op: &'static str, state: LifecycleState) -> Error {
        match state {
            LifecycleState::ShuttingDown | LifecycleState::Closed => {
                Error::ShuttingDown { plugin: self.name.clone(), op }
            }
            state => Error::NotServing { plugin: self.name.clone(), op, state },
        }
    }

    pub(super) fn call(&self, op: Op, a: f64, b: f64) -> Result<f64, Error> {
        self.run(
            op_index(op),
            op.name(),
            move |p| p.call(op, a, b).map_err(Box::new),
            move |p| p.call(op, a, b),
        )
    }

    pub(super) fn health(&self) -> Health {
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

    pub(super) fn status(&self) -> PluginStatus {
        let generation = self.generation();
        PluginStatus {
            name: self.name.clone(),
            version: generation.plugin.identity().version().clone(),
            source: generation.source.clone(),
            state: self.state(),
            mode: if generation.plugin.is_isolated() {
                Mode::OutOfProcess
            } else {
                Mode::InProcess
            },
            transport: generation.plugin.transport(),
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
            ops: self
                .metrics
                .snapshot()
                .into_iter()
                .map(|mut op| {
                    op.retries += generation.plugin.process_retries(op.op);
                    op
                })
                .collect(),
        }
    }
}
