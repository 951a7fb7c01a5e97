//! qemu-nbd's command line, parsed and validated into a [`Config`].

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{ArgAction, Parser};

use super::backend::qcow2::snapshot::Selector;
use super::export_spec::one_line;
use super::objects::{self, Endpoint, Object, X509Creds};
use crate::service::{HostOptions, Launch};

pub const DEFAULT_PORT: u16 = 10809;
/// Connections served at once when `-e` asks for more (or for "unlimited").
pub const MAX_SHARED: usize = 100;

#[derive(Parser, Debug)]
#[command(
    name = "nbd",
    about = "Network Block Device server (qemu-nbd compatible)",
    override_usage = "nbd [OPTIONS] FILE\n       nbd [OPTIONS] [FILE] --export NAME=FILE[,OPTS] ...\n       nbd -c DEV nbd://HOST[:PORT][/EXPORT]\n       nbd -L [OPTIONS]\n       nbd -d DEV",
    disable_version_flag = true
)]
struct Args {
    /// Port to listen on
    #[arg(short = 'p', long, value_name = "PORT")]
    port: Option<String>,
    /// Interface address to bind to (IPv4 or IPv6 literal, or a name)
    #[arg(short = 'b', long, value_name = "IFACE", default_value = "0.0.0.0")]
    bind: String,
    /// Path to a unix socket to listen on (absolute)
    #[arg(short = 'k', long = "socket", value_name = "PATH")]
    socket: Option<PathBuf>,
    /// Device can be shared by NUM clients (0: up to the cap)
    #[arg(short = 'e', long, value_name = "NUM", default_value = "1")]
    shared: String,
    /// Don't exit on the last connection
    #[arg(short = 't', long)]
    persistent: bool,
    /// Display extra debugging information (repeat for more)
    #[arg(short = 'v', long, action = ArgAction::Count)]
    verbose: u8,
    /// Name of the FILE export (default "")
    #[arg(short = 'x', long = "export-name", value_name = "NAME")]
    export_name: Option<String>,
    /// Human-readable description of the FILE export
    #[arg(short = 'D', long, value_name = "TEXT")]
    description: Option<String>,
    /// Serve another export (repeatable): NAME=FILE[,description=TEXT][,readonly]
    /// [,format=raw|qcow2][,allocation-depth[=on|off]]; ",," is a literal comma
    #[arg(long = "export", value_name = "NAME=FILE[,OPTS]")]
    exports: Vec<String>,
    /// Offer the qemu:allocation-depth metadata context (every export)
    #[arg(short = 'A', long = "allocation-depth")]
    allocation_depth: bool,
    /// Fork off the server process once it is listening
    #[arg(long)]
    fork: bool,
    /// Store the server's process id in PATH
    #[arg(long = "pid-file", value_name = "PATH")]
    pid_file: Option<PathBuf>,
    /// Drop a client that has not finished negotiating within SECS (0: never)
    #[arg(long = "handshake-limit", value_name = "SECS", default_value = "10")]
    handshake_limit: String,
    /// List the exports of a server (client mode)
    #[arg(short = 'L', long)]
    list: bool,
    /// Offset into the image
    #[arg(short = 'o', long, value_name = "OFFSET")]
    offset: Option<String>,
    /// Only expose partition NUM (MBR 1-4, logical 5+, or GPT)
    #[arg(short = 'P', long, value_name = "NUM")]
    partition: Option<String>,
    /// Export read-only (every export)
    #[arg(short = 'r', long = "read-only")]
    read_only: bool,
    /// Redirect writes to temporary overlays; no image is ever modified (every export)
    #[arg(short = 's', long)]
    snapshot: bool,
    /// Disable host cache (same as --cache=none)
    #[arg(short = 'n', long)]
    nocache: bool,
    /// Cache mode: none, writeback, writethrough, directsync, unsafe
    #[arg(long, value_name = "MODE")]
    cache: Option<String>,
    /// AIO mode: threads, native, io_uring (all accepted)
    #[arg(long, value_name = "MODE")]
    aio: Option<String>,
    /// Discard mode: ignore (or off), unmap (or on)
    #[arg(long, value_name = "MODE")]
    discard: Option<String>,
    /// Advertise the export as rotational: on, off, or auto (the backing
    /// device's own flag)
    #[arg(long, value_name = "on|off|auto")]
    rotational: Option<String>,
    /// Detect zero writes: off, on, unmap (accepted)
    #[arg(long = "detect-zeroes", value_name = "MODE")]
    detect_zeroes: Option<String>,
    /// Image format: raw or qcow2 (default: qcow2 if the file says so, else raw)
    #[arg(short = 'f', long, value_name = "FORMAT")]
    format: Option<String>,
    /// Export an internal snapshot read-only (qcow2): ID_OR_NAME or
    /// snapshot.id=ID,snapshot.name=NAME
    #[arg(short = 'l', long = "load-snapshot", value_name = "SNAPSHOT")]
    load_snapshot: Option<String>,
    /// Connect FILE (or a remote nbd://HOST[:PORT][/EXPORT]) to the local NBD device DEV
    #[arg(short = 'c', long, value_name = "DEV")]
    connect: Option<PathBuf>,
    /// Disconnect the NBD device given as FILE
    #[arg(short = 'd', long)]
    disconnect: bool,
    /// Define an object: tls-creds-x509,id=ID,dir=DIR,endpoint=server|client[,verify-peer=on|off]
    /// (DIR holds ca-cert.pem, server-cert.pem and server-key.pem, or client-cert.pem and
    /// client-key.pem), or authz-simple,id=ID,identity=DN. tls-creds-psk is refused: rustls
    /// has no TLS-PSK
    #[arg(long, value_name = "PROPS")]
    object: Vec<String>,
    /// Require TLS with the tls-creds-x509 object ID (server, or -L as a client)
    #[arg(long = "tls-creds", value_name = "ID")]
    tls_creds: Option<String>,
    /// Only admit clients whose certificate name is that of the authz-simple object ID
    #[arg(long = "tls-authz", value_name = "ID")]
    tls_authz: Option<String>,
    /// Name the server's certificate must carry (-L; default: the host connected to)
    #[arg(long = "tls-hostname", value_name = "NAME")]
    tls_hostname: Option<String>,
    /// Treat FILE as an option string (not supported)
    #[arg(long = "image-opts")]
    image_opts: bool,
    /// Trace events (accepted and ignored)
    #[arg(short = 'T', long, value_name = "EVENTS")]
    trace: Option<String>,
    /// Print version information
    #[arg(short = 'V', long)]
    version: bool,
    /// The image file (or the device, with -d)
    file: Option<PathBuf>,
}

