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
//!      8   host        request length: payload bytes, or batch items
//!     12   host        closed: the host dropped the lane
//!     64   runner      runner waiting: it sleeps, wake it
//!    128   runner      answer sequence number (the futex the host sleeps on)
//!    132   runner      answer length: payload bytes
//!    192   host        host waiting
//!    256   both        data: a wire payload (the same postcard envelope as on the socket), or
//!                      a batch's `BatchOp`s from 0 and its `BatchResult`s from RESULTS_AT
//! ```
//!
//! A side publishes with a release store of its sequence number, then a full fence and a look
//! at the other side's *waiting* word: only a sleeping peer costs a `futex` wake. A waiting
//! side spins for a bounded time ([`SPIN`], and only as many threads per process as half the
//! cores, so callers beyond the cores sleep at once instead of stealing the peer's core), then
//! sets its waiting word, re-checks and sleeps on the futex: an idle lane costs no CPU.
//!
//! The host trusts nothing the runner writes: an answer's sequence number must be exactly the
//! request's, its length at most the data area, its bytes a valid wire frame; anything else
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
    pub(crate) const RUNNER_WAITING: usize = 64;
    pub(crate) const ANSWER_SEQ: usize = 128;
    pub(crate) const ANSWER_LEN: usize = 132;
    pub(crate) const HOST_WAITING: usize = 192;
}

/// A request whose data is a wire payload of `len` bytes.
pub(crate) const KIND_FRAME: u32 = 1;
/// A request whose data is `len` batch items, in place.
pub(crate) const KIND_BATCH: u32 = 2;

/// The most batch items one request carries: each needs its `BatchOp` and its `BatchResult`.
pub(crate) const BATCH_ITEMS: usize = DATA / (size_of::<BatchOp>() + size_of::<BatchResult>());
/// Where a batch's results start in the data area (8-aligned: `BatchOp` is 24 bytes).
const RESULTS_AT: usize = BATCH_ITEMS * size_of::<BatchOp>();

