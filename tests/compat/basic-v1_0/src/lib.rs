//! `basic`: the seed's `CalculatorImpl` as a calcplug plugin.
//!
//! Adds, subtracts, multiplies and divides, refusing NaN and infinite operands
//! (`InvalidInput`), operands above `max_value` (`OutOfRange`), results that are not finite or
//! above `max_value` (`Overflow`) and a zero divisor (`DivisionByZero`), and rounds results to
//! `precision` decimal places.
//!
//! Config keys: `precision` (decimal places, 0–17, default 15) and `max_value` (a positive
//! finite bound on operands and results, default 1e100).
//! Both may be changed by initializing again; the new values apply to later calls.

#![deny(unsafe_code)]

use std::sync::atomic::{AtomicU64, Ordering};

use interface::plugin::{Calculator, Lifecycle};
use interface::{BatchOp, BatchResult, CalcError, Config, ErrorCode, Metadata, Op, Status};

/// Decimal places results are rounded to, unless configured.
pub const DEFAULT_PRECISION: u32 = 15;
/// The largest accepted operand or result magnitude, unless configured.
pub const DEFAULT_MAX_VALUE: f64 = 1e100;
/// The largest accepted `precision`: an `f64` carries at most 17 significant decimal digits.
pub const MAX_PRECISION: u32 = 17;

/// Above this magnitude a scaled `f64` has no fractional part left to round.
const EXACT_INTEGER_LIMIT: f64 = 9_007_199_254_740_992.0; // 2^53

/// The basic Calculator plugin.
#[derive(Debug)]
pub struct BasicCalculator {
    life: Lifecycle,
    /// `10^precision`, as `f64` bits.
    scale: AtomicU64,
    /// `max_value`, as `f64` bits.
    max_value: AtomicU64,
}

impl Default for BasicCalculator {
    fn default() -> BasicCalculator {
        BasicCalculator {
            life: Lifecycle::default(),
            scale: AtomicU64::new(scale_for(DEFAULT_PRECISION).to_bits()),
            max_value: AtomicU64::new(DEFAULT_MAX_VALUE.to_bits()),
        }
    }
}

impl BasicCalculator {
    /// Computes `op(a, b)` with every check, without counting or admitting the call.
    fn compute(&self, op: Op, a: f64, b: f64) -> Result<f64, ErrorCode> {
        if !a.is_finite() || !b.is_finite() {
            return Err(ErrorCode::InvalidInput);
        }
        let max = self.max_value();
        if a.abs() > max || b.abs() > max {
            return Err(ErrorCode::OutOfRange);
        }
        let raw = match op {
            Op::Add => a + b,
            Op::Subtract => a - b,
            Op::Multiply => a * b,
            Op::Divide => {
                if b == 0.0 {
                    return Err(ErrorCode::DivisionByZero);
                }
                a / b
            }
            _ => return Err(ErrorCode::Unsupported),
        };
        if !raw.is_finite() || raw.abs() > max {
            return Err(ErrorCode::Overflow);
        }
        Ok(self.round(raw))
    }

    fn round(&self, value: f64) -> f64 {
        let scale = f64::from_bits(self.scale.load(Ordering::Relaxed));
        let scaled = value * scale;
        if scaled.abs() >= EXACT_INTEGER_LIMIT {
            value
        } else {
            scaled.round() / scale
        }
    }

    fn max_value(&self) -> f64 {
        f64::from_bits(self.max_value.load(Ordering::Relaxed))
    }

    /// One admitted, counted call with a message on error.
    fn call(&self, op: Op, a: f64, b: f64) -> Result<f64, CalcError> {
        let _call = self.life.enter()?;
        self.compute(op, a, b).map_err(|code| self.explain(code, op, a, b))
    }

    #[cold]
    fn explain(&self, code: ErrorCode, op: Op, a: f64, b: f64) -> CalcError {
        let max = self.max_value();
        let message = match code {
            ErrorCode::InvalidInput => {
                let bad = if a.is_finite() { b } else { a };
                format!("{op}({a}, {b}): operand {bad} is not a finite number")
            }
            ErrorCode::OutOfRange => {
                let bad = if a.abs() > max { a } else { b };
                format!("{op}({a}, {b}): operand {bad:e} exceeds max_value {max:e}")
            }
            ErrorCode::DivisionByZero => format!("cannot divide {a} by zero"),
            ErrorCode::Overflow => format!("{op}({a:e}, {b:e}) exceeds max_value {max:e}"),
            _ => format!("{op}({a}, {b})"),
        };
        CalcError::new(code, message)
    }

    fn apply(&self, config: &Config) -> Result<(), CalcError> {
        config.expect_only(&["precision", "max_value"])?;
        let precision = config.parse::<u32>("precision")?.unwrap_or(DEFAULT_PRECISION);
        if precision > MAX_PRECISION {
            return Err(CalcError::new(
                ErrorCode::InvalidInput,
                format!("config `precision` = {precision}: must be between 0 and {MAX_PRECISION}"),
            ));
        }
        let max_value = config.parse::<f64>("max_value")?.unwrap_or(DEFAULT_MAX_VALUE);
        if !(max_value.is_finite() && max_value > 0.0) {
            return Err(CalcError::new(
                ErrorCode::InvalidInput,
                format!("config `max_value` = {max_value}: must be a positive finite number"),
            ));
        }
        self.scale.store(scale_for(precision).to_bits(), Ordering::Relaxed);
        self.max_value.store(max_value.to_bits(), Ordering::Relaxed);
        Ok(())
    }
}

fn scale_for(precision: u32) -> f64 {
    10f64.powi(precision as i32)
}