/// The command line's definition, for the man pages (scripts/mangen.sh).
pub fn command() -> clap::Command {
    <Args as clap::CommandFactory>::command()
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Listen {
    Tcp(Vec<std::net::SocketAddr>),
    Unix(PathBuf),
}

/// qemu's cache modes: whether the host page cache is bypassed, whether each
/// write is made durable before its reply, whether flushes reach the disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CacheMode {
    pub direct: bool,
    pub writethrough: bool,
    pub ignore_flush: bool,
}

impl CacheMode {
    pub fn parse(mode: &str) -> Option<CacheMode> {
        let (direct, writethrough, ignore_flush) = match mode {
            "none" | "off" => (true, false, false),
            "writeback" => (false, false, false),
            "writethrough" => (false, true, false),
            "directsync" => (true, true, false),
            "unsafe" => (false, false, true),
            _ => return None,
        };
        Some(CacheMode {
            direct,
            writethrough,
            ignore_flush,
        })
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Mode {
    Serve,
    Connect(PathBuf),
    /// `-c DEV nbd://HOST:PORT/EXPORT`: the kernel talks to a remote server
    /// directly; nothing is served here.
    ConnectRemote {
        device: PathBuf,
        server: Remote,
    },
    Disconnect(PathBuf),
    List,
}

/// A server named by an `nbd://HOST[:PORT][/EXPORT]` URL (qemu's syntax).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Remote {
    pub host: String,
    pub port: u16,
    pub export: String,
}

impl Remote {
    pub const SCHEME: &'static str = "nbd://";

    pub fn parse(url: &str) -> Result<Remote, String> {
        let bad = |why: &str| format!("invalid NBD URL '{url}': {why}");
        let rest = url
            .strip_prefix(Self::SCHEME)
            .ok_or_else(|| bad("expected nbd://"))?;
        let (authority, export) = rest.split_once('/').unwrap_or((rest, ""));
        if export.contains(['?', '#']) {
            return Err(bad("query and fragment parts are not supported"));
        }
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (host, after) = v6.split_once(']').ok_or_else(|| bad("unclosed '['"))?;
            match after {
                "" => (host, None),
                _ => (
                    host,
                    Some(
                        after
                            .strip_prefix(':')
                            .ok_or_else(|| bad("junk after ']'"))?,
                    ),
                ),
            }
        } else {
            match authority.split_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (authority, None),
            }
        };
        if host.is_empty() {
            return Err(bad("no host"));
        }
        let port = match port {
            None => DEFAULT_PORT,
            Some(p) => p
                .parse::<u16>()
                .ok()
                .filter(|&p| p != 0)
                .ok_or_else(|| bad("bad port"))?,
        };
        if export.len() > super::proto::MAX_STRING {
            return Err(bad("export name is longer than 4096 bytes"));
        }
        Ok(Remote {
            host: host.to_owned(),
            port,
            export: export.to_owned(),
        })
    }
}

