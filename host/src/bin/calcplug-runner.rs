//! `calcplug-runner`: the child process of the out-of-process mode.
//!
//! The host starts it as `calcplug-runner serve LIBRARY DIR` with the magic cookie in the
//! environment; it is not meant to be run by hand (see `host::remote::runner_main`).

#[cfg(unix)]
fn main() -> std::process::ExitCode {
    host::remote::runner_main()
}

#[cfg(not(unix))]
fn main() -> std::process::ExitCode {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "the out-of-process mode needs Unix domain sockets");
    std::process::ExitCode::from(1)
}
