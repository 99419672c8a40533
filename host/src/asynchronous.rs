//! The async API: [`AsyncHandle`], every operation of a handle awaited from an async host.
//!
//! One wrapper serves every kind of handle ([`Handle`], [`Plugin`](crate::Plugin),
//! [`RemotePlugin`](crate::remote::RemotePlugin), [`Fleet`](crate::remote::Fleet)) through the
//! blocking API it already has, so the answers, errors, retries, supervision, circuit breaker,
//! hot reload, deadlines and metrics are those of that API, declared once. A call in process
//! runs inline (nanoseconds: no task, no allocation); a call that may wait on another process
//! runs on the blocking pool of the library's I/O runtime, so it never holds a thread of the
//! caller's executor.

use std::future::Future;
use std::sync::{Arc, OnceLock};

use interface::{BatchOp, BatchResult, Op};

use crate::handle::CallFuture as HandleCallFuture;
use crate::remote::io::Io;
use crate::{Error, Handle, PluginHandle};

/// A handle with the blocking API that [`AsyncHandle`] awaits: a managed plugin's [`Handle`]
/// or any [`PluginHandle`].
pub trait BlockingHandle: Send + Sync + 'static {
    /// `op(a, b)`.
    ///
    /// # Errors
    ///
    /// The handle's own.
    fn call(&self, op: Op, a: f64, b: f64) -> Result<f64, Error>;
    /// A batch, into `results`.
    ///
    /// # Errors
    ///
    /// The handle's own.
    fn process_batch(&self, ops: &[BatchOp], results: &mut [BatchResult]) -> Result<(), Error>;
    /// Whether a call may wait on another process; one that cannot runs inline.
    fn is_isolated(&self) -> bool;
    /// The call as a future of the handle's own, awaited instead of running
    /// [`BlockingHandle::call`] on the pool; `None` by default.
    fn call_future(&self, op: Op, a: f64, b: f64) -> Option<HandleCallFuture<'_>> {
        let _ = (op, a, b);
        None
    }
}

impl BlockingHandle for Handle {
    fn call(&self, op: Op, a: f64, b: f64) -> Result<f64, Error> {
        Handle::call(self, op, a, b)
    }
    fn process_batch(&self, ops: &[BatchOp], results: &mut [BatchResult]) -> Result<(), Error> {
        Handle::process_batch(self, ops, results)
    }
    fn is_isolated(&self) -> bool {
        Handle::is_isolated(self)
    }
}

impl<P: PluginHandle + Send + Sync + 'static> BlockingHandle for P {
    fn call(&self, op: Op, a: f64, b: f64) -> Result<f64, Error> {
        PluginHandle::call(self, op, a, b)
    }
    fn process_batch(&self, ops: &[BatchOp], results: &mut [BatchResult]) -> Result<(), Error> {
        PluginHandle::process_batch(self, ops, results)
    }
    fn is_isolated(&self) -> bool {
        PluginHandle::is_isolated(self)
    }
    fn call_future(&self, op: Op, a: f64, b: f64) -> Option<HandleCallFuture<'_>> {
        PluginHandle::call_future(self, op, a, b)
    }
}

/// The async API of a handle: the same operations and errors as its blocking API, awaited.
///
/// ```no_run
/// # async fn example(manager: host::PluginManager) -> Result<(), host::Error> {
/// let basic = manager.get("basic").expect("served").to_async();
/// let sum = basic.add(2.0, 3.0).await?; // 5
/// # Ok(()) }
/// ```
///
/// A wrapper rather than `*_async` twins of each method: one type serves every kind of handle,
/// and an application that only awaits keeps one value. Cloning it is cheap (an [`Arc`]).
///
/// A fleet's calls are awaited as they are (no thread held; dropping the future cancels the
/// call). Dropping the future of another out-of-process call does not stop the call: it runs
/// to its end (or its deadline) on the pool and its answer is dropped, so the lane or
/// connection it uses is left as after any call, and the next call on the handle works.
pub struct AsyncHandle<H> {
    inner: Arc<H>,
    io: Arc<OnceLock<Io>>,
}

impl<H> Clone for AsyncHandle<H> {
    fn clone(&self) -> Self {
        AsyncHandle { inner: Arc::clone(&self.inner), io: Arc::clone(&self.io) }
    }
}

impl<H> std::fmt::Debug for AsyncHandle<H> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AsyncHandle").finish_non_exhaustive()
    }
}

impl<H: BlockingHandle> AsyncHandle<H> {
    /// The async API of `handle`.
    pub fn new(handle: H) -> AsyncHandle<H> {
        AsyncHandle::from(Arc::new(handle))
    }

    /// The handle, for its blocking API and what is not a call (identity, status).
    pub fn get_ref(&self) -> &H {
        &self.inner
    }