/// Where the exported bytes sit in the image.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Window {
    Whole,
    Offset(u64),
    Partition(u32),
}

/// The image format `-f` names; without it the file's magic decides.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ImageFormat {
    Raw,
    Qcow2,
}

/// One export to serve: the FILE of qemu-nbd's command line, or an `--export`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExportConfig {
    pub name: String,
    pub file: PathBuf,
    pub description: Option<String>,
    pub read_only: bool,
    /// `-f`; None probes the file.
    pub format: Option<ImageFormat>,
    pub window: Window,
    /// `-s`: writes go to a temporary overlay.
    pub snapshot: bool,
    /// `-l`: the internal snapshot to export (implies read-only).
    pub load_snapshot: Option<Selector>,
    /// qemu:allocation-depth is offered.
    pub allocation_depth: bool,
}

#[derive(Clone, Debug)]
pub struct Config {
    pub mode: Mode,
    /// The FILE argument: the image, the device of `-d`, or the URL of `-c`.
    pub file: PathBuf,
    pub listen: Listen,
    pub shared: usize,
    pub persistent: bool,
    /// What is served (empty unless serving), the default export first.
    pub exports: Vec<ExportConfig>,
    /// The empty name means the default export (with `--export`; qemu-nbd's
    /// single export answers only to its own name).
    pub empty_name_is_default: bool,
    pub handshake_limit: Option<Duration>,
    pub cache: CacheMode,
    pub discard_unmap: bool,
    /// `--rotational`: Some to override the device's flag, None for auto.
    pub rotational: Option<bool>,
    pub verbose: u8,
    pub fork: bool,
    pub pid_file: Option<PathBuf>,
    /// `--tls-creds`: TLS is required (served) or used (`-L`).
    pub tls: Option<TlsOptions>,
}

/// TLS settings resolved from `--object`, `--tls-creds`, `--tls-authz` and `--tls-hostname`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsOptions {
    pub creds: X509Creds,
    /// `-L`: the name the server's certificate must carry.
    pub hostname: Option<String>,
    /// `--tls-authz`: the one client certificate subject admitted.
    pub authz_identity: Option<String>,
}

/// The applet's entry: parse, validate, and hand back the service.
pub fn parse(argv: &[OsString]) -> Result<Launch, i32> {
    let args: Args = crate::service::parse_args(argv)?;
    if args.version {
        println!("nbd (toolbox) {}", env!("CARGO_PKG_VERSION"));
        return Err(0);
    }
    let config = validate(args).map_err(|msg| {
        eprintln!("nbd: {msg}");
        1
    })?;
    let host = HostOptions {
        daemonize: config.fork,
        pid_file: config.pid_file.clone(),
        threads: 1,
        verbosity: config.verbose,
        base_level: Some(tracing::Level::WARN),
        ..HostOptions::default()
    };
    Ok(super::server::launch(config, host))
}

fn parse_number(text: &str, what: &str) -> Result<u64, String> {
    let parsed = if let Some(hex) = text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")) {
        u64::from_str_radix(hex, 16)
    } else {
        text.parse::<u64>()
    };
    parsed.map_err(|_| format!("Invalid {what} '{text}'"))
}

