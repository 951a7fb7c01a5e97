//! busybox zcip's command line (`zcip [OPTIONS] IFACE SCRIPT`), parsed and
//! validated into a [`Config`], plus the toolbox's long options for the
//! pid file and the state directory.

use std::ffi::OsString;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use clap::{ArgAction, Parser};

use super::error::Error;
use super::state::is_usable;
use crate::service::{HostOptions, Launch};

pub const LINK_LOCAL_NETWORK: Ipv4Addr = Ipv4Addr::new(169, 254, 0, 0);
/// Where the last address used on each interface is kept by default.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/zcip";
/// An interface name fits in IFNAMSIZ (16) with its terminating NUL.
const MAX_INTERFACE_NAME: usize = 15;

#[derive(Parser, Debug)]
#[command(
    name = "zcip",
    about = "Manage a ZeroConf IPv4 link-local address",
    override_usage = "zcip [OPTIONS] IFACE SCRIPT",
    after_help = "LOGGING=none suppresses logging, LOGGING=syslog logs to syslog.\n\
                  With no -q, runs continuously monitoring for ARP conflicts.",
    disable_version_flag = true
)]
struct Args {
    /// Run in foreground
    #[arg(short = 'f')]
    foreground: bool,
    /// Quit after obtaining address
    #[arg(short = 'q')]
    quit: bool,
    /// Request this address first
    #[arg(short = 'r', value_name = "169.254.x.x")]
    request: Option<String>,
    /// Use this range instead of 169.254
    #[arg(short = 'l', value_name = "x.x.0.0")]
    network: Option<String>,
    /// Verbose (implies -f; repeat for more)
    #[arg(short = 'v', action = ArgAction::Count)]
    verbose: u8,
    /// Store the daemon's process id in PATH
    #[arg(long = "pid-file", value_name = "PATH")]
    pid_file: Option<PathBuf>,
    /// Keep the last address used on each interface in DIR
    #[arg(long = "state-dir", value_name = "DIR", default_value = DEFAULT_STATE_DIR)]
    state_dir: PathBuf,
    /// Network interface
    #[arg(value_name = "IFACE")]
    interface: String,
    /// Script run as `SCRIPT init|config|deconfig`
    #[arg(value_name = "SCRIPT")]
    script: PathBuf,
}

/// The command line's definition, for the man pages (scripts/mangen.sh).
pub fn command() -> clap::Command {
    <Args as clap::CommandFactory>::command()
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    pub interface: String,
    pub script: PathBuf,
    pub foreground: bool,
    pub quit: bool,
    pub request: Option<Ipv4Addr>,
    pub network: Ipv4Addr,
    pub verbose: u8,
    pub pid_file: Option<PathBuf>,
    pub state_dir: PathBuf,
}

/// The applet's entry: parse, validate, and hand back the service.
pub fn parse(argv: &[OsString]) -> Result<Launch, i32> {
    let config = parse_config(argv)?;
    let host = HostOptions {
        daemonize: !config.foreground,
        pid_file: config.pid_file.clone(),
        threads: 1,
        verbosity: config.verbose,
        // busybox logs each script run and conflict without -v.
        base_level: Some(tracing::Level::INFO),
        ..HostOptions::default()
    };
    Ok(super::service::launch(config, host))
}

fn parse_config(argv: &[OsString]) -> Result<Config, i32> {
    let args: Args = crate::service::parse_args(argv)?;
    validate(args).map_err(|msg| {
        eprintln!("zcip: {msg}");
        1
    })
}

