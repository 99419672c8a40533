//! `scientific`: the seed's `ScientificCalculator` exercise as a calcplug plugin (interface 1.1).
//!
//! The four basic operations with the same checks as `basic`, plus `sin`, `cos`, `tan` (operand
//! in the configured angle unit), `log(base, value)`, `pow(base, exp)` and `sqrt`.
//! Operands outside an operation's domain are `InvalidInput`: the square root of a negative
//! number, the logarithm of a non-positive value or in a base that is non-positive or 1, the
//! tangent at an odd multiple of 90°, a power with no real value (`(-8)^(1/3)`). Results that
//! are not finite or exceed `max_value` are `Overflow`; results are rounded to `precision`.
//!
//! Config keys: `precision`, `max_value` (as `basic`) and `angle_unit` (`radians`, the default,
//! or `degrees`); the angle unit can also be changed at run time with `set_angle_unit`.

#![deny(unsafe_code)]

use std::sync::atomic::{AtomicU8, Ordering};

use interface::plugin::{Calculator, Lifecycle, Limits};
use interface::{
    AngleUnit, BatchOp, BatchResult, CalcError, Config, ErrorCode, Metadata, Op, Status,
};

/// The scientific Calculator plugin.
#[derive(Debug, Default)]
pub struct ScientificCalculator {
    life: Lifecycle,
    limits: Limits,
    angle_unit: AtomicU8,
}

impl ScientificCalculator {
    fn unit(&self) -> AngleUnit {
        AngleUnit::from_u8(self.angle_unit.load(Ordering::Relaxed)).unwrap_or_default()
    }

    /// Computes `op(a, b)` with every check, without counting or admitting the call.
    fn compute(&self, op: Op, a: f64, b: f64) -> Result<f64, ErrorCode> {
        let limits = &self.limits;
        if Op::BASIC.contains(&op) {
            return limits.arithmetic(op, a, b);
        }
        let a = limits.operand(a)?;
        let b = if op.arity() == 2 { limits.operand(b)? } else { 0.0 };
        let raw = match op {
            Op::Sin | Op::Cos | Op::Tan => self.trig(op, a)?,
            Op::Sqrt if a < 0.0 => return Err(ErrorCode::InvalidInput),
            Op::Sqrt => a.sqrt(),
            Op::Log if b <= 0.0 || a <= 0.0 || a == 1.0 => return Err(ErrorCode::InvalidInput),
            Op::Log => b.ln() / a.ln(),
            Op::Pow => a.powf(b),
            _ => return Err(ErrorCode::Unsupported),
        };
        if raw.is_nan() {
            // A finite operand with no real result, e.g. a fractional power of a negative.
            return Err(ErrorCode::InvalidInput);
        }
        limits.result(raw)
    }

    fn trig(&self, op: Op, x: f64) -> Result<f64, ErrorCode> {
        let radians = match self.unit() {
            AngleUnit::Radians => x,
            AngleUnit::Degrees => {
                // Exact multiples of 90° get exact answers instead of 6.1e-17 and friends.
                let turns = x.rem_euclid(360.0);
                if turns % 90.0 == 0.0 {
                    return exact_quadrant(op, (turns / 90.0) as u8);
                }
                x.to_radians()
            }
        };
        Ok(match op {
            Op::Sin => radians.sin(),
            Op::Cos => radians.cos(),
            _ => radians.tan(),
        })
    }

    /// One admitted, counted call with a message on error.
    #[inline]
    fn call(&self, op: Op, a: f64, b: f64) -> Result<f64, CalcError> {
        self.life.call(move || {
            self.compute(op, a, b).map_err(|code| self.limits.explain(code, op, a, b))
        })
    }

