//! The shared-memory channel between a host and its runner: one *lane* per pooled connection,
//! a sealed `memfd` mapped by both processes, with futex wake-ups.
//!
//! The socket stays what it was (the handshake, the negotiation of a lane, and the transport
//! where shared memory is unavailable); once a connection has a lane, its calls go through the
//! lane and the socket carries nothing more. A lane is [`SIZE`] bytes:
//!
//! ```text
//! offset   written by  field
//!      0   host        request sequence number (the futex the runner sleeps on)
//!      4   host        request kind: FRAME (a wire payload) or BATCH (items in place)
//!      8   host        request length of even requests: payload bytes, or batch items
//!     12   host        closed: the host dropped the lane
//!     16   host        request length of odd requests
//!     64   runner      runner waiting: it sleeps, wake it
//!    128   runner      answer sequence number (the futex the host sleeps on)
//!    132   runner      answer length of even requests: payload bytes
//!    136   runner      answer length of odd requests
//!    192   host        host waiting
//!    256   both        data: a request's wire payload (the same postcard envelope as on the
//!                      socket) from 0, or two batch slots (even and odd requests), each a
//!                      chunk's `BatchOp`s then its `BatchResult`s; the even and odd answers'
//!                      payloads in the last two ANSWER_BYTES of the area
//! ```
//!
//! Requests are numbered and answered in order. A call has one request outstanding; a batch
//! keeps two, one per slot, so the runner computes one chunk while the host copies the previous
//! chunk's results out and the next chunk's operations in.
//!
//! A side publishes with a release store of its sequence number, then a full fence and a look
//! at the other side's *waiting* word: only a sleeping peer costs a `futex` wake. A waiting
//! side spins for a bounded time ([`SPIN`], and only as many threads per process as half the
//! cores, so callers beyond the cores sleep at once instead of stealing the peer's core), then
//! sets its waiting word, re-checks and sleeps on the futex: an idle lane costs no CPU.
//!
//! The host trusts nothing the runner writes: the answer word must move to a request that is
//! outstanding, an answer's length must fit its area, its bytes must be a valid wire frame
//! (copied out before they are decoded); anything else
//! is [`Transport::Malformed`] and the runner is killed. The host waits with the call's
//! deadline, so a runner that never answers is a [`Transport::Timeout`]. The memfd is sealed
//! against shrinking before the runner sees it, so no runner can make the host's mapping fault.
//! A runner that dies is noticed by the process's exit watcher, which marks the process dead
//! and changes every lane's answer word ([`Region::poke`]), so a sleeping caller wakes at once.

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::atomic::{fence, AtomicU32, AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use interface::{BatchOp, BatchResult};
use rustix::mm::{mmap, munmap, MapFlags, ProtFlags};
use rustix::thread::futex;

use super::process::Transport;

/// The header: four cache lines, each written by one side only.
pub(crate) const HEADER: usize = 256;
/// The data area: a wire payload, or a chunk of a batch.
pub(crate) const DATA: usize = 16 << 20;
/// A lane's whole size, the memfd's length.
pub(crate) const SIZE: usize = HEADER + DATA;

/// Byte offsets of the header's words (see the module documentation).
pub(crate) mod offset {
    pub(crate) const REQUEST_SEQ: usize = 0;
    pub(crate) const REQUEST_KIND: usize = 4;
    pub(crate) const REQUEST_LEN: usize = 8;
    pub(crate) const CLOSED: usize = 12;
    pub(crate) const REQUEST_LEN_ODD: usize = 16;
    pub(crate) const RUNNER_WAITING: usize = 64;
    pub(crate) const ANSWER_SEQ: usize = 128;
    pub(crate) const ANSWER_LEN: usize = 132;
    pub(crate) const ANSWER_LEN_ODD: usize = 136;
    pub(crate) const HOST_WAITING: usize = 192;
}

/// A request whose data is a wire payload of `len` bytes.
pub(crate) const KIND_FRAME: u32 = 1;
/// A request whose data is `len` batch items, in place.
pub(crate) const KIND_BATCH: u32 = 2;

/// The room for one answer's payload.
pub(crate) const ANSWER_BYTES: usize = 1 << 20;
/// Where the even request's answer starts in the data area (the odd one's follows it).
const ANSWERS_AT: usize = DATA - 2 * ANSWER_BYTES;
/// The largest request payload.
pub(crate) const REQUEST_BYTES: usize = ANSWERS_AT;

/// The batch items one request carries: small enough that both slots stay in the caches
/// the two processes' cores share.
pub(crate) const CHUNK: usize = 16 << 10;
/// One batch slot: a chunk's operations, then its results (8-aligned: `BatchOp` is 24 bytes).
const SLOT_BYTES: usize = CHUNK * (size_of::<BatchOp>() + size_of::<BatchResult>());
const _: () = assert!(2 * SLOT_BYTES <= ANSWERS_AT);

/// The length word of request `seq` (even or odd).
fn request_len(seq: u32) -> usize {
    if seq.is_multiple_of(2) {
        offset::REQUEST_LEN
    } else {
        offset::REQUEST_LEN_ODD
    }
}

/// The answer length word of request `seq`.
fn answer_len(seq: u32) -> usize {
    if seq.is_multiple_of(2) {
        offset::ANSWER_LEN
    } else {
        offset::ANSWER_LEN_ODD
    }
}

/// Where request `seq`'s answer payload goes in the data area.
fn answer_at(seq: u32) -> usize {
    ANSWERS_AT + (seq % 2) as usize * ANSWER_BYTES
}

/// Where request `seq`'s batch slot starts in the data area.
fn slot_at(seq: u32) -> usize {
    (seq % 2) as usize * SLOT_BYTES
}

/// How long a waiting side spins before it sleeps: a wake-up through the kernel costs tens of
/// microseconds on a virtual machine, a call through a busy lane well under one.
pub(crate) const SPIN: Duration = Duration::from_micros(50);
/// How long a host waiting for a batch chunk spins: about ten chunks' work, so that a batch
/// never pays a wake-up per chunk.
const BATCH_SPIN: Duration = Duration::from_millis(2);

/// The name of a lane's memfd (`/proc/PID/maps` shows `/memfd:calcplug-lane (deleted)`).
pub(crate) const MEMFD_NAME: &str = "calcplug-lane";

/// One lane's shared mapping and the memfd behind it.
#[derive(Debug)]
pub(crate) struct Region {
    base: NonNull<u8>,
    file: File,
}

// SAFETY: the mapping is shared memory that every method reaches only through atomics and
// bounds-checked copies of plain bytes; it stays mapped until the `Region` drops.
unsafe impl Send for Region {}
// SAFETY: as above: nothing hands out a reference into the data area.
unsafe impl Sync for Region {}

impl Region {
    /// The host's side: a new memfd of [`SIZE`] bytes, sealed so that it can neither shrink
    /// nor grow (the runner gets the descriptor; a shrunk file would make our mapping fault).
    pub(crate) fn create() -> io::Result<Region> {
        use rustix::fs::{fcntl_add_seals, memfd_create, MemfdFlags, SealFlags};
        let fd = memfd_create(MEMFD_NAME, MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING)?;
        let file = File::from(fd);
        file.set_len(SIZE as u64)?;
        fcntl_add_seals(&file, SealFlags::SHRINK | SealFlags::GROW | SealFlags::SEAL)?;
        Region::map(file)
    }

    /// The runner's side: the host's memfd, which must be exactly [`SIZE`] bytes.
    pub(crate) fn attach(fd: OwnedFd) -> io::Result<Region> {
        let file = File::from(fd);
        let len = file.metadata()?.len();
        if len != SIZE as u64 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("a lane of {len} bytes, expected {SIZE}"),
            ));
        }
        Region::map(file)
    }

    fn map(file: File) -> io::Result<Region> {
        // SAFETY: a new shared mapping at an address the kernel picks (no hint), of a file at
        // least `SIZE` bytes long that cannot shrink (sealed by the host, checked by `attach`);
        // nothing else in this process refers to it.
        let base = unsafe {
            mmap(
                std::ptr::null_mut(),
                SIZE,
                ProtFlags::READ | ProtFlags::WRITE,
                MapFlags::SHARED,
                &file,
                0,
            )
        }?;
        let base = NonNull::new(base.cast::<u8>())
            .ok_or_else(|| io::Error::other("mmap returned a null mapping"))?;
        Ok(Region { base, file })
    }

    /// The memfd, to pass to the runner.
    pub(crate) fn fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }

    /// A header word, by its [`offset`].
    fn word(&self, at: usize) -> &AtomicU32 {
        assert!(at.is_multiple_of(4) && at + 4 <= HEADER, "a header word at {at}");
        // SAFETY: `at` is inside the header and 4-aligned (the mapping is page-aligned), the
        // mapping lives as long as `&self`, and an `AtomicU32` is valid for any bits another
        // process may write concurrently.
        unsafe { &*self.base.as_ptr().add(at).cast::<AtomicU32>() }
    }

    /// Copies `bytes` into the data area at `at`; false if they do not fit.
    fn put(&self, at: usize, bytes: &[u8]) -> bool {
        if at > DATA || bytes.len() > DATA - at {
            return false;
        }
        // SAFETY: the destination is inside the data area (checked above) and cannot overlap
        // `bytes`, which is this process's private memory.
        unsafe {
            std::ptr::copy_nonoverlapping(
                bytes.as_ptr(),
                self.base.as_ptr().add(HEADER + at),
                bytes.len(),
            );
        }
        true
    }

    /// Replaces `out` with the `len` bytes of the data area at `at`; false if they are not
    /// all inside it.
    fn get(&self, at: usize, len: usize, out: &mut Vec<u8>) -> bool {
        if at > DATA || len > DATA - at {
            return false;
        }
        out.clear();
        out.reserve(len);
        // SAFETY: the source is inside the data area (checked above), the destination has room
        // for `len` bytes (reserved) and is private memory; the bytes are plain `u8`, valid
        // whatever the other process writes meanwhile (a torn payload fails to decode).
        unsafe {
            std::ptr::copy_nonoverlapping(
                self.base.as_ptr().add(HEADER + at),
                out.as_mut_ptr(),
                len,
            );
            out.set_len(len);
        }
        true
    }

    /// The host's side of a batch chunk: copies `ops` into the slot at `slot`.
    fn put_ops(&self, slot: usize, ops: &[BatchOp]) {
        assert!(ops.len() <= CHUNK && slot + SLOT_BYTES <= DATA && slot.is_multiple_of(8));
        // SAFETY: `CHUNK` `BatchOp`s fit from the slot's start (inside the data area and
        // 8-aligned, checked above), which cannot overlap the caller's private slice.
        unsafe {
            std::ptr::copy_nonoverlapping(
                ops.as_ptr(),
                self.base.as_ptr().add(HEADER + slot).cast::<BatchOp>(),
                ops.len(),
            );
        }
    }

    /// The host's side of a batch chunk: copies the slot's results out into `results`.
    fn get_results(&self, slot: usize, results: &mut [BatchResult]) {
        assert!(results.len() <= CHUNK && slot + SLOT_BYTES <= DATA && slot.is_multiple_of(8));
        let at = HEADER + slot + CHUNK * size_of::<BatchOp>();
        // SAFETY: `CHUNK` results fit after the slot's operations (inside the data area and
        // 8-aligned); `BatchResult` is an `f64` and a `u8` code, valid for any bits a runner
        // writes (an unknown code reads as `Internal`).
        unsafe {
            std::ptr::copy_nonoverlapping(
                self.base.as_ptr().add(at).cast::<BatchResult>(),
                results.as_mut_ptr(),
                results.len(),
            );
        }
    }

    /// The runner's side of a batch chunk: the host's `len` items in the slot at `slot` and
    /// their result slots, in place.
    fn batch(&mut self, slot: usize, len: usize) -> Option<(&[BatchOp], &mut [BatchResult])> {
        if len > CHUNK || slot + SLOT_BYTES > DATA || !slot.is_multiple_of(8) {
            return None;
        }
        let data = self.base.as_ptr().wrapping_add(HEADER + slot);
        // SAFETY: both ranges are inside the slot, itself inside the data area (checked
        // above), 8-aligned and disjoint (the results follow `CHUNK` operations); `&mut self`
        // makes them the only references into the area while borrowed, and the host, which
        // wrote the operations, touches this slot again only after the answer. `BatchOp` and
        // `BatchResult` are plain numbers, valid for any bits.
        unsafe {
            let ops = std::slice::from_raw_parts(data.cast::<BatchOp>(), len);
            let results = std::slice::from_raw_parts_mut(
                data.add(CHUNK * size_of::<BatchOp>()).cast::<BatchResult>(),
                len,
            );
            Some((ops, results))
        }
    }

    /// Changes the answer word and wakes a host sleeping on it: the exit watcher's way of
    /// telling a caller that its runner died.
    pub(crate) fn poke(&self) {
        let answer = self.word(offset::ANSWER_SEQ);
        answer.fetch_xor(1 << 31, Ordering::AcqRel);
        let _ = futex::wake(answer, futex::Flags::empty(), i32::MAX as u32);
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly what `map` mapped; every reference into it borrowed `self`.
        let _ = unsafe { munmap(self.base.as_ptr().cast(), SIZE) };
    }
}