/// Resolves the TLS options against the `--object`s; None when TLS is not asked for.
fn tls_options(args: &Args, mode: &Mode) -> Result<Option<TlsOptions>, String> {
    let any = !args.object.is_empty()
        || args.tls_creds.is_some()
        || args.tls_authz.is_some()
        || args.tls_hostname.is_some();
    let objects = args
        .object
        .iter()
        .map(|o| objects::parse(o))
        .collect::<Result<Vec<_>, _>>()?;
    for (i, o) in objects.iter().enumerate() {
        if let Object::Psk { id } = o {
            return Err(format!(
                "--object tls-creds-psk,id={id}: TLS-PSK is not supported (rustls has no PSK); use tls-creds-x509"
            ));
        }
        if objects[..i].iter().any(|p| p.id() == o.id()) {
            return Err(format!("--object: duplicate id '{}'", o.id()));
        }
    }
    if any && !cfg!(feature = "tls") {
        return Err("TLS is not available: this toolbox was built without the tls feature".into());
    }
    let find = |id: &str| objects.iter().find(|o| o.id() == id);
    let Some(creds_id) = &args.tls_creds else {
        if args.tls_authz.is_some() || args.tls_hostname.is_some() {
            return Err("--tls-authz and --tls-hostname need --tls-creds".into());
        }
        return Ok(None);
    };
    let creds = match find(creds_id) {
        Some(Object::X509(c)) => c.clone(),
        Some(_) => {
            return Err(format!(
                "--tls-creds: object '{creds_id}' is not TLS credentials"
            ))
        }
        None => return Err(format!("--tls-creds: no --object with id '{creds_id}'")),
    };
    let wanted = match mode {
        Mode::List => Endpoint::Client,
        Mode::Serve => Endpoint::Server,
        Mode::Connect(_) | Mode::ConnectRemote { .. } => {
            return Err(
                "TLS cannot be used with -c: the kernel NBD client does not carry TLS".into(),
            )
        }
        Mode::Disconnect(_) => return Err("--tls-creds is meaningless with -d".into()),
    };
    if creds.endpoint != wanted {
        return Err(format!(
            "--tls-creds {creds_id}: expecting TLS credentials with a {} endpoint",
            if wanted == Endpoint::Server {
                "server"
            } else {
                "client"
            }
        ));
    }
    if args.tls_hostname.is_some() && wanted != Endpoint::Client {
        return Err("--tls-hostname is only valid with -L".into());
    }
    let authz_identity = match &args.tls_authz {
        None => None,
        Some(_) if wanted != Endpoint::Server => {
            return Err("--tls-authz is only valid when serving".into())
        }
        Some(id) => match find(id) {
            Some(Object::AuthzSimple { identity, .. }) => Some(identity.clone()),
            Some(_) => return Err(format!("--tls-authz: object '{id}' is not authz-simple")),
            None => return Err(format!("--tls-authz: no --object with id '{id}'")),
        },
    };
    if authz_identity.is_some() && !creds.verify_peer {
        return Err("--tls-authz needs client certificates: verify-peer=off refuses them".into());
    }
    // -L checks the server's certificate against the name it dials, as qemu does.
    let hostname = match (&args.tls_hostname, &args.socket) {
        (Some(name), _) => Some(name.clone()),
        (None, Some(_)) => None,
        (None, None) => {
            let host = args.bind.trim_start_matches('[').trim_end_matches(']');
            match host.parse::<std::net::IpAddr>() {
                Ok(ip) if ip.is_unspecified() => None,
                _ => Some(host.to_string()),
            }
        }
    };
    Ok(Some(TlsOptions {
        creds,
        hostname: if wanted == Endpoint::Client {
            hostname
        } else {
            None
        },
        authz_identity,
    }))
}

