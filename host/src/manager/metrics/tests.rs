//! The counters, the sampling rules and the latency histogram.

use super::*;

#[test]
fn every_operation_has_its_own_slot_and_batch_the_last() {
    assert_eq!(BATCH, Op::ALL.len());
    assert_eq!(OPS, Op::ALL.len() + 1);
    for (i, op) in Op::ALL.into_iter().enumerate() {
        assert_eq!(op_index(op), i, "{op}");
        assert_eq!(op_name(op_index(op)), op.name());
    }
    assert_eq!(op_name(BATCH), "process_batch");
}

/// More threads than shards: the ones beyond share the last shard, and every call counts.
#[test]
fn threads_beyond_the_shards_share_one_and_nothing_is_lost() {
    let metrics = Metrics::new();
    // All alive at once (each holds its shard until all have one, or 10 s have passed,
    // so that a thread that panics fails the test rather than hanging it), so that four
    // of them cannot get a shard of their own.
    let arrived = AtomicU64::new(0);
    let deadline = Instant::now() + Duration::from_secs(10);
    std::thread::scope(|scope| {
        for _ in 0..SHARDS + 4 {
            scope.spawn(|| {
                metrics.shard().enter();
                arrived.fetch_add(1, Ordering::SeqCst);
                while arrived.load(Ordering::SeqCst) < SHARDS as u64 + 4
                    && Instant::now() < deadline
                {
                    std::thread::yield_now();
                }
                metrics.shard().finish(op_index(Op::Add));
                for _ in 0..99 {
                    let shard = metrics.shard();
                    shard.enter();
                    shard.finish(op_index(Op::Add));
                }
            });
        }
    });
    assert_eq!(metrics.in_flight(), 0);
    assert_eq!(metrics.snapshot()[0].calls, (SHARDS as u64 + 4) * 100);
}

#[test]
fn in_flight_is_entered_minus_finished_and_refused_and_marks_are_passed_in_order() {
    let metrics = Metrics::new();
    let shard = metrics.shard();
    let tickets: Vec<u64> = (0..5).map(|_| shard.enter()).collect();
    assert_eq!(tickets, [0, 1, 2, 3, 4]);
    assert_eq!((metrics.in_flight(), metrics.rejected()), (5, 0));
    let marks = metrics.marks();
    shard.finish(op_index(Op::Add));
    shard.finish(BATCH);
    shard.reject();
    assert_eq!((metrics.in_flight(), metrics.rejected()), (2, 1));
    assert!(!metrics.passed(&marks), "two calls before the mark are still running");
    shard.error(op_index(Op::Divide), ErrorCode::DivisionByZero);
    shard.finish(op_index(Op::Divide));
    shard.retry(op_index(Op::Divide));
    shard.finish(op_index(Op::Divide));
    assert_eq!(metrics.in_flight(), 0);
    assert!(metrics.passed(&marks));
    let snapshot = metrics.snapshot();
    let names: Vec<&str> = snapshot.iter().map(|m| m.op).collect();
    assert_eq!(names, ["add", "divide", "process_batch"]);
    let divide = &snapshot[1];
    assert_eq!((divide.calls, divide.retries), (2, 1));
    assert_eq!(divide.errors, [(ErrorCode::DivisionByZero, 1)]);
    assert_eq!((divide.error_count(), divide.success_rate()), (1, 0.5));
    assert_eq!((snapshot[0].error_count(), snapshot[0].success_rate()), (0, 1.0));
    assert_eq!(snapshot[0].latency, None, "nothing was timed");
    let started = Instant::now().checked_sub(Duration::from_micros(200)).unwrap();
    metrics.record_latency(op_index(Op::Add), started);
    let latency = metrics.snapshot()[0].latency.expect("one timed call");
    assert_eq!(latency.sampled, 1);
    assert!(latency.max >= Duration::from_micros(200), "{latency:?}");
}

#[test]
fn the_gate_times_one_call_in_sample_every_and_none_when_closed() {
    let every = (0..200).collect::<Vec<u64>>();
    let timed_of = |gate: u64| -> Vec<u64> { (0..200).filter(|t| timed(*t, gate)).collect() };
    let missed = |gate: u64| -> Vec<u64> { (0..200).filter(|t| !passes(*t, gate)).collect() };
    for gate in [sample_mask(64, true), sample_mask(64, false), sample_mask(1, true), 0] {
        assert_eq!(missed(gate), timed_of(gate), "a timed call leaves the fast path");
    }
    assert_eq!(timed_of(sample_mask(64, true)), [0, 64, 128, 192]);
    assert_eq!(timed_of(sample_mask(1024, true)), [0]);
    assert_eq!(timed_of(sample_mask(1, true)), every, "1 times every call");
    assert_eq!(timed_of(sample_mask(64, false)), every, "another process: every call");
    for in_process in [true, false] {
        let off = sample_mask(0, in_process);
        assert_eq!(timed_of(off), [0u64; 0], "0 turns timing off");
        assert_eq!(missed(off), [0], "a thread's first call leaves the fast path");
        assert!(passes(u64::MAX, off) && passes(1 << 63, off));
    }
    // A closed gate (a library that is not `Ready`) lets no call through.
    assert_eq!(missed(0), every);
}

#[test]
fn buckets_cover_their_values() {
    for v in [0, 1, 15, 16, 17, 31, 32, 100, 1_000, 123_456, 10_000_000_000] {
        let b = bucket_of(v);
        assert!(bucket_high(b) >= v, "{v} in bucket {b} up to {}", bucket_high(b));
        if b > 0 {
            assert!(bucket_high(b - 1) < v, "{v}: previous bucket reaches it");
        }
        assert!(b < BUCKETS);
    }
    assert_eq!(bucket_of(u64::MAX), BUCKETS - 1);
}

#[test]
fn quantiles_are_within_an_eighth() {
    let h = Histogram::default();
    for v in 1..=1000u64 {
        h.record(v * 1000);
    }
    let l = h.summary().unwrap();
    assert_eq!(l.sampled, 1000);
    assert_eq!(l.max, Duration::from_micros(1000));
    let p50 = l.p50.as_nanos() as f64;
    assert!((500_000.0..=500_000.0 * 1.125).contains(&p50), "{p50}");
    let p99 = l.p99.as_nanos() as f64;
    assert!((990_000.0..=1_000_000.0).contains(&p99), "{p99}");
}
