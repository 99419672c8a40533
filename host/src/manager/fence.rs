//! An asymmetric memory fence for the call path.
//!
//! Shutdown and hot reload need a Dekker-style guarantee: a call writes its `entered` counter
//! and then reads which library serves the name (and its state); the manager writes the new
//! library (or the new state) and then reads the counters. At least one of the two must see the
//! other's write, which on its own takes a full fence on *both* sides, about 5 ns on every call.
//!
//! Calls are many and reloads are rare, so the cost is moved to the rare side: on Linux the
//! manager registers for `membarrier(2)` `PRIVATE_EXPEDITED` once, after which a call only
//! needs a compiler fence ([`light`]) and the manager's side ([`heavy`]) asks the kernel to run
//! a full fence on every CPU that runs one of this process's threads (a few microseconds).
//! Where that is unavailable (other systems, a kernel before 4.14, a seccomp filter), calls use
//! a full fence instead of [`light`] and [`heavy`] is a plain one: correct, and 5 ns slower per
//! call. `CALCPLUG_FENCE=full` in the environment chooses that fallback on purpose (the tests
//! use it to run the fallback; it is also a way out should `membarrier` misbehave somewhere).

use std::sync::atomic::{compiler_fence, fence, AtomicBool, Ordering};
use std::sync::OnceLock;

/// Whether `membarrier` is registered: once true, it stays true.
static ASYMMETRIC: AtomicBool = AtomicBool::new(false);
static REGISTERED: OnceLock<bool> = OnceLock::new();

/// Sets up the asymmetric fence for this process (once; later calls return the first result).
/// Returns whether calls get the cheap side.
pub(crate) fn enable() -> bool {
    *REGISTERED.get_or_init(|| {
        let forced_full = std::env::var_os("CALCPLUG_FENCE").is_some_and(|v| v == "full");
        let registered = !forced_full && register();
        ASYMMETRIC.store(registered, Ordering::SeqCst);
        tracing::debug!(asymmetric = registered, "call-path fence");
        registered
    })
}

/// Whether calls may use [`light`]: `membarrier` is registered. Each thread asks once, when it
/// claims its counter shard, and uses a full fence otherwise.
pub(crate) fn is_asymmetric() -> bool {
    ASYMMETRIC.load(Ordering::Relaxed)
}

/// The call's side where [`is_asymmetric`]: orders the call's counter write before its reads of
/// the serving library, as far as the compiler goes; the CPU's part is [`heavy`]'s.
#[inline(always)]
pub(crate) fn light() {
    compiler_fence(Ordering::SeqCst);
}

/// The manager's side: after it returns, every call that has not written its counter yet reads
/// what the manager wrote before.
pub(crate) fn heavy() {
    fence(Ordering::SeqCst);
    if ASYMMETRIC.load(Ordering::Relaxed) {
        expedited();
    }
}

#[cfg(target_os = "linux")]
fn register() -> bool {
    use rustix::thread::{membarrier, membarrier_query, MembarrierCommand};
    let query = membarrier_query();
    query.contains_command(MembarrierCommand::PrivateExpedited)
        && membarrier(MembarrierCommand::RegisterPrivateExpedited).is_ok()
}

#[cfg(not(target_os = "linux"))]
fn register() -> bool {
    false
}

#[cfg(target_os = "linux")]
fn expedited() {
    use rustix::thread::{membarrier, MembarrierCommand};
    // Once registered, the kernel refuses this only when it cannot allocate a CPU mask.
    for _ in 0..100 {
        if membarrier(MembarrierCommand::PrivateExpedited).is_ok() {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    // Should the kernel keep refusing, threads that claim a counter shard from now on use full
    // fences; threads that already use `light` may then miss the manager's write: such a call
    // can run on a library that is being shut down and get its "not initialized" error. Memory
    // stays valid either way (a slot keeps every library it loaded until it is dropped).
    tracing::error!("membarrier(PRIVATE_EXPEDITED) keeps failing; new threads use full fences");
    ASYMMETRIC.store(false, Ordering::SeqCst);
}

#[cfg(not(target_os = "linux"))]
fn expedited() {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registers_where_membarrier_exists() {
        let asymmetric = enable();
        assert_eq!(asymmetric, is_asymmetric());
        assert_eq!(enable(), asymmetric, "a second call returns the first result");
        if cfg!(target_os = "linux") {
            // Kernels since 4.14 have it; a sandbox that forbids it would show up here.
            assert!(asymmetric, "membarrier(PRIVATE_EXPEDITED) is unavailable on this machine");
        }
        heavy();
        light();
    }
}
