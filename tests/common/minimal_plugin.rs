//! A minimal, correct Calculator shared by the fixtures that are wrong somewhere else (their
//! handshake), included with `#[path]` so each fixture stays a self-contained cdylib.

use interface::plugin::{Calculator, Lifecycle};
use interface::{CalcError, Config, ErrorCode, Metadata, Status};

#[derive(Default)]
pub(crate) struct Minimal {
    life: Lifecycle,
}

impl Calculator for Minimal {
    fn metadata(&self) -> Metadata {
        Metadata::new(env!("CARGO_PKG_NAME"), env!("CARGO_PKG_VERSION"), "test fixture")
    }

    fn initialize(&self, config: &Config) -> Result<(), CalcError> {
        self.life.initialize(|| config.expect_only(&[]))
    }

    fn shutdown(&self) -> Result<(), CalcError> {
        self.life.shutdown(|| Ok(()))
    }

    fn status(&self) -> Status {
        self.life.status()
    }

    fn add(&self, a: f64, b: f64) -> Result<f64, CalcError> {
        let _call = self.life.enter()?;
        Ok(a + b)
    }

    fn subtract(&self, a: f64, b: f64) -> Result<f64, CalcError> {
        let _call = self.life.enter()?;
        Ok(a - b)
    }

    fn multiply(&self, a: f64, b: f64) -> Result<f64, CalcError> {
        let _call = self.life.enter()?;
        Ok(a * b)
    }

    fn divide(&self, a: f64, b: f64) -> Result<f64, CalcError> {
        let _call = self.life.enter()?;
        if b == 0.0 {
            return Err(CalcError::new(ErrorCode::DivisionByZero, format!("{a} / 0")));
        }
        Ok(a / b)
    }
}
