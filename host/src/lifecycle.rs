//! The per-plugin lifecycle state machine, the seed's plugin manager diagram:
//!
//! ```text
//! Discovered -> Validating -> Loading -> Handshaking -> Initializing -> Ready <-> Processing
//!                   |            |            |              |          |   \
//!                   +------------+------------+--------------+--> Error  |    +--> ShuttingDown -> Closed
//!                                                      (Error -> Initializing, Error -> ShuttingDown)
//! ```
//!
//! [`LifecycleState::can_become`] is the one table of legal transitions; [`StateMachine`] is an
//! atomic cell that only moves along it, logs every move as a `tracing` event and can be read at
//! any time without blocking.

use std::fmt;
use std::sync::atomic::{AtomicU8, Ordering};

use crate::Error;

/// Where a managed plugin is in its life.
#[repr(u8)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LifecycleState {
    /// A library file was found in a plugin directory.
    Discovered = 0,
    /// Its file and headers are being checked (nothing is mapped yet).
    Validating = 1,
    /// It is being mapped and its root module's layout checked.
    Loading = 2,
    /// Its handshake (cookie, protocol, interface version) and metadata are being checked.
    Handshaking = 3,
    /// Its `initialize` is running with the config's `[plugins.NAME]` table.
    Initializing = 4,
    /// Serving calls, none in flight.
    Ready = 5,
    /// Serving calls, at least one in flight.
    Processing = 6,
    /// A step failed (or `initialize` did); the reason is in the manager's status.
    Error = 7,
    /// Refusing new calls, waiting for calls in flight, then calling the plugin's `shutdown`.
    ShuttingDown = 8,
    /// Shut down for good.
    Closed = 9,
}

impl LifecycleState {
    /// Every state, in lifecycle order.
    pub const ALL: [LifecycleState; 10] = [
        LifecycleState::Discovered,
        LifecycleState::Validating,
        LifecycleState::Loading,
        LifecycleState::Handshaking,
        LifecycleState::Initializing,
        LifecycleState::Ready,
        LifecycleState::Processing,
        LifecycleState::Error,
        LifecycleState::ShuttingDown,
        LifecycleState::Closed,
    ];

    /// Whether the state machine allows moving from `self` to `next`.
    pub const fn can_become(self, next: LifecycleState) -> bool {
        use LifecycleState as S;
        matches!(
            (self, next),
            (S::Discovered, S::Validating)
                | (S::Validating, S::Loading | S::Error)
                | (S::Loading, S::Handshaking | S::Error)
                | (S::Handshaking, S::Initializing | S::Error)
                | (S::Initializing, S::Ready | S::Error)
                | (S::Ready, S::Processing | S::Error | S::ShuttingDown)
                | (S::Processing, S::Ready | S::Error | S::ShuttingDown)
                | (S::Error, S::Initializing | S::ShuttingDown)
                | (S::ShuttingDown, S::Closed)
        )
    }

    /// The state's name, e.g. `ready`, `shutting-down`.
    pub const fn name(self) -> &'static str {
        match self {
            LifecycleState::Discovered => "discovered",
            LifecycleState::Validating => "validating",
            LifecycleState::Loading => "loading",
            LifecycleState::Handshaking => "handshaking",
            LifecycleState::Initializing => "initializing",
            LifecycleState::Ready => "ready",
            LifecycleState::Processing => "processing",
            LifecycleState::Error => "error",
            LifecycleState::ShuttingDown => "shutting-down",
            LifecycleState::Closed => "closed",
        }
    }

    const fn from_u8(raw: u8) -> LifecycleState {
        match raw {
            0 => LifecycleState::Discovered,
            1 => LifecycleState::Validating,
            2 => LifecycleState::Loading,
            3 => LifecycleState::Handshaking,
            4 => LifecycleState::Initializing,
            5 => LifecycleState::Ready,
            6 => LifecycleState::Processing,
            8 => LifecycleState::ShuttingDown,
            9 => LifecycleState::Closed,
            _ => LifecycleState::Error,
        }
    }
}

impl fmt::Display for LifecycleState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// An atomic [`LifecycleState`] that only moves along [`LifecycleState::can_become`].
///
/// Reading it is one atomic load. Every transition is logged as a `tracing` event (`debug` for
/// the loading steps, `info` for the rest) with the plugin's name.
#[derive(Debug)]
pub struct StateMachine {
    plugin: String,
    state: AtomicU8,
}

impl StateMachine {
    /// A machine for `plugin` (a name, or a file for a library not yet loaded) in `Discovered`.
    pub fn new(plugin: impl Into<String>) -> StateMachine {
        let plugin = plugin.into();
        tracing::debug!(plugin = %plugin, to = %LifecycleState::Discovered, "state");
        StateMachine { plugin, state: AtomicU8::new(LifecycleState::Discovered as u8) }
    }

    /// The current state.
    #[inline]
    pub fn state(&self) -> LifecycleState {
        LifecycleState::from_u8(self.state.load(Ordering::SeqCst))
    }

