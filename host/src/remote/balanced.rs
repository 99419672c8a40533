//! [`Fleet`]: one plugin served by several `calcplug serve` instances, balanced, health-aware,
//! with failover, discovered from a list or from DNS.
//!
//! The balancing is tonic's (`Channel::balance_channel`, tower's power-of-two-choices over the
//! instances it is given). What decides which instances it is given is here: one prober per
//! instance asks that instance's `grpc.health.v1` about the plugin every `probe_interval` on a
//! connection of its own, and adds the instance to the balancer when it answers `SERVING`,
//! removes it when it does not answer or answers anything else (so an instance that was killed,
//! or drains on SIGTERM, is ejected within one interval, and one that comes back is probed back
//! in). A prober whose instance keeps failing asks less and less often (twice the interval
//! after each failure, up to 2 s), and keeps the reason, which a call that finds no instance
//! reports; when every instance refused this host's TLS (no client certificate, another CA), a
//! call fails at once with that reason rather than at its deadline. With DNS discovery (`dns:///HOST:PORT`), the name is resolved again every
//! `resolve_interval` and probers start and stop with the addresses it returns, so a Kubernetes
//! headless Service scales the fleet.
//!
//! Every calculator call is idempotent, so a call that fails in transport (the instance died
//! under it, or refused the connection) is tried again, on whichever instance the balancer
//! picks, until the call's deadline; an answer from the plugin, error or not, is never retried.
//! The deadline travels with each try as gRPC's `grpc-timeout`.

use std::collections::BTreeMap;

use std::time::{Duration, Instant};

use interface::{AngleUnit, BatchOp, BatchResult, Config, ErrorCode, Op, Status};
use parking_lot::Mutex;
use semver::Version;
use tonic::transport::Channel;
use tracing::Instrument;

use super::grpc::client::{exchange, Client, Naming};
use super::grpc::pb::calculator_client::CalculatorClient;
use super::io::{Io, Task};
use super::process::Transport;
use super::wire::{self, Request, Response};
use crate::fleet::ClientTls;
use crate::{Error, Extension, Identity};

mod probe;

use probe::{instance, is_tls_refusal, resolve, tls_config, Instances, Probe, Seen};

/// Where a [`Fleet`]'s instances are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Targets {
    /// These URLs, `https://HOST:PORT` (or `http://` for `--insecure` servers).
    Endpoints(Vec<String>),
    /// Every address `HOST:PORT` resolves to, resolved again now and then:
    /// `dns:///calc.plugins.svc.cluster.local:7443`. TLS when the options carry TLS settings.
    Dns(String),
}

/// How a [`Fleet`] finds and calls its instances.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FleetOptions {
    /// Where the instances are.
    pub targets: Targets,
    /// TLS settings; `None` for plaintext (`--insecure` servers).
    pub tls: Option<ClientTls>,
    /// A call's deadline, retries included, and the `grpc-timeout` each try carries.
    pub call_timeout: Duration,
    /// How often each instance's health is asked.
    pub probe_interval: Duration,
    /// How often a DNS name is resolved again.
    pub resolve_interval: Duration,
}

impl FleetOptions {
    /// `targets` with the defaults: 5 s calls, probes every 250 ms, DNS every 5 s.
    pub fn new(targets: Targets, tls: Option<ClientTls>) -> FleetOptions {
        FleetOptions {
            targets,
            tls,
            call_timeout: Duration::from_secs(5),
            probe_interval: Duration::from_millis(250),
            resolve_interval: Duration::from_secs(5),
        }
    }
}

/// One plugin, served by several `calcplug serve` instances.
pub struct Fleet {
    caller: Caller,
    identity: Identity,
}

/// The balanced client and what a call needs.
struct Caller {
    io: Io,
    /// The probers (or the resolver that runs them), stopped with the fleet.
    _tasks: Vec<Task>,
    client: Client,
    plugin: String,
    shown: String,
    options: FleetOptions,
    instances: Instances,
    /// Calls that failed in transport and were tried again.
    failovers: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for Fleet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fleet").field("targets", &self.caller.shown).finish_non_exhaustive()
    }
}