    /// `op(a, b)` (`b` is ignored by one-operand operations). A call in process runs here, and
    /// the future is ready at its first poll; any other call starts when first polled.
    ///
    /// # Errors
    ///
    /// As the handle's blocking `call`; [`Error::Runtime`] when an out-of-process call finds
    /// no I/O runtime to run on.
    pub fn call(&self, op: Op, a: f64, b: f64) -> Call<'_, f64> {
        if !self.inner.is_isolated() {
            return Call::ready(self.inner.call(op, a, b));
        }
        Call::waiting(async move {
            if let Some(call) = self.inner.call_future(op, a, b) {
                return call.await;
            }
            let inner = Arc::clone(&self.inner);
            self.offload(move || inner.call(op, a, b)).await?
        })
    }

    /// Every item of `ops`, in order; one failing item does not stop the others.
    ///
    /// # Errors
    ///
    /// As the handle's blocking `process_batch`, and as [`AsyncHandle::call`].
    pub fn batch(&self, ops: Vec<BatchOp>) -> Call<'_, Vec<BatchResult>> {
        let run = move |inner: &H| {
            let mut results = vec![BatchResult::PENDING; ops.len()];
            inner.process_batch(&ops, &mut results).map(|()| results)
        };
        if !self.inner.is_isolated() {
            return Call::ready(run(&self.inner));
        }
        let inner = Arc::clone(&self.inner);
        Call::waiting(async move { self.offload(move || run(&inner)).await? })
    }

    /// Runs `work` on the I/O runtime's blocking pool.
    fn offload<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> impl Future<Output = Result<T, Error>> + Send + 'static {
        let task = self.io().map(|io| io.spawn_blocking(work));
        async move {
            match task?.await {
                Ok(answer) => Ok(answer),
                // The pool runs until the last share of the runtime goes, and this handle
                // holds one: the task cannot be cancelled, only panic.
                Err(err) => std::panic::resume_unwind(err.into_panic()),
            }
        }
    }

    fn io(&self) -> Result<&Io, Error> {
        if let Some(io) = self.io.get() {
            return Ok(io);
        }
        let io = Io::shared().map_err(|reason| Error::Runtime { reason })?;
        Ok(self.io.get_or_init(|| io))
    }
}

impl<H: BlockingHandle> From<Arc<H>> for AsyncHandle<H> {
    fn from(inner: Arc<H>) -> Self {
        AsyncHandle { inner, io: Arc::new(OnceLock::new()) }
    }
}

/// The answer of an [`AsyncHandle`] call, to be awaited: ready at once for a call in process
/// (no allocation), a boxed future for one that waits on another process.
#[must_use = "a call out of process starts when first polled"]
pub struct Call<'a, T> {
    state: CallState<'a, T>,
}

enum CallState<'a, T> {
    Ready(Option<Result<T, Error>>),
    Waiting(CallFuture<'a, T>),
}

/// A boxed call that waits on another process.
type CallFuture<'a, T> = std::pin::Pin<Box<dyn Future<Output = Result<T, Error>> + Send + 'a>>;

impl<'a, T> Call<'a, T> {
    fn ready(answer: Result<T, Error>) -> Call<'a, T> {
        Call { state: CallState::Ready(Some(answer)) }
    }

    fn waiting(future: impl Future<Output = Result<T, Error>> + Send + 'a) -> Call<'a, T> {
        Call { state: CallState::Waiting(Box::pin(future)) }
    }
}

// The answer is only ever moved out, never pinned, and the future is boxed.
impl<T> Unpin for Call<'_, T> {}

impl<T> Future for Call<'_, T> {
    type Output = Result<T, Error>;

    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        match &mut self.get_mut().state {
            CallState::Ready(answer) => match answer.take() {
                Some(answer) => std::task::Poll::Ready(answer),
                None => panic!("a calcplug `Call` polled after it answered"),
            },
            CallState::Waiting(future) => future.as_mut().poll(cx),
        }
    }
}

impl<T> std::fmt::Debug for Call<'_, T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = match self.state {
            CallState::Ready(_) => "ready",
            CallState::Waiting(_) => "waiting",
        };
        f.debug_struct("Call").field("state", &state).finish()
    }
}

/// The method of every operation, awaited.
macro_rules! async_operations {
    ($( [$kind:ident $variant:ident $method:ident $code:literal ($($arg:ident: $ty:ident),*) $doc:literal $minor:literal] )*) => {
        impl<H: BlockingHandle> AsyncHandle<H> {
            $(
                #[doc = concat!($doc, " (interface 1.", $minor, ").")]
                ///
                /// # Errors
                ///
                /// As [`AsyncHandle::call`].
                #[inline]
                pub fn $method(&self, $($arg: $ty),*) -> Call<'_, f64> {
                    let (a, b) = interface::__calculator_operand_pair!(($($arg: $ty),*));
                    self.call(Op::$variant, a, b)
                }
            )*
        }
    };
}

interface::calculator_ops!(flat async_operations);

impl Handle {
    /// This handle's async API (a clone of the handle inside).
    pub fn to_async(&self) -> AsyncHandle<Handle> {
        AsyncHandle::new(self.clone())
    }
}
