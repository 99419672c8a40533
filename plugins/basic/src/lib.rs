//! `basic`: the seed's `CalculatorImpl` as a calcplug plugin.
//!
//! Adds, subtracts, multiplies and divides, refusing NaN and infinite operands
//! (`InvalidInput`), operands above `max_value` (`OutOfRange`), results that are not finite or
//! above `max_value` (`Overflow`) and a zero divisor (`DivisionByZero`), and rounds results to
//! `precision` decimal places (the shared [`Limits`] policy).
//!
//! Config keys: `precision` (decimal places, 0–17, default 15) and `max_value` (a positive
//! finite bound on operands and results, default 1e100).
//! Both may be changed by initializing again; the new values apply to later calls.
//! It has no scientific operations: those answer `Unsupported`.

#![deny(unsafe_code)]

use interface::plugin::{Calculator, Lifecycle, Limits};
use interface::{BatchOp, BatchResult, CalcError, Config, ErrorCode, Metadata, Op, Status};

/// The basic Calculator plugin.
#[derive(Debug, Default)]
pub struct BasicCalculator {
    life: Lifecycle,
    limits: Limits,
}

impl BasicCalculator {
    /// Computes `op(a, b)` with every check, without counting or admitting the call.
    #[inline]
    fn compute(&self, op: Op, a: f64, b: f64) -> Result<f64, ErrorCode> {
        self.limits.arithmetic(op, a, b)
    }

    /// One admitted, counted call with a message on error.
    #[inline]
    fn call(&self, op: Op, a: f64, b: f64) -> Result<f64, CalcError> {
        self.life.call(move || {
            self.compute(op, a, b).map_err(|code| self.limits.explain(code, op, a, b))
        })
    }
}

impl Calculator for BasicCalculator {
    fn metadata(&self) -> Metadata {
        Limits::declare(Metadata::new(
            "basic",
            env!("CARGO_PKG_VERSION"),
            "add, subtract, multiply and divide, with input validation, limits and rounding",
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

    #[inline]
    fn add(&self, a: f64, b: f64) -> Result<f64, CalcError> {
        self.call(Op::Add, a, b)
    }

    #[inline]
    fn subtract(&self, a: f64, b: f64) -> Result<f64, CalcError> {
        self.call(Op::Subtract, a, b)
    }

    #[inline]
    fn multiply(&self, a: f64, b: f64) -> Result<f64, CalcError> {
        self.call(Op::Multiply, a, b)
    }

    #[inline]
    fn divide(&self, a: f64, b: f64) -> Result<f64, CalcError> {
        self.call(Op::Divide, a, b)
    }

    fn process_batch(&self, ops: &[BatchOp], results: &mut [BatchResult]) {
        // One admission and one count for the whole batch keeps per-item cost to the arithmetic.
        self.life.batch(ops, results, |op, a, b| self.compute(op, a, b));
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
    fn scientific_operations_are_unsupported() {
        let calc = ready(Config::new());
        assert_eq!(calc.sin(1.0).unwrap_err().code(), ErrorCode::Unsupported);
        assert!(!calc.metadata().supports(Op::Sin));
    }

    #[test]
    fn batch_fills_every_slot_independently() {
        let calc = ready(Config::new());
        let ops = [
            BatchOp::new(Op::Add, 1.0, 2.0),
            BatchOp::new(Op::Divide, 1.0, 0.0),
            BatchOp { op: interface::OpCode::from_u8(200), a: 1.0, b: 1.0 },
            BatchOp::new(Op::Sqrt, 4.0, 0.0),
            BatchOp::new(Op::Multiply, 3.0, 4.0),
        ];
        let mut results = [BatchResult::PENDING; 5];
        calc.process_batch(&ops, &mut results);
        let got: Vec<_> = results.iter().map(BatchResult::result).collect();
        assert_eq!(
            got,
            [
                Ok(3.0),
                Err(ErrorCode::DivisionByZero),
                Err(ErrorCode::Unsupported),
                Err(ErrorCode::Unsupported),
                Ok(12.0)
            ]
        );
        assert_eq!(calc.status().request_count, 5);
    }

    #[test]
    fn batch_before_initialize_fails_every_item() {
        let calc = BasicCalculator::default();
        let mut results = [BatchResult::ok(0.0); 2];
        calc.process_batch(&[BatchOp::new(Op::Add, 1.0, 1.0); 2], &mut results);
        assert!(results.iter().all(|r| r.result() == Err(ErrorCode::NotInitialized)));
    }
}
