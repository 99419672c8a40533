//! The out-of-process rows, kept apart from the rest of the suite: `basic` served by a
//! `calcplug-runner`, called through a shared-memory lane (the default) and over the runner's
//! socket, and the socket ping-pong floor (a child process echoing frames).

use super::*;

/// The out-of-process side: `basic` served by a `calcplug-runner` child process, once called
/// through shared memory (`plugin`, the default) and once over the socket (`socket`).
pub(super) struct Remote {
    pub(super) plugin: Arc<RemotePlugin>,
    pub(super) socket: Arc<RemotePlugin>,
}

impl Remote {
    pub(super) fn start(setup: &Setup) -> Remote {
        let start = |options| {
            let plugin = RemotePlugin::spawn(&setup.library, options).expect("the runner starts");
            plugin.initialize(&Config::new()).expect("basic initializes in the runner");
            Arc::new(plugin)
        };
        let socket = RemoteOptions { channel: Channel::Socket, ..remote_options() };
        Remote { plugin: start(remote_options()), socket: start(socket) }
    }

    /// Each plugin with the id of its rows: `out_of_process` (shared memory) and
    /// `out_of_process_socket`.
    fn channels(&self) -> [(&'static str, &Arc<RemotePlugin>); 2] {
        [("out_of_process", &self.plugin), ("out_of_process_socket", &self.socket)]
    }
}

/// The runner built with the plugin, in release.
pub(super) fn remote_options() -> RemoteOptions {
    RemoteOptions { runner: Some(built().1.clone()), ..RemoteOptions::default() }
}

/// The out-of-process rows: the socket ping-pong floor, a call, and batches.
pub(super) fn out_of_process(
    c: &mut Criterion,
    setup: &Setup,
    remote: &Remote,
    quick: bool,
    run: &mut RunFile,
) {
    let mut group = c.benchmark_group("per_call");
    let mut echo = Echo::start(setup.scratch.path());
    group.bench_function("socket_pingpong", |b| {
        b.iter(|| echo.round_trip());
    });
    for (id, plugin) in remote.channels() {
        group.bench_function(id, |b| {
            b.iter(|| value(plugin.add(black_box(1.0), black_box(2.0))));
        });
    }
    group.finish();
    drop(echo);
    run.criterion("per_call/socket_pingpong");
    for (id, _) in remote.channels() {
        run.criterion(&format!("per_call/{id}"));
    }

    let mut group = batch_group(c, quick);
    for n in BATCH_SIZES {
        for (id, plugin) in remote.channels() {
            let (ops, mut results) = batch_of(&mut group, n);
            group.bench_with_input(BenchmarkId::new(id, n), &ops, |b, ops| {
                b.iter(|| plugin.process_batch(ops, &mut results));
            });
            // Unless a filter left it out, the batch computed.
            if results[n - 1].result() != BatchResult::PENDING.result() {
                let last = results[n - 1].result().map(f64::is_finite);
                assert_eq!(last, Ok(true), "{id}: the batch computed");
            }
            run.criterion(&format!("batch/{id}/{n}"));
        }
    }
    group.finish();
}

/// [`threads`] out of process: every call is timed (at tens of microseconds, the clock is cheap).
pub(super) fn threads_remote(remote: &Remote, quick: bool, run: &mut RunFile) {
    let add = |plugin: &RemotePlugin| {
        black_box(value(plugin.add(black_box(1.0), black_box(2.0))));
    };
    for (id, plugin) in remote.channels() {
        thread_rows(id, plugin, 1, add, quick, run);
    }
}

/// Out-of-process start-up: spawn a runner, handshake, initialize, until the first call answers.
pub(super) fn cold_remote(setup: &Setup, quick: bool, run: &mut RunFile) {
    let runs = if quick { 5 } else { 20 };
    let mut times = Vec::new();
    for _ in 0..runs {
        let start = Instant::now();
        let plugin =
            RemotePlugin::spawn(&setup.library, remote_options()).expect("the runner starts");
        plugin.initialize(&Config::new()).expect("basic initializes in the runner");
        plugin.add(1.0, 2.0).expect("the first call answers");
        times.push(start.elapsed().as_nanos() as f64);
        drop(plugin);
    }
    let (median, min, max) = spread(&mut times);
    note!("cold/out_of_process_first_call: median {:.2} ms", median / 1e6);
    run.extra(
        "cold/out_of_process_first_call",
        json!({ "median_ns": median, "min_ns": min, "max_ns": max, "runs": runs }),
    );
}

/// A child process (this very binary, re-run with [`ECHO_ENV`]) that echoes fixed-size frames
/// over a Unix socket: the floor of any out-of-process call, since waking another process
/// dominates it.
pub(super) struct Echo {
    child: Child,
    stream: UnixStream,
    request: [u8; REQUEST_FRAME],
    answer: [u8; ANSWER_FRAME],
}

impl Echo {
    pub(super) fn start(dir: &Path) -> Echo {
        let socket = dir.join("echo.sock");
        let _ = fs::remove_file(&socket);
        let listener = UnixListener::bind(&socket).expect("bind the echo socket");
        let child = Command::new(env::current_exe().expect("this benchmark's path"))
            .env(ECHO_ENV, &socket)
            .stdin(Stdio::null())
            .spawn()
            .expect("start the echo process");
        let (stream, _) = listener.accept().expect("the echo process connects");
        let mut echo =
            Echo { child, stream, request: [7; REQUEST_FRAME], answer: [0; ANSWER_FRAME] };
        echo.round_trip();
        echo
    }

    pub(super) fn round_trip(&mut self) {
        self.stream.write_all(&self.request).expect("send a frame");
        self.stream.read_exact(&mut self.answer).expect("receive the answer");
    }
}

impl Drop for Echo {
    fn drop(&mut self) {
        // Closing our end makes the child see end-of-file and exit.
        let _ = self.stream.shutdown(std::net::Shutdown::Both);
        let _ = self.child.wait();
    }
}

/// The child's side of [`Echo`]: answer every request frame until the parent hangs up.
pub(super) fn echo(socket: &Path) {
    let mut stream = UnixStream::connect(socket).expect("connect to the benchmark");
    let mut request = [0u8; REQUEST_FRAME];
    let mut answer = [0u8; ANSWER_FRAME];
    while stream.read_exact(&mut request).is_ok() {
        answer[..8].copy_from_slice(&request[..8]);
        if stream.write_all(&answer).is_err() {
            break;
        }
    }
}
