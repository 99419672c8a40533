//! A Calculator for the plugin manager's tests, shared by the `reload-v1` and `reload-v2`
//! fixtures, included with `#[path]` so each fixture stays a self-contained cdylib.
//!
//! Both builds claim the plugin name `reload`; their version is their package's (1.0.0, 2.0.0).
//! So that a test can tell which build answered, `add(a, b)` answers `a + b + MAJOR` (1 or 2);
//! the other operations are correct. Config keys, for lifecycle tests:
//! - `delay_ms`: every calculation sleeps this long first (calls in flight during a shutdown);
//! - `fail_every`: every N-th calculation fails with `Internal` (the retry policy);
//! - `fail_initialize`: `initialize` fails with `InvalidInput`;
//! - `fail_shutdown`: `shutdown` fails with `Internal`.
//!
//! `shutdown` also fails if calculations are still running when it runs: a host that shuts a
//! plugin down under its calls gets an error saying so.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use interface::plugin::{Calculator, Lifecycle};
use interface::{CalcError, Config, ErrorCode, Metadata, Status};

const MAJOR: &str = env!("CARGO_PKG_VERSION_MAJOR");

#[derive(Default)]
pub(crate) struct Reload {
    life: Lifecycle,
    delay_ms: AtomicU64,
    fail_every: AtomicU64,
    fail_shutdown: AtomicBool,
    calls: AtomicU64,
    /// Calculations running now.
    running: AtomicU64,
}

/// Counts a calculation as running while it lives.
struct Running<'a>(&'a AtomicU64);

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Reload {
    fn compute(
        &self,
        op: &str,
        value: impl FnOnce() -> Result<f64, CalcError>,
    ) -> Result<f64, CalcError> {
        let _call = self.life.enter()?;
        self.running.fetch_add(1, Ordering::SeqCst);
        let _running = Running(&self.running);
        let delay = self.delay_ms.load(Ordering::Relaxed);
        if delay > 0 {
            std::thread::sleep(Duration::from_millis(delay));
        }
        let every = self.fail_every.load(Ordering::Relaxed);
        let n = self.calls.fetch_add(1, Ordering::Relaxed) + 1;
        if n.checked_rem(every) == Some(0) {
            return Err(CalcError::new(
                ErrorCode::Internal,
                format!("{op}: call {n} fails on purpose"),
            ));
        }
        value()
    }
}

impl Calculator for Reload {
    fn metadata(&self) -> Metadata {
        Metadata::new("reload", env!("CARGO_PKG_VERSION"), "test fixture for the plugin manager")
            .with_config_key("delay_ms", "0", "sleep this long in every calculation")
            .with_config_key("fail_every", "0", "every N-th calculation fails with Internal")
            .with_config_key("fail_initialize", "false", "initialize fails")
            .with_config_key("fail_shutdown", "false", "shutdown fails")
    }

    fn initialize(&self, config: &Config) -> Result<(), CalcError> {
        self.life.initialize(|| {
            config.expect_only(&["delay_ms", "fail_every", "fail_initialize", "fail_shutdown"])?;
            if config.parse::<bool>("fail_initialize")?.unwrap_or(false) {
                return Err(CalcError::new(ErrorCode::InvalidInput, "fail_initialize is set"));
            }
            self.delay_ms.store(config.parse("delay_ms")?.unwrap_or(0), Ordering::Relaxed);
            self.fail_every.store(config.parse("fail_every")?.unwrap_or(0), Ordering::Relaxed);
            let fail_shutdown = config.parse("fail_shutdown")?.unwrap_or(false);
            self.fail_shutdown.store(fail_shutdown, Ordering::Relaxed);
            Ok(())
        })
    }

    fn shutdown(&self) -> Result<(), CalcError> {
        self.life.shutdown(|| {
            if self.fail_shutdown.load(Ordering::Relaxed) {
                return Err(CalcError::new(ErrorCode::Internal, "fail_shutdown is set"));
            }
            match self.running.load(Ordering::SeqCst) {
                0 => Ok(()),
                n => Err(CalcError::new(
                    ErrorCode::Internal,
                    format!("{n} calculations still running when shutdown ran"),
                )),
            }
        })
    }

    fn status(&self) -> Status {
        self.life.status()
    }

    fn add(&self, a: f64, b: f64) -> Result<f64, CalcError> {
        // The major version is a small integer literal; it always parses.
        let major: f64 = MAJOR.parse().unwrap_or(0.0);
        self.compute("add", || Ok(a + b + major))
    }

    fn subtract(&self, a: f64, b: f64) -> Result<f64, CalcError> {
        self.compute("subtract", || Ok(a - b))
    }

    fn multiply(&self, a: f64, b: f64) -> Result<f64, CalcError> {
        self.compute("multiply", || Ok(a * b))
    }

    fn divide(&self, a: f64, b: f64) -> Result<f64, CalcError> {
        self.compute("divide", || {
            if b == 0.0 {
                return Err(CalcError::new(ErrorCode::DivisionByZero, format!("{a} / 0")));
            }
            Ok(a / b)
        })
    }
}
