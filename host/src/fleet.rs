//! The plugins a manager serves, offered to other machines: `calcplug serve`.
//!
//! [`Server`] serves every plugin of a [`PluginManager`](crate::PluginManager) over gRPC on TCP,
//! with the `calcplug.v1.Calculator` service the plugin executables speak
//! (`interface/proto/calcplug/v1/calculator.proto`): a request names its plugin in the
//! [`PLUGIN_METADATA`] metadata key, and gets the answers and errors a local call would. Calls go
//! through the manager, so its metrics, retries, circuit breaker and hot reload apply. TLS is
//! rustls, from PEM files ([`ServerTls`]), with mutual TLS when a client CA is given; plaintext
//! only when asked for. `grpc.health.v1.Health` answers for the whole server (the empty service
//! name and `calcplug.v1.Calculator`) and for each plugin by name: `NOT_SERVING` for a plugin in
//! `Error`, not loaded, or with an open circuit, and for everything once the server drains.
//!
//! A server stops when its [`Stopper`] says so (the CLI's on `SIGTERM` and `SIGINT`): it
//! reports `NOT_SERVING` everywhere, stops accepting, lets the calls in flight finish (at most
//! the drain timeout), then returns; the caller shuts the manager down.
//!
//! Calls carry the caller's trace: a [`Fleet`] or [`Endpoint`] call runs in a span (debug level,
//! target [`TRACE_TARGET`]) whose context goes out as the W3C `traceparent` through the
//! propagator the application installed (`opentelemetry::global::set_text_map_propagator`); the
//! server reads it into the span of the request, and the plugin's work is a span inside that.
//! With `tracing-opentelemetry`'s layer taking [`TRACE_TARGET`], one trace shows the host's call,
//! the served call and the plugin's work; without it, nothing is sent or made.

mod serve;
mod tls;

pub use crate::remote::trace_context::TARGET as TRACE_TARGET;
pub use crate::remote::{Endpoint, Fleet, FleetOptions, Targets};
pub use serve::{
    ServeOptions, Server, ServerTls, Stopper, CALCULATOR_SERVICE, LIVENESS_SERVICE, PLUGIN_METADATA,
};
pub(crate) use tls::client_config as tls_client_config;
pub use tls::ClientTls;
