//! The plugin authoring API: implement [`Calculator`], call [`export_plugin!`](crate::export_plugin).
//!
//! The macro turns the trait into the [`CalculatorMod`] function table. Every generated entry point
//! runs the trait method inside `catch_unwind`, so a panic in plugin code becomes a
//! [`ErrorCode::PluginPanicked`] error value instead of unwinding into the host (which would abort
//! it: a panic may not cross an `extern "C"` boundary).
//!
//! [`Lifecycle`] gives a plugin the seed's state machine (refuse calls before `initialize` and after
//! `shutdown`) and request accounting that stays cheap when many threads call at once.
//!
//! **Architecture Invariant:** this is the only module of `interface` that contains `unsafe`,
//! and plugin crates need none.

use std::cell::Cell;
use std::marker::PhantomData;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use abi_stable::library::{CheckTypeLayout, LibHeader, RootModuleResult};
use abi_stable::marker_type::ErasedObject;
use abi_stable::prefix_type::WithMetadata;
use abi_stable::staticref;
use abi_stable::std_types::{RErr, ROk, ROption, RResult, RSlice, RSliceMut, RString, RVec};

use crate::ffi::{
    CalculatorMod, CalculatorModRef, FfiConfigEntry, FfiConfigKey, FfiError, FfiMetadata,
    FfiStatus, Handshake, InstancePtr,
};
use crate::{
    AngleUnit, BatchOp, BatchResult, CalcError, Config, ErrorCode, Metadata, Op, PluginState,
    Status,
};

mod limits;

pub use limits::Limits;

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

    /// `a + b`
    fn add(&self, a: f64, b: f64) -> Result<f64, CalcError>;

    /// `a - b`
    fn subtract(&self, a: f64, b: f64) -> Result<f64, CalcError>;

    /// `a * b`
    fn multiply(&self, a: f64, b: f64) -> Result<f64, CalcError>;

    /// `a / b`
    fn divide(&self, a: f64, b: f64) -> Result<f64, CalcError>;

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

    // The scientific extension (interface 1.1). The defaults answer `Unsupported`, so a plugin
    // written against 1.0 compiles unchanged; list the operations you implement in your metadata
    // (`Metadata::with_operations(&Op::SCIENTIFIC)`).

    /// `sin(x)`, `x` in the plugin's angle unit (interface 1.1).
    fn sin(&self, x: f64) -> Result<f64, CalcError> {
        let _ = x;
        Err(unsupported("sin"))
    }

    /// `cos(x)`, `x` in the plugin's angle unit (interface 1.1).
    fn cos(&self, x: f64) -> Result<f64, CalcError> {
        let _ = x;
        Err(unsupported("cos"))
    }

    /// `tan(x)`, `x` in the plugin's angle unit (interface 1.1).
    fn tan(&self, x: f64) -> Result<f64, CalcError> {
        let _ = x;
        Err(unsupported("tan"))
    }

    /// The logarithm of `value` in base `base` (interface 1.1).
    fn log(&self, base: f64, value: f64) -> Result<f64, CalcError> {
        let _ = (base, value);
        Err(unsupported("log"))
    }

    /// `base` raised to `exp` (interface 1.1).
    fn pow(&self, base: f64, exp: f64) -> Result<f64, CalcError> {
        let _ = (base, exp);
        Err(unsupported("pow"))
    }

    /// The square root of `x` (interface 1.1).
    fn sqrt(&self, x: f64) -> Result<f64, CalcError> {
        let _ = x;
        Err(unsupported("sqrt"))
    }

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
    match op {
        Op::Add => calc.add(a, b),
        Op::Subtract => calc.subtract(a, b),
        Op::Multiply => calc.multiply(a, b),
        Op::Divide => calc.divide(a, b),
        Op::Sin => calc.sin(a),
        Op::Cos => calc.cos(a),
        Op::Tan => calc.tan(a),
        Op::Log => calc.log(a, b),
        Op::Pow => calc.pow(a, b),
        Op::Sqrt => calc.sqrt(a),
    }
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

