//! [`Lifecycle`]: the seed's state machine for a plugin instance, and request accounting that
//! stays cheap when many threads call at once.

use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use super::thread::{owned_shard, SHARED};
use crate::{BatchOp, BatchResult, CalcError, ErrorCode, Op, PluginState, Status};

/// The lifecycle and request accounting of one plugin instance.
///
/// States follow the seed: `Uninitialized → Initializing → Ready`, a failed first `initialize`
/// goes to `Error` (and may be retried), `shutdown` goes through `ShuttingDown` to `Closed`,
/// which is final. Calling `initialize` again while `Ready` reconfigures; if that fails, the
/// previous configuration keeps serving.
///
/// [`Lifecycle::enter`] is the per-call check: a load of the state, a load and a store of the
/// calling thread's own request counter (no locked instruction, no call: see
/// `plugin/thread.rs`) and, for one call in [`Lifecycle::SAMPLE_EVERY`], two clock reads.
#[derive(Debug)]
pub struct Lifecycle {
    state: AtomicU8,
    /// Serializes `initialize` and `shutdown`, and holds what only they change.
    cold: Mutex<ColdState>,
    stats: RequestStats,
}

#[derive(Debug)]
struct ColdState {
    started: Option<(SystemTime, Instant)>,
    message: String,
}

impl Default for Lifecycle {
    fn default() -> Lifecycle {
        Lifecycle {
            state: AtomicU8::new(PluginState::Uninitialized as u8),
            cold: Mutex::new(ColdState { started: None, message: "not initialized".to_owned() }),
            stats: RequestStats::default(),
        }
    }
}

impl Lifecycle {
    /// One call in this many is timed for the average latency: each thread's first call, then
    /// every `SAMPLE_EVERY`th. Timing a call (two clock reads, two atomic additions) costs about
    /// as much as a hundred untimed ones.
    pub const SAMPLE_EVERY: u64 = 1024;

    /// The current state.
    pub fn state(&self) -> PluginState {
        PluginState::from_u8(self.state.load(Ordering::Acquire)).unwrap_or(PluginState::Error)
    }

    /// Runs `apply` (which applies the config) and moves to `Ready` if it succeeds.
    ///
    /// # Errors
    ///
    /// `apply`'s error; [`ErrorCode::NotInitialized`] after `shutdown`.
    pub fn initialize(
        &self,
        apply: impl FnOnce() -> Result<(), CalcError>,
    ) -> Result<(), CalcError> {
        let mut cold = self.lock_cold();
        let before = self.state();
        match before {
            PluginState::Closed | PluginState::ShuttingDown => {
                return Err(CalcError::new(
                    ErrorCode::NotInitialized,
                    "the plugin has been shut down and cannot be initialized again",
                ));
            }
            PluginState::Ready => {
                // Reconfiguration: calls keep being served while `apply` runs.
                return apply();
            }
            PluginState::Uninitialized | PluginState::Initializing | PluginState::Error => {}
        }
        self.set_state(PluginState::Initializing);
        // If `apply` panics, the state must not stay `Initializing`.
        let reset = StateOnUnwind { life: self, state: PluginState::Error };
        let result = apply();
        std::mem::forget(reset);
        match &result {
            Ok(()) => {
                cold.started = Some((SystemTime::now(), Instant::now()));
                cold.message = "ready".to_owned();
                self.set_state(PluginState::Ready);
            }
            Err(err) => {
                cold.message = format!("initialize failed: {err}");
                self.set_state(PluginState::Error);
            }
        }
        result
    }

    /// Runs `release` and moves to `Closed`, whatever `release` returns.
    /// Shutting down twice is not an error.
    ///
    /// # Errors
    ///
    /// `release`'s error.
    pub fn shutdown(
        &self,
        release: impl FnOnce() -> Result<(), CalcError>,
    ) -> Result<(), CalcError> {
        let mut cold = self.lock_cold();
        if self.state() == PluginState::Closed {
            return Ok(());
        }
        self.set_state(PluginState::ShuttingDown);
        let closed = StateOnUnwind { life: self, state: PluginState::Closed };
        let result = release();
        drop(closed);
        cold.message = match &result {
            Ok(()) => "shut down".to_owned(),
            Err(err) => format!("shut down with an error: {err}"),
        };
        result
    }

