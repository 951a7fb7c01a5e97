//! ipmgmtd's command line: `ipmgmtd [-f] [--root DIR] [-v]... [--pid-file PATH]`.

use std::ffi::OsString;
use std::path::PathBuf;

use clap::{ArgAction, Parser};

use crate::service::{HostOptions, Launch};

#[derive(Parser, Debug)]
#[command(
    name = "ipmgmtd",
    about = "IP configuration daemon: named addresses and persistent settings for ipadm",
    disable_version_flag = true
)]
struct Args {
    /// Stay in the foreground
    #[arg(short = 'f', long)]
    foreground: bool,
    /// Prefix every path (socket, caches, datastore) with DIR
    #[arg(long, value_name = "DIR", default_value = "/")]
    root: PathBuf,
    /// Log more (repeat for more still)
    #[arg(short = 'v', long, action = ArgAction::Count)]
    verbose: u8,
    /// Store the daemon's process id in PATH (in a directory user netadm
    /// may write, such as /run/ipadm, if the daemon drops to it)
    #[arg(long = "pid-file", value_name = "PATH")]
    pid_file: Option<PathBuf>,
}

/// The command line's definition, for the man pages (scripts/mangen.sh).
pub fn command() -> clap::Command {
    <Args as clap::CommandFactory>::command()
}

#[derive(Clone, Debug)]
pub struct Config {
    /// Absolute: the daemon changes directory to / when it detaches.
    pub root: PathBuf,
}

pub fn parse(argv: &[OsString]) -> Result<Launch, i32> {
    let args: Args = crate::service::parse_args(argv)?;
    let absolute = |p: &PathBuf| {
        std::path::absolute(p).map_err(|e| {
            eprintln!("ipmgmtd: {}: {e}", p.display());
            1
        })
    };
    let config = Config {
        root: absolute(&args.root)?,
    };
    let host = HostOptions {
        daemonize: !args.foreground,
        pid_file: args.pid_file.as_ref().map(absolute).transpose()?,
        threads: 1,
        verbosity: args.verbose,
        base_level: Some(tracing::Level::WARN),
        // Not `run_as`: as the seed does, the daemon first hands its
        // directories to netadm and applies protocol properties as root,
        // then drops privileges itself (before any helper thread exists).
        ..HostOptions::default()
    };
    Ok(Launch::new(host, move |ctx| {
        super::daemon::run(config, ctx)
    }))
}