/// The lifecycle and request accounting of one plugin instance.
///
/// States follow the seed: `Uninitialized → Initializing → Ready`, a failed first `initialize`
/// goes to `Error` (and may be retried), `shutdown` goes through `ShuttingDown` to `Closed`,
/// which is final. Calling `initialize` again while `Ready` reconfigures; if that fails, the
/// previous configuration keeps serving.
///
/// [`Lifecycle::enter`] is the per-call check: one atomic load, a per-thread counter increment
/// and, for one call in [`Lifecycle::SAMPLE_EVERY`], two clock reads.
#[derive(Debug)]
pub struct Lifecycle {
    state: AtomicU8,
    /// Serializes `initialize` and `shutdown`, and holds what only they change.
    cold: Mutex<ColdState>,
    stats: RequestStats,
}

#[derive(Debug)]
struct ColdState {
    started: Option<(SystemTime, Instant)>,
    message: String,
}

impl Default for Lifecycle {
    fn default() -> Lifecycle {
        Lifecycle {
            state: AtomicU8::new(PluginState::Uninitialized as u8),
            cold: Mutex::new(ColdState { started: None, message: "not initialized".to_owned() }),
            stats: RequestStats::default(),
        }
    }
}

impl Lifecycle {
    /// One call in this many is timed for the average latency.
    pub const SAMPLE_EVERY: u64 = 64;

    /// The current state.
    pub fn state(&self) -> PluginState {
        PluginState::from_u8(self.state.load(Ordering::Acquire)).unwrap_or(PluginState::Error)
    }

    /// Runs `apply` (which applies the config) and moves to `Ready` if it succeeds.
    ///
    /// # Errors
    ///
    /// `apply`'s error; [`ErrorCode::NotInitialized`] after `shutdown`.
    pub fn initialize(
        &self,
        apply: impl FnOnce() -> Result<(), CalcError>,
    ) -> Result<(), CalcError> {
        let mut cold = self.lock_cold();
        let before = self.state();
        match before {
            PluginState::Closed | PluginState::ShuttingDown => {
                return Err(CalcError::new(
                    ErrorCode::NotInitialized,
                    "the plugin has been shut down and cannot be initialized again",
                ));
            }
            PluginState::Ready => {
                // Reconfiguration: calls keep being served while `apply` runs.
                return apply();
            }
            PluginState::Uninitialized | PluginState::Initializing | PluginState::Error => {}
        }
        self.set_state(PluginState::Initializing);
        // If `apply` panics, the state must not stay `Initializing`.
        let reset = StateOnUnwind { life: self, state: PluginState::Error };
        let result = apply();
        std::mem::forget(reset);
        match &result {
            Ok(()) => {
                cold.started = Some((SystemTime::now(), Instant::now()));
                cold.message = "ready".to_owned();
                self.set_state(PluginState::Ready);
            }
            Err(err) => {
                cold.message = format!("initialize failed: {err}");
                self.set_state(PluginState::Error);
            }
        }
        result
    }

    /// Runs `release` and moves to `Closed`, whatever `release` returns.
    /// Shutting down twice is not an error.
    ///
    /// # Errors
    ///
    /// `release`'s error.
    pub fn shutdown(
        &self,
        release: impl FnOnce() -> Result<(), CalcError>,
    ) -> Result<(), CalcError> {
        let mut cold = self.lock_cold();
        if self.state() == PluginState::Closed {
            return Ok(());
        }
        self.set_state(PluginState::ShuttingDown);
        let closed = StateOnUnwind { life: self, state: PluginState::Closed };
        let result = release();
        drop(closed);
        cold.message = match &result {
            Ok(()) => "shut down".to_owned(),
            Err(err) => format!("shut down with an error: {err}"),
        };
        result
    }