    /// Admits one call and runs it: fails unless the plugin is `Ready`, counts the call, and
    /// times it if it is one of the sampled ones.
    ///
    /// The same as holding [`Lifecycle::enter`]'s guard around `call`, and cheaper: a call that
    /// is not timed keeps nothing alive around `call`.
    ///
    /// # Errors
    ///
    /// [`ErrorCode::NotInitialized`] unless the plugin is `Ready`; else `call`'s error.
    #[inline(always)]
    pub fn call<T>(&self, call: impl FnOnce() -> Result<T, CalcError>) -> Result<T, CalcError> {
        let state = self.state.load(Ordering::Acquire);
        if state != PluginState::Ready as u8 {
            return Err(self.not_ready(state));
        }
        let (shard, sampled) = self.stats.count(1);
        if sampled {
            return timed(shard, 1, call);
        }
        call()
    }

    /// Admits one call: fails unless the plugin is `Ready`, and counts the call.
    ///
    /// Keep the returned guard alive for the duration of the call, so sampled calls are timed.
    /// [`Lifecycle::call`] does both and is cheaper.
    ///
    /// # Errors
    ///
    /// [`ErrorCode::NotInitialized`] unless the plugin is `Ready`.
    #[inline]
    pub fn enter(&self) -> Result<CallGuard<'_>, CalcError> {
        self.enter_batch(1)
    }

    /// Admits a batch of `items` calls as one: fails unless the plugin is `Ready`, counts `items`
    /// requests.
    ///
    /// # Errors
    ///
    /// [`ErrorCode::NotInitialized`] unless the plugin is `Ready`.
    #[inline]
    pub fn enter_batch(&self, items: u64) -> Result<CallGuard<'_>, CalcError> {
        let state = self.state.load(Ordering::Acquire);
        if state != PluginState::Ready as u8 {
            return Err(self.not_ready(state));
        }
        Ok(self.stats.record(items))
    }

    /// Runs a whole batch as one admitted call: one state check and `ops.len()` requests
    /// counted, then `compute(op, a, b)` for each item into the slot with the same index
    /// (`Unsupported` for an operation code this interface version does not know). Before
    /// `initialize` or after `shutdown`, every slot gets `NotInitialized`.
    ///
    /// This is what a `process_batch` override usually is: the per-item cost is `compute`.
    #[inline]
    pub fn batch(
        &self,
        ops: &[BatchOp],
        results: &mut [BatchResult],
        compute: impl Fn(Op, f64, f64) -> Result<f64, ErrorCode>,
    ) {
        let _batch = match self.enter_batch(ops.len() as u64) {
            Ok(guard) => guard,
            Err(err) => {
                results.fill(BatchResult::err(err.code()));
                return;
            }
        };
        for (item, slot) in ops.iter().zip(results.iter_mut()) {
            let result = match item.op.op() {
                Some(op) => compute(op, item.a, item.b),
                None => Err(ErrorCode::Unsupported),
            };
            *slot = BatchResult::from_result(result);
        }
    }

    /// The plugin's status, with the lifecycle's own message.
    pub fn status(&self) -> Status {
        let cold = self.lock_cold();
        let (started_at, uptime) = match cold.started {
            Some((wall, mono)) if self.state() != PluginState::Closed => {
                (Some(wall), mono.elapsed())
            }
            Some((wall, _)) => (Some(wall), Duration::ZERO),
            None => (None, Duration::ZERO),
        };
        let (request_count, average_latency) = self.stats.totals();
        Status {
            state: self.state(),
            message: cold.message.clone(),
            started_at,
            uptime,
            request_count,
            average_latency,
        }
    }

    #[cold]
    fn not_ready(&self, state: u8) -> CalcError {
        let why = match PluginState::from_u8(state) {
            Some(PluginState::Closed | PluginState::ShuttingDown) => {
                "the plugin has been shut down"
            }
            Some(PluginState::Error) => "the plugin's initialize failed",
            Some(PluginState::Initializing) => "the plugin is still initializing",
            _ => "call initialize first",
        };
        CalcError::new(ErrorCode::NotInitialized, why)
    }

    fn set_state(&self, state: PluginState) {
        self.state.store(state as u8, Ordering::Release);
    }

    fn lock_cold(&self) -> MutexGuard<'_, ColdState> {
        // A panic while holding the lock (inside `apply`/`release`) leaves consistent data:
        // every field is written after the user code returns.
        self.cold.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Sets a state if dropped during unwinding (and also on a normal drop; callers `forget` it to
/// keep the normal path's state).
struct StateOnUnwind<'a> {
    life: &'a Lifecycle,
    state: PluginState,
}

