//! Every backend from inside a tokio runtime of each flavour, through the blocking API and
//! through [`AsyncHandle`]: made, called and dropped on a runtime thread, with exact answers and
//! errors. (Each gRPC connection and fleet once ran a private runtime's `block_on` on the
//! caller's thread, which panics there: "Cannot start a runtime from within a runtime".) Then
//! what only the async API promises: a hung call holds no thread of a current-thread runtime,
//! and dropped futures leave the handle serving.

use std::time::Duration;

use host::fleet::{Endpoint, Fleet, FleetOptions, Targets};
use host::remote::{Channel, RemoteOptions, RemotePlugin};
use host::{
    AsyncHandle, BatchOp, BatchResult, Config, Error, ErrorCode, Op, PluginHandle, PluginManager,
};

use crate::fleet::{certs, mutual, start_mutual, TIMEOUT};
use crate::util::{artifacts, copy_as, scratch};

/// Runs `body` on a current-thread runtime's thread, then in a task on a multi-thread
/// runtime's worker; returns what each gave, in that order.
fn in_each_runtime<T, F>(body: F) -> [T; 2]
where
    F: Fn() -> T + Send + Sync + Clone + 'static,
    T: Send + 'static,
{
    let current = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let first = current.block_on({
        let body = body.clone();
        async move { body() }
    });
    let multi =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let second = multi.block_on(async move { tokio::spawn(async move { body() }).await.unwrap() });
    [first, second]
}

/// [`in_each_runtime`] for an async `body`: awaited on the current-thread runtime, then as a
/// task of the multi-thread one.
fn in_each_runtime_async<T, F, Fut>(body: F) -> [T; 2]
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = T> + Send + 'static,
    T: Send + 'static,
{
    let current = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let first = current.block_on(body());
    let multi =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let second = multi.block_on(async move { tokio::spawn(body()).await.unwrap() });
    [first, second]
}

/// What a handle answers: `add(2, 3)`, the error code of `divide(1, 0)` and a two-item batch.
type Answers = (f64, Option<ErrorCode>, Vec<Result<f64, ErrorCode>>);

fn answers(plugin: &dyn PluginHandle) -> Answers {
    let sum = plugin.call(Op::Add, 2.0, 3.0).unwrap_or_else(|err| panic!("{err}"));
    let code = plugin.call(Op::Divide, 1.0, 0.0).unwrap_err().code();
    let batch = plugin
        .batch(&[BatchOp::new(Op::Multiply, 4.0, 5.0), BatchOp::new(Op::Divide, 1.0, 0.0)])
        .unwrap_or_else(|err| panic!("{err}"));
    (sum, code, batch.iter().map(BatchResult::result).collect())
}

fn expected() -> Answers {
    (5.0, Some(ErrorCode::DivisionByZero), vec![Ok(20.0), Err(ErrorCode::DivisionByZero)])
}

async fn answers_async(plugin: &AsyncHandle<Box<dyn PluginHandle>>) -> Answers {
    let sum = plugin.add(2.0, 3.0).await.unwrap_or_else(|err| panic!("{err}"));
    let code = plugin.divide(1.0, 0.0).await.unwrap_err().code();
    let ops = vec![BatchOp::new(Op::Multiply, 4.0, 5.0), BatchOp::new(Op::Divide, 1.0, 0.0)];
    let batch = plugin.batch(ops).await.unwrap_or_else(|err| panic!("{err}"));
    (sum, code, batch.iter().map(BatchResult::result).collect())
}

/// Made, initialized, asked and dropped inside each runtime: through the blocking API, then
/// through the async one.
fn check(make: impl Fn() -> Box<dyn PluginHandle> + Send + Sync + Clone + 'static) {
    let blocking = make.clone();
    let got = in_each_runtime(move || {
        let plugin = blocking();
        plugin.initialize(&Config::new()).unwrap_or_else(|err| panic!("{err}"));
        answers(&*plugin)
    });
    assert_eq!(got, [expected(), expected()], "the blocking API");
    let got = in_each_runtime_async(|| {
        let make = make.clone();
        async move {
            let plugin = AsyncHandle::new(make());
            plugin.get_ref().initialize(&Config::new()).unwrap_or_else(|err| panic!("{err}"));
            answers_async(&plugin).await
        }
    });
    assert_eq!(got, [expected(), expected()], "the async API");
}

fn runner(channel: Channel) -> Box<dyn PluginHandle> {
    let options =
        RemoteOptions { runner: Some(artifacts().runner.clone()), channel, ..Default::default() };
    Box::new(RemotePlugin::spawn(artifacts().library("basic"), options).unwrap())
}

#[test]
fn an_in_process_plugin_is_called_from_inside_a_runtime() {
    check(|| Box::new(crate::util::load("basic")));
}

#[test]
fn a_runner_is_called_over_its_lanes_and_its_socket_from_inside_a_runtime() {
    check(|| runner(Channel::SharedMemory));
    check(|| runner(Channel::Socket));
}

