//! The probers of a [`Fleet`](super::Fleet)'s instances: one per instance asks its health about
//! the plugin, adds it to the balancer or removes it, backs off while it fails, and keeps the
//! reason for the callers' errors; with DNS, the resolver that starts and stops them.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::mpsc::Sender;
use tonic::transport::channel::Change;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity as TlsIdentity};

use crate::fleet::ClientTls;
use crate::Error;

/// Instance URL → what its prober last saw.
pub(super) type Instances = Arc<Mutex<BTreeMap<String, Seen>>>;

/// What an instance's prober last saw.
#[derive(Debug, Clone, Default)]
pub(super) struct Seen {
    /// Whether the balancer sends it calls.
    pub(super) balanced: bool,
    /// Why it is not balanced: the last health check's failure (a refused TLS handshake, a
    /// refused connection, a status other than `SERVING`), with its causes.
    pub(super) failure: Option<String>,
}

/// A balanced instance: its URL, and the endpoint the balancer and the prober connect to.
pub(super) struct Instance {
    url: String,
    endpoint: Endpoint,
    /// With TLS: how to ask the server why it refuses this host.
    refusal: Option<Refusal>,
}

/// A fleet's TLS settings: tonic's for the balanced channel, rustls' for telling why a server
/// refuses this host.
#[derive(Clone)]
pub(super) struct Tls {
    tonic: ClientTlsConfig,
    rustls: Arc<rustls::ClientConfig>,
    /// The name the servers' certificates must be for, when the settings name it.
    server_name: Option<String>,
}

/// The TLS settings from the host's PEM files.
pub(super) fn tls_config(tls: &ClientTls) -> Result<Tls, Error> {
    Ok(Tls {
        tonic: tonic_tls_config(tls)?,
        rustls: crate::fleet::tls_client_config(tls)?,
        server_name: tls.server_name.clone(),
    })
}

/// tonic's TLS settings from the host's PEM files.
fn tonic_tls_config(tls: &ClientTls) -> Result<ClientTlsConfig, Error> {
    let read = |path: &std::path::Path| {
        std::fs::read(path).map_err(|err| {
            Error::Tls { reason: format!("cannot read: {err}") }.with_path(path.to_owned())
        })
    };
    // The same files, checked the way the rest of calcplug reads them.
    crate::fleet::tls_client_config(tls)?;
    let mut config = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(read(&tls.ca)?));
    if let Some((cert, key)) = &tls.identity {
        config = config.identity(TlsIdentity::from_pem(read(cert)?, read(key)?));
    }
    if let Some(name) = &tls.server_name {
        config = config.domain_name(name.clone());
    }
    Ok(config)
}

/// The instance at `url`; with TLS, its certificate must be for `name` (the URL's host unless
/// the TLS settings or a DNS target name it).
pub(super) fn instance(
    url: &str,
    tls: Option<&Tls>,
    name: Option<&str>,
) -> Result<Instance, String> {
    let Some(super::super::endpoint::Url { secure, authority, host }) =
        super::super::endpoint::split_url(url)
    else {
        return Err(format!("`{url}`: an endpoint starts with https:// or http://"));
    };
    let mut endpoint = Endpoint::from_shared(url.to_owned())
        .map_err(|err| format!("`{url}`: {err}"))?
        .tcp_nodelay(true)
        .connect_timeout(Duration::from_secs(2));
    let mut refusal = None;
    match (secure, tls) {
        (true, Some(tls)) => {
            let name = tls.server_name.as_deref().or(name).unwrap_or(host).to_owned();
            let tonic = tls.tonic.clone().domain_name(name.clone());
            endpoint = endpoint.tls_config(tonic).map_err(|err| format!("`{url}`: TLS: {err}"))?;
            refusal =
                Some(Refusal { authority: authority.to_owned(), config: tls.rustls.clone(), name });
        }
        (true, None) => return Err(format!("`{url}`: an https:// endpoint needs TLS settings")),
        (false, _) => {}
    }
    Ok(Instance { url: url.to_owned(), endpoint, refusal })
}

/// What it takes to ask a TLS server why it refuses this host.
struct Refusal {
    authority: String,
    config: Arc<rustls::ClientConfig>,
    name: String,
}

impl Refusal {
    /// Why the server refuses this host's TLS, when it does. A health check over tonic's
    /// channel sees a refused client certificate as the alert, or, as often, as a plain closed
    /// connection (the alert lost in the race with the close); one handshake that reads
    /// before it writes tells which.
    async fn reason(&self, within: Duration) -> Option<String> {
        tokio::time::timeout(
            within,
            super::super::grpc::client::tls_refusal(
                &self.authority,
                self.config.clone(),
                &self.name,
            ),
        )
        .await
        .ok()
        .flatten()
    }
}

