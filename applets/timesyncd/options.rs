//! The command line (timesyncd's own options plus busybox ntpd's
//! spellings), validated together with timesyncd.conf into a [`Config`].

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use clap::{ArgAction, Parser};

use super::config::{self, parse_server, Server, TimeConfig};
use super::source::ServerSpec;
use super::{clockfile, status};
use crate::service::{HostOptions, Launch};

pub const DEFAULT_CONFIG: &str = "/etc/toolbox/timesyncd.conf";
/// Used when nothing else is configured (systemd builds in a similar list).
pub const DEFAULT_FALLBACK: &[&str] = &[
    "0.pool.ntp.org",
    "1.pool.ntp.org",
    "2.pool.ntp.org",
    "3.pool.ntp.org",
];

#[derive(Parser, Debug)]
#[command(
    name = "timesyncd",
    about = "Keep the system clock in step with NTP servers",
    override_usage = "timesyncd [OPTIONS]\n       timesyncd -q|-Q [-s SERVER]...\n       timesyncd --status",
    disable_version_flag = true
)]
struct Args {
    /// NTP server, HOST[:PORT] or [IPv6]:PORT (repeatable; busybox: -p)
    #[arg(
        short = 's',
        long = "server",
        short_alias = 'p',
        value_name = "HOST[:PORT]"
    )]
    servers: Vec<String>,
    /// Configuration file in timesyncd.conf syntax
    #[arg(short = 'c', long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Stay in the foreground (busybox: -n)
    #[arg(short = 'f', long, short_alias = 'n')]
    foreground: bool,
    /// Set the clock once and exit
    #[arg(short = 'q')]
    once: bool,
    /// Measure once, print offset, delay, server and stratum, change nothing (busybox: -w)
    #[arg(short = 'Q', long = "dry-run", short_alias = 'w')]
    dry_run: bool,
    /// Run as the daemon but never change the clock
    #[arg(long = "no-adjust")]
    no_adjust: bool,
    /// Print the running daemon's state
    #[arg(long)]
    status: bool,
    /// Run PROG step|stratum|periodic|unsync on events (busybox)
    #[arg(short = 'S', value_name = "PROG")]
    script: Option<PathBuf>,
    /// More messages (repeatable; busybox: -d)
    #[arg(short = 'v', long, action = ArgAction::Count, short_alias = 'd')]
    verbose: u8,
    /// busybox's "run at high priority": accepted, ignored
    #[arg(short = 'N', hide = true)]
    nice: bool,
    /// Store the daemon's process id in PATH
    #[arg(long = "pid-file", value_name = "PATH")]
    pid_file: Option<PathBuf>,
    /// State file for --status [env TIMESYNCD_STATE_FILE]
    #[arg(long = "state-file", value_name = "PATH")]
    state_file: Option<PathBuf>,
    /// Clock file [env TIMESYNCD_CLOCK_FILE]
    #[arg(long = "clock-file", value_name = "PATH")]
    clock_file: Option<PathBuf>,
    /// Also serve the time to others, on port 123 unless Listen= says (busybox)
    #[arg(short = 'l', long = "listen")]
    listen: bool,
    /// Bind the server to IFACE (busybox)
    #[arg(short = 'I', value_name = "IFACE")]
    interface: Option<String>,
    /// With -l as root: become USER after binding, keeping CAP_SYS_TIME (chrony)
    #[arg(short = 'u', long = "user", value_name = "USER")]
    user: Option<String>,
    /// Use NTS (RFC 8915) with every -s server: HOST[:PORT] is its NTS-KE server (port 4460)
    #[arg(long)]
    nts: bool,
    /// CA certificates (PEM) NTS-KE servers are checked against (default: the system's)
    #[arg(long = "nts-ca", value_name = "FILE")]
    nts_ca: Option<PathBuf>,
    /// With -l: offer NTS-KE (port 4460) with this certificate chain (PEM; NTSCertificate=)
    #[arg(long = "nts-cert", value_name = "FILE")]
    nts_cert: Option<PathBuf>,
    /// With -l: the private key (PEM) of --nts-cert (NTSKey=)
    #[arg(long = "nts-key", value_name = "FILE")]
    nts_key: Option<PathBuf>,
    /// Print version information
    #[arg(short = 'V', long)]
    version: bool,
}

