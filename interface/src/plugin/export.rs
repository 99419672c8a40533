//! The export machinery behind [`export_plugin!`](crate::export_plugin): the root module, the
//! `extern "C"` entry points, and panics turned into error values.
//!
//! **Architecture Invariant:** this is the only file of `interface` that contains `unsafe`; plugin
//! crates need none.

use std::marker::PhantomData;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::ptr::NonNull;
use std::time::{Duration, UNIX_EPOCH};

use abi_stable::library::{CheckTypeLayout, LibHeader, RootModuleResult};
use abi_stable::marker_type::ErasedObject;
use abi_stable::prefix_type::WithMetadata;
use abi_stable::staticref;
use abi_stable::std_types::{RErr, ROk, ROption, RResult, RSlice, RSliceMut, RString, RVec};

use crate::ffi::{
    CalculatorMod, CalculatorModRef, FfiConfigEntry, FfiConfigKey, FfiError, FfiMetadata,
    FfiStatus, Handshake, InstancePtr,
};
use crate::{AngleUnit, BatchOp, BatchResult, CalcError, Config, ErrorCode, Metadata, Status};

use super::Calculator;

/// Where [`Export`] takes the handshake from.
#[doc(hidden)]
pub trait HandshakeSource: 'static {
    const HANDSHAKE: Handshake;
}

/// The handshake of this interface version.
#[doc(hidden)]
pub struct CurrentHandshake;

impl HandshakeSource for CurrentHandshake {
    const HANDSHAKE: Handshake = Handshake::CURRENT;
}

/// The root module and the `extern "C"` entry points for plugin type `T`.
#[doc(hidden)]
pub struct Export<T, H>(PhantomData<fn() -> (T, H)>);

/// The root module of [`Export`]: every field of [`CalculatorMod`], each pointing to the entry
/// point of the same name.
macro_rules! export_module {
    (
        core $core:ident $core_minor:literal {
            $( $variant:ident $method:ident $code:literal ($($arg:ident: $ty:ident),*) $doc:literal; )*
        } fields {}
        $(
            extension $group:ident $minor:literal {
                $( $ext_variant:ident $ext_method:ident $ext_code:literal ($($ext_arg:ident: $ext_ty:ident),*) $ext_doc:literal; )*
            }
            fields {
                $( $field:ident ($($name:ident: $field_ty:ty),*) -> $ret:ty, $field_doc:literal; )*
            }
        )*
    ) => {
        staticref! {
            const MODULE: WithMetadata<CalculatorMod> = WithMetadata::new(CalculatorMod {
                handshake: H::HANDSHAKE,
                new_instance: Self::new_instance,
                drop_instance: Self::drop_instance,
                metadata: Self::metadata,
                initialize: Self::initialize,
                shutdown: Self::shutdown,
                status: Self::status,
                $($method: Self::$method,)*
                process_batch: Self::process_batch,
                $($($ext_method: Self::$ext_method,)* $($field: Self::$field,)*)*
            })
        }
    };
}

/// The `extern "C"` entry point of every operation: the trait method, with panics caught.
macro_rules! export_operations {
    ($( [$kind:ident $variant:ident $method:ident $code:literal ($($arg:ident: $ty:ident),*) $doc:literal $minor:literal] )*) => {
        $(
            unsafe extern "C" fn $method(this: InstancePtr, $($arg: $ty),*) -> RResult<f64, FfiError> {
                // SAFETY: the caller upholds `CalculatorMod`'s contract for instance pointers.
                let this = unsafe { Self::this(this) };
                guard(stringify!($method), || this.$method($($arg),*))
            }
        )*
    };
}

impl<T: Calculator + Default, H: HandshakeSource> Export<T, H> {
    crate::calculator_ops!(grouped export_module);

    /// The header abi_stable's loader finds under the root module symbol.
    ///
    /// It is only ever used to initialize the one exported `static`, whose lazily-set root
    /// module reference is the interior mutability clippy warns about.
    #[allow(clippy::declare_interior_mutable_const)]
    // SAFETY: `constructor` returns the `PrefixRef` of a `CalculatorMod`, erased by
    // abi_stable's own `__call_root_module_loader`, which is what `from_constructor` requires.
    pub const LIB_HEADER: LibHeader = unsafe {
        LibHeader::from_constructor::<CalculatorModRef>(Self::constructor, CheckTypeLayout::Yes)
    };

