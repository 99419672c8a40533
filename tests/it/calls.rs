//! Calls into the basic plugin: results, every error code, lifecycle, threads, batches.

use std::sync::Arc;

use host::{BatchOp, BatchResult, Config, ErrorCode, Op, PluginState};

use crate::util::{load, ready};

#[track_caller]
fn code(result: Result<f64, host::Error>) -> ErrorCode {
    let err = result.expect_err("the call should fail");
    assert!(matches!(err, host::Error::Call { .. }), "{err:?}");
    assert!(err.to_string().starts_with("basic: "), "message does not name the plugin: {err}");
    err.code().expect("a call error has a code")
}

#[test]
fn the_four_operations() {
    let plugin = ready("basic", &Config::new());
    assert_eq!(plugin.add(2.0, 3.0).unwrap(), 5.0);
    assert_eq!(plugin.subtract(2.0, 3.0).unwrap(), -1.0);
    assert_eq!(plugin.multiply(2.5, 4.0).unwrap(), 10.0);
    assert_eq!(plugin.divide(1.0, 4.0).unwrap(), 0.25);
    assert_eq!(plugin.add(0.1, 0.2).unwrap(), 0.3, "rounded to 15 decimal places");
    for op in Op::BASIC {
        assert!(plugin.call(op, 6.0, 3.0).is_ok(), "{op}");
    }
    for op in Op::SCIENTIFIC {
        let err = plugin.call(op, 6.0, 3.0).unwrap_err();
        assert_eq!(err.code(), Some(ErrorCode::Unsupported), "basic has no {op}: {err}");
    }
}

#[test]
fn every_error_code_a_calculation_can_return() {
    let plugin = ready("basic", &Config::new().with("max_value", "1e6"));
    assert_eq!(code(plugin.divide(1.0, 0.0)), ErrorCode::DivisionByZero);
    assert_eq!(code(plugin.add(f64::NAN, 1.0)), ErrorCode::InvalidInput);
    assert_eq!(code(plugin.subtract(1.0, f64::INFINITY)), ErrorCode::InvalidInput);
    assert_eq!(code(plugin.multiply(2e6, 1.0)), ErrorCode::OutOfRange);
    assert_eq!(code(plugin.multiply(1e4, 1e4)), ErrorCode::Overflow);
    let err = plugin.divide(1.0, 0.0).unwrap_err();
    assert_eq!(err.to_string(), "basic: divide: division by zero: cannot divide 1 by zero");
}

#[test]
fn config_is_applied_and_bad_config_is_refused() {
    let plugin = ready("basic", &Config::new().with("precision", "2"));
    assert_eq!(plugin.divide(2.0, 3.0).unwrap(), 0.67);

    let plugin = load("basic");
    let err = plugin.initialize(&Config::new().with("precison", "2")).unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::InvalidInput));
    assert!(err.to_string().contains("unknown config key `precison`"), "{err}");
    let status = plugin.status().unwrap();
    assert_eq!(status.state, PluginState::Error);
    assert!(status.message.contains("precison"), "{}", status.message);
    // A failed initialize may be retried with a good config.
    plugin.initialize(&Config::new()).unwrap();
    assert_eq!(plugin.add(1.0, 1.0).unwrap(), 2.0);
}

#[test]
fn lifecycle_refuses_calls_before_initialize_and_after_shutdown() {
    let plugin = load("basic");
    assert_eq!(code(plugin.add(1.0, 2.0)), ErrorCode::NotInitialized);
    assert_eq!(plugin.status().unwrap().state, PluginState::Uninitialized);

    plugin.initialize(&Config::new()).unwrap();
    let status = plugin.status().unwrap();
    assert_eq!(status.state, PluginState::Ready);
    assert!(status.started_at.is_some());
    assert_eq!(plugin.add(1.0, 2.0).unwrap(), 3.0);

    plugin.shutdown().unwrap();
    assert_eq!(plugin.status().unwrap().state, PluginState::Closed);
    let err = plugin.add(1.0, 2.0).unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::NotInitialized));
    assert!(err.to_string().contains("shut down"), "{err}");
    plugin.shutdown().expect("shutting down twice is not an error");
    let err = plugin.initialize(&Config::new()).unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::NotInitialized), "closed is final: {err}");
}