/// The command line's definition, for the man pages (scripts/mangen.sh).
pub fn command() -> clap::Command {
    <Args as clap::CommandFactory>::command()
}

/// The server's sockets, bound while the command line is read (before
/// privileges go) and taken by the service when it starts.
#[derive(Clone, Default)]
pub struct BoundSockets(pub std::sync::Arc<std::sync::Mutex<Option<super::server::io::Bound>>>);

impl std::fmt::Debug for BoundSockets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BoundSockets")
    }
}

impl BoundSockets {
    pub fn take(&self) -> Option<super::server::io::Bound> {
        self.0.lock().ok().and_then(|mut b| b.take())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Daemon,
    /// `-q`: set the clock once.
    Once,
    /// `-Q`: measure once, touch nothing.
    DryRun,
}

#[derive(Clone, Debug)]
pub struct Config {
    pub mode: Mode,
    pub adjust: bool,
    pub foreground: bool,
    pub cli_servers: Vec<Server>,
    /// The file to (re)read; `explicit` when given with -c.
    pub config_path: PathBuf,
    pub config_explicit: bool,
    pub time: TimeConfig,
    pub script: Option<PathBuf>,
    pub verbose: u8,
    pub pid_file: Option<PathBuf>,
    pub state_file: PathBuf,
    pub clock_file: PathBuf,
    /// `-l` and `-I`: merged with `[Server]` by [`Config::server`].
    pub serve: bool,
    pub interface: Option<String>,
    pub user: Option<String>,
    pub bound: BoundSockets,
    /// `--nts`: the -s servers are NTS-KE servers.
    pub cli_nts: bool,
    /// `--nts-ca`, overriding NTSTrustedCertificates=.
    pub cli_nts_ca: Option<PathBuf>,
    /// `--nts-cert` and `--nts-key`, overriding NTSCertificate=/NTSKey=.
    pub cli_nts_cert: Option<PathBuf>,
    pub cli_nts_key: Option<PathBuf>,
}

impl Config {
    /// The server's settings: the file's `[Server]` with `-l` and `-I`.
    pub fn server(&self) -> super::server::ServerConfig {
        let mut server = self.time.server.clone();
        // One-shot runs (-q, -Q at boot) share the file but serve nothing.
        server.enabled = (server.enabled || self.serve) && self.mode == Mode::Daemon;
        if self.interface.is_some() {
            server.interface = self.interface.clone();
        }
        if self.cli_nts_cert.is_some() {
            server.nts_certificate = self.cli_nts_cert.clone();
        }
        if self.cli_nts_key.is_some() {
            server.nts_key = self.cli_nts_key.clone();
        }
        server
    }

    /// The servers to use: -s replaces NTP= (and then FallbackNTP= applies
    /// only if the file sets it); without either, the built-in fallback.
    pub fn servers(&self) -> Result<Vec<ServerSpec>, String> {
        let spec = |s: &Server, fallback: bool| ServerSpec {
            host: s.host.clone(),
            port: s.port,
            fallback,
            nts: false,
        };
        let nts_spec = |s: &Server| ServerSpec {
            nts: true,
            ..spec(s, false)
        };
        let (primaries, nts): (Vec<Server>, Vec<Server>) = if self.cli_servers.is_empty() {
            (
                self.time.ntp.clone().unwrap_or_default(),
                self.time.nts.clone().unwrap_or_default(),
            )
        } else if self.cli_nts {
            (vec![], self.cli_servers.clone())
        } else {
            (self.cli_servers.clone(), vec![])
        };
        if !nts.is_empty() && !cfg!(feature = "tls") {
            return Err("NTS needs TLS, and this build has none (feature tls)".into());
        }
        let fallback: Vec<Server> = match (&self.time.fallback_ntp, self.cli_servers.is_empty()) {
            (Some(list), _) => list.clone(),
            // NTS servers alone do not fall back to unauthenticated ones.
            (None, true) if nts.is_empty() => DEFAULT_FALLBACK
                .iter()
                .filter_map(|h| parse_server(h).ok())
                .collect(),
            (None, _) => vec![],
        };
        let mut out: Vec<ServerSpec> = nts.iter().map(nts_spec).collect();
        out.extend(primaries.iter().map(|s| spec(s, false)));
        out.extend(fallback.iter().map(|s| spec(s, true)));
        let local_only = {
            let server = self.server();
            server.enabled && server.local_stratum.is_some()
        };
        if out.is_empty() && !local_only {
            return Err(format!(
                "no NTP servers configured (use -s, or NTP= in {})",
                self.config_path.display()
            ));
        }
        Ok(out)
    }

