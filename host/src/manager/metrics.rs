//! Per-plugin, per-operation call metrics that cost a few nanoseconds per call.
//!
//! Counters are sharded: a thread claims one of [`SHARDS`] cache-line-aligned shards the first
//! time it calls (the same index in every plugin's metrics) and owns it until it exits, so
//! threads calling at once do not bounce one cache line between cores. A call counts itself
//! twice in its thread's shard: `entered` before the call, the operation's `calls` after; their
//! difference summed over shards is the number of calls in flight, which shutdown, reload and
//! the `Processing` state read. Both counters have one writer, the owning thread, so both are a
//! plain load and store, not a locked read-modify-write; `entered` is followed by
//! [`fence::light`], which pairs with the manager's [`fence::heavy`]. Threads beyond [`SHARDS`]
//! at once share one more shard, where both are atomic increments. Errors are counted only when
//! they happen.
//!
//! Latency is sampled: timing a call (two clock reads, a histogram update, the cold path) costs
//! about 100 ns here, several times an in-process call, so one in-process call in
//! `metrics.sample_every` (a power of two, default 1024, checked with a mask on the `entered`
//! ticket the call already has: one `test`) is timed; every call to another process is, as it
//! takes microseconds anyway. A timed call is recorded into a lock-free log-linear histogram (8
//! sub-buckets per power of two: quantiles are within 12.5%, the maximum is exact).
//! `sample_every = 0` turns timing off.

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use interface::{ErrorCode, Op};

use super::fence;

/// How many threads at once get a counter shard of their own.
pub(crate) const SHARDS: usize = 16;
/// The index of the shard that threads beyond [`SHARDS`] share.
const SHARED: usize = SHARDS;
/// Metric slots: every operation of [`Op::ALL`], then `process_batch`.
pub(crate) const OPS: usize = Op::ALL.len() + 1;
/// The slot of `process_batch`.
pub(crate) const BATCH: usize = OPS - 1;
const CODES: usize = ErrorCode::ALL.len();
/// What failed a call that has no plugin error code: its process or the network. Counted
/// beside the codes, under these names (the `code` label in Prometheus).
pub(crate) const FAILURES: [&str; 4] = ["PluginCrashed", "CallTimeout", "CircuitOpen", "Transport"];

/// The [`FAILURES`] slot of an error without a plugin error code.
fn failure_index(err: &crate::Error) -> usize {
    match err.without_path() {
        crate::Error::PluginCrashed { .. } => 0,
        crate::Error::CallTimeout { .. } => 1,
        crate::Error::CircuitOpen { .. } => 2,
        _ => 3,
    }
}

/// The metric slot of `op`.
#[inline]
pub(crate) fn op_index(op: Op) -> usize {
    // `Op::ALL` lists every operation, so the fallback is never taken.
    Op::ALL.iter().position(|known| *known == op).unwrap_or(BATCH)
}

/// The operation name of a metric slot.
pub(crate) fn op_name(index: usize) -> &'static str {
    Op::ALL.get(index).map_or("process_batch", |op| op.name())
}

/// The mask that picks a library's timed calls: a call is timed when its ticket has none of
/// its bits. In process, one call in `metrics.sample_every` (`sample_every - 1`: each thread's
/// first call, then every `sample_every`th). In another process a call costs microseconds,
/// beside which two clock reads are lost, so every call is timed (0). With timing off
/// (`sample_every = 0`), [`TIMING_OFF`]. A `Ready` library's gate holds it (see
/// `Generation::gate`).
pub(crate) fn sample_mask(sample_every: u64, in_process: bool) -> u64 {
    match sample_every {
        0 => TIMING_OFF,
        _ if !in_process => 0,
        n => n - 1,
    }
}

/// The mask with timing off: only a thread's first call (ticket 0) misses the fast path, and
/// it is not timed either.
pub(crate) const TIMING_OFF: u64 = u64::MAX;

/// Whether the call with `ticket` may take the fast path through a library's `gate`: the
/// library is `Ready` (the gate is not 0) and the call is not timed. One `test`.
#[inline(always)]
pub(crate) fn passes(ticket: u64, gate: u64) -> bool {
    ticket & gate != 0
}

/// Whether the call with `ticket` on a `Ready` library with this `gate` is timed.
#[inline]
pub(crate) fn timed(ticket: u64, gate: u64) -> bool {
    !passes(ticket, gate) && gate != TIMING_OFF
}

