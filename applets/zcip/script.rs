//! Running the user's script as busybox does: `SCRIPT init|config|deconfig`
//! with `interface=IFACE` and, for config and deconfig, `ip=ADDR` in its
//! environment. The outcome is returned so that no failure goes unlogged.

use std::fmt;
use std::io;
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
    /// `SCRIPT STEP`, as shown.
    pub command: String,
    pub reason: ScriptFailure,
}

#[derive(Debug)]
pub enum ScriptFailure {
    /// The blocking thread running it was lost.
    NotWaited(tokio::task::JoinError),
    NotRun(io::Error),
    Exit(i32),
    Signal(i32),
    /// Neither an exit code nor a signal.
    Other(ExitStatus),
}

impl fmt::Display for ScriptError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "script {} ", self.command)?;
        match &self.reason {
            ScriptFailure::NotWaited(e) => write!(f, "could not be waited for: {e}"),
            ScriptFailure::NotRun(e) => write!(f, "could not be run: {}", io_text(e)),
            ScriptFailure::Exit(code) => write!(f, "failed, exit status {code}"),
            ScriptFailure::Signal(signal) => write!(f, "killed by signal {signal}"),
            ScriptFailure::Other(status) => write!(f, "failed ({status})"),
        }
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
                reason: ScriptFailure::NotWaited(e),
            })?;
        match status {
            Ok(status) if status.success() => Ok(()),
            Ok(status) => Err(ScriptError {
                command: shown,
                reason: describe_failure(status),
            }),
            Err(e) => Err(ScriptError {
                command: shown,
                reason: ScriptFailure::NotRun(e),
            }),
        }
    }
}

fn describe_failure(status: ExitStatus) -> ScriptFailure {
    match (status.code(), status.signal()) {
        (Some(code), _) => ScriptFailure::Exit(code),
        (None, Some(signal)) => ScriptFailure::Signal(signal),
        (None, None) => ScriptFailure::Other(status),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_read_as_busybox_users_expect() {
        let error = |reason| {
            ScriptError {
                command: "/etc/zcip.script init".into(),
                reason,
            }
            .to_string()
        };
        assert_eq!(
            error(ScriptFailure::Exit(3)),
            "script /etc/zcip.script init failed, exit status 3"
        );
        assert_eq!(
            error(ScriptFailure::Signal(9)),
            "script /etc/zcip.script init killed by signal 9"
        );
        assert_eq!(
            error(ScriptFailure::NotRun(io::Error::from_raw_os_error(
                libc::ENOENT
            ))),
            "script /etc/zcip.script init could not be run: No such file or directory"
        );
    }
}
