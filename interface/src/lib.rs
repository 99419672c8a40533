//! The contract between the calcplug host and its Calculator plugins.
//!
//! Everything that crosses the boundary between a host and a plugin library is declared here:
//!
//! - the versioned [`abi_stable`] root module, [`ffi::CalculatorModRef`], which is the *ABI
//!   boundary*: a table of `extern "C"` functions that the host calls directly;
//! - the handshake constants ([`MAGIC_COOKIE_KEY`], [`MAGIC_COOKIE_VALUE`],
//!   [`PROTOCOL_VERSION`], [`INTERFACE_VERSION`]) that the host checks before it trusts a library;
//! - the plain Rust types both sides use ([`ErrorCode`], [`CalcError`], [`Op`], [`BatchOp`],
//!   [`BatchResult`], [`Metadata`], [`Status`], [`Config`]);
//! - with the `plugin` feature, the authoring API: the [`Calculator`](plugin::Calculator) trait, the
//!   [`export_plugin!`] macro and the [`Lifecycle`](plugin::Lifecycle) helper.
//!
//! A plugin author writes no `unsafe` and sees no FFI type:
//!
//! ```no_run
//! use interface::plugin::{Calculator, Lifecycle};
//! use interface::{CalcError, Config, ErrorCode, Metadata, Status};
//!
//! #[derive(Default)]
//! struct Arith {
//!     life: Lifecycle,
//! }
//!
//! impl Calculator for Arith {
//!     fn metadata(&self) -> Metadata {
//!         Metadata::new("arith", env!("CARGO_PKG_VERSION"), "plain arithmetic")
//!     }
//!     fn initialize(&self, _config: &Config) -> Result<(), CalcError> {
//!         self.life.initialize(|| Ok(()))
//!     }
//!     fn shutdown(&self) -> Result<(), CalcError> {
//!         self.life.shutdown(|| Ok(()))
//!     }
//!     fn status(&self) -> Status {
//!         self.life.status()
//!     }
//!     fn add(&self, a: f64, b: f64) -> Result<f64, CalcError> {
//!         self.life.call(|| Ok(a + b))
//!     }
//!     fn subtract(&self, a: f64, b: f64) -> Result<f64, CalcError> {
//!         self.life.call(|| Ok(a - b))
//!     }
//!     fn multiply(&self, a: f64, b: f64) -> Result<f64, CalcError> {
//!         self.life.call(|| Ok(a * b))
//!     }
//!     fn divide(&self, a: f64, b: f64) -> Result<f64, CalcError> {
//!         // `call` admits the call (refused unless initialized), counts and samples it.
//!         self.life.call(|| {
//!             if b == 0.0 {
//!                 return Err(CalcError::new(ErrorCode::DivisionByZero, format!("{a} / 0")));
//!             }
//!             Ok(a / b)
//!         })
//!     }
//! }
//!
//! interface::export_plugin!(Arith);
//! ```
//!
//! The host side (loading, handshake, safe handles) lives in the `host` crate.
//!
//! **Architecture Invariant:** this crate does no I/O and knows nothing about the host.

#![warn(missing_docs)]
#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used))]

pub mod ffi;
mod ops;
#[cfg(feature = "plugin")]
pub mod plugin;
mod types;

pub use ops::Op;
pub use types::{
    AngleUnit, BatchOp, BatchResult, CalcError, Config, ConfigKey, ErrorCode, Metadata, OpCode,
    PluginState, Status,
};

/// The name of the magic cookie, as in go-plugin's `HandshakeConfig.MagicCookieKey`.
///
/// The host refuses any library whose root module does not carry this key with
/// [`MAGIC_COOKIE_VALUE`]: it tells a calcplug Calculator plugin apart from any other abi_stable
/// library that happens to have a compatible layout.
pub const MAGIC_COOKIE_KEY: &str = "CALCULATOR_PLUGIN";

/// The value that must go with [`MAGIC_COOKIE_KEY`].
pub const MAGIC_COOKIE_VALUE: &str = "6f1c9a2e5d7b4c38a0e2f4d6b8c1a3e5";

/// The application protocol version, as in go-plugin's `HandshakeConfig.ProtocolVersion`.
///
/// It changes when the *meaning* of the calls changes in a way the type layout cannot show
/// (for example, if `divide` started to return infinities instead of an error).
/// Host and plugin must agree exactly.
pub const PROTOCOL_VERSION: u32 = 1;

/// The version of this interface crate, which is the version of the ABI contract.
///
/// A host accepts a plugin built against the same major version; a minor version may only
/// append fields to the root module (see ARCHITECTURE.md, "ABI evolution").
pub const INTERFACE_VERSION: &str = env!("CARGO_PKG_VERSION");
