//! go-plugin's gRPC protocol, both ways: plugin executables in any language that speak it,
//! launched and called by this host ([`client`]), and calcplug libraries served to go-plugin
//! hosts by a runner started with `--grpc` ([`server`]).
//!
//! The contract is `calcplug.v1` (`interface/proto/calcplug/v1/calculator.proto`); the wire
//! protocol around it is go-plugin's: the magic cookie in the environment, the handshake line
//! on stdout ([`handshake`]), the `grpc.health.v1` service answering for `plugin`, and
//! go-plugin's controller and broker services, and its automatic mutual TLS ([`mtls`]). The
//! broker is answered but relays nothing, and
//! the handshake line never carries go-plugin 1.6's seventh field: a host that asks for
//! multiplexing (`PLUGIN_MULTIPLEX_GRPC`) gets a plugin without it, as from go-plugin ≤ 1.5.

pub(crate) mod client;
pub(crate) mod handshake;
pub(crate) mod mtls;
pub(crate) mod server;
pub(crate) mod trace_context;

use interface::{AngleUnit, ErrorCode, PluginState};

/// The generated `calcplug.v1` messages, client and server.
#[allow(unreachable_pub, missing_docs, clippy::all, clippy::pedantic)]
pub(crate) mod pb {
    tonic::include_proto!("calcplug.v1");
}

/// go-plugin's controller and broker services.
#[allow(unreachable_pub, missing_docs, clippy::all, clippy::pedantic)]
pub(crate) mod go_plugin {
    tonic::include_proto!("plugin");
}

/// The service name go-plugin hosts ask `grpc.health.v1.Health` about.
pub(crate) const HEALTH_SERVICE: &str = "plugin";

/// The wire number of an error code: calcplug's own numbers, 0 for none.
pub(crate) fn error_to_pb(code: ErrorCode, message: String) -> pb::Error {
    pb::Error { code: i32::from(code.as_u8()), message }
}

/// The error a `calcplug.v1` answer carries: `None` when it carries none (or code 0). A code
/// this build does not know reads as `Internal`, with the number in the message.
pub(crate) fn error_from_pb(error: Option<pb::Error>) -> Option<(ErrorCode, String)> {
    let error = error.filter(|error| error.code != 0)?;
    match u8::try_from(error.code).ok().and_then(ErrorCode::from_u8) {
        Some(code) => Some((code, error.message)),
        None => Some((
            ErrorCode::Internal,
            format!("unknown error code {} from the plugin: {}", error.code, error.message),
        )),
    }
}

/// The wire number of a plugin state: calcplug's number plus one (0 means unspecified).
pub(crate) fn state_to_pb(state: PluginState) -> i32 {
    i32::from(state as u8) + 1
}

/// A plugin state from its wire number; an unknown one reads as `Error`.
pub(crate) fn state_from_pb(raw: i32) -> PluginState {
    u8::try_from(raw - 1).ok().and_then(PluginState::from_u8).unwrap_or(PluginState::Error)
}

/// The wire number of an angle unit: calcplug's own.
pub(crate) fn angle_unit_to_pb(unit: AngleUnit) -> i32 {
    i32::from(unit as u8)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_and_states_keep_calcplug_numbers_across_the_wire() {
        assert_eq!(error_to_pb(ErrorCode::DivisionByZero, String::new()).code, 1);
        assert_eq!(pb::ErrorCode::DivisionByZero as i32, ErrorCode::DivisionByZero.as_u8().into());
        assert_eq!(pb::ErrorCode::Internal as i32, ErrorCode::Internal.as_u8().into());
        assert_eq!(error_from_pb(None), None);
        assert_eq!(error_from_pb(Some(pb::Error { code: 0, message: "x".into() })), None);
        let (code, message) = error_from_pb(Some(pb::Error { code: 99, message: "m".into() }))
            .expect("a nonzero code is an error");
        assert_eq!(
            (code, message.as_str()),
            (ErrorCode::Internal, "unknown error code 99 from the plugin: m")
        );
        for state in [
            PluginState::Uninitialized,
            PluginState::Initializing,
            PluginState::Ready,
            PluginState::Error,
            PluginState::ShuttingDown,
            PluginState::Closed,
        ] {
            assert_eq!(state_from_pb(state_to_pb(state)), state);
        }
        assert_eq!(state_to_pb(PluginState::Ready), pb::PluginState::Ready as i32);
        assert_eq!(state_from_pb(0), PluginState::Error);
        assert_eq!(angle_unit_to_pb(AngleUnit::Degrees), pb::AngleUnit::Degrees as i32);
    }
}