/// Waits until `word` is no longer `old`: spins up to `spin` (if a spinner's place is free),
/// then sleeps on the futex with `waiting` set, until `deadline` (`None`: for ever). The new
/// value, or `None` at the deadline.
fn wait_while(
    word: &AtomicU32,
    old: u32,
    waiting: &AtomicU32,
    spin: Duration,
    deadline: Option<Instant>,
) -> Option<u32> {
    let value = word.load(Ordering::Acquire);
    if value != old {
        return Some(value);
    }
    if let Some(_spinner) = Spinner::enter() {
        let start = Instant::now();
        loop {
            for _ in 0..64 {
                std::hint::spin_loop();
                let value = word.load(Ordering::Acquire);
                if value != old {
                    return Some(value);
                }
            }
            if start.elapsed() >= spin {
                break;
            }
        }
    }
    let value = loop {
        waiting.store(1, Ordering::Relaxed);
        // Pairs with the fence in `publish`: either the publisher sees `waiting` and wakes us,
        // or we see its value here (and the futex's own compare covers the gap in between).
        fence(Ordering::SeqCst);
        let value = word.load(Ordering::Acquire);
        if value != old {
            break Some(value);
        }
        let timeout = match deadline {
            None => None,
            Some(deadline) => match deadline.checked_duration_since(Instant::now()) {
                Some(left) if !left.is_zero() => Some(left),
                _ => break None,
            },
        };
        let timespec = timeout.map(|left| futex::Timespec {
            tv_sec: i64::try_from(left.as_secs()).unwrap_or(i64::MAX),
            tv_nsec: i64::from(left.subsec_nanos()),
        });
        // Woken, timed out, interrupted or the value already moved: all mean look again.
        let _ = futex::wait(word, futex::Flags::empty(), old, timespec.as_ref());
    };
    waiting.store(0, Ordering::Relaxed);
    value
}

