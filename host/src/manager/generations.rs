//! [`Generations`]: every library that served one plugin name, and which one serves now.
//!
//! A call reads the serving library with one atomic load and uses it without a reference count
//! (an `Arc` clone is a locked increment and decrement on every call, on a cache line every
//! calling thread shares). That is sound because nothing is removed: the list only grows, and
//! the libraries in it are freed with it, when the slot is dropped. A replaced library is shut
//! down (its runner stopped, out of process) once its calls are done (`Slot::retire`), and its
//! memory stays: a few hundred bytes per reload, next to the mapping of the library itself,
//! which is never freed (abi_stable never unloads one).

use std::sync::atomic::{AtomicPtr, AtomicUsize, Ordering};

use super::Generation;

/// The append-only list of one name's libraries and a pointer to the serving one.
pub(crate) struct Generations {
    /// Invariant: `serving` points at an element of `all`. `all` is a `boxcar::Vec`, whose
    /// elements live in heap buckets that are never moved or freed before the vector is dropped.
    all: boxcar::Vec<Generation>,
    serving: AtomicPtr<Generation>,
    /// The index of the serving one in `all`, for the manager's side.
    serving_index: AtomicUsize,
}

impl Generations {
    pub(crate) fn new(first: Generation) -> Generations {
        let all = boxcar::Vec::new();
        let index = all.push(first);
        let serving = AtomicPtr::new(std::ptr::from_ref(&all[index]).cast_mut());
        Generations { all, serving, serving_index: AtomicUsize::new(index) }
    }

    /// The library serving now.
    #[inline(always)]
    pub(crate) fn serving(&self) -> &Generation {
        let serving = self.serving.load(Ordering::Acquire);
        // SAFETY: `serving` only ever holds the address of an element of `self.all` (see `new`
        // and `replace`), set after that element was pushed (the `Acquire` here pairs with the
        // store's `Release` half, so the element is initialized). boxcar never moves or frees
        // an element before the vector is dropped, and `self.all` lives as long as `self`, which
        // the returned reference borrows.
        unsafe { &*serving }
    }

    /// Makes `next` serve and returns the library it replaced. Calls that already read the
    /// old one keep using it. The manager's control lock serializes callers.
    pub(crate) fn replace(&self, next: Generation) -> &Generation {
        let index = self.all.push(next);
        let old = self.serving_index.swap(index, Ordering::SeqCst);
        self.serving.store(std::ptr::from_ref(&self.all[index]).cast_mut(), Ordering::SeqCst);
        &self.all[old]
    }

    /// Every library that served the name, oldest first.
    pub(crate) fn iter(&self) -> impl Iterator<Item = &Generation> {
        self.all.iter().map(|(_, generation)| generation)
    }
}