#[test]
fn a_go_plugin_is_started_and_called_from_inside_a_runtime() {
    check(|| {
        let plugin = &tests::go_peers().plugin;
        Box::new(RemotePlugin::spawn_command(plugin, [""; 0], RemoteOptions::default()).unwrap())
    });
}

#[test]
fn a_fleet_and_an_endpoint_are_called_from_inside_a_runtime() {
    let scratch = scratch();
    let dir = certs(scratch.path());
    let serve = start_mutual(&dir);
    let url = serve.url("https");
    let fleet_dir = dir.clone();
    let fleet_url = url.clone();
    check(move || {
        let options = FleetOptions::new(
            Targets::Endpoints(vec![fleet_url.clone()]),
            Some(mutual(&fleet_dir)),
        );
        Box::new(Fleet::connect("basic", options).unwrap_or_else(|err| panic!("{err}")))
    });
    let got = in_each_runtime(move || {
        let endpoint = Endpoint::connect(&url, "basic", Some(&mutual(&dir)), TIMEOUT)
            .unwrap_or_else(|err| panic!("{err}"));
        let sum = endpoint.call(Op::Add, 2.0, 3.0).unwrap();
        let code = endpoint.call(Op::Divide, 1.0, 0.0).unwrap_err().code();
        (sum, code)
    });
    assert_eq!(got, [(5.0, Some(ErrorCode::DivisionByZero)); 2]);
}

/// A manager serving `basic` from its plugin directory and the Go plugin as `go-calc`, with
/// `config` before the Go plugin's section.
fn basic_and_go_calc(config: &str) -> (tempfile::TempDir, PluginManager) {
    let dir = scratch();
    copy_as(&artifacts().library("basic"), dir.path(), &tests::library_file_name("basic"));
    let toml = format!(
        "{config}\n[plugins.go-calc]\ncommand = [{:?}]\n",
        tests::go_peers().plugin.display().to_string()
    );
    let path = dir.path().join("calcplug.toml");
    let config = host::ManagerConfig::parse(&toml, &path).unwrap();
    let manager = PluginManager::start(config.with_paths(&[dir.path().to_owned()])).unwrap();
    (dir, manager)
}

#[test]
fn the_manager_serves_a_go_plugin_and_a_runner_from_inside_a_runtime() {
    let got = in_each_runtime(|| {
        let isolation = format!(
            "[isolation]\nmode = \"out-of-process\"\nrunner = {:?}\n",
            artifacts().runner.display().to_string()
        );
        let (_dir, manager) = basic_and_go_calc(&isolation);
        let mut answers = Vec::new();
        for name in ["basic", "go-calc"] {
            let handle = manager.get(name).unwrap_or_else(|| panic!("{name} is served"));
            let sum = handle.add(2.0, 3.0).unwrap_or_else(|err| panic!("{err}"));
            let code = handle.divide(1.0, 0.0).unwrap_err().code();
            answers.push((name, handle.status().transport, sum, code));
        }
        let report = manager.shutdown();
        assert!(report.failed.is_empty(), "{report:?}");
        answers
    });
    let division = Some(ErrorCode::DivisionByZero);
    let expected = vec![("basic", "shm", 5.0, division), ("go-calc", "grpc", 5.0, division)];
    assert_eq!(got, [expected.clone(), expected]);
}

#[test]
fn the_managers_handles_answer_the_async_api_and_count_its_calls() {
    let got = in_each_runtime_async(|| async {
        let (_dir, manager) = basic_and_go_calc("");
        let mut answers = Vec::new();
        for name in ["basic", "go-calc"] {
            let handle = manager.get(name).unwrap_or_else(|| panic!("{name} is served")).to_async();
            let mut sum = 0.0;
            for i in 0..100 {
                sum += handle.add(f64::from(i), 1.0).await.unwrap_or_else(|err| panic!("{err}"));
            }
            let code = handle.divide(1.0, 0.0).await.unwrap_err().code();
            let status = handle.get_ref().status();
            let count = |op: &str| status.ops.iter().find(|m| m.op == op).map(|m| m.calls);
            answers.push((name, status.transport, sum, code, count("add"), count("divide")));
        }
        assert!(manager.shutdown().failed.is_empty());
        answers
    });
    let division = Some(ErrorCode::DivisionByZero);
    let sum = f64::from((0..100).sum::<i32>() + 100);
    let expected = vec![
        ("basic", "in-process", sum, division, Some(100), Some(1)),
        ("go-calc", "grpc", sum, division, Some(100), Some(1)),
    ];
    assert_eq!(got, [expected.clone(), expected]);
}

/// The crashy fixture in a runner, its `divide` hanging until the runner is killed.
fn hanging_divide() -> RemotePlugin {
    let options = RemoteOptions {
        runner: Some(artifacts().runner.clone()),
        call_timeout: Duration::from_secs(60),
        retries: 0,
        ..Default::default()
    };
    let plugin = RemotePlugin::spawn(artifacts().library("crashy"), options).unwrap();
    plugin.initialize(&Config::new().with("crash", "hang")).unwrap();
    plugin
}

