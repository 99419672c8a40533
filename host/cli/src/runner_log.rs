//! The runner's logging: plain `LEVEL target: message` lines on stderr, which the host reads
//! and re-emits as its own `tracing` events (`host::remote`'s log forwarding).
//!
//! Shared by `calcplug` (when it is started as its own runner) and `calcplug-runner`.

/// Installs the runner's subscriber: `CALCPLUG_RUNNER_LOG` (any `tracing` filter), else
/// `info`; no colour and no time, which the host adds.
pub(crate) fn init() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("CALCPLUG_RUNNER_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(filter)
        .with_ansi(false)
        .without_time()
        .try_init();
}