/// Stores `value` into `word` and wakes the other side if it sleeps on it.
fn publish(word: &AtomicU32, value: u32, waiting: &AtomicU32) {
    word.store(value, Ordering::Release);
    fence(Ordering::SeqCst);
    if waiting.load(Ordering::Relaxed) != 0 {
        let _ = futex::wake(word, futex::Flags::empty(), 1);
    }
}

/// A place among the threads of this process allowed to spin at once: half the cores (at
/// least one), so that spinning never takes the core the other side needs to answer.
struct Spinner;

static SPINNING: AtomicUsize = AtomicUsize::new(0);

impl Spinner {
    fn enter() -> Option<Spinner> {
        static LIMIT: OnceLock<usize> = OnceLock::new();
        let limit = *LIMIT.get_or_init(|| {
            std::thread::available_parallelism().map_or(1, |n| (n.get() / 2).max(1))
        });
        if SPINNING.fetch_add(1, Ordering::Relaxed) < limit {
            Some(Spinner)
        } else {
            SPINNING.fetch_sub(1, Ordering::Relaxed);
            None
        }
    }
}

impl Drop for Spinner {
    fn drop(&mut self) {
        SPINNING.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The host's end of a lane. Dropping it tells the runner's lane thread to end.
#[derive(Debug)]
pub(crate) struct HostLane {
    region: std::sync::Arc<Region>,
    /// The last request's sequence number.
    seq: u32,
    /// The last request whose answer was taken.
    answered: u32,
}

impl HostLane {
    pub(crate) fn new(region: std::sync::Arc<Region>) -> HostLane {
        HostLane { region, seq: 0, answered: 0 }
    }

    /// Sends the wire payload `request` and copies the answer's payload into `answer`.
    /// `dead` says whether the process is gone (its exit watcher's flag).
    pub(crate) fn exchange(
        &mut self,
        request: &[u8],
        answer: &mut Vec<u8>,
        deadline: Instant,
        dead: impl Fn() -> bool,
    ) -> Result<(), Transport> {
        if request.len() > REQUEST_BYTES || !self.region.put(0, request) {
            return Err(Transport::Malformed(format!(
                "a request of {} bytes does not fit a lane's {REQUEST_BYTES}",
                request.len()
            )));
        }
        let seq = self.post(KIND_FRAME, request.len())?;
        self.take(seq, answer, deadline, &dead, SPIN)
    }

    /// Computes a batch in place, [`CHUNK`] items at a time with two chunks outstanding.
    /// After each chunk's answer (its payload in `answer`), `accept` says whether to go on: a
    /// `false` stops the batch.
    pub(crate) fn batch(
        &mut self,
        ops: &[BatchOp],
        results: &mut [BatchResult],
        answer: &mut Vec<u8>,
        deadline: Instant,
        dead: impl Fn() -> bool,
        mut accept: impl FnMut(&[u8]) -> Result<bool, Transport>,
    ) -> Result<(), Transport> {
        debug_assert_eq!(ops.len(), results.len());
        let mut posted = ops.chunks(CHUNK);
        let mut outstanding = std::collections::VecDeque::with_capacity(2);
        for chunk in posted.by_ref().take(2) {
            outstanding.push_back(self.post_chunk(chunk)?);
        }
        let mut stopped = false;
        for results in results.chunks_mut(CHUNK) {
            let Some(seq) = outstanding.pop_front() else { break };
            self.take(seq, answer, deadline, &dead, BATCH_SPIN)?;
            if stopped {
                // The other chunk in flight is still answered (and ignored), so the lane stays
                // in step for the next call.
                continue;
            }
            self.region.get_results(slot_at(seq), results);
            stopped = !accept(answer)?;
            if let (false, Some(chunk)) = (stopped, posted.next()) {
                outstanding.push_back(self.post_chunk(chunk)?);
            }
        }
        Ok(())
    }

    fn post_chunk(&mut self, ops: &[BatchOp]) -> Result<u32, Transport> {
        self.region.put_ops(slot_at(self.seq.wrapping_add(1)), ops);
        self.post(KIND_BATCH, ops.len())
    }

    /// Publishes the next request, whose data is in place; its sequence number.
    fn post(&mut self, kind: u32, len: usize) -> Result<u32, Transport> {
        let len = u32::try_from(len).map_err(|_| Transport::Malformed("too long".to_owned()))?;
        let seq = self.seq.wrapping_add(1);
        self.region.word(offset::REQUEST_KIND).store(kind, Ordering::Relaxed);
        self.region.word(request_len(seq)).store(len, Ordering::Relaxed);
        publish(
            self.region.word(offset::REQUEST_SEQ),
            seq,
            self.region.word(offset::RUNNER_WAITING),
        );
        self.seq = seq;
        Ok(seq)
    }

    /// Waits for request `seq`'s answer (the oldest not yet taken) and copies its payload into
    /// `answer`.
    fn take(
        &mut self,
        seq: u32,
        answer: &mut Vec<u8>,
        deadline: Instant,
        dead: &impl Fn() -> bool,
        spin: Duration,
    ) -> Result<(), Transport> {
        debug_assert_eq!(seq, self.answered.wrapping_add(1));
        let got = wait_while(
            self.region.word(offset::ANSWER_SEQ),
            self.answered,
            self.region.word(offset::HOST_WAITING),
            spin,
            Some(deadline),
        );
        let len = self.region.word(answer_len(seq)).load(Ordering::Acquire);
        check_answer(seq, self.seq, got, len, dead())?;
        self.answered = seq;
        if self.region.get(answer_at(seq), len as usize, answer) {
            Ok(())
        } else {
            Err(Transport::Malformed(format!("an answer of {len} bytes")))
        }
    }
}

/// Whether the answer word and length a runner wrote answer request `seq` (the oldest
/// outstanding; `last` the newest): what a host accepts from the shared region, checked
/// before it reads a byte of the payload. `got` is `None` when the word never moved.
pub(crate) fn check_answer(
    seq: u32,
    last: u32,
    got: Option<u32>,
    len: u32,
    dead: bool,
) -> Result<(), Transport> {
    match got {
        None if dead => Err(Transport::Closed),
        None => Err(Transport::Timeout),
        Some(_) if dead => Err(Transport::Closed),
        Some(got) if got.wrapping_sub(seq) > last.wrapping_sub(seq) => {
            Err(Transport::Malformed(format!("answer {got} to request {seq} in the shared lane")))
        }
        Some(_) if len as usize > ANSWER_BYTES => Err(Transport::Malformed(format!(
            "an answer of {len} bytes in a lane's {ANSWER_BYTES}"
        ))),
        Some(_) => Ok(()),
    }
}

impl Drop for HostLane {
    fn drop(&mut self) {
        self.region.word(offset::CLOSED).store(1, Ordering::Release);
        publish(
            self.region.word(offset::REQUEST_SEQ),
            self.seq.wrapping_add(1),
            self.region.word(offset::RUNNER_WAITING),
        );
    }
}

/// What the host asks on a lane.
pub(crate) enum Asked<'a> {
    /// A wire payload, copied out of the lane.
    Frame(&'a [u8]),
    /// A batch, in place.
    Batch(&'a [BatchOp], &'a mut [BatchResult]),
}

/// The runner's end of a lane.
#[derive(Debug)]
pub(crate) struct RunnerLane {
    region: Region,
    /// The request being answered.
    seq: u32,
    /// The newest request the host published.
    posted: u32,
    payload: Vec<u8>,
}

impl RunnerLane {
    pub(crate) fn new(region: Region) -> RunnerLane {
        RunnerLane { region, seq: 0, posted: 0, payload: Vec::new() }
    }

    /// Waits for the next request (sleeping when the host is idle); `None` once the host
    /// closed the lane, or asked something that is not a request.
    pub(crate) fn next(&mut self) -> Option<Asked<'_>> {
        if self.seq == self.posted {
            self.posted = wait_while(
                self.region.word(offset::REQUEST_SEQ),
                self.seq,
                self.region.word(offset::RUNNER_WAITING),
                SPIN,
                None,
            )?;
        }
        if self.region.word(offset::CLOSED).load(Ordering::Acquire) != 0 {
            return None;
        }
        self.seq = self.seq.wrapping_add(1);
        let kind = self.region.word(offset::REQUEST_KIND).load(Ordering::Relaxed);
        let len = self.region.word(request_len(self.seq)).load(Ordering::Relaxed) as usize;
        match kind {
            KIND_FRAME if len <= REQUEST_BYTES && self.region.get(0, len, &mut self.payload) => {
                Some(Asked::Frame(&self.payload))
            }
            KIND_BATCH => {
                let (ops, results) = self.region.batch(slot_at(self.seq), len)?;
                Some(Asked::Batch(ops, results))
            }
            _ => None,
        }
    }

    /// Answers the request [`RunnerLane::next`] returned with the wire payload `answer`; false
    /// if it does not fit.
    pub(crate) fn answer(&self, answer: &[u8]) -> bool {
        if answer.len() > ANSWER_BYTES || !self.region.put(answer_at(self.seq), answer) {
            return false;
        }
        let len = answer.len() as u32;
        self.region.word(answer_len(self.seq)).store(len, Ordering::Relaxed);
        publish(
            self.region.word(offset::ANSWER_SEQ),
            self.seq,
            self.region.word(offset::HOST_WAITING),
        );
        true
    }
}

/// Sends a lane's memfd over the connection, as `SCM_RIGHTS` with one byte of data.
pub(crate) fn send_fd(socket: impl AsFd, fd: BorrowedFd<'_>) -> io::Result<()> {
    use rustix::net::{sendmsg, SendAncillaryBuffer, SendAncillaryMessage, SendFlags};
    let fds = [fd];
    let mut space = [std::mem::MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !control.push(SendAncillaryMessage::ScmRights(&fds)) {
        return Err(io::Error::other("no room for a descriptor in the control message"));
    }
    let sent = sendmsg(socket, &[io::IoSlice::new(b"L")], &mut control, SendFlags::NOSIGNAL)?;
    if sent == 1 {
        Ok(())
    } else {
        Err(io::Error::new(io::ErrorKind::WriteZero, "the lane's descriptor was not sent"))
    }
}

/// Receives the descriptor [`send_fd`] sent.
pub(crate) fn receive_fd(socket: impl AsFd) -> io::Result<OwnedFd> {
    use rustix::net::{recvmsg, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags};
    let mut byte = [0u8; 1];
    let mut space = [std::mem::MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let received = recvmsg(
        socket,
        &mut [io::IoSliceMut::new(&mut byte)],
        &mut control,
        RecvFlags::CMSG_CLOEXEC,
    )?;
    let mut fds = control.drain().filter_map(|message| match message {
        RecvAncillaryMessage::ScmRights(mut fds) => fds.next(),
        _ => None,
    });
    match (received.bytes, fds.next()) {
        (1, Some(fd)) => Ok(fd),
        (0, _) => Err(io::Error::from(io::ErrorKind::UnexpectedEof)),
        _ => Err(io::Error::new(io::ErrorKind::InvalidData, "expected a lane's descriptor")),
    }
}

#[cfg(test)]
mod tests;
