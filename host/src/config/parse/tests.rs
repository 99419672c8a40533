//! The validators, and the environment variables over the file.

use super::*;

fn parse(text: &str) -> Result<ManagerConfig, Error> {
    ManagerConfig::parse(text, Path::new("/etc/calcplug/calcplug.toml"))
}

fn parse_env(text: &str, vars: &[(&str, &str)]) -> Result<ManagerConfig, Error> {
    let vars = vars.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned()));
    ManagerConfig::parse_with_env(text, Path::new("/etc/calcplug/calcplug.toml"), vars)
}

#[track_caller]
fn fails(text: &str, key: &str, message: &str) {
    match parse(text) {
        Err(Error::Config { key: k, message: m, .. }) => {
            assert_eq!(k, key, "{text}");
            assert!(m.contains(message), "{text}: {m}");
        }
        other => panic!("{text}: {other:?}"),
    }
}

#[test]
fn sample_every_is_a_power_of_two_or_zero() {
    assert_eq!(parse("[metrics]\nsample_every = 64\n").unwrap().sample_every(), 64);
    assert_eq!(parse("[metrics]\nsample_every = 1\n").unwrap().sample_every(), 1);
    assert_eq!(parse("[metrics]\nsample_every = 0\n").unwrap().sample_every(), 0);
    fails("[metrics]\nsample_every = 3\n", "metrics.sample_every", "3 is not a power of two");
}