    /// Whether the state is `Ready`: one atomic load (the manager's slow path checks it; its fast
    /// path tests the library's gate instead, see `Generation::gate`).
    #[inline]
    pub(crate) fn is_ready(&self) -> bool {
        self.state.load(Ordering::SeqCst) == LifecycleState::Ready as u8
    }

    /// The name the machine logs with.
    pub fn plugin(&self) -> &str {
        &self.plugin
    }

    /// Renames the machine once the plugin's real name is known (it starts with the file's).
    pub(crate) fn rename(&mut self, plugin: &str) {
        plugin.clone_into(&mut self.plugin);
    }

    /// Moves to `to` if the current state allows it, and returns the state it left.
    ///
    /// # Errors
    ///
    /// [`Error::IllegalTransition`] naming both states; the state does not change.
    pub fn transition(&self, to: LifecycleState) -> Result<LifecycleState, Error> {
        let mut current = self.state.load(Ordering::SeqCst);
        loop {
            let from = LifecycleState::from_u8(current);
            if !from.can_become(to) {
                tracing::warn!(plugin = %self.plugin, %from, %to, "illegal state transition refused");
                return Err(Error::IllegalTransition { plugin: self.plugin.clone(), from, to });
            }
            match self.state.compare_exchange(current, to as u8, Ordering::SeqCst, Ordering::SeqCst)
            {
                Ok(_) => {
                    if matches!(
                        to,
                        LifecycleState::Validating
                            | LifecycleState::Loading
                            | LifecycleState::Handshaking
                            | LifecycleState::Processing
                    ) || from == LifecycleState::Processing
                    {
                        tracing::debug!(plugin = %self.plugin, %from, %to, "state");
                    } else {
                        tracing::info!(plugin = %self.plugin, %from, %to, "state");
                    }
                    return Ok(from);
                }
                Err(actual) => current = actual,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_values_round_trip() {
        for state in LifecycleState::ALL {
            assert_eq!(LifecycleState::from_u8(state as u8), state);
        }
    }

    #[test]
    fn closed_is_final() {
        for next in LifecycleState::ALL {
            assert!(!LifecycleState::Closed.can_become(next));
        }
    }

    #[test]
    fn a_machine_moves_only_along_the_diagram_and_says_so() {
        let mut machine = StateMachine::new("libbasic.so");
        assert_eq!(
            (machine.state(), machine.plugin()),
            (LifecycleState::Discovered, "libbasic.so")
        );
        machine.rename("basic");
        assert_eq!(machine.plugin(), "basic");
        for step in [
            LifecycleState::Validating,
            LifecycleState::Loading,
            LifecycleState::Handshaking,
            LifecycleState::Initializing,
        ] {
            machine.transition(step).unwrap();
            assert!(!machine.is_ready());
        }
        assert_eq!(
            machine.transition(LifecycleState::Ready).unwrap(),
            LifecycleState::Initializing
        );
        assert!(machine.is_ready());
        let err = machine.transition(LifecycleState::Closed).unwrap_err();
        assert_eq!(err.to_string(), "basic: illegal state transition ready -> closed");
        assert_eq!(machine.state(), LifecycleState::Ready, "a refused move changes nothing");
        assert_eq!(LifecycleState::ShuttingDown.to_string(), "shutting-down");
    }

    /// The seed's lifecycle diagram, edge by edge: exactly these moves are allowed.
    #[test]
    fn the_allowed_moves_are_the_diagrams() {
        use LifecycleState as S;
        let allowed = [
            (S::Discovered, S::Validating),
            (S::Validating, S::Loading),
            (S::Validating, S::Error),
            (S::Loading, S::Handshaking),
            (S::Loading, S::Error),
            (S::Handshaking, S::Initializing),
            (S::Handshaking, S::Error),
            (S::Initializing, S::Ready),
            (S::Initializing, S::Error),
            (S::Ready, S::Processing),
            (S::Ready, S::Error),
            (S::Ready, S::ShuttingDown),
            (S::Processing, S::Ready),
            (S::Processing, S::Error),
            (S::Processing, S::ShuttingDown),
            (S::Error, S::Initializing),
            (S::Error, S::ShuttingDown),
            (S::ShuttingDown, S::Closed),
        ];
        for from in S::ALL {
            for to in S::ALL {
                let expected = allowed.contains(&(from, to));
                assert_eq!(from.can_become(to), expected, "{from:?} -> {to:?}");
            }
        }
    }

    /// The names `calcplug status`, its JSON and the Prometheus labels show.
    #[test]
    fn names_are_the_documented_ones() {
        let names: Vec<&str> = LifecycleState::ALL.iter().map(|s| s.name()).collect();
        assert_eq!(
            names,
            [
                "discovered",
                "validating",
                "loading",
                "handshaking",
                "initializing",
                "ready",
                "processing",
                "error",
                "shutting-down",
                "closed"
            ]
        );
    }
}