#[test]
fn status_counts_requests() {
    let plugin = ready("basic", &Config::new());
    for i in 0..100 {
        plugin.add(f64::from(i), 1.0).unwrap();
    }
    let _ = plugin.divide(1.0, 0.0);
    let status = plugin.status().unwrap();
    assert_eq!(status.request_count, 101, "failed calls count too");
    assert!(status.average_latency.is_some(), "the first call is timed");
}

#[test]
fn more_threads_than_counter_shards_lose_no_count() {
    // The plugin counts each thread's calls on a counter of the thread's own, with plain loads
    // and stores, for up to 16 threads at once; the others share one with atomic increments.
    // 24 threads, all alive at once from their first call to their last, use both kinds.
    let plugin = Arc::new(ready("basic", &Config::new()));
    let threads = 24;
    let calls = 10_000u32;
    let batch = [BatchOp::new(Op::Add, 1.0, 2.0); 7];
    let started = std::sync::Barrier::new(threads as usize);
    let finished = std::sync::Barrier::new(threads as usize);
    std::thread::scope(|scope| {
        for t in 0..threads {
            let (plugin, started, finished, batch) = (&plugin, &started, &finished, &batch);
            scope.spawn(move || {
                started.wait();
                for i in 0..calls {
                    let a = f64::from(t * calls + i);
                    assert_eq!(plugin.add(a, 1.0).unwrap(), a + 1.0);
                    assert_eq!(
                        plugin.divide(a, 0.0).unwrap_err().code(),
                        Some(ErrorCode::DivisionByZero)
                    );
                }
                plugin.batch(batch).unwrap();
                finished.wait();
            });
        }
    });
    let status = plugin.status().unwrap();
    let batch_items = batch.len() as u64;
    assert_eq!(status.request_count, u64::from(threads) * (u64::from(calls) * 2 + batch_items));
}

#[test]
fn batch_fills_each_slot_and_one_bad_item_fails_alone() {
    let plugin = ready("basic", &Config::new());
    let ops = [
        BatchOp::new(Op::Add, 1.0, 2.0),
        BatchOp::new(Op::Divide, 1.0, 0.0),
        BatchOp::new(Op::Multiply, f64::NAN, 2.0),
        BatchOp { op: interface::OpCode::from_u8(250), a: 1.0, b: 1.0 },
        BatchOp::new(Op::Subtract, 10.0, 4.0),
    ];
    let results: Vec<_> = plugin.batch(&ops).unwrap().iter().map(BatchResult::result).collect();
    assert_eq!(
        results,
        [
            Ok(3.0),
            Err(ErrorCode::DivisionByZero),
            Err(ErrorCode::InvalidInput),
            Err(ErrorCode::Unsupported),
            Ok(6.0)
        ]
    );
    assert_eq!(plugin.status().unwrap().request_count, 5);

    let big: Vec<_> = (0..100_000).map(|i| BatchOp::new(Op::Multiply, f64::from(i), 2.0)).collect();
    let results = plugin.batch(&big).unwrap();
    assert!(results.iter().enumerate().all(|(i, r)| r.result() == Ok(i as f64 * 2.0)));

    let mut short = [BatchResult::PENDING; 1];
    let err = plugin.process_batch(&ops, &mut short).unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::InvalidInput));
}

#[test]
fn batch_before_initialize_fails_every_item() {
    let plugin = load("basic");
    let results = plugin.batch(&[BatchOp::new(Op::Add, 1.0, 1.0); 3]).unwrap();
    assert!(results.iter().all(|r| r.result() == Err(ErrorCode::NotInitialized)));
}
