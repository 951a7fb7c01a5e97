//! `svchost`: several services in one process and one runtime (Windows
//! svchost), controlled with `sc`.
//!
//! Modules: `config` (the group file, its `args =` split by `crate::words`),
//! `status` (SERVICE_STATUS), `host` (starting, supervising), `restart` (the
//! failure actions policy), `plugin` (shared-library services), `isolate` and
//! `relay` (a plugin in a child process of its own), `control` (the group's
//! control socket), `sc` (the client).

pub mod config;
pub mod control;
pub mod host;
#[cfg(feature = "svchost-plugins")]
pub mod isolate;
#[cfg(feature = "svchost-plugins")]
pub mod plugin;
pub mod relay;
pub mod restart;
pub mod sc;
pub mod status;

use std::ffi::OsString;
use std::path::PathBuf;
use std::sync::Arc;

use clap::{ArgAction, Parser};

use crate::applets::{self, Entry};
use crate::service::{Context, HostOptions, Launch, ServiceResult};

pub use sc::main as sc_main;

#[derive(Parser, Debug)]
#[command(name = "svchost", about = "Host several services in one process")]
struct Args {
    /// The service group: DIR/GROUP.conf
    #[arg(short = 'k', value_name = "GROUP")]
    group: String,
    /// Directory of group files
    #[arg(
        short = 'c',
        value_name = "DIR",
        default_value = "/etc/toolbox/svchost"
    )]
    dir: PathBuf,
    /// Stay in the foreground
    #[arg(short = 'f')]
    foreground: bool,
    /// More log detail (repeatable)
    #[arg(short = 'v', action = ArgAction::Count)]
    verbose: u8,
    /// Write the process id here
    #[arg(long = "pid-file", value_name = "PATH")]
    pid_file: Option<PathBuf>,
}

/// The command line's definition, for the man pages (scripts/mangen.sh).
pub fn command() -> clap::Command {
    <Args as clap::CommandFactory>::command()
}

fn is_daemon_applet(name: &str) -> bool {
    name != "svchost" && applets::find(name).is_some_and(|a| matches!(a.entry, Entry::Service(_)))
}

pub fn parse(argv: &[OsString]) -> Result<Launch, i32> {
    #[cfg(feature = "svchost-plugins")]
    if argv.get(1).is_some_and(|a| a == isolate::CHILD_FLAG) {
        // A plugin's own process (isolate = process), before any runtime.
        return Err(isolate::child_main(&argv[2..]));
    }
    let args: Args = crate::service::parse_args(argv)?;
    let config = config::load(&args.dir, &args.group, &is_daemon_applet).map_err(|e| {
        eprintln!("svchost: {e}");
        1
    })?;
    let pid_file = match args
        .pid_file
        .as_deref()
        .map(std::path::absolute)
        .transpose()
    {
        Ok(p) => p,
        Err(e) => {
            eprintln!("svchost: pid file: {e}");
            return Err(1);
        }
    };
    let host = HostOptions {
        daemonize: !args.foreground,
        pid_file,
        threads: config.threads,
        verbosity: args.verbose,
        base_level: Some(tracing::Level::INFO),
        stack_size: config.stack_size_kb.map(|kb| kb * 1024),
        run_as: config
            .user
            .clone()
            .map(|u| (u, config.capabilities.clone())),
    };
    let group = args.group;
    Ok(Launch::new(host, move |ctx| run(group, config, ctx)))
}

async fn run(group: String, config: config::GroupConfig, mut ctx: Context) -> ServiceResult {
    let host = host::Host::new(&group, &config);
    let sock = control::socket_path(&control::rundir(), &group);
    let listener = control::bind(&sock)?;
    let control_task = tokio::spawn(control::serve(listener, host.clone()));
    let mut shutdown = ctx.shutdown();

    host.start_auto();
    tokio::select! {
        _ = host.wait_auto_settled() => {}
        _ = shutdown.requested() => {}
    }
    let running = host
        .slots
        .iter()
        .filter(|s| s.status().state == status::State::Running)
        .count();
    ctx.ready();
    ctx.status(&format!(
        "{running} of {} services running",
        host.slots.len()
    ));
    tracing::info!(
        "group {group}: {running} of {} services running",
        host.slots.len()
    );

    loop {
        tokio::select! {
            _ = shutdown.requested() => break,
            // SIGHUP to the group reaches each hosted service's reload.
            _ = ctx.reload_requested() => {
                let asked = host.reload_all();
                tracing::info!("reload: asked {asked} running services to reread their configuration");
            }
        }
    }
    ctx.stopping();
    stop_all(&host).await;
    control_task.abort();
    let _ = std::fs::remove_file(&sock);
    Ok(())
}

/// Stops services in reverse start order, each within its timeout.
async fn stop_all(host: &Arc<host::Host>) {
    for slot in host.slots.iter().rev() {
        if slot.status().state != status::State::Stopped {
            tracing::info!("stopping {}", slot.config.name);
            host.stop_and_wait(slot, host::STOP_TIMEOUT).await;
        }
    }
}