    /// Admits one call: fails unless the plugin is `Ready`, and counts the call.
    ///
    /// Keep the returned guard alive for the duration of the call, so sampled calls are timed.
    ///
    /// # Errors
    ///
    /// [`ErrorCode::NotInitialized`] unless the plugin is `Ready`.
    #[inline]
    pub fn enter(&self) -> Result<CallGuard<'_>, CalcError> {
        self.enter_batch(1)
    }

    /// Admits a batch of `items` calls as one: fails unless the plugin is `Ready`, counts `items`
    /// requests.
    ///
    /// # Errors
    ///
    /// [`ErrorCode::NotInitialized`] unless the plugin is `Ready`.
    #[inline]
    pub fn enter_batch(&self, items: u64) -> Result<CallGuard<'_>, CalcError> {
        let state = self.state.load(Ordering::Acquire);
        if state != PluginState::Ready as u8 {
            return Err(self.not_ready(state));
        }
        Ok(self.stats.record(items))
    }

    /// Runs a whole batch as one admitted call: one state check and `ops.len()` requests
    /// counted, then `compute(op, a, b)` for each item into the slot with the same index
    /// (`Unsupported` for an operation code this interface version does not know). Before
    /// `initialize` or after `shutdown`, every slot gets `NotInitialized`.
    ///
    /// This is what a `process_batch` override usually is: the per-item cost is `compute`.
    #[inline]
    pub fn batch(
        &self,
        ops: &[BatchOp],
        results: &mut [BatchResult],
        compute: impl Fn(Op, f64, f64) -> Result<f64, ErrorCode>,
    ) {
        let _batch = match self.enter_batch(ops.len() as u64) {
            Ok(guard) => guard,
            Err(err) => {
                results.fill(BatchResult::err(err.code()));
                return;
            }
        };
        for (item, slot) in ops.iter().zip(results.iter_mut()) {
            let result = match item.op.op() {
                Some(op) => compute(op, item.a, item.b),
                None => Err(ErrorCode::Unsupported),
            };
            *slot = BatchResult::from_result(result);
        }
    }

    /// The plugin's status, with the lifecycle's own message.
    pub fn status(&self) -> Status {
        let cold = self.lock_cold();
        let (started_at, uptime) = match cold.started {
            Some((wall, mono)) if self.state() != PluginState::Closed => {
                (Some(wall), mono.elapsed())
            }
            Some((wall, _)) => (Some(wall), Duration::ZERO),
            None => (None, Duration::ZERO),
        };
        let (request_count, average_latency) = self.stats.totals();
        Status {
            state: self.state(),
            message: cold.message.clone(),
            started_at,
            uptime,
            request_count,
            average_latency,
        }
    }

    #[cold]
    fn not_ready(&self, state: u8) -> CalcError {
        let why = match PluginState::from_u8(state) {
            Some(PluginState::Closed | PluginState::ShuttingDown) => {
                "the plugin has been shut down"
            }
            Some(PluginState::Error) => "the plugin's initialize failed",
            Some(PluginState::Initializing) => "the plugin is still initializing",
            _ => "call initialize first",
        };
        CalcError::new(ErrorCode::NotInitialized, why)
    }

    fn set_state(&self, state: PluginState) {
        self.state.store(state as u8, Ordering::Release);
    }

    fn lock_cold(&self) -> MutexGuard<'_, ColdState> {
        // A panic while holding the lock (inside `apply`/`release`) leaves consistent data:
        // every field is written after the user code returns.
        self.cold.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Sets a state if dropped during unwinding (and also on a normal drop; callers `forget` it to
/// keep the normal path's state).
struct StateOnUnwind<'a> {
    life: &'a Lifecycle,
    state: PluginState,
}

impl Drop for StateOnUnwind<'_> {
    fn drop(&mut self) {
        self.life.set_state(self.state);
    }
}

/// Keeps a call admitted by [`Lifecycle::enter`] open; a sampled call is timed until it drops.
#[derive(Debug)]
#[must_use = "the call is timed until the guard drops"]
pub struct CallGuard<'a> {
    shard: &'a Shard,
    timing: Option<(Instant, u64)>,
}

impl Drop for CallGuard<'_> {
    #[inline]
    fn drop(&mut self) {
        if let Some((started, items)) = self.timing {
            let nanos = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
            self.shard.timed_nanos.fetch_add(nanos, Ordering::Relaxed);
            self.shard.timed_items.fetch_add(items, Ordering::Relaxed);
        }
    }
}

const SHARDS: usize = 16;

/// Request counters split across cache lines, one picked per thread, so that threads calling at
/// once do not fight over one counter.
#[derive(Debug, Default)]
struct RequestStats {
    shards: [Shard; SHARDS],
}

#[derive(Debug, Default)]
#[repr(align(128))]
struct Shard {
    requests: AtomicU64,
    timed_items: AtomicU64,
    timed_nanos: AtomicU64,
}

