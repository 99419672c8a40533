//! Reference calculators: the floors `calcplug bench` and the benchmarks measure plugin calls
//! against, kept here so both measure the same code.
//!
//! - [`BareAdder`] only adds. Loaded with [`load_builtin`](crate::load_builtin) it is the cost of
//!   crossing the plugin boundary itself: the root module's function table, the entry point's
//!   panic guard, the error conversion, and nothing else.
//! - [`Checked`] does what `basic` does to a call (finite operands within `max_value`, a finite
//!   result within it, rounded to `precision` places, with the same [`Limits`]) and nothing
//!   more: called through `&dyn Calculator`, the cheapest way to do a plugin's work without a
//!   plugin system, the floor the in-process goal is measured against.
//! - [`Counted`] is [`Checked`] with `basic`'s [`Lifecycle`] as well (admission and request
//!   counting): what the bookkeeping costs when it is compiled into the host.
//!
//! And the way both time a call against these floors: the same loop of calls ([`add_calls`]),
//! in [`interleaved`] rounds compared within each round ([`Rounds`]), so that a drift of the
//! machine's speed moves every row alike.

use std::hint::black_box;
use std::time::{Duration, Instant};

use interface::plugin::{Calculator, Lifecycle, Limits};
use interface::{BatchOp, BatchResult, CalcError, Config, ErrorCode, Metadata, Op, Status};

/// A calculator whose operations only compute: no check, no counter.
#[derive(Debug, Default)]
pub struct BareAdder;

impl Calculator for BareAdder {
    fn metadata(&self) -> Metadata {
        Metadata::new("bare", "1.0.0", "the four operations with no check and no counter")
    }

    fn initialize(&self, _config: &Config) -> Result<(), CalcError> {
        Ok(())
    }

    fn shutdown(&self) -> Result<(), CalcError> {
        Ok(())
    }

    fn status(&self) -> Status {
        Status {
            state: interface::PluginState::Ready,
            message: "bare: no state, no counters".to_owned(),
            started_at: None,
            uptime: std::time::Duration::ZERO,
            request_count: 0,
            average_latency: None,
        }
    }

    fn add(&self, a: f64, b: f64) -> Result<f64, CalcError> {
        Ok(a + b)
    }

    fn subtract(&self, a: f64, b: f64) -> Result<f64, CalcError> {
        Ok(a - b)
    }

    fn multiply(&self, a: f64, b: f64) -> Result<f64, CalcError> {
        Ok(a * b)
    }

    fn divide(&self, a: f64, b: f64) -> Result<f64, CalcError> {
        Ok(a / b)
    }
}

/// `basic`'s checks and rounding without its bookkeeping ([`Reference`] with `COUNTED = false`).
pub type Checked = Reference<false>;

/// `basic`'s checks, rounding and bookkeeping ([`Reference`] with `COUNTED = true`).
pub type Counted = Reference<true>;

/// The four operations with `basic`'s checks and rounding, and with its [`Lifecycle`] when
/// `COUNTED`. Use [`Checked`] or [`Counted`].
#[derive(Debug, Default)]
pub struct Reference<const COUNTED: bool> {
    life: Lifecycle,
    limits: Limits,
}

impl<const COUNTED: bool> Reference<COUNTED> {
    #[inline(always)]
    fn call(&self, op: Op, a: f64, b: f64) -> Result<f64, CalcError> {
        let call =
            move || self.compute(op, a, b).map_err(|code| self.limits.explain(code, op, a, b));
        if COUNTED {
            self.life.call(call)
        } else {
            call()
        }
    }

    #[inline(always)]
    fn compute(&self, op: Op, a: f64, b: f64) -> Result<f64, ErrorCode> {
        self.limits.arithmetic(op, a, b)
    }
}

impl<const COUNTED: bool> Calculator for Reference<COUNTED> {
    fn metadata(&self) -> Metadata {
        Limits::declare(Metadata::new(
            if COUNTED { "counted" } else { "checked" },
            "1.0.0",
            "the four operations with basic's checks",
        ))
    }