    fn apply(&self, config: &Config) -> Result<(), CalcError> {
        let mut known = Limits::CONFIG_KEYS.to_vec();
        known.push("angle_unit");
        config.expect_only(&known)?;
        let unit = config.parse::<AngleUnit>("angle_unit")?.unwrap_or_default();
        self.limits.configure(config)?;
        self.angle_unit.store(unit as u8, Ordering::Relaxed);
        Ok(())
    }
}

/// sin, cos or tan at `quadrant` × 90°.
fn exact_quadrant(op: Op, quadrant: u8) -> Result<f64, ErrorCode> {
    const SIN: [f64; 4] = [0.0, 1.0, 0.0, -1.0];
    const COS: [f64; 4] = [1.0, 0.0, -1.0, 0.0];
    let q = usize::from(quadrant % 4);
    match op {
        Op::Sin => Ok(SIN[q]),
        Op::Cos => Ok(COS[q]),
        // tan is undefined where cos is 0.
        _ if COS[q] == 0.0 => Err(ErrorCode::InvalidInput),
        _ => Ok(SIN[q] / COS[q]),
    }
}

impl Calculator for ScientificCalculator {
    fn metadata(&self) -> Metadata {
        Limits::declare(
            Metadata::new(
                "scientific",
                env!("CARGO_PKG_VERSION"),
                "the four operations plus sin, cos, tan, log, pow and sqrt, in radians or degrees",
            )
            .with_operations(&Op::SCIENTIFIC),
        )
        .with_config_key(
            "angle_unit",
            "radians",
            "unit of sin/cos/tan operands: radians | degrees",
        )
    }

    fn initialize(&self, config: &Config) -> Result<(), CalcError> {
        self.life.initialize(|| self.apply(config))
    }

    fn shutdown(&self) -> Result<(), CalcError> {
        self.life.shutdown(|| Ok(()))
    }

    fn status(&self) -> Status {
        let mut status = self.life.status();
        status.message = format!("{}; angle unit {}", status.message, self.unit());
        status
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

    fn sin(&self, x: f64) -> Result<f64, CalcError> {
        self.call(Op::Sin, x, 0.0)
    }

    fn cos(&self, x: f64) -> Result<f64, CalcError> {
        self.call(Op::Cos, x, 0.0)
    }

    fn tan(&self, x: f64) -> Result<f64, CalcError> {
        self.call(Op::Tan, x, 0.0)
    }

    fn log(&self, base: f64, value: f64) -> Result<f64, CalcError> {
        self.call(Op::Log, base, value)
    }

    fn pow(&self, base: f64, exp: f64) -> Result<f64, CalcError> {
        self.call(Op::Pow, base, exp)
    }

    fn sqrt(&self, x: f64) -> Result<f64, CalcError> {
        self.call(Op::Sqrt, x, 0.0)
    }

    fn set_angle_unit(&self, unit: AngleUnit) -> Result<(), CalcError> {
        self.angle_unit.store(unit as u8, Ordering::Relaxed);
        Ok(())
    }

    fn angle_unit(&self) -> Result<AngleUnit, CalcError> {
        Ok(self.unit())
    }

    fn process_batch(&self, ops: &[BatchOp], results: &mut [BatchResult]) {
        // One admission and one count for the whole batch keeps per-item cost to the arithmetic.
        self.life.batch(ops, results, |op, a, b| self.compute(op, a, b));
    }
}

interface::export_plugin!(ScientificCalculator);

#[cfg(test)]
mod tests {
    use super::*;

    fn ready(config: Config) -> ScientificCalculator {
        let calc = ScientificCalculator::default();
        calc.initialize(&config).unwrap();
        calc
    }

    #[track_caller]
    fn code(result: Result<f64, CalcError>) -> ErrorCode {
        result.unwrap_err().code()
    }