fn validate(args: Args) -> Result<Config, String> {
    if args.image_opts {
        return Err("--image-opts is not supported".into());
    }
    let _ = &args.trace;
    let format = match args.format.as_deref() {
        None => None,
        Some("raw") => Some(ImageFormat::Raw),
        Some("qcow2") => Some(ImageFormat::Qcow2),
        Some(other) => return Err(format!("Unknown file format '{other}'")),
    };
    let load_snapshot = args
        .load_snapshot
        .as_deref()
        .map(Selector::parse)
        .transpose()?;
    if load_snapshot.is_some() && format == Some(ImageFormat::Raw) {
        return Err("--load-snapshot needs a qcow2 image, not -f raw".into());
    }
    let port = match &args.port {
        None => DEFAULT_PORT,
        Some(p) => {
            let n = parse_number(p, "port")?;
            if !(1..=65535).contains(&n) {
                return Err(format!("Port out of range '{p}'"));
            }
            n as u16
        }
    };
    let shared = {
        let n = parse_number(&args.shared, "shared device number")?;
        match n {
            0 => MAX_SHARED,
            n => (n as usize).min(MAX_SHARED),
        }
    };
    let handshake_limit = match parse_number(&args.handshake_limit, "handshake limit")? {
        0 => None,
        secs => Some(Duration::from_secs(secs)),
    };
    let cache = match (args.nocache, &args.cache) {
        (true, Some(_)) => return Err("-n and --cache can only be specified once".into()),
        (true, None) => CacheMode::parse("none"),
        (false, Some(mode)) => {
            Some(CacheMode::parse(mode).ok_or_else(|| format!("Invalid cache mode '{mode}'"))?)
        }
        (false, None) => CacheMode::parse("writeback"),
    }
    .ok_or("internal: cache mode")?;
    if let Some(aio) = &args.aio {
        if !matches!(aio.as_str(), "threads" | "native" | "io_uring") {
            return Err(format!("invalid aio mode '{aio}'"));
        }
    }
    let discard_unmap = match args.discard.as_deref() {
        None | Some("ignore") | Some("off") => false,
        Some("unmap") | Some("on") => true,
        Some(other) => return Err(format!("Invalid discard mode '{other}'")),
    };
    let rotational = match args.rotational.as_deref() {
        None | Some("auto") => None,
        Some("on") => Some(true),
        Some("off") => Some(false),
        Some(other) => return Err(format!("Invalid rotational mode '{other}'")),
    };
    if let Some(dz) = &args.detect_zeroes {
        if !matches!(dz.as_str(), "off" | "on" | "unmap") {
            return Err(format!("Invalid detect-zeroes mode '{dz}'"));
        }
    }
    let window = match (&args.offset, &args.partition) {
        (Some(_), Some(_)) => return Err("-o and -P cannot be used together".into()),
        (Some(o), None) => Window::Offset(parse_number(o, "offset")?),
        (None, Some(p)) => {
            let n = parse_number(p, "partition")?;
            if n < 1 || n > u32::MAX as u64 {
                return Err(format!("Invalid partition '{p}'"));
            }
            Window::Partition(n as u32)
        }
        (None, None) => Window::Whole,
    };
    let listen = match &args.socket {
        Some(path) if !path.is_absolute() => {
            return Err(format!(
                "socket path must be absolute: '{}'",
                path.display()
            ))
        }
        Some(path) => Listen::Unix(path.clone()),
        None => Listen::Tcp(resolve_bind(&args.bind, port)?),
    };
    if args
        .export_name
        .as_ref()
        .is_some_and(|n| n.len() > super::proto::MAX_STRING)
    {
        return Err("export name is longer than 4096 bytes".into());
    }
    if args
        .description
        .as_ref()
        .is_some_and(|d| d.len() > super::proto::MAX_STRING)
    {
        return Err("description is longer than 4096 bytes".into());
    }

    let mode = if args.list {
        Mode::List
    } else if args.disconnect {
        Mode::Disconnect(PathBuf::new())
    } else if let Some(dev) = &args.connect {
        Mode::Connect(dev.clone())
    } else {
        Mode::Serve
    };
    if !args.exports.is_empty() && !matches!(mode, Mode::Serve | Mode::Connect(_)) {
        return Err("--export is only meaningful when serving".into());
    }
    let file = match (&mode, &args.file) {
        (Mode::List, None) => PathBuf::new(),
        (Mode::List, Some(_)) => return Err("-L takes no FILE argument".into()),
        (Mode::Serve | Mode::Connect(_), None) if !args.exports.is_empty() => PathBuf::new(),
        (_, None) => return Err(
            "Invalid number of arguments (expected FILE)\nTry 'nbd --help' for more information."
                .into(),
        ),
        (Mode::Connect(_), Some(f)) if f.to_string_lossy().starts_with(Remote::SCHEME) => f.clone(),
        (_, Some(f)) => absolute(f)?,
    };
    let mode = match mode {
        Mode::Disconnect(_) => Mode::Disconnect(file.clone()),
        Mode::Connect(device) if file.to_string_lossy().starts_with(Remote::SCHEME) => {
            Mode::ConnectRemote {
                device,
                server: Remote::parse(&file.to_string_lossy())?,
            }
        }
        m => m,
    };
    if matches!(mode, Mode::ConnectRemote { .. }) && !args.exports.is_empty() {
        return Err("--export is only meaningful when serving".into());
    }
    if args.fork && matches!(mode, Mode::List | Mode::Disconnect(_)) {
        return Err("--fork is only meaningful when serving".into());
    }
    let tls = tls_options(&args, &mode)?;
    let exports = if matches!(mode, Mode::Serve | Mode::Connect(_)) {
        export_configs(&args, &file, format, window, load_snapshot)?
    } else {
        Vec::new()
    };

    Ok(Config {
        mode,
        file,
        listen,
        shared,
        persistent: args.persistent,
        exports,
        empty_name_is_default: !args.exports.is_empty(),
        handshake_limit,
        cache,
        discard_unmap,
        rotational,
        verbose: args.verbose,
        fork: args.fork,
        pid_file: args.pid_file.as_deref().map(absolute).transpose()?,
        tls,
    })
}