/// What the probers share: where to report, what to ask.
#[derive(Clone)]
pub(super) struct Probe {
    pub(super) plugin: String,
    pub(super) every: Duration,
    pub(super) changes: Sender<Change<String, Endpoint>>,
    pub(super) instances: Instances,
}

/// The longest pause between two health checks of an instance that keeps failing them: each
/// failure in a row doubles the pause from the probe interval up to this, so that a host whose
/// certificate a server refuses does not knock every 250 ms for as long as it runs.
const MAX_PROBE_BACKOFF: Duration = Duration::from_secs(2);

/// Whether a health check's failure is the server refusing this host's TLS, which no retry
/// mends (unlike a refused connection or a server that drains).
pub(super) fn is_tls_refusal(reason: &str) -> bool {
    tls_refusal_start(reason).is_some()
}

/// Where the TLS refusal starts in a failure's text, after the transport's own words
/// (`transport error: connection error: received fatal alert: …`).
fn tls_refusal_start(reason: &str) -> Option<usize> {
    ["received fatal alert", "invalid peer certificate"]
        .iter()
        .filter_map(|sign| reason.find(sign))
        .min()
}

/// A TLS refusal told the same way however it was seen: from the alert on, in plain words.
fn told(reason: String) -> String {
    match tls_refusal_start(&reason) {
        Some(start) => {
            // The causes after the refusal are the transport's own words again.
            let refusal = reason[start..].trim_end_matches(": transport error");
            super::super::endpoint::explain(refusal.to_owned(), true)
        }
        None => reason,
    }
}

impl Probe {
    /// Asks `instance` about the plugin every `every` (backing off while it fails), adding it to
    /// the balancer or removing it as the answer changes, until the task is aborted.
    pub(super) async fn run(self, instance: Instance) {
        self.instances.lock().insert(instance.url.clone(), Seen::default());
        let channel = instance.endpoint.connect_lazy();
        let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
        let mut balanced = false;
        let mut failures = 0u32;
        loop {
            let request = tonic_health::pb::HealthCheckRequest { service: self.plugin.clone() };
            let answer = tokio::time::timeout(
                self.every.max(Duration::from_millis(200)) * 4,
                health.check(request),
            )
            .await;
            let failure = match &answer {
                Ok(Ok(reply)) if reply.get_ref().status == 1 => None,
                Ok(Ok(reply)) => Some(format!(
                    "health status {} for `{}`",
                    health_status_name(reply.get_ref().status),
                    self.plugin
                )),
                Ok(Err(status)) if status.code() == tonic::Code::NotFound => Some(format!(
                    "the server serves no plugin `{}` (health: {})",
                    self.plugin,
                    status.message()
                )),
                Ok(Err(status)) => {
                    let reason = super::super::grpc::client::with_causes(status);
                    Some(if is_tls_refusal(&reason) {
                        told(reason)
                    } else {
                        super::super::endpoint::explain(
                            reason,
                            instance.url.starts_with("https://"),
                        )
                    })
                }
                Err(_) => Some("no health answer in time".to_owned()),
            };
            // Only a call that failed may hide a refused handshake: a server that answered
            // (NOT_SERVING, a plugin it does not serve) or is slow is not asked again.
            let connection_failed = matches!(
                &answer,
                Ok(Err(status)) if status.code() != tonic::Code::NotFound
            );
            let failure = match (failure, &instance.refusal) {
                (Some(why), Some(refusal)) if connection_failed && !is_tls_refusal(&why) => Some(
                    refusal
                        .reason(self.every.max(Duration::from_millis(200)) * 4)
                        .await
                        .filter(|reason| is_tls_refusal(reason))
                        .map_or(why, told),
                ),
                (failure, _) => failure,
            };
            let serving = failure.is_none();
            if let Some(why) = &failure {
                let seen = self.instances.lock().get(&instance.url).and_then(|s| s.failure.clone());
                // Said once per change of reason, not at every probe.
                if balanced {
                    tracing::warn!(url = %instance.url, plugin = %self.plugin, reason = %why, "instance not serving: ejected");
                } else if seen.as_deref() != Some(why.as_str()) {
                    tracing::warn!(url = %instance.url, plugin = %self.plugin, reason = %why, "instance not serving");
                }
            }
            if serving != balanced {
                let change = if serving {
                    tracing::info!(url = %instance.url, plugin = %self.plugin, "instance serving: balanced");
                    Change::Insert(instance.url.clone(), instance.endpoint.clone())
                } else {
                    Change::Remove(instance.url.clone())
                };
                if self.changes.send(change).await.is_err() {
                    return;
                }
                balanced = serving;
            }
            self.record(&instance.url, balanced, failure);
            failures = if serving { 0 } else { failures.saturating_add(1) };
            tokio::time::sleep(probe_pause(self.every, failures)).await;
        }
    }
}