#[test]
fn only_failures_are_retryable_and_unknown_codes_list_the_retryable_ones() {
    let retry = parse("[retry]\nretryable = [\"Internal\"]\nmax_retries = 7\nbackoff = \"20ms\"\nmax_backoff = \"2s\"\n")
        .unwrap()
        .retry()
        .clone();
    assert_eq!(retry.retryable(), [ErrorCode::Internal]);
    assert_eq!(retry.max_retries(), 7);
    assert_eq!(
        (retry.backoff(), retry.max_backoff()),
        (Duration::from_millis(20), Duration::from_secs(2))
    );
    for business in ["DivisionByZero", "InvalidInput", "OutOfRange", "Overflow", "Unsupported"] {
        let text = format!("[retry]\nretryable = [{business:?}]\n");
        fails(&text, "retry.retryable", &format!("{business} is a business error"));
    }
    match parse("[retry]\nretryable = [\"Bogus\"]\n") {
        Err(Error::Config { message, .. }) => {
            assert!(
                message.starts_with("unknown error code \"Bogus\" (retryable ones: "),
                "{message}"
            );
            assert!(
                message.contains("Internal") && !message.contains("DivisionByZero"),
                "{message}"
            );
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn every_security_key_takes_effect() {
    let key = "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a";
    let text = format!(
        "[security]\nintegrity = \"warn\"\ntrusted_keys = [\"{key}\"]\nmanifest = \"SUMS\"\n\
         check_permissions = false\nprobe = true\nprobe_timeout = \"2s\"\non_panic = \"disable\"\n"
    );
    let config = parse(&text).unwrap();
    let security = config.security();
    assert_eq!(security.integrity(), Enforcement::Warn);
    assert_eq!(security.trusted_keys().len(), 1);
    assert_eq!(security.manifest(), Some(Path::new("/etc/calcplug/SUMS")));
    assert!(!security.check_permissions());
    assert!(security.probe());
    assert_eq!(security.on_panic(), PanicPolicy::Disable);
    assert_eq!(security.probe_timeout, Duration::from_secs(2));
    // The seed's `verify_signatures = true` means enforce.
    let seed = format!("[security]\nverify_signatures = true\ntrusted_keys = [\"{key}\"]\n");
    assert_eq!(parse(&seed).unwrap().security().integrity(), Enforcement::Enforce);
    fails(
        "[security]\nintegrity = \"enforce\"\n",
        "security.integrity",
        "needs `security.manifest`",
    );
}

#[test]
fn every_isolation_key_takes_effect() {
    let text =
        "[isolation]\nmode = \"out-of-process\"\nrunner = \"bin/runner\"\ncall_timeout = \"7s\"\n\
                start_timeout = \"8s\"\nretries = 9\nmax_failures = 10\nfailure_window = \"11m\"\n\
                circuit_cooldown = \"12ms\"\nmax_circuit_cooldown = \"13s\"\n\
                auto_mtls = false\ntransport = \"socket\"\n";
    let config = parse(text).unwrap();
    let isolation = config.isolation();
    assert_eq!(isolation.mode(), Mode::OutOfProcess);
    let o = isolation.options();
    assert_eq!(o.runner.as_deref(), Some(Path::new("/etc/calcplug/bin/runner")));
    assert_eq!((o.call_timeout, o.start_timeout), (Duration::from_secs(7), Duration::from_secs(8)));
    assert_eq!((o.retries, o.max_failures), (9, 10));
    assert_eq!(o.failure_window, Duration::from_secs(660));
    assert_eq!(o.circuit_cooldown, Duration::from_millis(12));
    assert_eq!(o.max_circuit_cooldown, Duration::from_secs(13));
    assert!(!o.auto_mtls);
    assert_eq!(o.channel, Channel::Socket);
    let shm = parse("[isolation]\ntransport = \"shm\"\n").unwrap();
    assert_eq!(shm.isolation().options().channel, Channel::SharedMemory);
    assert_eq!(parse("").unwrap().isolation().options().channel, Channel::SharedMemory);
    fails(
        "[isolation]\ntransport = \"pipe\"\n",
        "isolation.transport",
        "\"pipe\" is not shm or socket",
    );
}

#[test]
fn serve_keys_take_effect_with_paths_relative_to_the_file() {
    let text = "[serve]\nlisten = \"0.0.0.0:7443\"\nmetrics_listen = \"127.0.0.1:9464\"\n\
                health_listen = \"127.0.0.1:7444\"\ndrain_grace = \"3s\"\n\
                [security]\nenable_tls = true\ncert_file = \"tls/server.pem\"\n\
                key_file = \"/keys/server.key\"\nclient_ca_file = \"tls/ca.pem\"\n";
    let serve = parse(text).unwrap().serve().clone();
    assert_eq!(
        serve,
        ServeConfig {
            listen: "0.0.0.0:7443".into(),
            metrics_listen: Some("127.0.0.1:9464".into()),
            health_listen: Some("127.0.0.1:7444".into()),
            drain_grace: Duration::from_secs(3),
            enable_tls: true,
            cert_file: Some("/etc/calcplug/tls/server.pem".into()),
            key_file: Some("/keys/server.key".into()),
            client_ca_file: Some("/etc/calcplug/tls/ca.pem".into()),
        }
    );
    fails("[serve]\nlisten = \"7443\"\n", "serve.listen", "\"7443\" is not an address");
    fails("[serve]\ndrain_grace = \"soon\"\n", "serve.drain_grace", "is not a duration");
}

#[test]
fn a_variable_sets_its_key_over_the_file() {
    let text = "[isolation]\ncall_timeout = \"7s\"\nretries = 2\n\
                [plugins.basic]\nprecision = 4\n[plugins.go-calc]\ncommand = [\"./go-calc\"]\n";
    let config = parse_env(
        text,
        &[
            ("CALCPLUG_ISOLATION_CALL_TIMEOUT", "2s"),
            ("CALCPLUG_DISCOVERY_PATHS", "[\"plugins\", \"/opt/plugins\"]"),
            ("CALCPLUG_RETRY_MAX_RETRIES", "9"),
            ("CALCPLUG_SECURITY_ENABLE_TLS", "false"),
            ("CALCPLUG_SERVE_LISTEN", "0.0.0.0:7443"),
            ("CALCPLUG_PLUGINS__BASIC__PRECISION", "2"),
            ("CALCPLUG_PLUGINS__GO_CALC__AUTO_MTLS", "false"),
            ("CALCPLUG_PLUGINS__SCIENTIFIC__ANGLE_UNIT", "degrees"),
            // Not config keys: left alone.
            ("CALCPLUG_LOG", "debug"),
            ("CALCPLUG_RUNNER", "/bin/false"),
            ("PATH", "/bin"),
        ],
    )
    .unwrap();
    let options = config.isolation().options();
    assert_eq!(options.call_timeout, Duration::from_secs(2));
    assert_eq!(options.retries, 2, "a key the variables leave alone keeps the file's value");
    let paths: Vec<&Path> = config.paths().collect();
    assert_eq!(paths, [Path::new("/etc/calcplug/plugins"), Path::new("/opt/plugins")]);
    assert_eq!(config.retry().max_retries(), 9);
    assert!(!config.serve().enable_tls);
    assert_eq!(config.serve().listen, "0.0.0.0:7443");
    assert_eq!(config.plugin("basic").get("precision"), Some("2"));
    assert_eq!(config.plugin("scientific").get("angle_unit"), Some("degrees"));
    let commands: Vec<_> = config.commands().collect();
    assert_eq!(commands.len(), 1);
    assert_eq!(commands[0].0, "go-calc", "GO_CALC is the file's go-calc");
    assert_eq!(commands[0].1.auto_mtls, Some(false));
}

#[track_caller]
fn env_fails(vars: &[(&str, &str)], var: &str, key: &str, message: &str) {
    match parse_env("[plugins.basic]\nprecision = 4\n", vars) {
        Err(Error::ConfigEnv { var: v, key: k, message: m }) => {
            assert_eq!((v.as_str(), k.as_str()), (var, key), "{vars:?}");
            assert!(m.contains(message), "{vars:?}: {m}");
        }
        other => panic!("{vars:?}: {other:?}"),
    }
}

#[test]
fn a_bad_variable_is_named_with_its_key() {
    env_fails(
        &[("CALCPLUG_ISOLATION_CALL_TIMOUT", "2s")],
        "CALCPLUG_ISOLATION_CALL_TIMOUT",
        "isolation.call_timout",
        "[isolation] has no such key (its variables: CALCPLUG_ISOLATION_MODE, \
         CALCPLUG_ISOLATION_CALL_TIMEOUT,",
    );
    env_fails(
        &[("CALCPLUG_ISOLATION_CALL_TIMEOUT", "fast")],
        "CALCPLUG_ISOLATION_CALL_TIMEOUT",
        "isolation.call_timeout",
        "\"fast\" is not a duration",
    );
    env_fails(
        &[("CALCPLUG_RETRY_MAX_RETRIES", "many")],
        "CALCPLUG_RETRY_MAX_RETRIES",
        "retry.max_retries",
        "invalid type: string \"many\", expected u32",
    );
    env_fails(
        &[("CALCPLUG_SERVE_HEALTH_LISTEN", "anywhere")],
        "CALCPLUG_SERVE_HEALTH_LISTEN",
        "serve.health_listen",
        "\"anywhere\" is not an address",
    );
    env_fails(
        &[("CALCPLUG_PLUGINS__BASIC__MODE", "sideways")],
        "CALCPLUG_PLUGINS__BASIC__MODE",
        "plugins.basic.mode",
        "\"sideways\" is not in-process or out-of-process",
    );
    env_fails(
        &[("CALCPLUG_PLUGINS__BASIC", "4")],
        "CALCPLUG_PLUGINS__BASIC",
        "plugins",
        "expected CALCPLUG_PLUGINS__<NAME>__<KEY>",
    );
    // A value cannot smuggle in a second key.
    env_fails(
        &[("CALCPLUG_RETRY_MAX_RETRIES", "3\nprobe = true")],
        "CALCPLUG_RETRY_MAX_RETRIES",
        "retry.max_retries",
        "invalid type: string",
    );
    let err = parse_env("", &[("CALCPLUG_ISOLATION_RETRIES", "x")]).unwrap_err();
    assert_eq!(
        err.to_string(),
        "environment variable CALCPLUG_ISOLATION_RETRIES (`isolation.retries`): \
         invalid type: string \"x\", expected u32"
    );
}

#[test]
fn which_variables_are_the_configs() {
    for var in [
        "CALCPLUG_ISOLATION_CALL_TIMEOUT",
        "CALCPLUG_isolation_mode",
        "CALCPLUG_ISOLATION_MOD",
        "CALCPLUG_SERVE_LISTEN",
        "CALCPLUG_PLUGINS__BASIC__PRECISION",
        "CALCPLUG_PLUGINS__",
    ] {
        assert!(ManagerConfig::is_config_variable(var), "{var}");
    }
    for var in [
        "CALCPLUG_LOG",
        "CALCPLUG_RUNNER_LOG",
        "CALCPLUG_ISOLATION",
        "CALCPLUG_ISOLATION_",
        "CALCPLUG_ISOLATON_MODE",
        "CALCPLUG_ISOLATIÖN_MODE",
        "CALCPLUG_",
        "PATH",
    ] {
        assert!(!ManagerConfig::is_config_variable(var), "{var}");
    }
    // A multi-byte character where a section's name would end is read, not a panic.
    let config = parse_env("", &[("CALCPLUG_ISOLATIÖN_MODE", "x"), ("CALCPLUG_SECURITŸ", "x")]);
    assert!(config.is_ok(), "{config:?}");
}

#[test]
fn the_example_file_documents_every_key_of_every_section() {
    let example = include_str!("../../../../calcplug.example.toml");
    for (section, keys) in RawConfig::SECTIONS {
        let header = format!("[{section}]\n");
        let start = example.find(&header).unwrap_or_else(|| panic!("no [{section}]"));
        let body = &example[start + header.len()..];
        let body = &body[..body.find("\n[").unwrap_or(body.len())];
        for key in keys {
            let set = body
                .lines()
                .any(|line| line.trim_start_matches(['#', ' ']).starts_with(&format!("{key} =")));
            assert!(set, "calcplug.example.toml's [{section}] has no `{key} =`");
        }
    }
}

#[test]
fn durations_take_each_unit() {
    assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
    assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
    assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
    assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
    assert!(parse_duration("5 parsecs").unwrap_err().contains("is not a duration"));
    assert!(parse_duration(&format!("{}h", u64::MAX)).is_err(), "overflow");
}