impl Calculator for BasicCalculator {
    fn metadata(&self) -> Metadata {
        Metadata::new(
            "basic",
            env!("CARGO_PKG_VERSION"),
            "add, subtract, multiply and divide, with input validation, limits and rounding",
        )
        .with_config_key("precision", "15", "decimal places results are rounded to (0-17)")
        .with_config_key(
            "max_value",
            "1e100",
            "largest accepted operand and result magnitude (positive, finite)",
        )
    }

    fn initialize(&self, config: &Config) -> Result<(), CalcError> {
        self.life.initialize(|| self.apply(config))
    }

    fn shutdown(&self) -> Result<(), CalcError> {
        self.life.shutdown(|| Ok(()))
    }

    fn status(&self) -> Status {
        self.life.status()
    }

    fn add(&self, a: f64, b: f64) -> Result<f64, CalcError> {
        self.call(Op::Add, a, b)
    }

    fn subtract(&self, a: f64, b: f64) -> Result<f64, CalcError> {
        self.call(Op::Subtract, a, b)
    }

    fn multiply(&self, a: f64, b: f64) -> Result<f64, CalcError> {
        self.call(Op::Multiply, a, b)
    }

    fn divide(&self, a: f64, b: f64) -> Result<f64, CalcError> {
        self.call(Op::Divide, a, b)
    }

    fn process_batch(&self, ops: &[BatchOp], results: &mut [BatchResult]) {
        // One admission and one count for the whole batch keeps per-item cost to the arithmetic.
        let _batch = match self.life.enter_batch(ops.len() as u64) {
            Ok(guard) => guard,
            Err(err) => {
                results.fill(BatchResult::err(err.code()));
                return;
            }
        };
        for (item, slot) in ops.iter().zip(results.iter_mut()) {
            let result = match item.op.op() {
                Some(op) => self.compute(op, item.a, item.b),
                None => Err(ErrorCode::Unsupported),
            };
            *slot = BatchResult::from_result(result);
        }
    }
}

interface::export_plugin!(BasicCalculator);

#[cfg(test)]
mod tests {
    use super::*;

    fn ready(config: Config) -> BasicCalculator {
        let calc = BasicCalculator::default();
        calc.initialize(&config).unwrap();
        calc
    }

    #[test]
    fn rounds_to_precision() {
        let calc = ready(Config::new());
        assert_eq!(calc.add(0.1, 0.2).unwrap(), 0.3);
        let calc = ready(Config::new().with("precision", "2"));
        assert_eq!(calc.divide(2.0, 3.0).unwrap(), 0.67);
        assert_eq!(calc.multiply(1e20, 3.0).unwrap(), 3e20);
    }

    #[test]
    fn refuses_bad_operands_and_results() {
        let calc = ready(Config::new().with("max_value", "1000"));
        let code = |r: Result<f64, CalcError>| r.unwrap_err().code();
        assert_eq!(code(calc.add(f64::NAN, 1.0)), ErrorCode::InvalidInput);
        assert_eq!(code(calc.add(1.0, f64::NEG_INFINITY)), ErrorCode::InvalidInput);
        assert_eq!(code(calc.add(1001.0, 1.0)), ErrorCode::OutOfRange);
        assert_eq!(code(calc.multiply(100.0, 100.0)), ErrorCode::Overflow);
        assert_eq!(code(calc.divide(1.0, 0.0)), ErrorCode::DivisionByZero);
        assert_eq!(code(calc.divide(0.0, -0.0)), ErrorCode::DivisionByZero);
        let err = calc.divide(1.0, 0.0).unwrap_err();
        assert_eq!(err.to_string(), "division by zero: cannot divide 1 by zero");
    }

    #[test]
    fn overflow_at_f64_limit_with_largest_max_value() {
        let calc = ready(Config::new().with("max_value", &f64::MAX.to_string()));
        assert_eq!(calc.multiply(1e200, 1e200).unwrap_err().code(), ErrorCode::Overflow);
    }

    #[test]
    fn refuses_bad_config() {
        let calc = BasicCalculator::default();
        let bad = [
            ("precision", "18"),
            ("precision", "-1"),
            ("max_value", "0"),
            ("max_value", "inf"),
            ("max_value", "lots"),
            ("colour", "blue"),
        ];
        for (key, value) in bad {
            let err = calc.initialize(&Config::new().with(key, value)).unwrap_err();
            assert_eq!(err.code(), ErrorCode::InvalidInput, "{key}={value}");
            assert!(err.message().contains(key), "{err}");
        }
    }

    #[test]
    fn batch_fills_every_slot_independently() {
        let calc = ready(Config::new());
        let ops = [
            BatchOp::new(Op::Add, 1.0, 2.0),
            BatchOp::new(Op::Divide, 1.0, 0.0),
            BatchOp { op: interface::OpCode::from_u8(200), a: 1.0, b: 1.0 },
            BatchOp::new(Op::Multiply, 3.0, 4.0),
        ];
        let mut results = [BatchResult::PENDING; 4];
        calc.process_batch(&ops, &mut results);
        let got: Vec<_> = results.iter().map(BatchResult::result).collect();
        assert_eq!(
            got,
            [Ok(3.0), Err(ErrorCode::DivisionByZero), Err(ErrorCode::Unsupported), Ok(12.0)]
        );
        assert_eq!(calc.status().request_count, 4);
    }

    #[test]
    fn batch_before_initialize_fails_every_item() {
        let calc = BasicCalculator::default();
        let mut results = [BatchResult::ok(0.0); 2];
        calc.process_batch(&[BatchOp::new(Op::Add, 1.0, 1.0); 2], &mut results);
        assert!(results.iter().all(|r| r.result() == Err(ErrorCode::NotInitialized)));
    }
}