/// One plugin's counters and histograms.
#[derive(Debug)]
pub(crate) struct Metrics {
    shards: Box<[Shard; SHARED + 1]>,
    latency: Box<[Histogram]>,
    /// Failed calls without a plugin error code, by operation and [`FAILURES`] kind: rare and
    /// microseconds slow already, so not sharded.
    failures: Box<[[AtomicU64; FAILURES.len()]; OPS]>,
}

/// One thread's counters (or, the last one, those of the threads that share it).
///
/// Aligned to a power of two at least its size, so that finding a thread's shard is a shift.
#[derive(Debug)]
#[repr(align(1024))]
pub(crate) struct Shard {
    entered: AtomicU64,
    rejected: AtomicU64,
    calls: [AtomicU64; OPS],
    errors: [[AtomicU64; CODES]; OPS],
    retries: [AtomicU64; OPS],
}

impl Shard {
    /// Calls that finished or were refused.
    fn left(&self) -> u64 {
        let calls = self.calls.iter().map(|c| c.load(Ordering::SeqCst));
        calls.fold(self.rejected.load(Ordering::SeqCst), u64::wrapping_add)
    }
}

impl Default for Shard {
    fn default() -> Shard {
        Shard {
            entered: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
            calls: std::array::from_fn(|_| AtomicU64::new(0)),
            errors: std::array::from_fn(|_| std::array::from_fn(|_| AtomicU64::new(0))),
            retries: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
}

/// The calling thread's shard of one plugin's metrics.
///
/// Two scalars (a pointer and a byte), so that it travels in registers even to the cold
/// functions it is passed to: a larger struct would go by reference, and its address escaping
/// makes the compiler reload it from memory around the plugin's call on the fast path.
#[derive(Clone, Copy)]
pub(crate) struct ThreadShard<'a> {
    shard: &'a Shard,
    writer: Writer,
}

/// Who writes a shard's counters, and how an entry is made visible.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Writer {
    /// This thread alone, and a compiler fence is enough after `entered` ([`fence::light`]).
    Owner,
    /// This thread alone, with a full fence (no `membarrier` on this system).
    OwnerFullFence,
    /// Several threads ([`SHARED`]): read-modify-writes.
    Shared,
}

impl ThreadShard<'_> {
    /// Counts a call as entered and returns its ticket (the shard's count before it).
    ///
    /// The count is written before the call reads which library serves it: the fence here
    /// pairs with [`fence::heavy`] in shutdown and reload, so either they see this call counted
    /// or it sees what they wrote (see `Inner::shutdown` and `Slot::retire`).
    #[inline(always)]
    pub(crate) fn enter(self) -> u64 {
        let entered = &self.shard.entered;
        if self.is_owned() {
            // Nobody else writes this counter: no read-modify-write needed.
            let ticket = entered.load(Ordering::Relaxed);
            entered.store(ticket.wrapping_add(1), Ordering::Relaxed);
            if self.writer == Writer::Owner {
                fence::light();
            } else {
                std::sync::atomic::fence(Ordering::SeqCst);
            }
            ticket
        } else {
            entered.fetch_add(1, Ordering::SeqCst)
        }
    }

    /// Whether this thread is its shard's only writer (false for threads beyond [`SHARDS`]).
    #[inline]
    pub(crate) fn is_owned(self) -> bool {
        self.writer != Writer::Shared
    }

    /// Counts a call that was refused after entering.
    #[cold]
    pub(crate) fn reject(self) {
        self.shard.rejected.fetch_add(1, Ordering::SeqCst);
    }

    /// Counts a finished call of the operation in slot `op`.
    ///
    /// `Release`, so that a reader that sees the call finished also sees what it did.
    #[inline]
    pub(crate) fn finish(self, op: usize) {
        let calls = &self.shard.calls[op];
        if self.is_owned() {
            // Nobody else writes this counter: no read-modify-write needed.
            calls.store(calls.load(Ordering::Relaxed).wrapping_add(1), Ordering::Release);
        } else {
            calls.fetch_add(1, Ordering::Release);
        }
    }

    /// Counts an error with `code` (on a finished call).
    #[cold]
    pub(crate) fn error(self, op: usize, code: ErrorCode) {
        let code_index = ErrorCode::ALL.iter().position(|c| *c == code).unwrap_or(CODES - 1);
        self.shard.errors[op][code_index].fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a retry.
    #[cold]
    pub(crate) fn retry(self, op: usize) {
        self.shard.retries[op].fetch_add(1, Ordering::Relaxed);
    }
}

