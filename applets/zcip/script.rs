//! Running the user's script as busybox does: `SCRIPT init|config|deconfig`
//! with `interface=IFACE` and, for config and deconfig, `ip=ADDR` in its
//! environment. The outcome is returned so that no failure goes unlogged.

use std::fmt;
use std::net::Ipv4Addr;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::{Command, ExitStatus, Stdio};

use crate::service::io_text;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    Init,
    Config,
    Deconfig,
}

impl Step {
    pub fn name(self) -> &'static str {
        match self {
            Step::Init => "init",
            Step::Config => "config",
            Step::Deconfig => "deconfig",
        }
    }
}

/// Why a script run did not succeed.
#[derive(Debug)]
pub struct ScriptError {
    pub command: String,
    pub reason: String,
}

impl fmt::Display for ScriptError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "script {} {}", self.command, self.reason)
    }
}

#[derive(Clone, Debug)]
pub struct Script {
    pub path: PathBuf,
    pub interface: String,
}

impl Script {
    /// Runs one step to completion on a blocking thread, so the runtime
    /// (and any service sharing it) keeps going.
    pub async fn run(&self, step: Step, address: Option<Ipv4Addr>) -> Result<(), ScriptError> {
        let mut command = Command::new(&self.path);
        command
            .arg(step.name())
            .env("interface", &self.interface)
            .stdin(Stdio::null());
        match address {
            Some(address) => command.env("ip", address.to_string()),
            None => command.env_remove("ip"),
        };
        let shown = format!("{} {}", self.path.display(), step.name());
        let status = tokio::task::spawn_blocking(move || command.status())
            .await
            .map_err(|e| ScriptError {
                command: shown.clone(),
                reason: format!("could not be waited for: {e}"),
            })?;
        match status {
            Ok(status) if status.success() => Ok(()),
            Ok(status) => Err(ScriptError {
                command: shown,
                reason: describe_failure(status),
            }),
            Err(e) => Err(ScriptError {
                command: shown,
                reason: format!("could not be run: {}", io_text(&e)),
            }),
        }
    }
}

fn describe_failure(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("failed, exit status {code}"),
        (None, Some(signal)) => format!("killed by signal {signal}"),
        (None, None) => format!("failed ({status})"),
    }
}
