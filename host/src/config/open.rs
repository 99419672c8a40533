//! Starting the plugins a config names itself, `[plugins.NAME] command` (a plugin executable)
//! and `endpoints` or `discovery` (a fleet): one way for the plugin manager and the CLI.

use std::path::{Path, PathBuf};

use super::{ManagerConfig, PluginCommand};
use crate::remote::{Fleet, RemoteOptions, RemotePlugin};
use crate::{Error, PluginHandle};

impl ManagerConfig {
    /// How a plugin executable is run: `[isolation]`'s options, with its own `auto_mtls`.
    pub fn command_options(&self, command: &PluginCommand) -> RemoteOptions {
        let mut options = self.isolation().options().clone();
        options.auto_mtls = command.auto_mtls.unwrap_or(options.auto_mtls);
        options
    }

    /// Starts the plugin executable configured as `[plugins.NAME] command`; the plugin must
    /// call itself `name`.
    ///
    /// # Errors
    ///
    /// As [`RemotePlugin::spawn_command`]; [`Error::BadMetadata`] naming the program when the
    /// plugin calls itself by another name.
    pub fn start_command(
        &self,
        name: &str,
        command: &PluginCommand,
    ) -> Result<RemotePlugin, Error> {
        let plugin = RemotePlugin::spawn_command(
            &command.program,
            &command.args,
            self.command_options(command),
        )?;
        let called = plugin.identity().name();
        if called == name {
            return Ok(plugin);
        }
        Err(Error::BadMetadata {
            reason: format!(
                "the plugin calls itself `{called}`, but it is configured as `[plugins.{name}]`"
            ),
        }
        .with_path(locate(&command.program)))
    }

    /// The plugin this config names `name` with `command`, `endpoints` or `discovery`, started
    /// or connected; `None` when it names no such plugin (a library's `[plugins.NAME]` table
    /// is only its `initialize` config).
    ///
    /// # Errors
    ///
    /// As [`ManagerConfig::start_command`] and [`Fleet::connect`]: the reason a fleet cannot be
    /// reached (a refused TLS handshake, a refused connection) is in the error.
    pub fn open_configured(&self, name: &str) -> Option<Result<Box<dyn PluginHandle>, Error>> {
        if let Some(command) = self.commands.get(name) {
            return Some(
                self.start_command(name, command).map(|p| Box::new(p) as Box<dyn PluginHandle>),
            );
        }
        let options = self.fleets.get(name)?;
        Some(Fleet::connect(name, options.clone()).map(|f| Box::new(f) as Box<dyn PluginHandle>))
    }

    /// Every plugin this config names with `command`, `endpoints` or `discovery`, by name.
    pub fn configured_remotes(&self) -> impl Iterator<Item = &str> {
        self.commands.keys().chain(self.fleets.keys()).map(String::as_str)
    }
}

/// `program` itself when it has a `/`, else the first match in `PATH` (as the process would be
/// started), else `program` unchanged.
pub(crate) fn locate(program: &Path) -> PathBuf {
    if program.components().count() > 1 {
        return program.to_owned();
    }
    std::env::var_os("PATH")
        .and_then(|path| {
            std::env::split_paths(&path).map(|dir| dir.join(program)).find(|p| p.is_file())
        })
        .unwrap_or_else(|| program.to_owned())
}