impl Metrics {
    pub(crate) fn new() -> Metrics {
        Metrics {
            shards: Box::new(std::array::from_fn(|_| Shard::default())),
            latency: (0..OPS).map(|_| Histogram::default()).collect(),
            failures: Box::new(std::array::from_fn(|_| std::array::from_fn(|_| AtomicU64::new(0)))),
        }
    }

    /// Counts a failed call of `op` whose error has no plugin error code (a crash, a timeout,
    /// an open circuit, a broken transport).
    #[cold]
    pub(crate) fn failure(&self, op: usize, err: &crate::Error) {
        if let Some(slot) = self.failures.get(op) {
            slot[failure_index(err)].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// This thread's shard if it owns one and a compiler fence is enough after `entered`: the
    /// common case, where all the checks are one comparison. `None` for the others (a thread's
    /// first call, a thread beyond [`SHARDS`], no `membarrier`): [`Metrics::shard`] then.
    #[inline(always)]
    pub(crate) fn own_shard(&self) -> Option<ThreadShard<'_>> {
        // Every other value of the index (unclaimed, `SHARED`, flagged) is out of this range.
        let shard = self.shards[..SHARDS].get(shard_index())?;
        Some(ThreadShard { shard, writer: Writer::Owner })
    }

    /// This thread's shard, whatever it is (claiming one on the thread's first call).
    pub(crate) fn shard(&self) -> ThreadShard<'_> {
        let mut raw = shard_index();
        if raw == UNCLAIMED {
            raw = claim();
        }
        let index = (raw & !FULL_FENCE).min(SHARED);
        let writer = if index == SHARED {
            Writer::Shared
        } else if raw & FULL_FENCE == 0 {
            Writer::Owner
        } else {
            Writer::OwnerFullFence
        };
        ThreadShard { shard: &self.shards[index], writer }
    }

    /// Records the latency of a timed call.
    #[inline]
    pub(crate) fn record_latency(&self, op: usize, started: Instant) {
        let nanos = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.latency[op].record(nanos);
    }

    /// Calls entered and not yet finished or refused.
    pub(crate) fn in_flight(&self) -> u64 {
        let mut entered = 0u64;
        let mut left = 0u64;
        for shard in self.shards.iter() {
            entered = entered.wrapping_add(shard.entered.load(Ordering::SeqCst));
            left = left.wrapping_add(shard.left());
        }
        entered.saturating_sub(left)
    }

    /// Each thread-owned shard's `entered` count now: with [`Metrics::passed`], a way to wait
    /// for the calls that started before a point without waiting for the calls that start
    /// after it. Calls from threads beyond [`SHARDS`] are not in it (see `Generation::shared`).
    pub(crate) fn marks(&self) -> Vec<u64> {
        self.shards[..SHARDS].iter().map(|s| s.entered.load(Ordering::SeqCst)).collect()
    }

    /// Whether every call counted in `marks` has finished or been refused. An owned shard has
    /// one writer, which finishes its calls in order, so its count of calls that left reaching
    /// the mark means the calls before the mark are done.
    pub(crate) fn passed(&self, marks: &[u64]) -> bool {
        self.shards.iter().zip(marks).all(|(shard, mark)| shard.left() >= *mark)
    }

    /// Calls refused by the manager (shutting down, not ready).
    pub(crate) fn rejected(&self) -> u64 {
        self.shards.iter().map(|s| s.rejected.load(Ordering::Relaxed)).sum()
    }

    /// A snapshot of every operation that was called at least once.
    pub(crate) fn snapshot(&self) -> Vec<OpMetrics> {
        let mut out = Vec::new();
        for op in 0..OPS {
            let calls: u64 = self.shards.iter().map(|s| s.calls[op].load(Ordering::Relaxed)).sum();
            if calls == 0 {
                continue;
            }
            let mut errors = Vec::new();
            for (code_index, code) in ErrorCode::ALL.into_iter().enumerate() {
                let n: u64 = self
                    .shards
                    .iter()
                    .map(|s| s.errors[op][code_index].load(Ordering::Relaxed))
                    .sum();
                if n > 0 {
                    errors.push((code, n));
                }
            }
            let retries = self.shards.iter().map(|s| s.retries[op].load(Ordering::Relaxed)).sum();
            let failures = FAILURES
                .iter()
                .zip(&self.failures[op])
                .map(|(kind, n)| (*kind, n.load(Ordering::Relaxed)))
                .filter(|(_, n)| *n > 0)
                .collect();
            out.push(OpMetrics {
                op: op_name(op),
                calls,
                errors,
                failures,
                retries,
                latency: self.latency[op].summary(),
            });
        }
        out
    }
}