impl Probe {
    /// What the prober of `url` saw, for the callers' errors.
    fn record(&self, url: &str, balanced: bool, failure: Option<String>) {
        let mut instances = self.instances.lock();
        let seen = instances.entry(url.to_owned()).or_default();
        seen.balanced = balanced;
        // A TLS refusal can show as a plain closed connection on the next try (the alert lost
        // in the race with the close): the refusal stays the reason until a success.
        let keep = seen.failure.as_deref().is_some_and(is_tls_refusal);
        match failure {
            Some(why) if keep && !is_tls_refusal(&why) => {}
            failure => seen.failure = failure,
        }
    }
}

/// The pause before the next health check after `failures` failed ones in a row.
fn probe_pause(every: Duration, failures: u32) -> Duration {
    let backoff = every.saturating_mul(1 << failures.saturating_sub(1).min(16));
    if failures == 0 {
        every
    } else {
        backoff.min(MAX_PROBE_BACKOFF.max(every))
    }
}

/// `grpc.health.v1`'s name of a serving status.
fn health_status_name(status: i32) -> &'static str {
    match status {
        0 => "UNKNOWN",
        1 => "SERVING",
        2 => "NOT_SERVING",
        3 => "SERVICE_UNKNOWN",
        _ => "(not a grpc.health.v1 status)",
    }
}

/// Resolves `name` every `every`, starting a prober for each new address and stopping (and
/// ejecting) those of addresses that went away.
pub(super) async fn resolve(name: String, tls: Option<Tls>, every: Duration, probe: Probe) {
    let host = name.rsplit_once(':').map_or(name.as_str(), |(host, _)| host).to_owned();
    let scheme = if tls.is_some() { "https" } else { "http" };
    // The probers stop with the resolver: a JoinSet aborts its tasks when dropped.
    let mut tasks = tokio::task::JoinSet::new();
    let mut probers: BTreeMap<std::net::SocketAddr, tokio::task::AbortHandle> = BTreeMap::new();
    loop {
        while tasks.try_join_next().is_some() {}
        match tokio::net::lookup_host(name.as_str()).await {
            Ok(found) => {
                let found: std::collections::BTreeSet<_> = found.collect();
                for gone in
                    probers.keys().filter(|a| !found.contains(a)).copied().collect::<Vec<_>>()
                {
                    if let Some(task) = probers.remove(&gone) {
                        task.abort();
                    }
                    let url = format!("{scheme}://{gone}");
                    probe.instances.lock().remove(&url);
                    let _ = probe.changes.send(Change::Remove(url)).await;
                }
                for address in found {
                    if probers.contains_key(&address) {
                        continue;
                    }
                    let url = format!("{scheme}://{address}");
                    // The certificate is for the name, not for each address (unless the TLS
                    // settings name the server themselves).
                    match instance(&url, tls.as_ref(), Some(&host)) {
                        Ok(instance) => {
                            probers.insert(address, tasks.spawn(probe.clone().run(instance)));
                        }
                        Err(reason) => {
                            tracing::warn!(%url, %reason, "cannot use a resolved address")
                        }
                    }
                }
            }
            Err(err) => {
                tracing::warn!(%name, error = %err, "cannot resolve the fleet's name; keeping the instances known")
            }
        }
        tokio::time::sleep(every).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failing_instance_is_probed_less_and_less_often_down_to_the_cap() {
        let every = Duration::from_millis(250);
        let pauses: Vec<u128> = (0..7).map(|n| probe_pause(every, n).as_millis()).collect();
        assert_eq!(pauses, [250, 250, 500, 1000, 2000, 2000, 2000]);
        assert_eq!(probe_pause(every, u32::MAX), MAX_PROBE_BACKOFF);
        // A probe interval above the cap is kept as it is.
        assert_eq!(probe_pause(Duration::from_secs(5), 9), Duration::from_secs(5));
    }

    #[test]
    fn tls_refusals_are_told_from_failures_a_retry_may_mend() {
        assert!(is_tls_refusal("received fatal alert: CertificateRequired"));
        assert!(is_tls_refusal("invalid peer certificate: UnknownIssuer"));
        assert_eq!(
            told("transport error: connection error: received fatal alert: UnknownCA".to_owned()),
            "received fatal alert: UnknownCA (the server does not accept this host's certificate \
             (not signed by the CA it trusts))"
        );
        for other in [
            "tcp connect error: Connection refused (os error 111)",
            "transport error: connection closed",
            "health status NOT_SERVING for `basic`",
            "no health answer in time",
        ] {
            assert!(!is_tls_refusal(other), "{other}");
        }
    }
}
