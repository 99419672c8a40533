//! [`Limits`]: the seed's numeric policy (finite operands, a `max_value` bound, overflow
//! detection, rounding to `precision` decimal places), shared by the bundled plugins and
//! available to any plugin author.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::{CalcError, Config, ErrorCode, Op};

/// Above this magnitude a scaled `f64` has no fractional part left to round (2^53).
const EXACT_INTEGER_LIMIT: f64 = 9_007_199_254_740_992.0;

/// The numeric limits a calculation is held to, configurable with the `precision` and
/// `max_value` config keys and safe to read from many threads while being reconfigured.
///
/// Checking costs two relaxed atomic loads and a few comparisons; nothing allocates unless a
/// message is asked for with [`Limits::explain`].
#[derive(Debug)]
pub struct Limits {
    /// `10^precision`, as `f64` bits.
    scale: AtomicU64,
    /// `max_value`, as `f64` bits.
    max_value: AtomicU64,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            scale: AtomicU64::new(scale_for(Limits::DEFAULT_PRECISION).to_bits()),
            max_value: AtomicU64::new(Limits::DEFAULT_MAX_VALUE.to_bits()),
        }
    }
}

impl Limits {
    /// Decimal places results are rounded to, unless configured.
    pub const DEFAULT_PRECISION: u32 = 15;
    /// The largest accepted operand or result magnitude, unless configured.
    pub const DEFAULT_MAX_VALUE: f64 = 1e100;
    /// The largest accepted `precision`: an `f64` carries at most 17 significant decimal digits.
    pub const MAX_PRECISION: u32 = 17;
    /// The config keys [`Limits::configure`] reads.
    pub const CONFIG_KEYS: [&'static str; 2] = ["precision", "max_value"];

    /// `metadata`, also declaring the config keys [`Limits::configure`] reads.
    pub fn declare(metadata: crate::Metadata) -> crate::Metadata {
        metadata
            .with_config_key("precision", "15", "decimal places results are rounded to (0-17)")
            .with_config_key(
                "max_value",
                "1e100",
                "largest accepted operand and result magnitude (positive, finite)",
            )
    }

    /// Applies `precision` and `max_value` from `config` (defaults for absent keys).
    /// Other keys are left to the caller. Nothing changes if a value is refused.
    ///
    /// # Errors
    ///
    /// [`ErrorCode::InvalidInput`] naming the key for a value that does not parse or is out of
    /// range.
    pub fn configure(&self, config: &Config) -> Result<(), CalcError> {
        let precision = config.parse::<u32>("precision")?.unwrap_or(Limits::DEFAULT_PRECISION);
        if precision > Limits::MAX_PRECISION {
            return Err(CalcError::new(
                ErrorCode::InvalidInput,
                format!(
                    "config `precision` = {precision}: must be between 0 and {}",
                    Limits::MAX_PRECISION
                ),
            ));
        }
        let max_value = config.parse::<f64>("max_value")?.unwrap_or(Limits::DEFAULT_MAX_VALUE);
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

    /// The configured bound on operand and result magnitudes.
    #[inline]
    pub fn max_value(&self) -> f64 {
        f64::from_bits(self.max_value.load(Ordering::Relaxed))
    }

    /// `x`, if it is finite (else `InvalidInput`) and within `max_value` (else `OutOfRange`).
    ///
    /// # Errors
    ///
    /// As above.
    #[inline]
    pub fn operand(&self, x: f64) -> Result<f64, ErrorCode> {
        if !x.is_finite() {
            return Err(ErrorCode::InvalidInput);
        }
        if x.abs() > self.max_value() {
            return Err(ErrorCode::OutOfRange);
        }
        Ok(x)
    }

    /// A raw result, rounded, if it is finite and within `max_value` (else `Overflow`).
    ///
    /// # Errors
    ///
    /// As above.
    #[inline]
    pub fn result(&self, raw: f64) -> Result<f64, ErrorCode> {
        if !raw.is_finite() || raw.abs() > self.max_value() {
            return Err(ErrorCode::Overflow);
        }
        Ok(self.round(raw))
    }

    /// The seed's arithmetic: `op(a, b)` for the four basic operations, with [`Limits::operand`]
    /// on both operands, a zero divisor refused and [`Limits::result`] on the result
    /// (`Unsupported` for any other operation).
    ///
    /// # Errors
    ///
    /// As above.
    #[inline(always)]
    pub fn arithmetic(&self, op: Op, a: f64, b: f64) -> Result<f64, ErrorCode> {
        let a = self.operand(a)?;
        let b = self.operand(b)?;
        let raw = match op {
            Op::Add => a + b,
            Op::Subtract => a - b,
            Op::Multiply => a * b,
            Op::Divide if b == 0.0 => return Err(ErrorCode::DivisionByZero),
            Op::Divide => a / b,
            _ => return Err(ErrorCode::Unsupported),
        };
        self.result(raw)
    }

    /// `value` rounded to `precision` decimal places (values too large to have that many are
    /// returned as they are).
    #[inline]
    pub fn round(&self, value: f64) -> f64 {
        let scale = f64::from_bits(self.scale.load(Ordering::Relaxed));
        let scaled = value * scale;
        if scaled.abs() >= EXACT_INTEGER_LIMIT {
            value
        } else {
            scaled.round() / scale
        }
    }

    /// The error for `code` hit by `op(a, b)`, with a message saying what exactly was wrong
    /// (`b` is ignored for one-operand operations).
    #[cold]
    pub fn explain(&self, code: ErrorCode, op: Op, a: f64, b: f64) -> CalcError {
        let max = self.max_value();
        let call = if op.arity() == 1 {
            format!("{op}({})", number(a))
        } else {
            format!("{op}({}, {})", number(a), number(b))
        };
        let operands: &[f64] = if op.arity() == 1 { &[a] } else { &[a, b] };
        let message = match code {
            ErrorCode::InvalidInput => match operands.iter().find(|x| !x.is_finite()) {
                Some(bad) => format!("{call}: operand {bad} is not a finite number"),
                None => format!("{call} is outside the operation's domain"),
            },
            ErrorCode::OutOfRange => {
                let bad = operands.iter().copied().find(|x| x.abs() > max).unwrap_or(a);
                format!("{call}: operand {bad:e} exceeds max_value {max:e}")
            }
            ErrorCode::DivisionByZero => format!("cannot divide {} by zero", number(a)),
            ErrorCode::Overflow => format!("{call} exceeds max_value {max:e}"),
            _ => call,
        };
        CalcError::new(code, message)
    }
}

/// `x` in plain notation, or in scientific notation when plain would be very long.
fn number(x: f64) -> String {
    if x != 0.0 && x.is_finite() && !(1e-6..1e15).contains(&x.abs()) {
        format!("{x:e}")
    } else {
        format!("{x}")
    }
}

fn scale_for(precision: u32) -> f64 {
    10f64.powi(precision as i32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounding_and_bounds() {
        let limits = Limits::default();
        assert_eq!(limits.result(0.1 + 0.2), Ok(0.3));
        assert_eq!(limits.result(3e20), Ok(3e20));
        assert_eq!(limits.result(f64::INFINITY), Err(ErrorCode::Overflow));
        assert_eq!(limits.result(2e100), Err(ErrorCode::Overflow));
        assert_eq!(limits.operand(f64::NAN), Err(ErrorCode::InvalidInput));
        assert_eq!(limits.operand(-2e100), Err(ErrorCode::OutOfRange));
        limits.configure(&Config::new().with("precision", "2").with("max_value", "10")).unwrap();
        assert_eq!(limits.result(2.0 / 3.0), Ok(0.67));
        assert_eq!(limits.operand(11.0), Err(ErrorCode::OutOfRange));
    }

    #[test]
    fn refused_config_changes_nothing() {
        let limits = Limits::default();
        for (key, value) in [("precision", "18"), ("max_value", "0"), ("max_value", "inf")] {
            let err = limits.configure(&Config::new().with(key, value)).unwrap_err();
            assert_eq!(err.code(), ErrorCode::InvalidInput);
            assert!(err.message().contains(key), "{err}");
        }
        assert_eq!(limits.max_value(), Limits::DEFAULT_MAX_VALUE);
    }

    #[test]
    fn explanations_name_the_operands() {
        let limits = Limits::default();
        let err = limits.explain(ErrorCode::InvalidInput, Op::Sqrt, -4.0, 0.0);
        assert_eq!(err.to_string(), "invalid input: sqrt(-4) is outside the operation's domain");
        let err = limits.explain(ErrorCode::InvalidInput, Op::Add, 1.0, f64::NAN);
        assert_eq!(
            err.to_string(),
            "invalid input: add(1, NaN): operand NaN is not a finite number"
        );
    }
}