    fn initialize(&self, config: &Config) -> Result<(), CalcError> {
        self.life.initialize(|| {
            config.expect_only(&Limits::CONFIG_KEYS)?;
            self.limits.configure(config)
        })
    }

    fn shutdown(&self) -> Result<(), CalcError> {
        self.life.shutdown(|| Ok(()))
    }

    fn status(&self) -> Status {
        self.life.status()
    }

    /// The plain Rust loop: each item computed into its slot (and, when `COUNTED`, the batch
    /// admitted and counted once, as `basic` does).
    fn process_batch(&self, ops: &[BatchOp], results: &mut [BatchResult]) {
        let compute = |op, a, b| self.compute(op, a, b);
        if COUNTED {
            self.life.batch(ops, results, compute);
            return;
        }
        for (item, slot) in ops.iter().zip(results.iter_mut()) {
            let result = match item.op.op() {
                Some(op) => compute(op, item.a, item.b),
                None => Err(ErrorCode::Unsupported),
            };
            *slot = BatchResult::from_result(result);
        }
    }

    #[inline(never)]
    fn add(&self, a: f64, b: f64) -> Result<f64, CalcError> {
        self.call(Op::Add, a, b)
    }

    #[inline(never)]
    fn subtract(&self, a: f64, b: f64) -> Result<f64, CalcError> {
        self.call(Op::Subtract, a, b)
    }

    #[inline(never)]
    fn multiply(&self, a: f64, b: f64) -> Result<f64, CalcError> {
        self.call(Op::Multiply, a, b)
    }

    #[inline(never)]
    fn divide(&self, a: f64, b: f64) -> Result<f64, CalcError> {
        self.call(Op::Divide, a, b)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn rounds_compare_within_each_round() {
        let rounds = Rounds(vec![vec![10.0, 15.0], vec![20.0, 30.0], vec![12.0, 19.0]]);
        assert_eq!(rounds.median(0), 12.0);
        assert_eq!(rounds.median(1), 19.0);
        assert_eq!(rounds.median_of(|r| r[1] - r[0]), 7.0);
        assert_eq!(rounds.median_of(|r| r[1] / r[0]), 1.5);
    }

    use super::*;

    #[test]
    fn the_references_check_and_round_like_basic() {
        let checked = Checked::default();
        checked.initialize(&Config::new().with("max_value", "10").with("precision", "2")).unwrap();
        assert_eq!(checked.add(1.0, 2.0).unwrap(), 3.0);
        assert_eq!(checked.divide(2.0, 3.0).unwrap(), 0.67);
        let code = |r: Result<f64, CalcError>| r.unwrap_err().code();
        assert_eq!(code(checked.add(f64::NAN, 2.0)), ErrorCode::InvalidInput);
        assert_eq!(code(checked.add(11.0, 2.0)), ErrorCode::OutOfRange);
        assert_eq!(code(checked.add(9.0, 2.0)), ErrorCode::Overflow);
        assert_eq!(code(checked.divide(1.0, 0.0)), ErrorCode::DivisionByZero);
        assert_eq!(checked.status().request_count, 0, "Checked counts nothing");

        let counted = Counted::default();
        assert_eq!(code(counted.add(1.0, 2.0)), ErrorCode::NotInitialized);
        counted.initialize(&Config::new()).unwrap();
        assert_eq!(counted.add(0.1, 0.2).unwrap(), 0.3);
        assert_eq!(counted.status().request_count, 1);

        let ops = [BatchOp::new(Op::Add, 1.0, 2.0), BatchOp::new(Op::Divide, 1.0, 0.0)];
        let mut results = [BatchResult::PENDING; 2];
        checked.process_batch(&ops, &mut results);
        assert_eq!(results.map(|r| r.result()), [Ok(3.0), Err(ErrorCode::DivisionByZero)]);
        counted.process_batch(&ops, &mut results);
        assert_eq!(counted.status().request_count, 3);
    }

    #[test]
    fn the_bare_adder_loads_as_a_builtin_plugin() {
        let plugin = crate::load_builtin::<BareAdder>().unwrap();
        assert_eq!(plugin.identity().name(), "bare");
        assert!(plugin.identity().path().display().to_string().starts_with("<built-in "));
        assert_eq!(plugin.add(1.0, 2.0).unwrap(), 3.0);
        assert_eq!(plugin.divide(1.0, 0.0).unwrap(), f64::INFINITY);
    }
}

/// What a caller keeps of a call: its value (NaN for an error). The timed loops hand this to
/// `black_box`, not the whole `Result`: with [`Error`](crate::Error) in it that is over 100
/// bytes, which the compiler then copies for `black_box` alone, and whether that copy stalls
/// the CPU (a wide load of what was just written in parts) depends on inlining luck, not on the
/// code measured: up to 4 ns per call on the machine this was written on.
#[inline(always)]
pub fn value<E>(result: Result<f64, E>) -> f64 {
    result.unwrap_or(f64::NAN)
}

/// `n` calls of `add(1, 2)`, the operands through `black_box` and each [`value`] kept: the loop
/// every in-process per-call figure times, inside the timed closure as a host's own loop would
/// be (a call through `&dyn Fn` per iteration would add a prologue whose size depends on the
/// registers the inlined call path needs, not on what it does).
#[inline(always)]
pub fn add_calls<E>(n: u64, add: impl Fn(f64, f64) -> Result<f64, E>) {
    for _ in 0..n {
        black_box(value(add(black_box(1.0), black_box(2.0))));
    }
}

/// The times of rounds of [`interleaved`] runs: per round, one time per run (nanoseconds per
/// iteration), in the order the runs were given.
#[derive(Debug, Clone, Default)]
pub struct Rounds(pub Vec<Vec<f64>>);

impl Rounds {
    /// The median time of run `row`.
    pub fn median(&self, row: usize) -> f64 {
        self.percentile_of(0.5, |round| round[row])
    }

