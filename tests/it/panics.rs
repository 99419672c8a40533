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

#[test]
fn on_panic_disable_stops_serving_a_plugin_that_panicked() {
    let dir = crate::util::scratch();
    crate::util::copy_as(
        &crate::util::artifacts().library("panicky"),
        dir.path(),
        &tests::library_file_name("panicky"),
    );
    let parse = |toml: &str| {
        let config = host::ManagerConfig::parse(toml, &dir.path().join("calcplug.toml")).unwrap();
        host::PluginManager::start(config.with_paths(&[dir.path().to_owned()])).unwrap()
    };

    let keep = parse("");
    let handle = keep.get("panicky").unwrap();
    for _ in 0..2 {
        let err = handle.add(1.0, 1.0).unwrap_err();
        assert_eq!(err.code(), Some(ErrorCode::PluginPanicked), "keeps serving: {err}");
    }
    drop(keep);

    let disable = parse("[security]\non_panic = \"disable\"\n");
    let handle = disable.get("panicky").unwrap();
    let err = handle.add(1.0, 1.0).unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::PluginPanicked), "{err}");
    let err = handle.add(1.0, 1.0).unwrap_err();
    assert!(matches!(err, host::Error::NotServing { .. }), "disabled after the panic: {err:?}");
    let status = disable.status();
    let panicky = status.plugins.iter().find(|p| p.name == "panicky").unwrap();
    assert_eq!(panicky.state, host::LifecycleState::Error);
    assert!(panicky.last_error.as_deref().is_some_and(|e| e.contains("add panics on purpose")));
}