    /// The CA file NTS-KE servers are checked against; `None`: the system's.
    pub fn nts_ca(&self) -> Option<&Path> {
        self.cli_nts_ca
            .as_deref()
            .or(self.time.nts_trusted_certificates.as_deref())
    }

    /// Rereads the configuration file (SIGHUP).
    pub fn reload(&self) -> Result<Config, String> {
        let (time, warnings) = load_file(&self.config_path, self.config_explicit)?;
        for w in warnings {
            tracing::warn!("{w}");
        }
        let next = Config {
            time,
            ..self.clone()
        };
        next.servers()?;
        Ok(next)
    }
}

/// Reads and parses the file; a missing default file is no error.
pub fn load_file(path: &Path, explicit: bool) -> Result<(TimeConfig, Vec<String>), String> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !explicit => {
            return Ok((TimeConfig::default(), vec![]))
        }
        Err(e) => {
            return Err(format!(
                "cannot read {}: {}",
                path.display(),
                crate::service::io_text(&e)
            ))
        }
    };
    let parsed = config::parse(&text, &path.display().to_string())?;
    Ok((parsed.config, parsed.warnings))
}

fn env_path(option: Option<PathBuf>, var: &str, default: &str) -> PathBuf {
    option
        .or_else(|| {
            std::env::var_os(var)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        })
        .unwrap_or_else(|| PathBuf::from(default))
}

/// The applet's entry: parse, validate, and hand back the service.
pub fn parse(argv: &[OsString]) -> Result<Launch, i32> {
    let args: Args = crate::service::parse_args(argv)?;
    if args.version {
        println!("timesyncd (toolbox) {}", env!("CARGO_PKG_VERSION"));
        return Err(0);
    }
    if args.status {
        let path = env_path(
            args.state_file,
            "TIMESYNCD_STATE_FILE",
            status::DEFAULT_PATH,
        );
        return Err(print_status(&path));
    }
    let (config, warnings) = validate(args).map_err(|msg| {
        eprintln!("timesyncd: {msg}");
        1
    })?;
    for w in &warnings {
        eprintln!("timesyncd: warning: {w}");
    }
    let mut run_as = None;
    let server = config.server();
    if server.enabled {
        let fail = |msg: String| {
            eprintln!("timesyncd: {msg}");
            1
        };
        let bound =
            super::server::io::bind(&server, super::server::io::default_workers()).map_err(fail)?;
        if let Ok(mut slot) = config.bound.0.lock() {
            *slot = Some(bound);
        }
        run_as = super::server::privs::plan(config.user.as_deref()).map_err(fail)?;
        if let Some((user, _)) = &run_as {
            super::server::privs::hand_over(user, &[&config.state_file, &config.clock_file])
                .map_err(fail)?;
        }
    }
    let host = HostOptions {
        daemonize: config.mode == Mode::Daemon && !config.foreground,
        pid_file: config.pid_file.clone(),
        threads: 1,
        verbosity: config.verbose,
        base_level: Some(tracing::Level::WARN),
        run_as,
        ..HostOptions::default()
    };
    Ok(super::manager::launch(config, host))
}

