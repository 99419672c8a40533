//! The panicky fixture: panics become `PluginPanicked` errors and the host keeps serving.

use host::{BatchOp, Config, ErrorCode, Op, PluginState};

use crate::util::{load, ready};

#[test]
fn a_panicking_method_returns_plugin_panicked_with_the_message() {
    let plugin = ready("panicky", &Config::new());
    for op in Op::BASIC {
        let err = plugin.call(op, 1.0, 2.0).unwrap_err();
        assert_eq!(err.code(), Some(ErrorCode::PluginPanicked), "{op}: {err}");
        let shown = err.to_string();
        assert!(shown.contains(&format!("{op} panics on purpose")), "{shown}");
        assert!(shown.starts_with(&format!("panicky: {op}: plugin panicked")), "{shown}");
    }
    let err = plugin.status().unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::PluginPanicked));
    let err = plugin.batch(&[BatchOp::new(Op::Add, 1.0, 2.0)]).unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::PluginPanicked));

    // The host and the other plugins keep serving.
    let basic = ready("basic", &Config::new());
    assert_eq!(basic.add(2.0, 2.0).unwrap(), 4.0);
    let err = plugin.add(1.0, 1.0).unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::PluginPanicked), "the plugin can be called again");
}

#[test]
fn a_panic_in_initialize_leaves_the_plugin_in_error() {
    let plugin = load("panicky");
    let err = plugin.initialize(&Config::new().with("mode", "panic-on-initialize")).unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::PluginPanicked));
    assert!(err.to_string().contains("initialize panics on purpose"), "{err}");
    assert_eq!(plugin.status().unwrap().state, PluginState::Error);
    assert_eq!(plugin.add(1.0, 1.0).unwrap_err().code(), Some(ErrorCode::NotInitialized));
}

#[test]
fn internal_errors_cross_with_their_message() {
    let plugin = ready("panicky", &Config::new().with("mode", "internal"));
    let err = plugin.divide(1.0, 2.0).unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::Internal));
    assert_eq!(
        err.to_string(),
        "panicky: divide: internal plugin error: divide is broken on purpose"
    );
    assert_eq!(plugin.status().unwrap().request_count, 1);
}
