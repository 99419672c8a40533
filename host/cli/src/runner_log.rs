//! The runner's logging on stderr, in the format of the host that started it: plain
//! `LEVEL target: message` lines for a calcplug host (which re-emits them as its own `tracing`
//! events), hclog's JSON (`@level`, `@message`, `@timestamp`, `@module`, then the fields) for a
//! go-plugin host, which shows them at their level (`calcplug-runner --grpc`).
//!
//! Shared by `calcplug` (when it is started as its own runner) and `calcplug-runner`.

use std::io::Write;
use std::time::SystemTime;

use tracing::field::{Field, Visit};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::Layer;

/// Installs the runner's subscriber: `CALCPLUG_RUNNER_LOG` (any `tracing` filter), else
/// `info`; no colour. Plain lines carry no time (the host adds it); hclog lines do.
pub(crate) fn init() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("CALCPLUG_RUNNER_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    if std::env::args_os().nth(1).is_some_and(|arg| arg == "--grpc") {
        let _ = tracing_subscriber::registry().with(Hclog.with_filter(filter)).try_init();
        return;
    }
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(filter)
        .with_ansi(false)
        .without_time()
        .try_init();
}

/// Writes each event as one hclog JSON line on stderr.
struct Hclog;

impl<S: tracing::Subscriber> Layer<S> for Hclog {
    fn on_event(&self, event: &tracing::Event<'_>, _: Context<'_, S>) {
        let metadata = event.metadata();
        let mut line = serde_json::Map::new();
        line.insert("@level".into(), metadata.level().as_str().to_ascii_lowercase().into());
        let mut fields = Fields::default();
        event.record(&mut fields);
        line.insert("@message".into(), fields.message.into());
        line.insert("@timestamp".into(), timestamp(SystemTime::now()).into());
        line.insert("@module".into(), metadata.target().into());
        line.extend(fields.rest);
        let mut text = serde_json::Value::Object(line).to_string();
        text.push('\n');
        let _ = std::io::stderr().lock().write_all(text.as_bytes());
    }
}

#[derive(Default)]
struct Fields {
    message: String,
    rest: Vec<(String, serde_json::Value)>,
}

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        let text = format!("{value:?}");
        if field.name() == "message" {
            self.message = text;
        } else {
            self.rest.push((field.name().to_owned(), text.into()));
        }
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message = value.to_owned();
        } else {
            self.rest.push((field.name().to_owned(), value.into()));
        }
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.rest.push((field.name().to_owned(), value.into()));
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.rest.push((field.name().to_owned(), value.into()));
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.rest.push((field.name().to_owned(), value.into()));
    }
}

/// hclog's timestamp layout, `2006-01-02T15:04:05.000000Z07:00`, in UTC.
fn timestamp(now: SystemTime) -> String {
    humantime::format_rfc3339_micros(now).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn timestamps_have_hclogs_layout() {
        assert_eq!(timestamp(UNIX_EPOCH), "1970-01-01T00:00:00.000000Z");
        let t = UNIX_EPOCH + Duration::from_micros(1_795_865_575_580_123);
        assert_eq!(timestamp(t), "2026-11-28T11:32:55.580123Z");
    }
}