    /// The median over the rounds of `f(round)`: a difference or ratio taken within each round.
    pub fn median_of(&self, f: impl Fn(&[f64]) -> f64) -> f64 {
        self.percentile_of(0.5, f)
    }

    /// The `p` quantile (0 to 1, nearest rank) over the rounds of `f(round)`; NaN without rounds.
    pub fn percentile_of(&self, p: f64, f: impl Fn(&[f64]) -> f64) -> f64 {
        let mut values: Vec<f64> = self.0.iter().map(|round| f(round)).collect();
        if values.is_empty() {
            return f64::NAN;
        }
        values.sort_by(f64::total_cmp);
        values[((values.len() - 1) as f64 * p).round() as usize]
    }
}

/// Times `runs` in rounds until `budget` has passed and at least `min_rounds` were kept: each
/// round times `n` iterations of every run (`run(n)` performs them), the order rotating from
/// round to round; rounds that end within `warm_up` of the start are not kept.
pub fn interleaved(
    budget: Duration,
    warm_up: Duration,
    min_rounds: usize,
    n: u64,
    runs: &mut [&mut dyn FnMut(u64)],
) -> Rounds {
    let mut rounds = Vec::new();
    let started = Instant::now();
    let mut round = 0usize;
    while !runs.is_empty() && (started.elapsed() < budget || rounds.len() < min_rounds) {
        let mut times = vec![0.0; runs.len()];
        for turn in 0..runs.len() {
            let index = (round + turn) % runs.len();
            let start = Instant::now();
            runs[index](n);
            times[index] = start.elapsed().as_nanos() as f64 / n as f64;
        }
        round += 1;
        if started.elapsed() >= warm_up {
            rounds.push(times);
        }
    }
    Rounds(rounds)
}
