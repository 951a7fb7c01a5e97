//! `ipadm`: parses an illumos-style command line, sends the request to
//! ipmgmtd over its socket, prints the reply as illumos ipadm would.

pub mod cmdline;
pub mod ofmt;

use std::ffi::OsString;
use std::io::{IsTerminal, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::Duration;

use self::cmdline::{Action, Invocation, Show};
use self::ofmt::Ofmt;
use super::model::{Error, Status};
use super::paths::Paths;
use super::request::{Reply, Request};
use super::wire;

/// Replies to changes that wait on the kernel (DAD, many interfaces) may
/// take a while; the rest are quick.
const SLOW_REPLY: Duration = Duration::from_secs(120);
const QUICK_REPLY: Duration = Duration::from_secs(30);

fn say(message: &str) {
    eprintln!("ipadm: {message}");
}

/// Lines per screen for the repeated header.
fn page_rows() -> usize {
    let stdout = std::io::stdout();
    if !stdout.is_terminal() {
        return ofmt::DEFAULT_PAGE_ROWS;
    }
    // SAFETY: winsize is plain data; TIOCGWINSZ fills it in.
    let mut ws: libc::winsize = unsafe { std::mem::zeroed() };
    // SAFETY: ioctl on our stdout with a winsize buffer.
    let rc = unsafe { libc::ioctl(stdout.as_raw_fd(), libc::TIOCGWINSZ, &mut ws) };
    if rc == 0 && ws.ws_row > 0 {
        ws.ws_row as usize
    } else {
        ofmt::DEFAULT_PAGE_ROWS
    }
}

/// Sends one request and reads its reply.
fn exchange(socket: &PathBuf, request: &Request) -> Result<Reply, Error> {
    let ipc = |what: &str, e: std::io::Error| {
        Error::with(
            Status::IpcError,
            format!(
                "{what} {}: {}",
                socket.display(),
                crate::service::io_text(&e)
            ),
        )
    };
    let mut stream = UnixStream::connect(socket).map_err(|e| ipc("connect", e))?;
    let wait = match request {
        Request::RefreshAddr { .. }
        | Request::Init
        | Request::EnableIf { .. }
        | Request::Try { .. } => SLOW_REPLY,
        _ => QUICK_REPLY,
    };
    stream
        .set_read_timeout(Some(wait))
        .and_then(|()| stream.set_write_timeout(Some(QUICK_REPLY)))
        .map_err(|e| ipc("configure", e))?;
    let frame = wire::encode(&request.to_packet())
        .map_err(|e| Error::with(Status::InvalidArg, e.to_string()))?;
    stream.write_all(&frame).map_err(|e| ipc("send to", e))?;
    let mut header = [0u8; 4];
    stream
        .read_exact(&mut header)
        .map_err(|e| ipc("read from", e))?;
    let len = wire::frame_length(header, wire::MAX_REPLY)
        .map_err(|e| Error::with(Status::Ebade, e.to_string()))?;
    let mut body = vec![0u8; len];
    stream
        .read_exact(&mut body)
        .map_err(|e| ipc("read from", e))?;
    let packet = wire::decode(&body).map_err(|e| Error::with(Status::Ebade, e.to_string()))?;
    Reply::from_packet(&packet)
}

fn render(show: &Show, reply: &Reply, out: &mut String) -> Result<(), String> {
    let opened = Ofmt::open(
        show.fields.as_deref(),
        show.columns,
        show.parsable,
        show.wrap,
        page_rows(),
    )?;
    if let Some(warning) = opened.warning {
        eprintln!("ipadm: warning: {warning}");
    }
    let mut ofmt = opened.ofmt;
    for row in &reply.rows {
        ofmt.print(|name| row.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone()));
    }
    out.push_str(&ofmt.finish());
    Ok(())
}

/// The `ipadm` applet; returns the exit status.
pub fn main(argv: &[OsString]) -> i32 {
    let mut args = Vec::new();
    for a in argv.iter().skip(1) {
        match a.to_str() {
            Some(s) => args.push(s.to_owned()),
            None => {
                say(&format!("argument is not UTF-8: {}", a.to_string_lossy()));
                return 1;
            }
        }
    }
    let Invocation { root, action } = match cmdline::parse(&args) {
        Ok(inv) => inv,
        Err(refusal) => {
            if let Some(message) = refusal.message {
                say(&message);
            }
            if refusal.usage {
                eprint!("{}", cmdline::usage_text());
            }
            return 1;
        }
    };
    let (request, show) = match action {
        Action::Help => {
            print!("{}", cmdline::usage_text());
            return 0;
        }
        Action::Send { request, show } => (request, show),
    };
    // Bad -o fields are reported before the daemon is asked anything.
    if let Some(show) = &show {
        if let Err(e) = Ofmt::open(
            show.fields.as_deref(),
            show.columns,
            show.parsable,
            show.wrap,
            24,
        ) {
            say(&e);
            return 1;
        }
    }
    let root = root
        .or_else(|| std::env::var_os("IPADM_ROOT").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("/"));
    let socket = Paths::new(&root).socket;
    let reply = match exchange(&socket, &request) {
        Ok(reply) => reply,
        Err(e) => {
            say(&cmdline::failure_message(&request, &e));
            return 1;
        }
    };
    for warning in &reply.warnings {
        eprintln!("ipadm: warning: {warning}");
    }
    let mut out = String::new();
    if let Some(show) = &show {
        if let Err(e) = render(show, &reply, &mut out) {
            say(&e);
            return 1;
        }
    }
    if let Some(info) = &reply.info {
        out.push_str(&format!("ipadm: {info}\n"));
    }
    let mut stdout = std::io::stdout().lock();
    let _ = stdout.write_all(out.as_bytes());
    let _ = stdout.flush();
    match &reply.result {
        Ok(()) => 0,
        Err(e) => {
            say(&cmdline::failure_message(&request, e));
            1
        }
    }
}