impl Fleet {
    /// Starts the probers (and the resolver) and waits, at most `call_timeout`, for an instance
    /// that serves `plugin`; reads the plugin's metadata from it.
    ///
    /// # Errors
    ///
    /// [`Error::Fleet`] naming the targets for a URL or name that cannot be used, or when no
    /// instance serves `plugin` within `call_timeout`; [`Error::Tls`] naming the file for
    /// unusable TLS material; [`Error::BadMetadata`] for metadata that does not pass the
    /// checks a library's does.
    pub fn connect(plugin: &str, options: FleetOptions) -> Result<Fleet, Error> {
        let shown = match &options.targets {
            Targets::Endpoints(urls) => urls.join(", "),
            Targets::Dns(name) => name.clone(),
        };
        let fleet = |reason: String| Error::Fleet { peer: shown.clone(), reason };
        let io = Io::shared().map_err(&fleet)?;
        let tls = match &options.tls {
            Some(tls) => Some(tls_config(tls)?),
            None => None,
        };
        let naming = tonic::metadata::MetadataValue::try_from(plugin)
            .map_err(|err| fleet(format!("`{plugin}` cannot be sent as a plugin name: {err}")))?;
        let instances = Instances::default();
        let mut tasks = Vec::new();
        let client = {
            let _entered = io.enter();
            let (channel, changes) = Channel::balance_channel::<String>(64);
            let probe = Probe {
                plugin: plugin.to_owned(),
                every: options.probe_interval,
                changes,
                instances: instances.clone(),
            };
            match &options.targets {
                Targets::Endpoints(urls) => {
                    for url in urls {
                        let instance = instance(url, tls.as_ref(), None).map_err(&fleet)?;
                        tasks.push(io.spawn(probe.clone().run(instance)));
                    }
                }
                Targets::Dns(target) => {
                    let name = target
                        .strip_prefix("dns:///")
                        .ok_or_else(|| fleet("a DNS target is `dns:///HOST:PORT`".to_owned()))?;
                    tasks.push(io.spawn(resolve(
                        name.to_owned(),
                        tls.clone(),
                        options.resolve_interval,
                        probe,
                    )));
                }
            }
            CalculatorClient::with_interceptor(
                channel,
                Naming { name: Some(naming), timeout: Some(options.call_timeout) },
            )
            .max_decoding_message_size(usize::MAX)
            .max_encoding_message_size(usize::MAX)
        };
        let caller = Caller {
            io,
            _tasks: tasks,
            client,
            plugin: plugin.to_owned(),
            shown,
            options,
            instances,
            failovers: std::sync::atomic::AtomicU64::new(0),
        };
        let identity = caller.identity(plugin)?;
        Ok(Fleet { caller, identity })
    }

    /// What the plugin is; its path is the fleet's targets.
    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    /// The instances known now, each with whether the balancer sends it calls.
    pub fn instances(&self) -> Vec<(String, bool)> {
        self.caller
            .instances
            .lock()
            .iter()
            .map(|(url, seen)| (url.clone(), seen.balanced))
            .collect()
    }