/// The metrics of one operation of one plugin, as of a snapshot.
#[derive(Debug, Clone, PartialEq)]
pub struct OpMetrics {
    /// The operation: `add`, …, or `process_batch`.
    pub op: &'static str,
    /// Calls that reached the plugin (each retry counts as a call).
    pub calls: u64,
    /// Failed calls by the plugin's error code (codes with no failure are left out).
    pub errors: Vec<(ErrorCode, u64)>,
    /// Failed calls without a plugin error code, by what failed them: `PluginCrashed`,
    /// `CallTimeout`, `CircuitOpen` or `Transport` (kinds with no failure are left out).
    pub failures: Vec<(&'static str, u64)>,
    /// Retries: by the retry policy, and of calls whose runner or plugin process died, on a
    /// new one.
    pub retries: u64,
    /// The latency of the sampled calls; `None` if none was timed.
    pub latency: Option<Latency>,
}

impl OpMetrics {
    /// Failed calls, all codes together.
    /// Failed calls, all codes and failures together.
    pub fn error_count(&self) -> u64 {
        self.errors.iter().map(|(_, n)| n).sum::<u64>()
            + self.failures.iter().map(|(_, n)| n).sum::<u64>()
    }

    /// Every kind of failure with its count: the plugin's error codes by name, then the
    /// [`OpMetrics::failures`].
    pub fn failed_by_kind(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        let codes = self.errors.iter().map(|(code, n)| (code.name(), *n));
        codes.chain(self.failures.iter().copied())
    }

    /// The share of calls that succeeded, from 0 to 1.
    pub fn success_rate(&self) -> f64 {
        if self.calls == 0 {
            return 1.0;
        }
        let ok = self.calls.saturating_sub(self.error_count());
        ok as f64 / self.calls as f64
    }
}

/// A latency distribution from sampled calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Latency {
    /// How many calls were timed.
    pub sampled: u64,
    /// The median (within 12.5%).
    pub p50: Duration,
    /// The 99th percentile (within 12.5%).
    pub p99: Duration,
    /// The slowest timed call (exact).
    pub max: Duration,
    /// The sum of the timed calls' durations.
    pub sum: Duration,
    /// How many timed calls took at most each of [`Latency::BOUNDS`] (cumulative, as a
    /// Prometheus histogram's buckets; a call is counted at the first bound at or above the
    /// top of its internal bucket, so within 12.5% of its duration).
    pub buckets: [u64; Latency::BOUNDS.len()],
}

impl Latency {
    /// The upper bounds of [`Latency::buckets`], in seconds: 1 µs to 10 s in 1-2.5-5 steps.
    pub const BOUNDS: [f64; 22] = [
        1e-6, 2.5e-6, 5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2,
        2.5e-2, 5e-2, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
    ];
}

const LINEAR: usize = 16;
const SUB: usize = 8;
const MAX_EXP: u32 = 40;
const BUCKETS: usize = LINEAR + (MAX_EXP as usize - 3) * SUB;

/// A lock-free log-linear histogram of nanoseconds: exact below 16 ns, then 8 buckets per
/// power of two up to 2^41 ns (about 37 minutes).
#[derive(Debug)]
struct Histogram {
    buckets: Box<[AtomicU64]>,
    count: AtomicU64,
    sum: AtomicU64,
    max: AtomicU64,
}

impl Default for Histogram {
    fn default() -> Histogram {
        Histogram {
            buckets: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
            count: AtomicU64::new(0),
            sum: AtomicU64::new(0),
            max: AtomicU64::new(0),
        }
    }
}

fn bucket_of(nanos: u64) -> usize {
    let v = nanos.min((1u64 << (MAX_EXP + 1)) - 1);
    if v < LINEAR as u64 {
        return v as usize;
    }
    let exp = 63 - v.leading_zeros();
    let sub = ((v >> (exp - 3)) & 7) as usize;
    LINEAR + (exp as usize - 4) * SUB + sub
}

/// The largest value that falls into bucket `index`.
fn bucket_high(index: usize) -> u64 {
    if index < LINEAR {
        return index as u64;
    }
    let j = index - LINEAR;
    let exp = (j / SUB + 4) as u32;
    let sub = (j % SUB) as u64;
    ((SUB as u64 + sub + 1) << (exp - 3)) - 1
}