fn validate(args: Args) -> Result<Config, Error> {
    let network = match &args.network {
        None => LINK_LOCAL_NETWORK,
        Some(text) => {
            let network: Ipv4Addr = text
                .parse()
                .map_err(|_| Error::NetworkAddress(text.clone()))?;
            if u32::from(network) & 0xffff != 0 {
                return Err(Error::NotA16Network(text.clone()));
            }
            network
        }
    };
    let request = match &args.request {
        None => None,
        Some(text) => {
            let address: Ipv4Addr = text.parse().map_err(|_| Error::LinkAddress(text.clone()))?;
            if !is_usable(network, address) {
                return Err(Error::UnusableLinkAddress {
                    text: text.clone(),
                    network,
                });
            }
            Some(address)
        }
    };
    let name = &args.interface;
    if name.is_empty()
        || name.len() > MAX_INTERFACE_NAME
        || name.contains('/')
        || name.chars().any(char::is_whitespace)
        || name == "."
        || name == ".."
    {
        return Err(Error::InterfaceName(name.clone()));
    }
    Ok(Config {
        interface: args.interface,
        script: absolute(&args.script)?,
        foreground: args.foreground || args.verbose > 0,
        quit: args.quit,
        request,
        network,
        verbose: args.verbose,
        pid_file: args.pid_file.as_deref().map(absolute).transpose()?,
        state_dir: absolute(&args.state_dir)?,
    })
}

/// The daemon changes to `/`, so relative paths are fixed now.
fn absolute(path: &Path) -> Result<PathBuf, Error> {
    std::path::absolute(path).map_err(|error| Error::Path {
        path: path.to_owned(),
        error,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(args: &[&str]) -> Result<Config, String> {
        let argv: Vec<OsString> = std::iter::once("zcip")
            .chain(args.iter().copied())
            .map(OsString::from)
            .collect();
        let args = Args::try_parse_from(argv).map_err(|e| e.to_string())?;
        validate(args).map_err(|e| e.to_string())
    }

    #[test]
    fn defaults_daemonize_in_169_254() {
        let c = config(&["eth0", "/etc/zcip.script"]).unwrap();
        assert_eq!(c.interface, "eth0");
        assert_eq!(c.script, PathBuf::from("/etc/zcip.script"));
        assert!(!c.foreground && !c.quit);
        assert_eq!(c.network, LINK_LOCAL_NETWORK);
        assert_eq!(c.request, None);
        assert_eq!(c.state_dir, PathBuf::from(DEFAULT_STATE_DIR));
    }

    #[test]
    fn busybox_flags_are_understood_and_v_implies_f() {
        let c = config(&["-q", "-v", "-v", "-r", "169.254.3.4", "eth0", "s"]).unwrap();
        assert!(c.quit && c.foreground);
        assert_eq!(c.verbose, 2);
        assert_eq!(c.request, Some(Ipv4Addr::new(169, 254, 3, 4)));
        assert!(c.script.is_absolute());
        let c = config(&["-fq", "-l", "10.20.0.0", "-r", "10.20.1.1", "eth0", "s"]).unwrap();
        assert!(c.foreground && c.quit);
        assert_eq!(c.network, Ipv4Addr::new(10, 20, 0, 0));
    }

    #[test]
    fn requested_addresses_outside_the_usable_range_are_refused() {
        for bad in [
            "169.254.0.5",
            "169.254.255.1",
            "169.254.0.0",
            "169.253.1.1",
            "10.0.1.1",
            "169.254.1",
            "nonsense",
        ] {
            let err = config(&["-r", bad, "eth0", "s"]).unwrap_err();
            assert!(err.starts_with("invalid link address"), "{bad}: {err}");
        }
        let err = config(&["-l", "10.1.0.0", "-r", "169.254.1.1", "eth0", "s"]).unwrap_err();
        assert!(err.contains("10.1.0.0/16"), "{err}");
    }

    #[test]
    fn networks_that_are_not_a_16_are_refused() {
        for bad in ["10.1.2.0", "169.254.0.1", "1.2.3", "x"] {
            let err = config(&["-l", bad, "eth0", "s"]).unwrap_err();
            assert!(err.starts_with("invalid network address"), "{bad}: {err}");
        }
    }

    #[test]
    fn odd_interface_names_are_refused() {
        for bad in ["", "a/b", "..", "sixteen-chars-xx", "a b"] {
            assert!(config(&[bad, "s"]).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn both_operands_are_required() {
        assert!(config(&["eth0"]).is_err());
        assert!(config(&[]).is_err());
        assert!(config(&["eth0", "s", "extra"]).is_err());
    }
}
