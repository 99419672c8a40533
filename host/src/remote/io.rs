//! The library's own I/O runtime: one tokio runtime that drives every gRPC connection (to
//! plugin executables, `calcplug serve` endpoints and fleets), started on first use and shut
//! down when the last handle that uses it goes away.
//!
//! A blocking call ([`Io::block_on`]) parks the calling thread while this runtime's threads
//! do the I/O, so it works from any thread: a plain one, or a worker of the application's own
//! tokio runtime (multi-thread or current-thread), where `Runtime::block_on` would panic with
//! "Cannot start a runtime from within a runtime". There it holds that worker for the call's
//! round trip, as any blocking call does.

use std::future::Future;
use std::sync::{Arc, Weak};
use std::task::{Context, Poll, Wake, Waker};

use parking_lot::Mutex;

/// The runtime's worker threads: enough to keep TLS and HTTP/2 off one core on this kind of
/// machine, few enough to stay small beside the application's own.
const WORKERS: usize = 2;

/// A share of the library's I/O runtime; the runtime lives while any share does.
#[derive(Clone)]
pub(crate) struct Io(Arc<Shared>);

struct Shared {
    runtime: Option<tokio::runtime::Runtime>,
}

impl Drop for Shared {
    fn drop(&mut self) {
        // Not `Runtime`'s own drop: that waits for the workers and panics when the last user
        // goes away inside an async context (an application's task dropping a handle).
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

impl std::fmt::Debug for Io {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Io").finish_non_exhaustive()
    }
}

impl Io {
    /// A share of the running I/O runtime, starting it when none runs.
    ///
    /// # Errors
    ///
    /// Why the runtime cannot start (no threads to be had).
    pub(crate) fn shared() -> Result<Io, String> {
        static CURRENT: Mutex<Weak<Shared>> = Mutex::new(Weak::new());
        let mut current = CURRENT.lock();
        if let Some(shared) = current.upgrade() {
            return Ok(Io(shared));
        }
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(WORKERS)
            .thread_name("calcplug-io")
            .enable_all()
            .build()
            .map_err(|err| format!("cannot start the I/O runtime: {err}"))?;
        let shared = Arc::new(Shared { runtime: Some(runtime) });
        *current = Arc::downgrade(&shared);
        Ok(Io(shared))
    }

    fn handle(&self) -> &tokio::runtime::Handle {
        match &self.0.runtime {
            Some(runtime) => runtime.handle(),
            // Taken only in `drop`, when no share is left to call this.
            None => unreachable!("the I/O runtime is shut down while shared"),
        }
    }

    /// Runs `future` to completion on the calling thread, parked while it waits, with this
    /// runtime as the context of what it starts (sockets, timers, tasks).
    pub(crate) fn block_on<F: Future>(&self, future: F) -> F::Output {
        let _entered = self.handle().enter();
        park_until_ready(future)
    }

    /// Starts `task` on the runtime; it is aborted when the returned guard is dropped.
    pub(crate) fn spawn<F>(&self, task: F) -> Task
    where
        F: Future<Output = ()> + Send + 'static,
    {
        Task(self.handle().spawn(task))
    }

    /// `future`, polled with this runtime as its context, so that it can be awaited from any
    /// executor (its sockets and timers are this runtime's).
    pub(crate) fn entered<F: Future>(&self, future: F) -> impl Future<Output = F::Output> {
        let handle = self.handle().clone();
        async move {
            let mut future = std::pin::pin!(future);
            std::future::poll_fn(|cx| {
                let _entered = handle.enter();
                future.as_mut().poll(cx)
            })
            .await
        }
    }

    /// Runs `work`, which blocks, on the runtime's pool of blocking threads (started as needed,
    /// each let go after 10 s idle) and awaits its result from any executor. Dropping the
    /// future does not stop `work`: it runs to its end, its result dropped.
    pub(crate) fn spawn_blocking<T, F>(&self, work: F) -> tokio::task::JoinHandle<T>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        self.handle().spawn_blocking(work)
    }

    /// Enters the runtime's context, for code that creates tokio resources outside a future.
    pub(crate) fn enter(&self) -> tokio::runtime::EnterGuard<'_> {
        self.handle().enter()
    }
}

/// A task on the I/O runtime, aborted when dropped.
#[derive(Debug)]
pub(crate) struct Task(tokio::task::JoinHandle<()>);

impl Drop for Task {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Wakes a parked thread.
struct Unpark(std::thread::Thread);

impl Wake for Unpark {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.0.unpark();
    }
}

/// Polls `future` on this thread, parking between polls until its waker unparks it.
fn park_until_ready<F: Future>(future: F) -> F::Output {
    thread_local! {
        // One waker per thread, made once: no allocation per call.
        static WAKER: Waker = Waker::from(Arc::new(Unpark(std::thread::current())));
    }
    let mut future = std::pin::pin!(future);
    WAKER.with(|waker| {
        let mut cx = Context::from_waker(waker);
        loop {
            if let Poll::Ready(output) = future.as_mut().poll(&mut cx) {
                return output;
            }
            // A spurious unpark only costs another poll.
            std::thread::park();
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_on_works_inside_a_current_thread_runtime_and_the_last_share_stops_it() {
        let outer = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let answer = outer.block_on(async {
            let io = Io::shared().unwrap();
            let answer = io.block_on(async {
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                let (tx, rx) = tokio::sync::oneshot::channel();
                tokio::spawn(async move { tx.send(7).unwrap() });
                rx.await.unwrap()
            });
            // Dropped inside an async context: no panic.
            drop(io);
            answer
        });
        assert_eq!(answer, 7);
    }

    #[test]
    fn the_last_share_may_go_on_a_thread_of_the_runtime_itself() {
        // An async call's work item can hold the last handle, and so the last share, when the
        // application dropped everything else while the call ran.
        let io = Io::shared().unwrap();
        let last = io.clone();
        let (tx, rx) = std::sync::mpsc::channel();
        let task = io.spawn_blocking(move || {
            drop(last);
            tx.send(()).unwrap();
        });
        drop(io);
        drop(task);
        rx.recv_timeout(std::time::Duration::from_secs(10)).expect("the work item ran to its end");
    }

    #[test]
    fn shares_are_one_runtime() {
        let first = Io::shared().unwrap();
        let second = Io::shared().unwrap();
        assert!(Arc::ptr_eq(&first.0, &second.0));
    }

    #[test]
    fn a_dropped_task_is_aborted() {
        let io = Io::shared().unwrap();
        let (tx, mut rx) = tokio::sync::mpsc::channel::<()>(1);
        let task = io.spawn(async move {
            let _keep = tx;
            std::future::pending::<()>().await;
        });
        drop(task);
        // The sender goes with the aborted task.
        assert_eq!(io.block_on(rx.recv()), None);
    }
}