    /// The root module: what the library header hands to the loader, and what a plugin compiled
    /// into the host itself is called through (see [`root_module`](crate::plugin::root_module)).
    pub fn root_module() -> CalculatorModRef {
        CalculatorModRef(Self::MODULE.as_prefix())
    }

    extern "C" fn constructor() -> RootModuleResult {
        quiet_panics();
        abi_stable::library::__call_root_module_loader(Self::root_module)
    }

    extern "C" fn new_instance() -> RResult<InstancePtr, FfiError> {
        guard("new_instance", || {
            let instance = NonNull::from(Box::leak(Box::new(T::default())));
            Ok(InstancePtr::new(instance.cast::<ErasedObject>()))
        })
    }

    /// # Safety
    ///
    /// `this` comes from `new_instance` of this same `Export<T, H>`, and is not used afterwards.
    unsafe extern "C" fn drop_instance(this: InstancePtr) {
        // SAFETY: per this function's contract, `this` is the pointer `new_instance` got from
        // `Box::leak` of a `Box<T>`, and ownership is handed back exactly once.
        let instance = unsafe { Box::from_raw(this.as_ptr().cast::<T>().as_ptr()) };
        // A panicking destructor must not unwind into the host; the instance is gone either way.
        let _ = catch_unwind(AssertUnwindSafe(move || drop(instance)));
    }

    /// # Safety
    ///
    /// `this` comes from `new_instance` of this same `Export<T, H>` and has not been dropped.
    unsafe fn this<'a>(this: InstancePtr) -> &'a T {
        // SAFETY: per this function's contract, `this` points to a live `T` created by
        // `new_instance`; `T: Sync`, so a shared reference may be used from any thread.
        unsafe { this.as_ptr().cast::<T>().as_ref() }
    }

    unsafe extern "C" fn metadata(this: InstancePtr) -> RResult<FfiMetadata, FfiError> {
        // SAFETY: the caller upholds `CalculatorMod`'s contract for instance pointers.
        let this = unsafe { Self::this(this) };
        guard("metadata", || Ok(metadata_to_ffi(this.metadata())))
    }

    unsafe extern "C" fn initialize(
        this: InstancePtr,
        config: RSlice<'_, FfiConfigEntry<'_>>,
    ) -> RResult<(), FfiError> {
        // SAFETY: the caller upholds `CalculatorMod`'s contract for instance pointers.
        let this = unsafe { Self::this(this) };
        guard("initialize", || {
            let config: Config =
                config.iter().map(|entry| (entry.key.as_str(), entry.value.as_str())).collect();
            this.initialize(&config)
        })
    }

    unsafe extern "C" fn shutdown(this: InstancePtr) -> RResult<(), FfiError> {
        // SAFETY: the caller upholds `CalculatorMod`'s contract for instance pointers.
        let this = unsafe { Self::this(this) };
        guard("shutdown", || this.shutdown())
    }

    unsafe extern "C" fn status(this: InstancePtr) -> RResult<FfiStatus, FfiError> {
        // SAFETY: the caller upholds `CalculatorMod`'s contract for instance pointers.
        let this = unsafe { Self::this(this) };
        guard("status", || Ok(status_to_ffi(this.status())))
    }

    crate::calculator_ops!(flat export_operations);

    unsafe extern "C" fn set_angle_unit(this: InstancePtr, unit: u8) -> RResult<(), FfiError> {
        // SAFETY: the caller upholds `CalculatorMod`'s contract for instance pointers.
        let this = unsafe { Self::this(this) };
        guard("set_angle_unit", || match AngleUnit::from_u8(unit) {
            Some(unit) => this.set_angle_unit(unit),
            None => Err(CalcError::new(
                ErrorCode::InvalidInput,
                format!("unknown angle unit code {unit}"),
            )),
        })
    }

    unsafe extern "C" fn angle_unit(this: InstancePtr) -> RResult<u8, FfiError> {
        // SAFETY: the caller upholds `CalculatorMod`'s contract for instance pointers.
        let this = unsafe { Self::this(this) };
        guard("angle_unit", || this.angle_unit().map(|unit| unit as u8))
    }