    /// Calls that failed in transport on one instance and were tried again.
    pub fn failovers(&self) -> u64 {
        self.caller.failovers.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The plugins behind a fleet are configured by their servers: an empty config is
    /// accepted, any key refused.
    ///
    /// # Errors
    ///
    /// [`Error::Call`] with `Unsupported` for a config with keys.
    pub fn initialize(&self, config: &Config) -> Result<(), Error> {
        match config.iter().next() {
            None => Ok(()),
            Some((key, _)) => Err(Error::Call {
                plugin: self.identity.name().to_owned(),
                op: "initialize",
                code: ErrorCode::Unsupported,
                message: format!(
                    "`{key}`: a plugin served by a fleet is configured by its servers' \
                     calcplug.toml, not by its callers"
                ),
            }),
        }
    }

    /// Stops calling the fleet; the servers keep serving.
    ///
    /// # Errors
    ///
    /// None; the signature matches the other backends'.
    pub fn shutdown(&self) -> Result<(), Error> {
        Ok(())
    }

    /// The plugin's status, as one instance reports it.
    ///
    /// # Errors
    ///
    /// As [`Fleet::call`].
    pub fn status(&self) -> Result<Status, Error> {
        match self.caller.roundtrip("status", &Request::Status)? {
            Response::Status(raw) => Ok(raw.into_status()),
            Response::Error { code, message } => Err(self.call_error("status", code, message)),
            other => Err(self.caller.unexpected("status", &other)),
        }
    }

    /// `op(a, b)` on one of the instances, tried on others when one fails in transport.
    ///
    /// # Errors
    ///
    /// The plugin's [`Error::Call`]; [`Error::Fleet`] when no instance answered within the
    /// deadline.
    pub fn call(&self, op: Op, a: f64, b: f64) -> Result<f64, Error> {
        self.caller.io.block_on(self.call_async(op, a, b))
    }

    /// [`Fleet::call`], awaited from any executor: the call holds no thread while it waits,
    /// and dropping the future cancels it (its HTTP/2 stream is reset).
    ///
    /// # Errors
    ///
    /// As [`Fleet::call`].
    pub async fn call_async(&self, op: Op, a: f64, b: f64) -> Result<f64, Error> {
        let request = Request::Call { op: op.code().as_u8(), a, b };
        match self.caller.roundtrip_async(op.name(), &request, &Mutex::new(None)).await? {
            Response::Value(value) => Ok(value),
            Response::Error { code, message } => Err(self.call_error(op.name(), code, message)),
            other => Err(self.caller.unexpected(op.name(), &other)),
        }
    }

    /// A batch on one of the instances.
    ///
    /// # Errors
    ///
    /// As [`Fleet::call`].
    pub fn process_batch(&self, ops: &[BatchOp], results: &mut [BatchResult]) -> Result<(), Error> {
        let items = ops.iter().map(|item| (item.op.as_u8(), item.a, item.b)).collect();
        match self.caller.roundtrip("process_batch", &Request::Batch(items))? {
            Response::Batch(answers) if answers.len() == results.len() => {
                wire::fill_batch(results, answers);
                Ok(())
            }
            Response::Error { code, message } => {
                Err(self.call_error("process_batch", code, message))
            }
            other => Err(self.caller.unexpected("process_batch", &other)),
        }
    }

    /// The angle unit is set by the servers' config, not by a caller: setting it on one
    /// instance would leave the others on another.
    ///
    /// # Errors
    ///
    /// [`Error::Call`] with `Unsupported`.
    pub fn set_angle_unit(&self, unit: AngleUnit) -> Result<(), Error> {
        Err(Error::Call {
            plugin: self.identity.name().to_owned(),
            op: "set_angle_unit",
            code: ErrorCode::Unsupported,
            message: format!(
                "`{unit}`: a plugin served by a fleet is configured by its servers' \
                 calcplug.toml (`angle_unit`), not by its callers"
            ),
        })
    }

    /// The angle unit, as one instance reports it.
    ///
    /// # Errors
    ///
    /// As [`Fleet::call`].
    pub fn angle_unit(&self) -> Result<AngleUnit, Error> {
        match self.caller.roundtrip("angle_unit", &Request::AngleUnit)? {
            Response::AngleUnit(raw) => AngleUnit::from_u8(raw).ok_or_else(|| {
                self.call_error(
                    "angle_unit",
                    ErrorCode::Internal.as_u8(),
                    format!("unknown angle unit code {raw}"),
                )
            }),
            Response::Error { code, message } => Err(self.call_error("angle_unit", code, message)),
            other => Err(self.caller.unexpected("angle_unit", &other)),
        }
    }

    #[cold]
    fn call_error(&self, op: &'static str, code: u8, message: String) -> Error {
        let code = ErrorCode::from_u8(code).unwrap_or(ErrorCode::Internal);
        Error::Call { plugin: self.identity.name().to_owned(), op, code, message }
    }
}

impl Caller {
    /// The plugin's identity, from one instance's metadata.
    fn identity(&self, plugin: &str) -> Result<Identity, Error> {
        let interface_version = Mutex::new(None);
        let raw = match self.roundtrip_with("metadata", &Request::Metadata, &interface_version)? {
            Response::Metadata(raw) => raw,
            other => return Err(self.unexpected("metadata", &other)),
        };
        let path = std::path::PathBuf::from(&self.shown);
        let metadata = raw.into_metadata();
        if metadata.name != plugin {
            return Err(Error::BadMetadata {
                reason: format!(
                    "the servers answer for `{plugin}` with a plugin called `{}`",
                    metadata.name
                ),
            }
            .with_path(path));
        }
        let version = interface_version.lock().take().unwrap_or_default();
        let interface_version = Version::parse(&version).map_err(|err| {
            Error::BadMetadata { reason: format!("interface version {version:?}: {err}") }
                .with_path(path.clone())
        })?;
        let extensions =
            if interface_version.minor >= 1 { vec![Extension::Scientific] } else { Vec::new() };
        Identity::new(path, metadata, interface_version, extensions)
    }

    fn roundtrip(&self, op: &str, request: &Request) -> Result<Response, Error> {
        self.roundtrip_with(op, request, &Mutex::new(None))
    }

    /// [`Caller::roundtrip_async`] on the calling thread.
    fn roundtrip_with(
        &self,
        op: &str,
        request: &Request,
        interface_version: &Mutex<Option<String>>,
    ) -> Result<Response, Error> {
        self.io.block_on(self.roundtrip_async(op, request, interface_version))
    }