/// How long a waiting side spins before it sleeps: a wake-up through the kernel costs tens of
/// microseconds on a virtual machine, a call through a busy lane well under one.
pub(crate) const SPIN: Duration = Duration::from_micros(50);

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

    /// Replaces `out` with the `len` bytes of the data area at 0; false if `len` is past it.
    fn get(&self, len: usize, out: &mut Vec<u8>) -> bool {
        if len > DATA {
            return false;
        }
        out.clear();
        out.reserve(len);
        // SAFETY: the source is inside the data area (checked above), the destination has room
        // for `len` bytes (reserved) and is private memory; the bytes are plain `u8`, valid
        // whatever the other process writes meanwhile (a torn payload fails to decode).
        unsafe {
            std::ptr::copy_nonoverlapping(self.base.as_ptr().add(HEADER), out.as_mut_ptr(), len);
            out.set_len(len);
        }
        true
    }

    /// The host's side of a batch chunk: copies `ops` into the data area.
    fn put_ops(&self, ops: &[BatchOp]) {
        assert!(ops.len() <= BATCH_ITEMS);
        // SAFETY: `BATCH_ITEMS` `BatchOp`s fit from the data area's start (8-aligned), which
        // cannot overlap the caller's private slice.
        unsafe {
            std::ptr::copy_nonoverlapping(
                ops.as_ptr(),
                self.base.as_ptr().add(HEADER).cast::<BatchOp>(),
                ops.len(),
            );
        }
    }

    /// The host's side of a batch chunk: copies the results out into `results`.
    fn get_results(&self, results: &mut [BatchResult]) {
        assert!(results.len() <= BATCH_ITEMS);
        // SAFETY: `BATCH_ITEMS` results fit from `RESULTS_AT` (8-aligned) to the area's end;
        // `BatchResult` is an `f64` and a `u8` code, valid for any bits a runner writes (an
        // unknown code reads as `Internal`).
        unsafe {
            std::ptr::copy_nonoverlapping(
                self.base.as_ptr().add(HEADER + RESULTS_AT).cast::<BatchResult>(),
                results.as_mut_ptr(),
                results.len(),
            );
        }
    }

    /// The runner's side of a batch: the host's `len` items and their result slots, in place.
    fn batch(&mut self, len: usize) -> Option<(&[BatchOp], &mut [BatchResult])> {
        if len > BATCH_ITEMS {
            return None;
        }
        let data = self.base.as_ptr().wrapping_add(HEADER);
        // SAFETY: both ranges are inside the data area, 8-aligned and disjoint (`RESULTS_AT`
        // is past the last op); `&mut self` makes them the only references into the area
        // while borrowed, and the host, which wrote the ops, waits for the answer before it
        // touches the area again. `BatchOp` and `BatchResult` are plain numbers, valid for
        // any bits.
        unsafe {
            let ops = std::slice::from_raw_parts(data.cast::<BatchOp>(), len);
            let results =
                std::slice::from_raw_parts_mut(data.add(RESULTS_AT).cast::<BatchResult>(), len);
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
}

impl HostLane {
    pub(crate) fn new(region: std::sync::Arc<Region>) -> HostLane {
        HostLane { region, seq: 0 }
    }

    /// Sends the wire payload `request` and copies the answer's payload into `answer`.
    /// `dead` is the process's liveness flag, set by its exit watcher.
    pub(crate) fn exchange(
        &mut self,
        request: &[u8],
        answer: &mut Vec<u8>,
        deadline: Instant,
        dead: impl Fn() -> bool,
    ) -> Result<(), Transport> {
        if !self.region.put(0, request) {
            return Err(Transport::Malformed(format!(
                "a request of {} bytes does not fit a lane of {DATA}",
                request.len()
            )));
        }
        self.send(KIND_FRAME, request.len())?;
        self.receive(answer, deadline, dead)
    }

    /// Sends one chunk of a batch (at most [`BATCH_ITEMS`]) in place, copies the results back
    /// and the answer's payload (`Done` or an error) into `answer`.
    pub(crate) fn batch(
        &mut self,
        ops: &[BatchOp],
        results: &mut [BatchResult],
        answer: &mut Vec<u8>,
        deadline: Instant,
        dead: impl Fn() -> bool,
    ) -> Result<(), Transport> {
        debug_assert_eq!(ops.len(), results.len());
        self.region.put_ops(ops);
        self.send(KIND_BATCH, ops.len())?;
        self.receive(answer, deadline, dead)?;
        self.region.get_results(results);
        Ok(())
    }

    fn send(&mut self, kind: u32, len: usize) -> Result<(), Transport> {
        let len = u32::try_from(len).map_err(|_| Transport::Malformed("too long".to_owned()))?;
        self.seq = self.seq.wrapping_add(1);
        self.region.word(offset::REQUEST_KIND).store(kind, Ordering::Relaxed);
        self.region.word(offset::REQUEST_LEN).store(len, Ordering::Relaxed);
        publish(
            self.region.word(offset::REQUEST_SEQ),
            self.seq,
            self.region.word(offset::RUNNER_WAITING),
        );
        Ok(())
    }

    fn receive(
        &self,
        answer: &mut Vec<u8>,
        deadline: Instant,
        dead: impl Fn() -> bool,
    ) -> Result<(), Transport> {
        let before = self.seq.wrapping_sub(1);
        let got = wait_while(
            self.region.word(offset::ANSWER_SEQ),
            before,
            self.region.word(offset::HOST_WAITING),
            SPIN,
            Some(deadline),
        );
        let len = self.region.word(offset::ANSWER_LEN).load(Ordering::Acquire);
        check_answer(self.seq, got, len, dead())?;
        if self.region.get(len as usize, answer) {
            Ok(())
        } else {
            Err(Transport::Malformed(format!("an answer of {len} bytes")))
        }
    }
}

/// Whether the answer word and length a runner wrote are the answer to request `seq`: what a
/// host accepts from the shared region, checked before it reads a byte of the payload.
pub(crate) fn check_answer(
    seq: u32,
    got: Option<u32>,
    len: u32,
    dead: bool,
) -> Result<(), Transport> {
    match got {
        None if dead => Err(Transport::Closed),
        None => Err(Transport::Timeout),
        Some(_) if dead => Err(Transport::Closed),
        Some(got) if got != seq => {
            Err(Transport::Malformed(format!("answer {got} to request {seq} in the shared lane")))
        }
        Some(_) if len as usize > DATA => {
            Err(Transport::Malformed(format!("an answer of {len} bytes in a lane of {DATA}")))
        }
        Some(_) => Ok(()),
    }
}

impl Drop for HostLane {
    fn drop(&mut self) {
        self.region.word(offset::CLOSED).store(1, Ordering::Relaxed);
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
    /// The last request's sequence number.
    seq: u32,
    payload: Vec<u8>,
}

impl RunnerLane {
    pub(crate) fn new(region: Region) -> RunnerLane {
        RunnerLane { region, seq: 0, payload: Vec::new() }
    }

    /// Waits for the next request (sleeping when the host is idle); `None` once the host
    /// closed the lane, or asked something that is not a request.
    pub(crate) fn next(&mut self) -> Option<Asked<'_>> {
        let seq = wait_while(
            self.region.word(offset::REQUEST_SEQ),
            self.seq,
            self.region.word(offset::RUNNER_WAITING),
            SPIN,
            None,
        )?;
        self.seq = seq;
        if self.region.word(offset::CLOSED).load(Ordering::Acquire) != 0 {
            return None;
        }
        let kind = self.region.word(offset::REQUEST_KIND).load(Ordering::Relaxed);
        let len = self.region.word(offset::REQUEST_LEN).load(Ordering::Relaxed) as usize;
        match kind {
            KIND_FRAME if self.region.get(len, &mut self.payload) => {
                Some(Asked::Frame(&self.payload))
            }
            KIND_BATCH => {
                let (ops, results) = self.region.batch(len)?;
                Some(Asked::Batch(ops, results))
            }
            _ => None,
        }
    }

    /// Answers the request [`RunnerLane::next`] returned with the wire payload `answer`.
    pub(crate) fn answer(&self, answer: &[u8]) -> bool {
        if !self.region.put(0, answer) {
            return false;
        }
        let len = answer.len() as u32;
        self.region.word(offset::ANSWER_LEN).store(len, Ordering::Relaxed);
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
mod tests {
    use proptest::prelude::*;

    use super::super::wire::{self, Response};
    use super::*;

    /// What a runner may have written when the host looks: the answer word (unchanged, the
    /// request's, or anything), the answer length (small, or anything) and payload bytes.
    fn written() -> impl Strategy<Value = (u8, u32, u32, Vec<u8>)> {
        (
            0u8..3,
            any::<u32>(),
            prop_oneof![0u32..80, any::<u32>()],
            proptest::collection::vec(any::<u8>(), 0..80),
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]

        /// Whatever a runner writes into a real lane, the host takes exactly the answer to its
        /// request, of a length inside the lane, copies those bytes and no others, and their
        /// decoding never panics; anything else is an error of the right kind, at once.
        #[test]
        fn a_host_reads_only_the_answer_to_its_request_inside_the_lane(
            requests in 1u32..5, (which, word, len, bytes) in written(), dead: bool,
        ) {
            let region = std::sync::Arc::new(Region::create().unwrap());
            let mut lane = HostLane::new(std::sync::Arc::clone(&region));
            for _ in 0..requests {
                lane.send(KIND_FRAME, 0).unwrap();
            }
            let seq = lane.seq;
            // The previous request's answer, as a runner leaves it.
            region.word(offset::ANSWER_SEQ).store(seq.wrapping_sub(1), Ordering::Relaxed);
            let got = match which {
                0 => seq.wrapping_sub(1),
                1 => seq,
                _ => word,
            };
            region.word(offset::ANSWER_SEQ).store(got, Ordering::Relaxed);
            region.word(offset::ANSWER_LEN).store(len, Ordering::Relaxed);
            prop_assert!(region.put(0, &bytes));
            let mut answer = vec![0xAA; 3];
            let started = Instant::now();
            let verdict = lane.receive(&mut answer, Instant::now(), || dead);
            prop_assert!(started.elapsed() < Duration::from_secs(1));
            let changed = got != seq.wrapping_sub(1);
            match verdict {
                Ok(()) => {
                    prop_assert!(got == seq && (len as usize) <= DATA && !dead);
                    prop_assert_eq!(answer.len(), len as usize);
                    let shown = bytes.len().min(answer.len());
                    prop_assert_eq!(&answer[..shown], &bytes[..shown]);
                    let _ = wire::decode::<Response>(&answer);
                }
                Err(Transport::Closed) => prop_assert!(dead),
                Err(Transport::Timeout) => prop_assert!(!changed && !dead),
                Err(Transport::Malformed(reason)) => {
                    prop_assert!(changed && !dead, "{}", reason);
                    prop_assert!(got != seq || len as usize > DATA, "{}", reason);
                }
            }
        }
    }

    #[test]
    fn a_lane_is_sealed_against_resizing_and_passes_between_sockets() {
        let region = Region::create().unwrap();
        let file = File::from(region.fd().try_clone_to_owned().unwrap());
        assert!(file.set_len(0).is_err(), "shrinking must be refused");
        assert!(file.set_len(SIZE as u64 * 2).is_err(), "growing must be refused");
        let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        send_fd(&a, region.fd()).unwrap();
        let attached = Region::attach(receive_fd(&b).unwrap()).unwrap();
        attached.word(offset::ANSWER_LEN).store(42, Ordering::Relaxed);
        assert_eq!(region.word(offset::ANSWER_LEN).load(Ordering::Relaxed), 42);
        // A memfd of another size is refused.
        let other = rustix::fs::memfd_create("other", rustix::fs::MemfdFlags::CLOEXEC).unwrap();
        let err = Region::attach(other).unwrap_err();
        assert_eq!(err.to_string(), format!("a lane of 0 bytes, expected {SIZE}"));
    }
}