impl RequestStats {
    #[inline]
    fn record(&self, items: u64) -> CallGuard<'_> {
        let shard = &self.shards[shard_index()];
        let before = shard.requests.fetch_add(items, Ordering::Relaxed);
        // Time the call if this shard's count crossed a multiple of SAMPLE_EVERY.
        let crossed =
            before / Lifecycle::SAMPLE_EVERY != (before + items) / Lifecycle::SAMPLE_EVERY;
        let timing = if crossed { Some((Instant::now(), items)) } else { None };
        CallGuard { shard, timing }
    }

    fn totals(&self) -> (u64, Option<Duration>) {
        let mut requests = 0u64;
        let mut timed_items = 0u64;
        let mut timed_nanos = 0u64;
        for shard in &self.shards {
            requests = requests.wrapping_add(shard.requests.load(Ordering::Relaxed));
            timed_items = timed_items.wrapping_add(shard.timed_items.load(Ordering::Relaxed));
            timed_nanos = timed_nanos.wrapping_add(shard.timed_nanos.load(Ordering::Relaxed));
        }
        let average = timed_nanos.checked_div(timed_items).map(Duration::from_nanos);
        (requests, average)
    }
}

#[inline]
fn shard_index() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static INDEX: Cell<usize> = const { Cell::new(usize::MAX) };
    }
    INDEX.with(|index| {
        let mut i = index.get();
        if i == usize::MAX {
            i = NEXT.fetch_add(1, Ordering::Relaxed) % SHARDS;
            index.set(i);
        }
        i
    })
}

/// Items the export macro expands to. Not part of the API.
#[doc(hidden)]
pub mod __private {
    pub use super::{CurrentHandshake, Export, HandshakeSource};
    pub use abi_stable::library::LibHeader;
}

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

impl<T: Calculator + Default, H: HandshakeSource> Export<T, H> {
    staticref! {
        const MODULE: WithMetadata<CalculatorMod> = WithMetadata::new(CalculatorMod {
            handshake: H::HANDSHAKE,
            new_instance: Self::new_instance,
            drop_instance: Self::drop_instance,
            metadata: Self::metadata,
            initialize: Self::initialize,
            shutdown: Self::shutdown,
            status: Self::status,
            add: Self::add,
            subtract: Self::subtract,
            multiply: Self::multiply,
            divide: Self::divide,
            process_batch: Self::process_batch,
            sin: Self::sin,
            cos: Self::cos,
            tan: Self::tan,
            log: Self::log,
            pow: Self::pow,
            sqrt: Self::sqrt,
            set_angle_unit: Self::set_angle_unit,
            angle_unit: Self::angle_unit,
        })
    }

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