    /// One request, tried again on a transport failure until the call's deadline. Awaitable
    /// from any executor: it runs with the I/O runtime as its context.
    async fn roundtrip_async(
        &self,
        op: &str,
        request: &Request,
        interface_version: &Mutex<Option<String>>,
    ) -> Result<Response, Error> {
        // One span for the call, retries included; the interceptor sends it as `traceparent`.
        let span = super::grpc::trace_context::client_span(&self.plugin, op, &self.shown);
        let tries = self.tries(op, request, interface_version).instrument(span);
        self.io.entered(tries).await
    }

    async fn tries(
        &self,
        op: &str,
        request: &Request,
        interface_version: &Mutex<Option<String>>,
    ) -> Result<Response, Error> {
        let deadline = Instant::now() + self.options.call_timeout;
        let mut tries = 0u32;
        loop {
            tries += 1;
            let left = deadline.saturating_duration_since(Instant::now());
            // While no instance is balanced, a request waits in the balancer: look again at what
            // the probers found every `UNBALANCED_WAIT`, so that refusals are told at once.
            let balanced = self.any_balanced();
            let wait = if balanced { left } else { left.min(UNBALANCED_WAIT) };
            let mut client = self.client.clone();
            let answer =
                tokio::time::timeout(wait, exchange(&mut client, request, interface_version)).await;
            match answer {
                Ok(Ok(response)) => return Ok(response),
                Ok(Err(Transport::Malformed(reason))) => {
                    return Err(Error::Fleet {
                        peer: self.shown.clone(),
                        reason: format!("{op}: a broken answer: {reason}"),
                    })
                }
                Ok(Err(Transport::Closed | Transport::Timeout)) | Err(_) => {}
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                let tries = if tries == 1 { "1 try".to_owned() } else { format!("{tries} tries") };
                return Err(Error::Fleet {
                    peer: self.shown.clone(),
                    reason: format!(
                        "{op}: no instance answered within {:?} ({tries}){}",
                        self.options.call_timeout,
                        self.why_none_serves()
                    ),
                });
            }
            if let Some(refusals) = self.refused_everywhere() {
                return Err(Error::Fleet {
                    peer: self.shown.clone(),
                    reason: format!("{op}: every instance refused this host: {refusals}"),
                });
            }
            if balanced {
                self.failovers.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                tracing::debug!(tries, "no answer in transport: trying another instance");
            }
            // The balancer may still hold the instance that just failed, until its prober
            // sees it: a short pause, shorter as the deadline nears.
            tokio::time::sleep(Duration::from_millis(10).min(left / 4)).await;
        }
    }

    fn any_balanced(&self) -> bool {
        self.instances.lock().values().any(|seen| seen.balanced)
    }

    /// When every instance known refused this host's TLS (no certificate, another CA, a
    /// certificate not for its name): `URL: reason; …`. Waiting cannot help then.
    fn refused_everywhere(&self) -> Option<String> {
        let instances = self.instances.lock();
        let refused = !instances.is_empty()
            && instances
                .values()
                .all(|seen| !seen.balanced && seen.failure.as_deref().is_some_and(is_tls_refusal));
        refused.then(|| self.reasons(&instances))
    }

    fn reasons(&self, instances: &BTreeMap<String, Seen>) -> String {
        // One instance, named by the targets already: its reason alone.
        if let [(url, seen)] = instances.iter().collect::<Vec<_>>()[..] {
            if *url == self.shown {
                return seen.failure.clone().unwrap_or_else(|| "not checked yet".to_owned());
            }
        }
        let reasons: Vec<String> = instances
            .iter()
            .map(|(url, seen)| {
                format!("{url}: {}", seen.failure.as_deref().unwrap_or("not checked yet"))
            })
            .collect();
        reasons.join("; ")
    }

    #[cold]
    fn unexpected(&self, op: &str, response: &Response) -> Error {
        Error::Fleet {
            peer: self.shown.clone(),
            reason: format!("unexpected answer to {op}: {response:?}"),
        }
    }

    /// Why no instance is balanced, from what the probers last saw: `: URL: reason; …`, or
    /// nothing when an instance is balanced (the call then failed on the way, not for want of
    /// one) or none is known yet.
    #[cold]
    fn why_none_serves(&self) -> String {
        let instances = self.instances.lock();
        if instances.is_empty() {
            return match &self.options.targets {
                Targets::Dns(name) => format!(": `{name}` resolved to no address yet"),
                Targets::Endpoints(_) => String::new(),
            };
        }
        if instances.values().any(|seen| seen.balanced) {
            return String::new();
        }
        format!(": {}", self.reasons(&instances))
    }
}

/// How long a call waits in the balancer, while no instance is in it, before it looks again at
/// what the probers found.
const UNBALANCED_WAIT: Duration = Duration::from_millis(100);