/// The exports to serve: FILE (with `-x`, `-D`, `-f`, `-o`/`-P`, `-l`)
/// first, then each `--export`. `-r`, `-s` and `-A` hold for all of them;
/// the image options name FILE's image, so they need FILE.
fn export_configs(
    args: &Args,
    file: &Path,
    format: Option<ImageFormat>,
    window: Window,
    load_snapshot: Option<Selector>,
) -> Result<Vec<ExportConfig>, String> {
    let mut exports = Vec::new();
    if args.file.is_some() {
        exports.push(ExportConfig {
            name: args.export_name.clone().unwrap_or_default(),
            file: file.to_path_buf(),
            description: args.description.clone(),
            // As in qemu-nbd, a loaded snapshot is exported read-only.
            read_only: args.read_only || load_snapshot.is_some(),
            format,
            window,
            snapshot: args.snapshot,
            load_snapshot,
            allocation_depth: args.allocation_depth,
        });
    } else {
        let file_only = [
            (args.export_name.is_some(), "-x"),
            (args.description.is_some(), "-D"),
            (args.format.is_some(), "-f"),
            (args.offset.is_some(), "-o"),
            (args.partition.is_some(), "-P"),
            (args.load_snapshot.is_some(), "-l"),
        ];
        if let Some((_, option)) = file_only.iter().find(|(given, _)| *given) {
            return Err(format!(
                "{option} describes the FILE export, and no FILE is given (--export takes its own options)"
            ));
        }
    }
    for text in &args.exports {
        let spec = super::export_spec::parse(text)
            .map_err(|e| format!("invalid --export '{}': {e}", one_line(text)))?;
        exports.push(ExportConfig {
            name: spec.name,
            file: absolute(&spec.file)?,
            description: spec.description,
            read_only: args.read_only || spec.read_only,
            format: spec.format,
            window: Window::Whole,
            snapshot: args.snapshot,
            load_snapshot: None,
            allocation_depth: spec.allocation_depth.unwrap_or(args.allocation_depth),
        });
    }
    for (i, export) in exports.iter().enumerate() {
        if exports[..i].iter().any(|e| e.name == export.name) {
            return Err(format!(
                "export name '{}' is given twice (export names must be unique)",
                one_line(&export.name)
            ));
        }
    }
    Ok(exports)
}

fn absolute(path: &Path) -> Result<PathBuf, String> {
    std::path::absolute(path).map_err(|e| format!("{}: {e}", path.display()))
}

