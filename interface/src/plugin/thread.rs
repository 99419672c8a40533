//! Which counter shard the calling thread owns, found without a call into the dynamic loader.
//!
//! A plugin is a `cdylib` the host maps at run time, so its thread-locals use the general
//! dynamic TLS model: every access is a call to `__tls_get_addr`, about as long as the rest of
//! a call's admission. A thread's *thread pointer* (the `fs` base on x86-64, `tpidr_el0` on
//! AArch64) is one register read and is distinct among the threads alive at once, so it serves
//! as the thread's identity: [`owned_shard`] hashes it to a home slot of a small table of
//! owners, global to the library, and the thread owns shard `i` while `OWNERS[i]` holds its
//! thread pointer. Only the owning thread writes its own pointer into a slot (when it claims
//! one, [`claim`]) or clears it (when it exits, through a thread-local's destructor, which runs
//! off the call path), so a thread that reads its own pointer in a slot owns that slot. A
//! thread that exits without clearing its slot (its thread-locals were never destroyed) leaves
//! it to whichever later thread gets the same thread pointer, which is then the only one
//! writing it; the C library's hand-over of the thread's memory orders the two.
//!
//! Elsewhere the address of a thread-local stands in for the thread pointer (correct, with the
//! loader call back). Threads beyond the table share the last shard with atomic increments.
//!
//! **Architecture Invariant:** with `export.rs`, the only file of `interface` with `unsafe`:
//! the register read.

use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Threads that get a shard of their own at once.
pub(crate) const SHARDS: usize = 16;
/// The shard that every other thread shares.
pub(crate) const SHARED: usize = SHARDS;

/// The thread pointer of each shard's owner; 0 for a free shard.
static OWNERS: [AtomicUsize; SHARDS] = [const { AtomicUsize::new(0) }; SHARDS];

/// The calling thread's shard: on the fast path one register read, a multiplication and a
/// load; [`claim`] the first time (and for a thread whose home slot was taken).
#[inline(always)]
pub(crate) fn owned_shard() -> usize {
    let me = thread_pointer();
    let home = home_slot(me);
    // `Relaxed`: only this thread ever writes `me` into a slot (see the module documentation).
    if OWNERS[home].load(Ordering::Relaxed) == me {
        return home;
    }
    claim(me, home)
}

/// Finds or claims the calling thread's slot, probing from `home`; [`SHARED`] if every slot is
/// taken or the thread is exiting.
#[cold]
#[inline(never)]
fn claim(me: usize, home: usize) -> usize {
    let probe = || (0..SHARDS).map(|step| (home + step) % SHARDS);
    if let Some(slot) = probe().find(|&slot| OWNERS[slot].load(Ordering::Relaxed) == me) {
        return slot;
    }
    thread_local! {
        /// Frees this thread's slot when it exits.
        static RELEASE: Release = const { Release(Cell::new(SHARED)) };
    }
    RELEASE
        .try_with(|release| {
            if release.0.get() != SHARED {
                // Already owns a slot (taken by probing, so not found above only if the table
                // changed): keep it.
                return release.0.get();
            }
            for slot in probe() {
                // `Acquire`: the slot's last owner released its counters with its store of 0.
                if OWNERS[slot]
                    .compare_exchange(0, me, Ordering::Acquire, Ordering::Relaxed)
                    .is_ok()
                {
                    release.0.set(slot);
                    return slot;
                }
            }
            SHARED
        })
        // This thread's thread-locals are being destroyed: it may not claim any more.
        .unwrap_or(SHARED)
}

