//! The plugin authoring API: implement [`Calculator`], call [`export_plugin!`](crate::export_plugin).
//!
//! The macro turns the trait into the [`CalculatorMod`](crate::ffi::CalculatorMod) function table. Every generated entry point
//! runs the trait method inside `catch_unwind`, so a panic in plugin code becomes a
//! [`ErrorCode::PluginPanicked`] error value instead of unwinding into the host (which would abort
//! it: a panic may not cross an `extern "C"` boundary).
//!
//! [`Lifecycle`] gives a plugin the seed's state machine (refuse calls before `initialize` and after
//! `shutdown`) and request accounting that stays cheap when many threads call at once.
//!
//! The pieces: the authoring trait and the macro here, [`Lifecycle`] in `plugin/lifecycle.rs`,
//! the export machinery in `plugin/export.rs` (which holds `interface`'s `unsafe` with
//! `plugin/thread.rs`, the calling thread's counter shard).

use crate::{AngleUnit, BatchOp, BatchResult, CalcError, Config, ErrorCode, Metadata, Op, Status};

mod export;
mod lifecycle;
mod limits;
mod thread;

pub use lifecycle::{CallGuard, Lifecycle};
pub use limits::Limits;

/// The trait's method for one row of the table of operations.
macro_rules! calculator_methods {
    ($( [$kind:ident $variant:ident $method:ident $code:literal ($($arg:ident: $ty:ident),*) $doc:literal $minor:literal] )*) => {
        $(calculator_methods! { @method $kind $method ($($arg: $ty),*) $doc $minor })*
    };
    (@method core $method:ident ($($arg:ident: $ty:ident),*) $doc:literal $minor:literal) => {
        #[doc = concat!($doc, " (interface 1.", $minor, ").")]
        fn $method(&self, $($arg: $ty),*) -> Result<f64, CalcError>;
    };
    (@method extension $method:ident ($($arg:ident: $ty:ident),*) $doc:literal $minor:literal) => {
        #[doc = concat!($doc, " (interface 1.", $minor, ").")]
        ///
        /// The default answers [`ErrorCode::Unsupported`].
        fn $method(&self, $($arg: $ty),*) -> Result<f64, CalcError> {
            let _ = ($($arg,)*);
            Err(unsupported(stringify!($method)))
        }
    };
}

/// The `match` of [`dispatch`]: the trait method of each [`Op`].
macro_rules! dispatch_by_op {
    ($calc:ident, $op:ident, $a:ident, $b:ident
     $( [$kind:ident $variant:ident $method:ident $code:literal ($($arg:ident: $ty:ident),*) $doc:literal $minor:literal] )*) => {
        match $op {
            $(Op::$variant => crate::__calculator_call_with!($calc, $method, ($($arg: $ty),*), $a, $b),)*
        }
    };
}

/// A Calculator plugin, written in plain Rust.
///
/// One value of the implementing type is created (with `Default`) for every instance a host
/// asks for, and it is called from many threads at once: use atomics or locks for mutable state.
/// A method may panic: the host gets a [`ErrorCode::PluginPanicked`] error, never a crash.
pub trait Calculator: Send + Sync + 'static {
    /// What the plugin is. Called once when a host loads the plugin, before `initialize`.
    fn metadata(&self) -> Metadata;

    /// Applies `config` and makes the plugin ready for calls.
    ///
    /// A plugin should refuse keys it does not know ([`Config::expect_only`]).
    fn initialize(&self, config: &Config) -> Result<(), CalcError>;

    /// Releases what the plugin holds; later calls fail with [`ErrorCode::NotInitialized`].
    fn shutdown(&self) -> Result<(), CalcError>;

    /// The plugin's state and counters.
    fn status(&self) -> Status;

    /// Computes every item of `ops` into the slot of `results` with the same index
    /// (the two slices have the same length).
    ///
    /// The default calls the single-item methods one by one; a plugin that can do better (count
    /// the batch once, skip per-call checks) overrides it.
    fn process_batch(&self, ops: &[BatchOp], results: &mut [BatchResult]) {
        for (item, slot) in ops.iter().zip(results.iter_mut()) {
            let result = match item.op.op() {
                Some(op) => dispatch(self, op, item.a, item.b),
                None => Err(CalcError::new(ErrorCode::Unsupported, "")),
            };
            *slot = BatchResult::from_result(result.map_err(|err| err.code()));
        }
    }

    // One method per operation of the table in `ops.rs`. The operations of interface 1.0 are
    // required; those of later minor versions default to answering `Unsupported`, so a plugin
    // written against an earlier version compiles unchanged (list the ones you implement in
    // your metadata, e.g. `Metadata::with_operations(&Op::SCIENTIFIC)`).
    crate::calculator_ops!(flat calculator_methods);

    /// Sets the unit `sin`, `cos` and `tan` read their operand in (interface 1.1).
    fn set_angle_unit(&self, unit: AngleUnit) -> Result<(), CalcError> {
        let _ = unit;
        Err(unsupported("set_angle_unit"))
    }

    /// The unit `sin`, `cos` and `tan` read their operand in (interface 1.1).
    fn angle_unit(&self) -> Result<AngleUnit, CalcError> {
        Err(unsupported("angle_unit"))
    }
}

/// Calls the method of `calc` for `op`; `b` is ignored by one-operand operations.
///
/// # Errors
///
/// Whatever the method returns.
pub fn dispatch<C: Calculator + ?Sized>(
    calc: &C,
    op: Op,
    a: f64,
    b: f64,
) -> Result<f64, CalcError> {
    crate::calculator_ops!(flat dispatch_by_op { calc, op, a, b })
}

#[cold]
fn unsupported(op: &str) -> CalcError {
    CalcError::new(ErrorCode::Unsupported, format!("this plugin does not implement `{op}`"))
}

/// Exports a [`Calculator`](crate::plugin::Calculator) implementation as this library's root module.
///
/// Call it once, at the root of a `cdylib` crate, with a type that implements
/// [`Calculator`](crate::plugin::Calculator) and `Default`: `interface::export_plugin!(MyCalculator);`
/// (the crate documentation has a whole plugin).
///
/// The expansion is the only place with `unsafe` attributes (`#[export_name]`), and it allows them
/// itself, so plugin crates can `#![deny(unsafe_code)]`.
#[macro_export]
macro_rules! export_plugin {
    ($plugin:ty) => {
        $crate::export_plugin!($plugin, handshake = $crate::plugin::__private::CurrentHandshake);
    };
    // Hidden form for the test fixtures that must present a wrong handshake.
    ($plugin:ty, handshake = $handshake:ty) => {
        #[doc(hidden)]
        #[allow(unsafe_code)]
        #[export_name = "_1as_0lib_1header_0root_bmodule_bloader"]
        pub static __CALCPLUG_ROOT_MODULE: $crate::plugin::__private::LibHeader =
            $crate::plugin::__private::Export::<$plugin, $handshake>::LIB_HEADER;
    };
}

/// The root module [`export_plugin!`](crate::export_plugin) exports for `T`, for a plugin compiled
/// into the host binary instead of a library: the host calls it through the same function table
/// (`host::load_builtin` does), which costs what a call into a library costs.
pub fn root_module<T: Calculator + Default>() -> crate::ffi::CalculatorModRef {
    export::Export::<T, export::CurrentHandshake>::root_module()
}

/// Items the export macro expands to. Not part of the API.
#[doc(hidden)]
pub mod __private {
    pub use super::export::{CurrentHandshake, Export, HandshakeSource};
    pub use abi_stable::library::LibHeader;
}