#[test]
fn a_hung_call_holds_no_thread_of_a_current_thread_runtime() {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let err = runtime.block_on(async {
        let plugin = AsyncHandle::new(hanging_divide());
        let pid = plugin.get_ref().runner_pid().expect("a runner");
        let hung = tokio::spawn({
            let plugin = plugin.clone();
            async move { plugin.divide(1.0, 2.0).await }
        });
        // Another task on the runtime's one thread runs to its end while the call hangs.
        let ticker = tokio::spawn(async {
            for _ in 0..20 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        });
        ticker.await.unwrap();
        assert!(!hung.is_finished(), "the hung call answered: {:?}", hung.await);
        let killed = std::process::Command::new("kill").args(["-9", &pid.to_string()]).status();
        assert!(killed.unwrap().success());
        hung.await.unwrap().unwrap_err()
    });
    assert!(
        matches!(&err, Error::PluginCrashed { status, .. } if status.contains("SIGKILL")),
        "{err:?}"
    );
}

/// Futures dropped mid-call (a timeout shorter than a call): the calls after them all answer.
fn dropped_futures_then_1000_calls(plugin: Box<dyn PluginHandle>) -> (usize, Vec<f64>) {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let plugin = AsyncHandle::new(plugin);
        plugin.get_ref().initialize(&Config::new()).unwrap();
        let mut dropped = 0;
        for _ in 0..200 {
            let call = plugin.add(1.0, 2.0);
            if tokio::time::timeout(Duration::from_micros(1), call).await.is_err() {
                dropped += 1;
            }
        }
        let mut sums = Vec::new();
        for i in 0..1000 {
            sums.push(plugin.add(f64::from(i), 1.0).await.unwrap_or_else(|err| panic!("{err}")));
        }
        (dropped, sums)
    })
}

#[test]
fn dropped_futures_leave_a_runner_and_a_go_plugin_serving() {
    let expected: Vec<f64> = (1..=1000).map(f64::from).collect();
    for plugin in [
        runner(Channel::SharedMemory),
        Box::new(
            RemotePlugin::spawn_command(&tests::go_peers().plugin, [""; 0], Default::default())
                .unwrap(),
        ),
    ] {
        let transport = plugin.transport();
        let (dropped, sums) = dropped_futures_then_1000_calls(plugin);
        assert!(dropped > 0, "{transport}: no future was dropped mid-call");
        assert_eq!(sums, expected, "{transport}");
    }
}

#[test]
fn ten_thousand_concurrent_async_calls_to_a_3_instance_fleet_all_answer() {
    let scratch = scratch();
    let dir = certs(scratch.path());
    let servers: Vec<_> = (0..3).map(|_| start_mutual(&dir)).collect();
    let urls: Vec<String> = servers.iter().map(|serve| serve.url("https")).collect();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let (sums, instances) = runtime.block_on(async {
        let options = FleetOptions::new(Targets::Endpoints(urls.clone()), Some(mutual(&dir)));
        let fleet = Fleet::connect("basic", options).unwrap_or_else(|err| panic!("{err}"));
        let fleet = AsyncHandle::new(fleet);
        // Every instance balanced before the calls, so that they spread.
        while fleet.get_ref().instances().iter().any(|(_, balanced)| !balanced) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let calls: Vec<_> = (0..10_000)
            .map(|i| {
                let fleet = fleet.clone();
                tokio::spawn(async move { fleet.add(f64::from(i), 1.0).await })
            })
            .collect();
        let mut sums = Vec::new();
        for call in calls {
            sums.push(call.await.unwrap().unwrap_or_else(|err| panic!("{err}")));
        }
        (sums, fleet.get_ref().instances())
    });
    let expected: Vec<f64> = (1..=10_000).map(f64::from).collect();
    assert_eq!(sums, expected);
    assert_eq!(instances.len(), 3, "{instances:?}");
    // Each server answered some of them.
    for url in &urls {
        let served = crate::fleet::served(url, &dir);
        assert!(served > 0, "{url} served no call");
    }
}

#[test]
fn dropped_fleet_futures_cancel_their_calls_and_the_fleet_keeps_serving() {
    let scratch = scratch();
    let dir = certs(scratch.path());
    let serve = start_mutual(&dir);
    let options =
        FleetOptions::new(Targets::Endpoints(vec![serve.url("https")]), Some(mutual(&dir)));
    let fleet: Box<dyn PluginHandle> =
        Box::new(Fleet::connect("basic", options).unwrap_or_else(|err| panic!("{err}")));
    let (dropped, sums) = dropped_futures_then_1000_calls(fleet);
    assert!(dropped > 0, "no future was dropped mid-call");
    assert_eq!(sums, (1..=1000).map(f64::from).collect::<Vec<_>>());
}