/// The home slot of a thread pointer: thread pointers are aligned to pages and more, so the
/// bits that differ are mixed into the top ones first.
#[inline(always)]
fn home_slot(thread: usize) -> usize {
    const BITS: u32 = SHARDS.trailing_zeros();
    let mixed = (thread as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    (mixed >> (64 - BITS)) as usize
}

/// Clears the thread's slot in [`OWNERS`] when the thread exits.
struct Release(Cell<usize>);

impl Drop for Release {
    fn drop(&mut self) {
        if let Some(owner) = OWNERS.get(self.0.get()) {
            // `Release`: this thread's counter writes happen before the next owner's claim.
            owner.store(0, Ordering::Release);
        }
    }
}

/// A number that no other live thread has: the thread pointer where it can be read directly.
#[inline(always)]
fn thread_pointer() -> usize {
    #[cfg(all(target_arch = "x86_64", any(target_os = "linux", target_os = "android")))]
    {
        let pointer: usize;
        // SAFETY: the x86-64 TLS ABI keeps the thread pointer itself at `fs:0` for every thread
        // of the process; the read has no side effect and touches no Rust-visible memory.
        unsafe {
            std::arch::asm!(
                "mov {}, qword ptr fs:[0]",
                out(reg) pointer,
                options(nostack, readonly, preserves_flags, pure),
            );
        }
        pointer
    }
    #[cfg(all(target_arch = "aarch64", any(target_os = "linux", target_os = "android")))]
    {
        let pointer: usize;
        // SAFETY: reading `tpidr_el0`, the thread pointer register, has no side effect.
        unsafe {
            std::arch::asm!(
                "mrs {}, tpidr_el0",
                out(reg) pointer,
                options(nostack, nomem, preserves_flags, pure),
            );
        }
        pointer
    }
    #[cfg(not(all(
        any(target_arch = "x86_64", target_arch = "aarch64"),
        any(target_os = "linux", target_os = "android")
    )))]
    {
        thread_local! {
            static ANCHOR: u8 = const { 0 };
        }
        // Only fails while the thread's thread-locals are destroyed; 0 matches no slot.
        ANCHOR.try_with(|anchor| std::ptr::from_ref(anchor) as usize).unwrap_or(0)
    }
}

/// Runs `test` on a thread of its own, alone among the tests that count calls, and waits for
/// that thread to exit: the tests that claim shards then see the whole table.
#[cfg(test)]
pub(crate) fn alone<T: Send>(test: impl FnOnce() -> T + Send) -> T {
    static TABLE: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _table = TABLE.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    std::thread::scope(|scope| match scope.spawn(test).join() {
        Ok(value) => value,
        Err(panic) => std::panic::resume_unwind(panic),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_thread_keeps_its_shard_and_frees_it_when_it_exits() {
        let (mine, again) = alone(|| (owned_shard(), owned_shard()));
        assert_eq!(mine, again);
        assert!(mine < SHARDS, "a shard of its own, not the shared one");
        assert_eq!(OWNERS[mine].load(Ordering::SeqCst), 0, "freed when the thread exited");
    }

    #[test]
    fn live_threads_never_share_an_owned_shard() {
        alone(live_threads_never_share_an_owned_shard_alone);
    }

    fn live_threads_never_share_an_owned_shard_alone() {
        let threads = SHARDS + 4;
        // All claim, then the table is checked while all are alive.
        let claimed = std::sync::Barrier::new(threads + 1);
        let checked = std::sync::Barrier::new(threads + 1);
        let shards: Vec<usize> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..threads)
                .map(|_| {
                    scope.spawn(|| {
                        let shard = owned_shard();
                        claimed.wait();
                        // While all are alive, each keeps what it got (shared or not).
                        let again = owned_shard();
                        checked.wait();
                        assert_eq!(again, shard);
                        shard
                    })
                })
                .collect();
            claimed.wait();
            let free = OWNERS.iter().filter(|o| o.load(Ordering::SeqCst) == 0).count();
            checked.wait();
            assert_eq!(free, 0, "{threads} threads, yet a shard was left free");
            handles.into_iter().map(|t| t.join().unwrap()).collect()
        });
        let mut owned: Vec<usize> = shards.iter().copied().filter(|&s| s != SHARED).collect();
        let count = owned.len();
        owned.sort_unstable();
        owned.dedup();
        assert_eq!(owned.len(), count, "two live threads own one shard: {shards:?}");
        assert!(count > 0, "{shards:?}");
    }
}
