//! Writes a man page for `toolbox` and for each clap-parsed applet into DIR
//! (default target/man), from the same clap definitions the applets parse
//! with: `cargo run --example mangen -- DIR` (scripts/mangen.sh). A dev-only
//! path, so clap_mangen never reaches the shipped binary.

use std::path::PathBuf;

use toolbox::applets::APPLETS;

fn main() {
    let dir = PathBuf::from(
        std::env::args_os()
            .nth(1)
            .unwrap_or_else(|| "target/man".into()),
    );
    if let Err(e) = std::fs::create_dir_all(&dir) {
        eprintln!("mangen: {}: {e}", dir.display());
        std::process::exit(1);
    }
    let version = env!("CARGO_PKG_VERSION");
    for command in commands() {
        let name = command.get_name().to_owned();
        let man = clap_mangen::Man::new(command.version(version))
            .section("8")
            .manual("toolbox")
            .source(format!("toolbox {version}"));
        let mut page = Vec::new();
        let path = dir.join(format!("{name}.8"));
        if let Err(e) = man
            .render(&mut page)
            .and_then(|()| std::fs::write(&path, page))
        {
            eprintln!("mangen: {}: {e}", path.display());
            std::process::exit(1);
        }
        println!("{}", path.display());
    }
}

fn commands() -> Vec<clap::Command> {
    #[allow(unused_mut)]
    let mut commands = vec![toolbox_command()];
    #[cfg(feature = "nbd")]
    commands.push(toolbox::nbd::options::command());
    #[cfg(feature = "zcip")]
    commands.push(toolbox::zcip::options::command());
    #[cfg(feature = "timesyncd")]
    commands.push(toolbox::timesyncd::options::command());
    #[cfg(feature = "ipmgmtd")]
    commands.push(toolbox::ipmgmtd::options::command());
    #[cfg(feature = "svchost")]
    commands.push(toolbox::svchost::command());
    commands
}

/// The dispatcher's own command line (src/dispatch.rs and src/install.rs
/// parse it by hand; this only describes it).
fn toolbox_command() -> clap::Command {
    use clap::{Arg, ArgAction, Command};
    let width = APPLETS.iter().map(|a| a.name.len()).max().unwrap_or(0);
    let applets: String = APPLETS
        .iter()
        .map(|a| format!("  {:width$}  {}\n", a.name, a.summary))
        .collect();
    Command::new("toolbox")
        .about("system daemons in one binary")
        .long_about(format!(
            "One executable carrying system daemons as applets, busybox-style. It runs the \
             applet named by the name it was invoked as (a link such as /usr/sbin/nbd) or by \
             its first argument (toolbox nbd ...). Each applet has its own manual page.\n\n\
             Applets of this build:\n{applets}"
        ))
        .override_usage(
            "toolbox APPLET [ARGS...]\n       toolbox --list | --help | --version\n       \
             toolbox --install [-s] [--force] DIR",
        )
        .disable_help_flag(true)
        .disable_version_flag(true)
        .arg(
            Arg::new("list")
                .short('l')
                .long("list")
                .action(ArgAction::SetTrue)
                .help("Print the names of the applets this build carries"),
        )
        .arg(Arg::new("install").long("install").value_name("DIR").help(
            "Make a link per applet in DIR: hard links, or symbolic links with -s; \
                     a file of another name is left alone unless --force. Also prints \
                     where the man pages go (share/man/man8 beside DIR's parent)",
        ))
        .arg(
            Arg::new("help")
                .short('h')
                .long("help")
                .action(ArgAction::SetTrue)
                .help("Print the usage and the applets"),
        )
        .arg(
            Arg::new("version")
                .short('V')
                .long("version")
                .action(ArgAction::SetTrue)
                .help("Print the version"),
        )
        .after_help(
            "ENVIRONMENT: LOGGING=none|syslog|stderr chooses where a daemon applet logs. \
             NOTIFY_SOCKET receives READY=1 (systemd Type=notify).",
        )
}