fn validate(args: Args) -> Result<(Config, Vec<String>), String> {
    if args.once && args.dry_run {
        return Err("-q and -Q cannot be used together".into());
    }
    let _ = args.nice;
    if args.listen && (args.once || args.dry_run) {
        return Err("-l serves time as a daemon: not with -q or -Q".into());
    }
    let parse_cli = if args.nts {
        config::parse_nts_server
    } else {
        parse_server
    };
    let cli_servers = args
        .servers
        .iter()
        .map(|s| parse_cli(s))
        .collect::<Result<Vec<_>, _>>()?;
    if args.nts && cli_servers.is_empty() {
        return Err("--nts needs at least one -s server".into());
    }
    let config_explicit = args.config.is_some();
    let config_path = args.config.unwrap_or_else(|| PathBuf::from(DEFAULT_CONFIG));
    let (time, warnings) = load_file(&config_path, config_explicit)?;
    let mode = if args.dry_run {
        Mode::DryRun
    } else if args.once {
        Mode::Once
    } else {
        Mode::Daemon
    };
    let absolute = |p: PathBuf| std::path::absolute(&p).unwrap_or(p);
    let config = Config {
        mode,
        adjust: mode != Mode::DryRun && !args.no_adjust,
        foreground: args.foreground || mode != Mode::Daemon,
        cli_servers,
        config_path: absolute(config_path),
        config_explicit,
        time,
        script: args.script.map(absolute),
        verbose: args.verbose,
        pid_file: args.pid_file.map(absolute),
        state_file: absolute(env_path(
            args.state_file,
            "TIMESYNCD_STATE_FILE",
            status::DEFAULT_PATH,
        )),
        clock_file: absolute(env_path(
            args.clock_file,
            "TIMESYNCD_CLOCK_FILE",
            clockfile::DEFAULT_PATH,
        )),
        serve: args.listen,
        interface: args.interface,
        user: args.user,
        bound: BoundSockets::default(),
        cli_nts: args.nts,
        cli_nts_ca: args.nts_ca.map(absolute),
        cli_nts_cert: args.nts_cert.map(absolute),
        cli_nts_key: args.nts_key.map(absolute),
    };

    config.servers()?;
    let server = config.server();
    if server.enabled && server.nts_credentials()?.is_some() && !cfg!(feature = "tls") {
        return Err("NTS needs TLS, and this build has none (feature tls)".into());
    }
    if (config.cli_nts_cert.is_some() || config.cli_nts_key.is_some()) && !server.enabled {
        return Err("--nts-cert and --nts-key serve NTS: they need -l (or Listen=)".into());
    }
    Ok((config, warnings))
}

