//! `calcplug-runner`: the child process of the out-of-process mode.
//!
//! The host starts it as `calcplug-runner serve LIBRARY DIR` with the magic cookie in the
//! environment; it is not meant to be run by hand (see `host::remote::runner_main`).

#[path = "../runner_log.rs"]
mod runner_log;

fn main() -> std::process::ExitCode {
    runner_log::init();
    host::remote::runner_main()
}