    #[test]
    fn trigonometry_in_both_units() {
        let calc = ready(Config::new());
        assert_eq!(calc.angle_unit().unwrap(), AngleUnit::Radians);
        assert_eq!(calc.sin(std::f64::consts::FRAC_PI_2).unwrap(), 1.0);
        assert_eq!(calc.cos(0.0).unwrap(), 1.0);
        let calc = ready(Config::new().with("angle_unit", "degrees"));
        assert_eq!(calc.sin(90.0).unwrap(), 1.0);
        assert_eq!(calc.sin(180.0).unwrap(), 0.0);
        assert_eq!(calc.cos(-90.0).unwrap(), 0.0);
        assert_eq!(calc.sin(30.0).unwrap(), 0.5);
        assert_eq!(calc.tan(45.0).unwrap(), 1.0);
        assert_eq!(code(calc.tan(90.0)), ErrorCode::InvalidInput);
        assert_eq!(code(calc.tan(-270.0)), ErrorCode::InvalidInput);
        calc.set_angle_unit(AngleUnit::Radians).unwrap();
        assert_eq!(calc.angle_unit().unwrap(), AngleUnit::Radians);
        assert_eq!(calc.sin(0.0).unwrap(), 0.0);
    }

    #[test]
    fn logs_powers_and_roots() {
        let calc = ready(Config::new());
        assert_eq!(calc.log(2.0, 8.0).unwrap(), 3.0);
        assert_eq!(calc.log(10.0, 1000.0).unwrap(), 3.0);
        assert_eq!(calc.pow(2.0, 10.0).unwrap(), 1024.0);
        assert_eq!(calc.pow(-2.0, 3.0).unwrap(), -8.0);
        assert_eq!(calc.sqrt(16.0).unwrap(), 4.0);
    }

    #[test]
    fn domain_errors_are_invalid_input() {
        let calc = ready(Config::new());
        assert_eq!(code(calc.sqrt(-1.0)), ErrorCode::InvalidInput);
        assert_eq!(code(calc.log(10.0, 0.0)), ErrorCode::InvalidInput);
        assert_eq!(code(calc.log(10.0, -5.0)), ErrorCode::InvalidInput);
        assert_eq!(code(calc.log(1.0, 5.0)), ErrorCode::InvalidInput);
        assert_eq!(code(calc.log(-2.0, 5.0)), ErrorCode::InvalidInput);
        assert_eq!(code(calc.pow(-8.0, 1.0 / 3.0)), ErrorCode::InvalidInput);
        assert_eq!(code(calc.sin(f64::NAN)), ErrorCode::InvalidInput);
        assert_eq!(code(calc.pow(10.0, 200.0)), ErrorCode::Overflow);
        assert_eq!(code(calc.pow(0.0, -1.0)), ErrorCode::Overflow);
        assert_eq!(code(calc.sqrt(1e101)), ErrorCode::OutOfRange);
        let err = calc.sqrt(-4.0).unwrap_err();
        assert_eq!(err.to_string(), "invalid input: sqrt(-4) is outside the operation's domain");
    }

    #[test]
    fn bad_angle_unit_config_is_refused() {
        let calc = ScientificCalculator::default();
        let err = calc.initialize(&Config::new().with("angle_unit", "gradians")).unwrap_err();
        assert_eq!(err.code(), ErrorCode::InvalidInput);
        assert!(err.message().contains("angle_unit"), "{err}");
    }

    #[test]
    fn batch_takes_scientific_operations() {
        let calc = ready(Config::new().with("angle_unit", "degrees"));
        let ops = [
            BatchOp::new(Op::Sin, 90.0, 0.0),
            BatchOp::new(Op::Sqrt, -1.0, 0.0),
            BatchOp::new(Op::Log, 2.0, 1024.0),
            BatchOp::new(Op::Add, 1.0, 1.0),
        ];
        let mut results = [BatchResult::PENDING; 4];
        calc.process_batch(&ops, &mut results);
        let got: Vec<_> = results.iter().map(BatchResult::result).collect();
        assert_eq!(got, [Ok(1.0), Err(ErrorCode::InvalidInput), Ok(10.0), Ok(2.0)]);
    }
}