fn resolve_bind(host: &str, port: u16) -> Result<Vec<std::net::SocketAddr>, String> {
    use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
    let literal = host.trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = literal.parse::<IpAddr>() {
        return Ok(vec![SocketAddr::new(ip, port)]);
    }
    let addrs: Vec<SocketAddr> = (host, port)
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve bind address '{host}': {e}"))?
        .collect();
    if addrs.is_empty() {
        return Err(format!("cannot resolve bind address '{host}'"));
    }
    Ok(addrs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(args: &[&str]) -> Result<Config, String> {
        let argv: Vec<OsString> = std::iter::once("nbd")
            .chain(args.iter().copied())
            .map(OsString::from)
            .collect();
        validate(Args::try_parse_from(argv).map_err(|e| e.to_string())?)
    }

    #[test]
    fn defaults_match_qemu_nbd() {
        let c = config(&["/img"]).unwrap();
        assert_eq!(
            c.listen,
            Listen::Tcp(vec!["0.0.0.0:10809".parse().unwrap()])
        );
        assert_eq!(c.shared, 1);
        assert!(!c.persistent);
        assert_eq!(c.exports.len(), 1);
        assert_eq!(c.exports[0].name, "");
        assert!(!c.empty_name_is_default);
        assert_eq!(c.handshake_limit, Some(Duration::from_secs(10)));
        assert_eq!(c.cache, CacheMode::parse("writeback").unwrap());
        assert_eq!(c.exports[0].window, Window::Whole);
        assert!(!c.exports[0].allocation_depth);
    }

    #[test]
    fn bad_values_name_the_value() {
        assert!(config(&["-p", "70000", "/i"])
            .unwrap_err()
            .contains("70000"));
        assert!(config(&["-p", "x1", "/i"]).unwrap_err().contains("x1"));
        assert!(config(&["-k", "rel.sock", "/i"])
            .unwrap_err()
            .contains("rel.sock"));
        assert!(config(&["--cache", "fast", "/i"])
            .unwrap_err()
            .contains("fast"));
        assert!(config(&["-n", "--cache=none", "/i"])
            .unwrap_err()
            .contains("-n"));
        assert!(config(&["-P", "0", "/i"])
            .unwrap_err()
            .contains("partition"));
        assert!(config(&["--discard", "maybe", "/i"])
            .unwrap_err()
            .contains("maybe"));
        assert!(config(&["--object", "tls-creds-x509,id=t", "/i"])
            .unwrap_err()
            .contains("'dir' is missing"));
        assert!(config(&[]).unwrap_err().contains("FILE"));
    }

    #[test]
    fn ipv6_literals_and_unlimited_sharing() {
        let c = config(&["-b", "::1", "-p", "1234", "-e", "0", "/i"]).unwrap();
        assert_eq!(c.listen, Listen::Tcp(vec!["[::1]:1234".parse().unwrap()]));
        assert_eq!(c.shared, MAX_SHARED);
        let c = config(&["-e", "500", "/i"]).unwrap();
        assert_eq!(c.shared, MAX_SHARED);
    }

    #[test]
    fn cache_modes_follow_qemu() {
        let none = CacheMode::parse("none").unwrap();
        assert!(none.direct && !none.writethrough && !none.ignore_flush);
        let ds = CacheMode::parse("directsync").unwrap();
        assert!(ds.direct && ds.writethrough);
        assert!(CacheMode::parse("unsafe").unwrap().ignore_flush);
        assert!(CacheMode::parse("writethrough").unwrap().writethrough);
    }

    #[test]
    fn formats_and_load_snapshot_follow_qemu_nbd() {
        assert_eq!(config(&["/i"]).unwrap().exports[0].format, None);
        assert_eq!(
            config(&["-f", "qcow2", "/i"]).unwrap().exports[0].format,
            Some(ImageFormat::Qcow2)
        );
        assert!(config(&["-f", "vmdk", "/i"]).unwrap_err().contains("vmdk"));
        let c = config(&["-l", "snapshot.id=1,snapshot.name=base", "/i"]).unwrap();
        assert!(c.exports[0].read_only, "-l implies read-only");
        assert_eq!(
            c.exports[0].load_snapshot,
            Some(Selector::Fields {
                id: Some("1".into()),
                name: Some("base".into())
            })
        );
        let c = config(&["--load-snapshot", "base", "/i"]).unwrap();
        assert_eq!(
            c.exports[0].load_snapshot,
            Some(Selector::IdOrName("base".into()))
        );
        assert!(config(&["-l", "snapshot.bad=1", "/i"]).is_err());
        assert!(config(&["-f", "raw", "-l", "x", "/i"]).is_err());
    }

    #[test]
    fn connect_takes_a_remote_url() {
        let c = config(&["-c", "/dev/nbd2", "nbd://10.0.2.2:10900/disk"]).unwrap();
        assert_eq!(
            c.mode,
            Mode::ConnectRemote {
                device: "/dev/nbd2".into(),
                server: Remote {
                    host: "10.0.2.2".into(),
                    port: 10900,
                    export: "disk".into()
                }
            }
        );
        let c = config(&["-c", "/dev/nbd0", "nbd://[::1]"]).unwrap();
        assert!(matches!(
            c.mode,
            Mode::ConnectRemote { server, .. }
                if server == Remote { host: "::1".into(), port: DEFAULT_PORT, export: String::new() }
        ));
        assert_eq!(
            Remote::parse("nbd://host/").unwrap(),
            Remote {
                host: "host".into(),
                port: DEFAULT_PORT,
                export: String::new()
            }
        );
        for bad in [
            "nbd://",
            "nbd://:10809/x",
            "nbd://h:0",
            "nbd://h:port",
            "nbd://[::1/x",
            "nbd://[::1]x",
            "nbd://h/x?socket=/s",
        ] {
            let err = Remote::parse(bad).unwrap_err();
            assert!(
                err.starts_with(&format!("invalid NBD URL '{bad}'")),
                "{err}"
            );
        }
        // Only -c takes a URL; served files stay paths.
        let c = config(&["nbd://h/x"]).unwrap();
        assert_eq!(c.mode, Mode::Serve);
    }

    #[test]
    fn relative_file_is_made_absolute() {
        let c = config(&["disk.img"]).unwrap();
        assert!(c.file.is_absolute());
        assert!(c.file.ends_with("disk.img"));
    }

    #[test]
    fn exports_come_after_file_and_share_the_server_wide_options() {
        let c = config(&[
            "-A",
            "-x",
            "main",
            "-D",
            "the main disk",
            "/i",
            "--export",
            "b=/b.img,description=second,readonly",
            "--export",
            "c=rel.qcow2,format=qcow2,allocation-depth=off",
        ])
        .unwrap();
        let names: Vec<&str> = c.exports.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(names, ["main", "b", "c"]);
        assert!(c.empty_name_is_default);
        assert_eq!(c.exports[0].description.as_deref(), Some("the main disk"));
        assert!(!c.exports[0].read_only && c.exports[1].read_only);
        assert!(c.exports[0].allocation_depth && c.exports[1].allocation_depth);
        assert!(!c.exports[2].allocation_depth);
        assert_eq!(c.exports[2].format, Some(ImageFormat::Qcow2));
        assert!(c.exports[2].file.is_absolute());
        // -r and -s hold for every export; no FILE is needed with --export.
        let c = config(&["-r", "-s", "--export", "a=/a", "--export", "b=/b"]).unwrap();
        assert!(c.exports.iter().all(|e| e.read_only && e.snapshot));
        assert_eq!(c.file, PathBuf::new());
    }

    #[test]
    fn export_mistakes_are_one_line_naming_the_export() {
        for (args, needle) in [
            (
                vec!["/i", "--export", "=/b"],
                "export name '' is given twice",
            ),
            (
                vec!["--export", "a=/a", "--export", "a=/b"],
                "export name 'a' is given twice",
            ),
            (
                vec!["-x", "a", "/i", "--export", "a=/b"],
                "export name 'a' is given twice",
            ),
            (
                vec!["--export", "a"],
                "invalid --export 'a': expected NAME=FILE",
            ),
            (vec!["--export", "a=/a,ro"], "unknown key 'ro'"),
            (
                vec!["-x", "n", "--export", "a=/a"],
                "-x describes the FILE export",
            ),
            (
                vec!["-P", "1", "--export", "a=/a"],
                "-P describes the FILE export",
            ),
            (
                vec!["-L", "--export", "a=/a"],
                "only meaningful when serving",
            ),
            (
                vec!["-c", "/dev/nbd0", "--export", "a=/a", "nbd://h/x"],
                "only meaningful when serving",
            ),
        ] {
            let err = config(&args).unwrap_err();
            assert!(err.contains(needle), "{args:?}: {err}");
            assert!(!err.contains('\n'), "{err}");
        }
    }

    #[cfg(feature = "tls")]
    #[test]
    fn tls_creds_resolve_to_their_object_for_the_right_side() {
        let obj = "tls-creds-x509,id=tls0,dir=/pki,endpoint=server";
        let c = config(&["--object", obj, "--tls-creds", "tls0", "/i"]).unwrap();
        let tls = c.tls.unwrap();
        assert_eq!(tls.creds.dir, PathBuf::from("/pki"));
        assert!(tls.creds.verify_peer, "qemu's default");
        assert!(config(&["--object", obj, "/i"]).unwrap().tls.is_none());
        let authz = "authz-simple,id=auth0,identity=CN=laptop";
        let c = config(&[
            "--object",
            obj,
            "--object",
            authz,
            "--tls-creds",
            "tls0",
            "--tls-authz",
            "auth0",
            "/i",
        ])
        .unwrap();
        assert_eq!(c.tls.unwrap().authz_identity.as_deref(), Some("CN=laptop"));
        let client = "tls-creds-x509,id=c,dir=/pki,endpoint=client";
        let c = config(&[
            "-L",
            "--object",
            client,
            "--tls-creds",
            "c",
            "--tls-hostname",
            "nas",
        ])
        .unwrap();
        assert_eq!(c.tls.unwrap().hostname.as_deref(), Some("nas"));
    }

    #[cfg(feature = "tls")]
    #[test]
    fn tls_misuse_is_one_clear_line() {
        let server = "tls-creds-x509,id=tls0,dir=/pki,endpoint=server";
        let client = "tls-creds-x509,id=tls0,dir=/pki,endpoint=client";
        for (args, needle) in [
            (
                vec!["--tls-creds", "tls0", "/i"],
                "no --object with id 'tls0'",
            ),
            (
                vec!["--object", client, "--tls-creds", "tls0", "/i"],
                "server endpoint",
            ),
            (
                vec!["-L", "--object", server, "--tls-creds", "tls0"],
                "client endpoint",
            ),
            (
                vec![
                    "--object",
                    "tls-creds-psk,id=p,dir=/k,endpoint=server",
                    "--tls-creds",
                    "p",
                    "/i",
                ],
                "TLS-PSK is not supported",
            ),
            (
                vec![
                    "-c",
                    "/dev/nbd0",
                    "--object",
                    server,
                    "--tls-creds",
                    "tls0",
                    "/i",
                ],
                "kernel",
            ),
            (vec!["--tls-hostname", "x", "/i"], "need --tls-creds"),
            (
                vec![
                    "--object",
                    server,
                    "--tls-creds",
                    "tls0",
                    "--tls-hostname",
                    "x",
                    "/i",
                ],
                "only valid with -L",
            ),
            (
                vec!["--object", server, "--object", server, "/i"],
                "duplicate id",
            ),
            (
                vec![
                    "--object",
                    server,
                    "--tls-creds",
                    "tls0",
                    "--tls-authz",
                    "tls0",
                    "/i",
                ],
                "not authz-simple",
            ),
        ] {
            let err = config(&args).unwrap_err();
            assert!(err.contains(needle), "{args:?}: {err}");
            assert!(!err.contains('\n'), "{err}");
        }
    }

    #[cfg(not(feature = "tls"))]
    #[test]
    fn tls_options_without_the_feature_are_refused() {
        let err = config(&["--tls-creds", "tls0", "/i"]).unwrap_err();
        assert!(err.contains("built without the tls feature"), "{err}");
    }
}