    unsafe extern "C" fn process_batch(
        this: InstancePtr,
        ops: RSlice<'_, BatchOp>,
        mut results: RSliceMut<'_, BatchResult>,
    ) -> RResult<(), FfiError> {
        // SAFETY: the caller upholds `CalculatorMod`'s contract for instance pointers.
        let this = unsafe { Self::this(this) };
        guard("process_batch", || {
            let (ops, results) = (ops.as_slice(), results.as_mut_slice());
            if ops.len() != results.len() {
                return Err(CalcError::new(
                    ErrorCode::InvalidInput,
                    format!("{} operations but {} result slots", ops.len(), results.len()),
                ));
            }
            this.process_batch(ops, results);
            Ok(())
        })
    }
}

/// Runs `call`, turning its error or its panic into an [`FfiError`].
#[inline(always)]
fn guard<R>(op: &str, call: impl FnOnce() -> Result<R, CalcError>) -> RResult<R, FfiError> {
    match catch_unwind(AssertUnwindSafe(call)) {
        Ok(Ok(value)) => ROk(value),
        Ok(Err(err)) => RErr(error_to_ffi(err)),
        Err(payload) => RErr(panic_to_ffi(op, payload)),
    }
}

#[cold]
fn error_to_ffi(err: CalcError) -> FfiError {
    FfiError { code: err.code().as_u8(), message: RString::from(err.message()) }
}

std::thread_local! {
    /// Where the panic being caught was raised, as the hook of [`quiet_panics`] saw it.
    static PANIC_LOCATION: std::cell::RefCell<Option<String>> =
        const { std::cell::RefCell::new(None) };
}

/// Replaces the panic hook of this library's copy of `std` with one that prints nothing and
/// remembers where the panic was raised, for [`panic_to_ffi`] to add to the error.
///
/// A `cdylib` carries its own `std`, with its own hook, so this never touches the host's. It
/// runs from the root module's loader, which only a host loading the library calls: a test
/// that links a plugin crate as an `rlib` keeps its own hook. Without it the default hook
/// would print every panic (with a backtrace under `RUST_BACKTRACE`) on the host's stderr,
/// beside the error the host already reports.
fn quiet_panics() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        std::panic::set_hook(Box::new(|info| {
            let location =
                info.location().map(|l| format!("{}:{}:{}", l.file(), l.line(), l.column()));
            let _ = PANIC_LOCATION.try_with(|slot| *slot.borrow_mut() = location);
        }));
    });
}

#[cold]
fn panic_to_ffi(op: &str, payload: Box<dyn std::any::Any + Send>) -> FfiError {
    let message = if let Some(text) = payload.downcast_ref::<&str>() {
        (*text).to_owned()
    } else if let Some(text) = payload.downcast_ref::<String>() {
        text.clone()
    } else {
        "a panic with a non-string payload".to_owned()
    };
    // Dropping a payload may itself panic; leak it rather than risk unwinding out of here.
    std::mem::forget(payload);
    let at = PANIC_LOCATION
        .try_with(|slot| slot.borrow_mut().take())
        .ok()
        .flatten()
        .map_or_else(String::new, |location| format!(" at {location}"));
    FfiError {
        code: ErrorCode::PluginPanicked.as_u8(),
        message: RString::from(format!("panicked in `{op}`{at}: {message}")),
    }
}

fn metadata_to_ffi(metadata: Metadata) -> FfiMetadata {
    FfiMetadata {
        name: metadata.name.into(),
        version: metadata.version.into(),
        description: metadata.description.into(),
        operations: metadata.operations.into_iter().map(RString::from).collect::<RVec<_>>(),
        config: metadata
            .config
            .into_iter()
            .map(|key| FfiConfigKey {
                key: key.key.into(),
                default: key.default.into(),
                description: key.description.into(),
            })
            .collect::<RVec<_>>(),
    }
}

fn status_to_ffi(status: Status) -> FfiStatus {
    let nanos = |d: Duration| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
    FfiStatus {
        state: status.state as u8,
        message: status.message.into(),
        started_at_unix_nanos: status
            .started_at
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map(nanos)
            .into(),
        uptime_nanos: nanos(status.uptime),
        request_count: status.request_count,
        average_latency_nanos: ROption::from(status.average_latency.map(nanos)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn guard_turns_panics_into_errors() {
        let result = guard::<f64>("add", || panic!("boom {}", 42));
        let RErr(err) = result else { panic!("expected an error") };
        assert_eq!(err.code, ErrorCode::PluginPanicked.as_u8());
        assert_eq!(err.message.as_str(), "panicked in `add`: boom 42");
    }
}
