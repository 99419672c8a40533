//! The lane protocol against a runner that writes anything, and the memfd's seals.

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

    /// Whatever a runner writes into a real lane, the host takes exactly the answer to an
    /// outstanding request, of a length inside its area, copies those bytes and no others,
    /// and their decoding never panics; anything else is an error of the right kind, at
    /// once.
    #[test]
    fn a_host_reads_only_an_answer_to_its_request_inside_the_lane(
        start: u32, outstanding in 1u32..3, (which, word, len, bytes) in written(), dead: bool,
    ) {
        let region = std::sync::Arc::new(Region::create().unwrap());
        let mut lane = HostLane::new(std::sync::Arc::clone(&region));
        // Requests numbered from anywhere (the numbers wrap), one or two outstanding.
        (lane.seq, lane.answered) = (start, start);
        region.word(offset::ANSWER_SEQ).store(start, Ordering::Relaxed);
        let seq = lane.post(KIND_FRAME, 0).unwrap();
        if outstanding == 2 {
            lane.post(KIND_FRAME, 0).unwrap();
        }
        let got = match which {
            0 => start,
            1 => seq.wrapping_add(word % outstanding),
            _ => word,
        };
        region.word(offset::ANSWER_SEQ).store(got, Ordering::Relaxed);
        region.word(answer_len(seq)).store(len, Ordering::Relaxed);
        prop_assert!(region.put(answer_at(seq), &bytes));
        let mut answer = vec![0xAA; 3];
        let started = Instant::now();
        let verdict = lane.take(seq, &mut answer, Instant::now(), &|| dead, SPIN);
        prop_assert!(started.elapsed() < Duration::from_secs(1));
        let changed = got != start;
        let answers_it = got.wrapping_sub(seq) < outstanding;
        match verdict {
            Ok(()) => {
                prop_assert!(answers_it && (len as usize) <= ANSWER_BYTES && !dead);
                prop_assert_eq!(answer.len(), len as usize);
                let shown = bytes.len().min(answer.len());
                prop_assert_eq!(&answer[..shown], &bytes[..shown]);
                let _ = wire::decode::<Response>(&answer);
            }
            Err(Transport::Closed) => prop_assert!(dead),
            Err(Transport::Timeout) => prop_assert!(!changed && !dead),
            Err(Transport::Malformed(reason)) => {
                prop_assert!(changed && !dead, "{}", reason);
                prop_assert!(!answers_it || len as usize > ANSWER_BYTES, "{}", reason);
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