impl Drop for StateOnUnwind<'_> {
    fn drop(&mut self) {
        self.life.set_state(self.state);
    }
}

/// Keeps a call admitted by [`Lifecycle::enter`] open; a sampled call is timed until it drops.
#[derive(Debug)]
#[must_use = "the call is timed until the guard drops"]
pub struct CallGuard<'a> {
    shard: &'a Shard,
    /// When a sampled call started, in nanoseconds since [`epoch`] plus one; 0 for a call that
    /// is not timed. Plain integers keep the guard in registers on the fast path.
    started: u64,
    items: u64,
}

impl Drop for CallGuard<'_> {
    #[inline]
    fn drop(&mut self) {
        if self.started != 0 {
            self.finish_timing();
        }
    }
}

impl CallGuard<'_> {
    #[cold]
    #[inline(never)]
    fn finish_timing(&self) {
        let nanos = since_epoch().saturating_sub(self.started - 1);
        self.shard.timed_nanos.fetch_add(nanos, Ordering::Relaxed);
        self.shard.timed_items.fetch_add(self.items, Ordering::Relaxed);
    }
}

/// The instant sampled calls are timed from.
fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// Nanoseconds since [`epoch`].
fn since_epoch() -> u64 {
    u64::try_from(epoch().elapsed().as_nanos()).unwrap_or(u64::MAX)
}

/// Runs a sampled call, timed.
#[cold]
#[inline(never)]
fn timed<T>(
    shard: &Shard,
    items: u64,
    call: impl FnOnce() -> Result<T, CalcError>,
) -> Result<T, CalcError> {
    let _guard = CallGuard { shard, started: start_timing(), items };
    call()
}

/// The start of a sampled call, as [`CallGuard::started`] holds it.
#[cold]
#[inline(never)]
fn start_timing() -> u64 {
    since_epoch().saturating_add(1)
}

/// Request counters split across cache lines: one per thread that owns a shard (see
/// `plugin/thread.rs`), written with plain loads and stores, and one more that the other threads
/// share with atomic increments.
#[derive(Debug, Default)]
struct RequestStats {
    shards: [Shard; SHARED + 1],
}

#[derive(Debug, Default)]
#[repr(align(128))]
struct Shard {
    requests: AtomicU64,
    timed_items: AtomicU64,
    timed_nanos: AtomicU64,
}

impl RequestStats {
    #[inline(always)]
    fn record(&self, items: u64) -> CallGuard<'_> {
        let (shard, sampled) = self.count(items);
        let started = if sampled { start_timing() } else { 0 };
        CallGuard { shard, started, items }
    }

    /// Counts `items` requests on the calling thread's shard; whether to time them.
    #[inline(always)]
    fn count(&self, items: u64) -> (&Shard, bool) {
        let index = owned_shard();
        let shard = &self.shards[index];
        let before = if index == SHARED {
            shard.requests.fetch_add(items, Ordering::Relaxed)
        } else {
            // The owning thread is this counter's only writer: no read-modify-write needed.
            let before = shard.requests.load(Ordering::Relaxed);
            shard.requests.store(before.wrapping_add(items), Ordering::Relaxed);
            before
        };
        // Time the call if its requests, numbered on this shard from 0, include a multiple of
        // SAMPLE_EVERY: if the last of them and the request just before them are in different
        // blocks of SAMPLE_EVERY (the request before 0 wraps around, far from every block).
        let every = Lifecycle::SAMPLE_EVERY;
        let last = before.wrapping_add(items).wrapping_sub(1);
        let crossed = before.wrapping_sub(1) / every != last / every;
        (shard, crossed)
    }

    fn totals(&self) -> (u64, Option<Duration>) {
        let mut requests = 0u64;
        let mut timed_items = 0u64;
        let mut timed_nanos = 0u64;
        for shard in &self.shards {
            requests = requests.wrapping_add(shard.requests.load(Ordering::Relaxed));
            timed_items = timed_items.wrapping_add(shard.timed_items.load(Ordering::Relaxed));
            timed_nanos = timed_nanos.wrapping_add(shard.timed_nanos.load(Ordering::Relaxed));
        }
        let average = timed_nanos.checked_div(timed_items).map(Duration::from_nanos);
        (requests, average)
    }
}