/// `--status`: 0 when the daemon is running, 1 otherwise.
fn print_status(path: &Path) -> i32 {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) => {
            eprintln!(
                "timesyncd: no state in {} ({}): is the daemon running?",
                path.display(),
                crate::service::io_text(&e)
            );
            return 1;
        }
    };
    let snapshot = status::Snapshot::decode(&text);
    let running = snapshot.pid != 0 && {
        // SAFETY: signal 0 only checks that the process exists.
        let rc = unsafe { libc::kill(snapshot.pid as i32, 0) };
        rc == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
    };
    print!("{}", snapshot.render(running));
    if running {
        0
    } else {
        1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(args: &[&str]) -> Result<Config, String> {
        let argv: Vec<OsString> = std::iter::once("timesyncd")
            .chain(args.iter().copied())
            .map(OsString::from)
            .collect();
        validate(Args::try_parse_from(argv).map_err(|e| e.to_string())?).map(|(c, _)| c)
    }

    #[test]
    fn busybox_spellings_mean_the_same() {
        let c = config(&["-p", "10.0.0.1", "-n"]).unwrap();
        assert_eq!(c.cli_servers, vec![parse_server("10.0.0.1").unwrap()]);
        assert!(c.foreground);
        let c = config(&["-w", "-p", "10.0.0.1"]).unwrap();
        assert_eq!(c.mode, Mode::DryRun);
        assert!(!c.adjust);
        let c = config(&["-d", "-d", "-s", "h.example"]).unwrap();
        assert_eq!(c.verbose, 2);
    }

    #[test]
    fn one_shot_modes() {
        let c = config(&["-q", "-s", "10.0.0.1"]).unwrap();
        assert_eq!(c.mode, Mode::Once);
        assert!(c.adjust && c.foreground);
        let c = config(&["-q", "--no-adjust", "-s", "10.0.0.1"]).unwrap();
        assert!(!c.adjust);
        assert!(config(&["-q", "-Q", "-s", "10.0.0.1"]).is_err());
    }

    #[test]
    fn cli_servers_replace_ntp_and_drop_the_builtin_fallback() {
        let c = config(&["-s", "[::1]:1123", "-s", "a.example"]).unwrap();
        let servers = c.servers().unwrap();
        assert_eq!(servers.len(), 2);
        assert!(servers.iter().all(|s| !s.fallback));
        assert_eq!(servers[0].display(), "[::1]:1123");
    }

    #[test]
    fn no_servers_at_all_uses_the_builtin_fallback() {
        let c = config(&[]).unwrap();
        let servers = c.servers().unwrap();
        assert!(!servers.is_empty() && servers.iter().all(|s| s.fallback));
    }

    #[test]
    fn bad_server_is_named() {
        let e = config(&["-s", "bad..name"]).unwrap_err();
        assert!(e.contains("bad..name"), "{e}");
    }

    #[test]
    fn busybox_server_options() {
        let c = config(&["-l", "-I", "eth1", "-s", "10.0.0.1"]).unwrap();
        let server = c.server();
        assert!(server.enabled);
        assert_eq!(server.interface.as_deref(), Some("eth1"));
        assert!(server.access().permits("192.0.2.1".parse().unwrap()));
        let e = config(&["-l", "-q", "-s", "10.0.0.1"]).unwrap_err();
        assert!(e.contains("-l"), "{e}");
        assert!(!config(&["-s", "10.0.0.1"]).unwrap().server().enabled);
    }

    #[test]
    fn local_stratum_needs_no_upstream() {
        let dir = std::env::temp_dir().join(format!("toolbox-opt-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("t.conf");
        std::fs::write(&path, "[Time]\nNTP=\nFallbackNTP=\n").unwrap();
        let conf = path.to_str().unwrap();
        assert!(
            config(&["-c", conf]).is_err(),
            "no servers and no server mode"
        );
        assert!(config(&["-c", conf, "-l"]).is_err(), "serving nothing");
        std::fs::write(
            &path,
            "[Time]\nNTP=\nFallbackNTP=\n[Server]\nLocalStratum=3\n",
        )
        .unwrap();
        assert!(config(&["-c", conf, "-l"])
            .unwrap()
            .servers()
            .unwrap()
            .is_empty());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn explicit_missing_config_is_an_error() {
        let e = config(&["-c", "/nonexistent/x.conf", "-s", "10.0.0.1"]).unwrap_err();
        assert!(e.contains("/nonexistent/x.conf"), "{e}");
    }

    #[cfg(feature = "tls")]
    #[test]
    fn nts_servers_default_to_the_ke_port_and_come_first() {
        let c = config(&["-s", "time.example", "-s", "b.example:4461", "--nts"]).unwrap();
        let servers = c.servers().unwrap();
        assert!(servers.iter().all(|s| s.nts && !s.fallback));
        assert_eq!(servers[0].port, 4460);
        assert_eq!(servers[1].port, 4461);
        let c = config(&["-s", "time.example", "--nts-ca", "/etc/ca.pem", "--nts"]).unwrap();
        assert_eq!(c.nts_ca(), Some(Path::new("/etc/ca.pem")));
        assert!(config(&["--nts"]).unwrap_err().contains("--nts"));
    }

    #[test]
    fn nts_server_credentials_come_in_pairs_and_with_a_server() {
        let e = config(&["-l", "-s", "10.0.0.1", "--nts-cert", "/c.pem"]).unwrap_err();
        assert_eq!(e, "NTSCertificate= needs NTSKey= (or --nts-key)");
        let e = config(&[
            "-s",
            "10.0.0.1",
            "--nts-cert",
            "/c.pem",
            "--nts-key",
            "/k.pem",
        ])
        .unwrap_err();
        assert!(e.contains("-l"), "{e}");
        let c = config(&[
            "-l",
            "-s",
            "10.0.0.1",
            "--nts-cert",
            "c.pem",
            "--nts-key",
            "/k.pem",
        ]);
        #[cfg(feature = "tls")]
        {
            let (cert, key) = c.unwrap().server().nts_credentials().unwrap().unwrap();
            assert!(cert.is_absolute() && cert.ends_with("c.pem"));
            assert_eq!(key, Path::new("/k.pem"));
        }
        #[cfg(not(feature = "tls"))]
        assert!(c.unwrap_err().contains("feature tls"));
    }

    #[cfg(not(feature = "tls"))]
    #[test]
    fn without_tls_nts_is_refused_in_one_line() {
        let e = config(&["-s", "time.example", "--nts"]).unwrap_err();
        assert_eq!(e, "NTS needs TLS, and this build has none (feature tls)");
    }
}