impl Histogram {
    fn record(&self, nanos: u64) {
        self.buckets[bucket_of(nanos)].fetch_add(1, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum.fetch_add(nanos, Ordering::Relaxed);
        self.max.fetch_max(nanos, Ordering::Relaxed);
    }

    fn summary(&self) -> Option<Latency> {
        let counts: Vec<u64> = self.buckets.iter().map(|b| b.load(Ordering::Relaxed)).collect();
        let total: u64 = counts.iter().sum();
        if total == 0 {
            return None;
        }
        let max = self.max.load(Ordering::Relaxed);
        let quantile = |q: f64| {
            let rank = ((q * total as f64).ceil() as u64).clamp(1, total);
            let mut seen = 0;
            for (index, n) in counts.iter().enumerate() {
                seen += n;
                if seen >= rank {
                    return Duration::from_nanos(bucket_high(index).min(max));
                }
            }
            Duration::from_nanos(max)
        };
        let mut buckets = [0u64; Latency::BOUNDS.len()];
        for (index, n) in counts.iter().enumerate().filter(|(_, n)| **n > 0) {
            let top = bucket_high(index).min(max) as f64 / 1e9;
            let first = Latency::BOUNDS.iter().position(|bound| top <= *bound);
            for bucket in buckets.iter_mut().skip(first.unwrap_or(Latency::BOUNDS.len())) {
                *bucket += n;
            }
        }
        Some(Latency {
            sampled: total,
            p50: quantile(0.50),
            p99: quantile(0.99),
            max: Duration::from_nanos(max),
            sum: Duration::from_nanos(self.sum.load(Ordering::Relaxed)),
            buckets,
        })
    }
}

/// Which shard indexes threads own: bit `i` for index `i`.
static CLAIMED: AtomicUsize = AtomicUsize::new(0);

/// `INDEX` before the thread's first call.
const UNCLAIMED: usize = usize::MAX;
/// Set in `INDEX` on an owned index when [`fence::light`] is not enough (no `membarrier`).
const FULL_FENCE: usize = 1 << 8;

thread_local! {
    /// This thread's shard index (with [`FULL_FENCE`] where it applies); [`UNCLAIMED`] until
    /// its first call.
    static INDEX: Cell<usize> = const { Cell::new(UNCLAIMED) };
    /// Gives the index back when the thread exits.
    static CLAIM: Claim = const { Claim(Cell::new(SHARED)) };
}

/// This thread's `INDEX`.
#[inline(always)]
fn shard_index() -> usize {
    // Only fails during this thread's exit, once `INDEX` is gone: share then.
    INDEX.try_with(Cell::get).unwrap_or(SHARED)
}

/// Claims a free index for this thread (the first call of a thread), or settles for [`SHARED`];
/// returns the new `INDEX`.
#[cold]
#[inline(never)]
fn claim() -> usize {
    let mut claimed = CLAIMED.load(Ordering::Relaxed);
    let mut index = loop {
        let free = (!claimed).trailing_zeros() as usize;
        if free >= SHARDS {
            break SHARED;
        }
        // `Acquire`: the counters' last owner released them (see `Claim::drop`).
        match CLAIMED.compare_exchange_weak(
            claimed,
            claimed | 1 << free,
            Ordering::Acquire,
            Ordering::Relaxed,
        ) {
            Ok(_) => break free,
            Err(now) => claimed = now,
        }
    };
    if index != SHARED && CLAIM.try_with(|claim| claim.0.set(index)).is_err() {
        // The thread is exiting: nothing would give the index back.
        CLAIMED.fetch_and(!(1 << index), Ordering::Release);
        index = SHARED;
    }
    // Whether calls may skip the full fence is settled here, once per thread: a manager
    // registered `membarrier` (or found it missing) before any call reached this.
    let raw = if index != SHARED && !fence::is_asymmetric() { index | FULL_FENCE } else { index };
    let _ = INDEX.try_with(|cell| cell.set(raw));
    raw
}

/// A thread's claim on a shard index, given back when the thread exits.
struct Claim(Cell<usize>);

impl Drop for Claim {
    fn drop(&mut self) {
        let index = self.0.get();
        if index == SHARED {
            return;
        }
        // Calls this thread still makes (from other thread-local destructors) share.
        let _ = INDEX.try_with(|cell| cell.set(SHARED));
        // `Release`: the next owner of these counters starts from what this thread wrote.
        CLAIMED.fetch_and(!(1 << index), Ordering::Release);
    }
}

#[cfg(test)]
mod tests;