#[cfg(test)]
mod tests {
    use super::super::thread::alone;
    use super::*;
    #[test]
    fn lifecycle_refuses_calls_outside_ready() {
        alone(lifecycle_refuses_calls_outside_ready_alone);
    }

    fn lifecycle_refuses_calls_outside_ready_alone() {
        let life = Lifecycle::default();
        assert_eq!(life.enter().unwrap_err().code(), ErrorCode::NotInitialized);
        life.initialize(|| Ok(())).unwrap();
        assert_eq!(life.state(), PluginState::Ready);
        drop(life.enter().unwrap());
        life.shutdown(|| Ok(())).unwrap();
        assert_eq!(life.state(), PluginState::Closed);
        let err = life.enter().unwrap_err();
        assert_eq!(err.code(), ErrorCode::NotInitialized);
        assert!(err.message().contains("shut down"), "{err}");
        assert_eq!(life.initialize(|| Ok(())).unwrap_err().code(), ErrorCode::NotInitialized);
        assert_eq!(life.status().request_count, 1);
    }

    #[test]
    fn failed_initialize_is_error_and_may_be_retried() {
        let life = Lifecycle::default();
        let err =
            life.initialize(|| Err(CalcError::new(ErrorCode::InvalidInput, "bad"))).unwrap_err();
        assert_eq!(err.code(), ErrorCode::InvalidInput);
        assert_eq!(life.state(), PluginState::Error);
        assert!(life.status().message.contains("bad"));
        life.initialize(|| Ok(())).unwrap();
        assert_eq!(life.state(), PluginState::Ready);
    }

    #[test]
    fn failed_reconfigure_keeps_ready() {
        let life = Lifecycle::default();
        life.initialize(|| Ok(())).unwrap();
        assert!(life.initialize(|| Err(CalcError::new(ErrorCode::InvalidInput, "x"))).is_err());
        assert_eq!(life.state(), PluginState::Ready);
    }

    #[test]
    fn a_threads_first_call_and_every_sample_everyth_are_timed() {
        alone(a_threads_first_call_and_every_sample_everyth_are_timed_alone);
    }

    fn a_threads_first_call_and_every_sample_everyth_are_timed_alone() {
        let stats = RequestStats::default();
        let every = Lifecycle::SAMPLE_EVERY;
        // Requests are numbered from 0 on the thread's shard; request `i` is the `i`th call.
        let timed: Vec<u64> = (0..3 * every).filter(|_| stats.count(1).1).collect();
        assert_eq!(timed, [0, every, 2 * every]);
        assert!(stats.count(1).1, "request 3·every");
        // A batch is timed if it holds such a request.
        assert!(!stats.count(every - 1).1, "requests 3·every+1 … 4·every-1");
        assert!(stats.count(2).1, "requests 4·every and 4·every+1");
        assert!(!stats.count(every - 2).1, "requests 4·every+2 … 5·every-1");
        assert!(stats.count(1).1, "request 5·every");
        assert_eq!(stats.totals().0, 5 * every + 1);
    }

    #[test]
    fn stats_count_every_call_and_time_some() {
        alone(stats_count_every_call_and_time_some_alone);
    }

    fn stats_count_every_call_and_time_some_alone() {
        let life = Lifecycle::default();
        life.initialize(|| Ok(())).unwrap();
        // More threads than shards: some share the last one.
        let threads = 24;
        let per_thread = 1000;
        std::thread::scope(|scope| {
            for _ in 0..threads {
                scope.spawn(|| {
                    for _ in 0..per_thread {
                        drop(life.enter().unwrap());
                    }
                });
            }
        });
        drop(life.enter_batch(500).unwrap());
        let status = life.status();
        assert_eq!(status.request_count, threads * per_thread + 500);
        assert!(status.average_latency.is_some());
        assert!(status.started_at.is_some());
    }
}