    fn root_module() -> CalculatorModRef {
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

    unsafe extern "C" fn add(this: InstancePtr, a: f64, b: f64) -> RResult<f64, FfiError> {
        // SAFETY: the caller upholds `CalculatorMod`'s contract for instance pointers.
        let this = unsafe { Self::this(this) };
        guard("add", || this.add(a, b))
    }

    unsafe extern "C" fn subtract(this: InstancePtr, a: f64, b: f64) -> RResult<f64, FfiError> {
        // SAFETY: the caller upholds `CalculatorMod`'s contract for instance pointers.
        let this = unsafe { Self::this(this) };
        guard("subtract", || this.subtract(a, b))
    }

    unsafe extern "C" fn multiply(this: InstancePtr, a: f64, b: f64) -> RResult<f64, FfiError> {
        // SAFETY: the caller upholds `CalculatorMod`'s contract for instance pointers.
        let this = unsafe { Self::this(this) };
        guard("multiply", || this.multiply(a, b))
    }

    unsafe extern "C" fn divide(this: InstancePtr, a: f64, b: f64) -> RResult<f64, FfiError> {
        // SAFETY: the caller upholds `CalculatorMod`'s contract for instance pointers.
        let this = unsafe { Self::this(this) };
        guard("divide", || this.divide(a, b))
    }

    unsafe extern "C" fn sin(this: InstancePtr, x: f64) -> RResult<f64, FfiError> {
        // SAFETY: the caller upholds `CalculatorMod`'s contract for instance pointers.
        let this = unsafe { Self::this(this) };
        guard("sin", || this.sin(x))
    }

    unsafe extern "C" fn cos(this: InstancePtr, x: f64) -> RResult<f64, FfiError> {
        // SAFETY: the caller upholds `CalculatorMod`'s contract for instance pointers.
        let this = unsafe { Self::this(this) };
        guard("cos", || this.cos(x))
    }

    unsafe extern "C" fn tan(this: InstancePtr, x: f64) -> RResult<f64, FfiError> {
        // SAFETY: the caller upholds `CalculatorMod`'s contract for instance pointers.
        let this = unsafe { Self::this(this) };
        guard("tan", || this.tan(x))
    }

    unsafe extern "C" fn log(this: InstancePtr, base: f64, value: f64) -> RResult<f64, FfiError> {
        // SAFETY: the caller upholds `CalculatorMod`'s contract for instance pointers.
        let this = unsafe { Self::this(this) };
        guard("log", || this.log(base, value))
    }

    unsafe extern "C" fn pow(this: InstancePtr, base: f64, exp: f64) -> RResult<f64, FfiError> {
        // SAFETY: the caller upholds `CalculatorMod`'s contract for instance pointers.
        let this = unsafe { Self::this(this) };
        guard("pow", || this.pow(base, exp))
    }

    unsafe extern "C" fn sqrt(this: InstancePtr, x: f64) -> RResult<f64, FfiError> {
        // SAFETY: the caller upholds `CalculatorMod`'s contract for instance pointers.
        let this = unsafe { Self::this(this) };
        guard("sqrt", || this.sqrt(x))
    }

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
    fn lifecycle_refuses_calls_outside_ready() {
        let life = Lifecycle::default();
        assert_eq!(life.enter().unwrap_err().code(), ErrorCode::NotInitialized);
        life.initialize(|| Ok(())).unwrap();
        assert_eq!(life.state(), PluginState::Ready);
        drop(life.enter().unwrap());
        life.shutdown(|| Ok(())).unwrap();
        assert_eq!(life.state(), PluginState::Closed);
        let err = life.enter().unwrap_err();
        assert_eq!(err.code(), ErrorCode::NotInitialized);
        assert!(err.message().contains("shut down"), "{err}");
        assert_eq!(life.initialize(|| Ok(())).unwrap_err().code(), ErrorCode::NotInitialized);
        assert_eq!(life.status().request_count, 1);
    }

    #[test]
    fn failed_initialize_is_error_and_may_be_retried() {
        let life = Lifecycle::default();
        let err =
            life.initialize(|| Err(CalcError::new(ErrorCode::InvalidInput, "bad"))).unwrap_err();
        assert_eq!(err.code(), ErrorCode::InvalidInput);
        assert_eq!(life.state(), PluginState::Error);
        assert!(life.status().message.contains("bad"));
        life.initialize(|| Ok(())).unwrap();
        assert_eq!(life.state(), PluginState::Ready);
    }

    #[test]
    fn failed_reconfigure_keeps_ready() {
        let life = Lifecycle::default();
        life.initialize(|| Ok(())).unwrap();
        assert!(life.initialize(|| Err(CalcError::new(ErrorCode::InvalidInput, "x"))).is_err());
        assert_eq!(life.state(), PluginState::Ready);
    }

    #[test]
    fn stats_count_every_call_and_time_some() {
        let life = Lifecycle::default();
        life.initialize(|| Ok(())).unwrap();
        let threads = 4;
        let per_thread = 1000;
        std::thread::scope(|scope| {
            for _ in 0..threads {
                scope.spawn(|| {
                    for _ in 0..per_thread {
                        drop(life.enter().unwrap());
                    }
                });
            }
        });
        drop(life.enter_batch(500).unwrap());
        let status = life.status();
        assert_eq!(status.request_count, threads * per_thread + 500);
        assert!(status.average_latency.is_some());
        assert!(status.started_at.is_some());
    }

    #[test]
    fn guard_turns_panics_into_errors() {
        let result = guard::<f64>("add", || panic!("boom {}", 42));
        let RErr(err) = result else { panic!("expected an error") };
        assert_eq!(err.code, ErrorCode::PluginPanicked.as_u8());
        assert_eq!(err.message.as_str(), "panicked in `add`: boom 42");
    }
}
