//! The client side of the NBD handshake (blocking I/O), for `-L` and `--connect`.
//!
//! Everything read from the server is bounded before it is allocated, and
//! every failure is one line of text naming what went wrong.

use std::fmt::Write as _;
use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use super::options::{Config, Listen, TlsOptions};
use super::proto::*;
use crate::service::io_text;

/// The oldstyle handshake's second magic ("cliserv" magic): size and flags follow at once.
const OLDSTYLE_MAGIC: u64 = 0x0000_4202_8186_1253;
/// Largest option reply payload accepted. Real replies are a few strings of
/// at most [`MAX_STRING`] bytes; anything bigger is a broken or hostile server.
const MAX_REPLY_LEN: u32 = 64 * 1024;
/// Most replies accepted for one option (export list entries, info items,
/// meta contexts), so a server cannot make us loop or grow forever.
const MAX_REPLIES: usize = 4096;
/// How long `-L` waits on the server for any one step.
const LIST_TIMEOUT: Duration = Duration::from_secs(30);
/// Bytes of zero padding after NBD_OPT_EXPORT_NAME's reply unless NO_ZEROES was agreed.
const EXPORT_NAME_PADDING: usize = 124;

// Transmission flags qemu names in `--list` that the server side never sets.
const TFLAG_SEND_RESIZE: u16 = 1 << 9;
const TFLAG_BLOCK_STAT_PAYLOAD: u16 = 1 << 12;

/// The names qemu-nbd prints for transmission flags, in bit order.
const FLAG_NAMES: [(u16, &str); 12] = [
    (TFLAG_READ_ONLY, "readonly"),
    (TFLAG_SEND_FLUSH, "flush"),
    (TFLAG_SEND_FUA, "fua"),
    (TFLAG_ROTATIONAL, "rotational"),
    (TFLAG_SEND_TRIM, "trim"),
    (TFLAG_SEND_WRITE_ZEROES, "zeroes"),
    (TFLAG_SEND_DF, "df"),
    (TFLAG_CAN_MULTI_CONN, "multi"),
    (TFLAG_SEND_RESIZE, "resize"),
    (TFLAG_SEND_CACHE, "cache"),
    (TFLAG_SEND_FAST_ZERO, "fast-zero"),
    (TFLAG_BLOCK_STAT_PAYLOAD, "block-status-payload"),
];

/// Block-size constraints from NBD_INFO_BLOCK_SIZE (already checked for sanity).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockSizes {
    pub minimum: u32,
    pub preferred: u32,
    pub maximum: u32,
}

/// What the server told us about one export.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExportInfo {
    pub size: u64,
    pub transmission_flags: u16,
    /// None when the server sent no NBD_INFO_BLOCK_SIZE.
    pub block_sizes: Option<BlockSizes>,
}

/// `-L`: the text qemu-nbd prints for a server's exports.
pub fn list(config: &Config) -> Result<String, String> {
    let mut conn = connect(&config.listen)?;
    let listing = match &config.tls {
        None => query_exports(&mut conn)?,
        Some(tls) => list_over_tls(conn, tls)?,
    };
    Ok(render(&listing))
}

#[cfg(feature = "tls")]
fn list_over_tls(mut conn: Connection, tls: &TlsOptions) -> Result<Listing, String> {
    use crate::tls::rustls::{pki_types::ServerName, ClientConnection, StreamOwned};
    let hostname = tls.hostname.as_deref().unwrap_or("localhost");
    let name = ServerName::try_from(hostname.to_string())
        .map_err(|_| format!("--tls-hostname: '{hostname}' is not a host name"))?;
    let config = super::tls::client_config(&tls.creds)?;
    match greet(&mut conn)? {
        Greeting::Newstyle { fixed: true, .. } => {}
        _ => return Err("server cannot do TLS (no fixed newstyle handshake)".into()),
    }
    send_option(&mut conn, OPT_STARTTLS, &[])?;
    let reply = read_reply(&mut conn, OPT_STARTTLS)?;
    if reply.kind != REP_ACK {
        return Err(refusal(OPT_STARTTLS, &reply));
    }
    let session = ClientConnection::new(config, name).map_err(|e| format!("TLS: {e}"))?;
    let mut stream = StreamOwned::new(session, conn);
    stream
        .conn
        .complete_io(&mut stream.sock)
        .map_err(|e| format!("TLS handshake with the server failed: {e}"))?;
    query_options(&mut stream)
}

#[cfg(not(feature = "tls"))]
fn list_over_tls(_conn: Connection, _tls: &TlsOptions) -> Result<Listing, String> {
    Err("TLS is not available: this toolbox was built without the tls feature".into())
}

/// Negotiates `export_name` and leaves `stream` in the transmission phase
/// with simple replies (what the kernel client speaks): NBD_OPT_GO, or
/// NBD_OPT_EXPORT_NAME when the server does not know NBD_OPT_GO. Block
/// sizes are asked for so the minimum can become the kernel's block size
/// (the kernel cannot be given a maximum; it sends at most 32 MiB at once).
pub fn handshake<S: Read + Write>(stream: &mut S, export_name: &str) -> Result<ExportInfo, String> {
    if export_name.len() > MAX_STRING {
        return Err("export name is longer than 4096 bytes".into());
    }
    let name = export_name.as_bytes();
    match greet(stream)? {
        Greeting::Oldstyle(info) if name.is_empty() => Ok(info),
        Greeting::Oldstyle(_) => Err(format!(
            "the server speaks the oldstyle protocol and cannot serve export '{export_name}'"
        )),
        Greeting::Newstyle {
            fixed: false,
            no_zeroes,
        } => export_name_option(stream, name, no_zeroes),
        Greeting::Newstyle {
            fixed: true,
            no_zeroes,
        } => match info_or_go(stream, OPT_GO, name, &[INFO_BLOCK_SIZE])? {
            Some(described) => Ok(described.info),
            None => export_name_option(stream, name, no_zeroes),
        },
    }
}

// ---------------------------------------------------------------------------
// Connecting (for -L)

/// The stream `-L` talks over.
enum Connection {
    Unix(UnixStream),
    Tcp(TcpStream),
}

impl Read for Connection {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Connection::Unix(s) => s.read(buf),
            Connection::Tcp(s) => s.read(buf),
        }
    }
}

impl Write for Connection {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Connection::Unix(s) => s.write(buf),
            Connection::Tcp(s) => s.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match self {
            Connection::Unix(s) => s.flush(),
            Connection::Tcp(s) => s.flush(),
        }
    }
}

/// The address to dial for a listen address: `-b 0.0.0.0` (the default)
/// means "this host" to a client, so it dials loopback.
fn dial_address(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => {
            SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), addr.port())
        }
        IpAddr::V6(ip) if ip.is_unspecified() => {
            SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), addr.port())
        }
        _ => addr,
    }
}

fn connect(listen: &Listen) -> Result<Connection, String> {
    // A server that stops answering must not hang -L forever.
    let timeouts = |r: io::Result<()>, w: io::Result<()>| {
        r.and(w)
            .map_err(|e| format!("cannot set socket timeouts: {}", io_text(&e)))
    };
    match listen {
        Listen::Unix(path) => {
            let s = UnixStream::connect(path)
                .map_err(|e| format!("cannot connect to {}: {}", path.display(), io_text(&e)))?;
            timeouts(
                s.set_read_timeout(Some(LIST_TIMEOUT)),
                s.set_write_timeout(Some(LIST_TIMEOUT)),
            )?;
            Ok(Connection::Unix(s))
        }
        Listen::Tcp(addrs) => {
            let mut failure = String::from("no address to connect to");
            for addr in addrs.iter().copied().map(dial_address) {
                match TcpStream::connect_timeout(&addr, LIST_TIMEOUT) {
                    Ok(s) => {
                        let _ = s.set_nodelay(true);
                        timeouts(
                            s.set_read_timeout(Some(LIST_TIMEOUT)),
                            s.set_write_timeout(Some(LIST_TIMEOUT)),
                        )?;
                        return Ok(Connection::Tcp(s));
                    }
                    Err(e) => failure = format!("cannot connect to {addr}: {}", io_text(&e)),
                }
            }
            Err(failure)
        }
    }
}

// ---------------------------------------------------------------------------
// Wire helpers

fn option_name(option: u32) -> String {
    match option {
        OPT_EXPORT_NAME => "NBD_OPT_EXPORT_NAME".into(),
        OPT_ABORT => "NBD_OPT_ABORT".into(),
        OPT_LIST => "NBD_OPT_LIST".into(),
        OPT_STARTTLS => "NBD_OPT_STARTTLS".into(),
        OPT_INFO => "NBD_OPT_INFO".into(),
        OPT_GO => "NBD_OPT_GO".into(),
        OPT_STRUCTURED_REPLY => "NBD_OPT_STRUCTURED_REPLY".into(),
        OPT_LIST_META_CONTEXT => "NBD_OPT_LIST_META_CONTEXT".into(),
        OPT_SET_META_CONTEXT => "NBD_OPT_SET_META_CONTEXT".into(),
        OPT_EXTENDED_HEADERS => "NBD_OPT_EXTENDED_HEADERS".into(),
        other => format!("option {other}"),
    }
}

fn read_failure(e: &io::Error, what: &str) -> String {
    match e.kind() {
        io::ErrorKind::UnexpectedEof => {
            format!("server closed the connection before sending {what}")
        }
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => {
            format!("server did not send {what} in time")
        }
        _ => format!("cannot read {what}: {}", io_text(e)),
    }
}

fn read_exact<S: Read>(stream: &mut S, buf: &mut [u8], what: &str) -> Result<(), String> {
    stream.read_exact(buf).map_err(|e| read_failure(&e, what))
}

fn read_u16<S: Read>(stream: &mut S, what: &str) -> Result<u16, String> {
    let mut b = [0u8; 2];
    read_exact(stream, &mut b, what)?;
    Ok(u16::from_be_bytes(b))
}

fn read_u32<S: Read>(stream: &mut S, what: &str) -> Result<u32, String> {
    let mut b = [0u8; 4];
    read_exact(stream, &mut b, what)?;
    Ok(u32::from_be_bytes(b))
}

fn read_u64<S: Read>(stream: &mut S, what: &str) -> Result<u64, String> {
    let mut b = [0u8; 8];
    read_exact(stream, &mut b, what)?;
    Ok(u64::from_be_bytes(b))
}

fn write_all<S: Write>(stream: &mut S, bytes: &[u8], what: &str) -> Result<(), String> {
    stream
        .write_all(bytes)
        .and_then(|()| stream.flush())
        .map_err(|e| match e.kind() {
            io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset => {
                format!("server closed the connection before {what}")
            }
            _ => format!("cannot send {what}: {}", io_text(&e)),
        })
}

/// Server text (error messages) made safe to put in a one-line message.
fn printable(bytes: &[u8]) -> String {
    const LIMIT: usize = 200;
    let text: String = String::from_utf8_lossy(bytes)
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    match text.char_indices().nth(LIMIT) {
        Some((cut, _)) => format!("{}...", &text[..cut]),
        None => text,
    }
}

fn send_option<S: Write>(stream: &mut S, option: u32, data: &[u8]) -> Result<(), String> {
    let mut out = Vec::with_capacity(16 + data.len());
    out.extend_from_slice(&IHAVEOPT.to_be_bytes());
    out.extend_from_slice(&option.to_be_bytes());
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    out.extend_from_slice(data);
    write_all(stream, &out, &format!("sending {}", option_name(option)))
}

struct OptionReply {
    kind: u32,
    payload: Vec<u8>,
}

fn is_error(kind: u32) -> bool {
    kind & (1 << 31) != 0
}

/// Reads one option reply to `option`, payload included (at most [`MAX_REPLY_LEN`]).
fn read_reply<S: Read>(stream: &mut S, option: u32) -> Result<OptionReply, String> {
    let what = format!("the reply to {}", option_name(option));
    let magic = read_u64(stream, &what)?;
    if magic != OPTION_REPLY_MAGIC {
        return Err(format!("bad magic {magic:#x} in {what}"));
    }
    let echoed = read_u32(stream, &what)?;
    if echoed != option {
        return Err(format!(
            "server answered {} while {what} was expected",
            option_name(echoed)
        ));
    }
    let kind = read_u32(stream, &what)?;
    let len = read_u32(stream, &what)?;
    if len > MAX_REPLY_LEN {
        return Err(format!(
            "{what} is {len} bytes long (more than {MAX_REPLY_LEN}); refusing it"
        ));
    }
    let mut payload = vec![0u8; len as usize];
    read_exact(stream, &mut payload, &what)?;
    Ok(OptionReply { kind, payload })
}

/// One line for an error reply: the option, what the error means, and the
/// server's own message if it sent one.
fn refusal(option: u32, reply: &OptionReply) -> String {
    let meaning = match reply.kind {
        REP_ERR_UNSUP => "not supported by the server".to_string(),
        REP_ERR_POLICY => "denied by the server's policy".to_string(),
        REP_ERR_INVALID => "the server found the request invalid".to_string(),
        REP_ERR_PLATFORM => "not supported on the server's platform".to_string(),
        REP_ERR_TLS_REQD => "the server requires TLS".to_string(),
        REP_ERR_UNKNOWN => "export not available".to_string(),
        REP_ERR_SHUTDOWN => "the server is shutting down".to_string(),
        REP_ERR_BLOCK_SIZE_REQD => "the server requires block size negotiation".to_string(),
        REP_ERR_TOO_BIG => "the request is too big for the server".to_string(),
        REP_ERR_EXT_HEADER_REQD => "the server requires extended headers".to_string(),
        other => format!("error {other:#x}"),
    };
    let mut text = format!("{} failed: {meaning}", option_name(option));
    if !reply.payload.is_empty() {
        let _ = write!(text, " (server said: {})", printable(&reply.payload));
    }
    text
}

fn unexpected(option: u32, reply: &OptionReply) -> String {
    format!(
        "server sent unexpected reply type {:#x} ({} bytes) to {}",
        reply.kind,
        reply.payload.len(),
        option_name(option)
    )
}

// ---------------------------------------------------------------------------
// Handshake steps

enum Greeting {
    /// Options follow; without `fixed`, only NBD_OPT_EXPORT_NAME is safe to send.
    Newstyle { fixed: bool, no_zeroes: bool },
    /// The server sent size and flags straight away.
    Oldstyle(ExportInfo),
}

/// Reads the server's greeting and, for newstyle, answers with our flags.
fn greet<S: Read + Write>(stream: &mut S) -> Result<Greeting, String> {
    let magic = read_u64(stream, "the greeting")?;
    if magic != NBDMAGIC {
        return Err(format!("not an NBD server (greeting magic {magic:#x})"));
    }
    match read_u64(stream, "the greeting")? {
        IHAVEOPT => {
            let server_flags = read_u16(stream, "the handshake flags")?;
            let fixed = server_flags & FLAG_FIXED_NEWSTYLE != 0;
            let no_zeroes = server_flags & FLAG_NO_ZEROES != 0;
            let mut client_flags = 0;
            if fixed {
                client_flags |= FLAG_C_FIXED_NEWSTYLE;
            }
            if no_zeroes {
                client_flags |= FLAG_C_NO_ZEROES;
            }
            write_all(
                stream,
                &client_flags.to_be_bytes(),
                "sending the client flags",
            )?;
            Ok(Greeting::Newstyle { fixed, no_zeroes })
        }
        OLDSTYLE_MAGIC => {
            let size = read_u64(stream, "the export size")?;
            let flags = read_u32(stream, "the export flags")?;
            let transmission_flags = u16::try_from(flags)
                .map_err(|_| format!("server sent unknown oldstyle export flags {flags:#x}"))?;
            let mut padding = [0u8; EXPORT_NAME_PADDING];
            read_exact(stream, &mut padding, "the greeting padding")?;
            Ok(Greeting::Oldstyle(ExportInfo {
                size,
                transmission_flags,
                block_sizes: None,
            }))
        }
        other => Err(format!("not an NBD server (handshake magic {other:#x})")),
    }
}

/// Sends an option without data; true when the server acknowledges it,
/// false when it declines in any way (the caller then does without).
fn request_simple_option<S: Read + Write>(stream: &mut S, option: u32) -> Result<bool, String> {
    send_option(stream, option, &[])?;
    let reply = read_reply(stream, option)?;
    if is_error(reply.kind) {
        return Ok(false);
    }
    if reply.kind != REP_ACK || !reply.payload.is_empty() {
        return Err(unexpected(option, &reply));
    }
    Ok(true)
}

/// The answer to NBD_OPT_INFO / NBD_OPT_GO.
struct Described {
    info: ExportInfo,
    description: Option<Vec<u8>>,
}

fn check_block_sizes(minimum: u32, preferred: u32, maximum: u32) -> Result<BlockSizes, String> {
    if !minimum.is_power_of_two() {
        return Err(format!(
            "server's minimum block size {minimum} is not a power of two"
        ));
    }
    if !preferred.is_power_of_two() || preferred < minimum {
        return Err(format!(
            "server's preferred block size {preferred} is not valid"
        ));
    }
    if maximum < minimum {
        return Err(format!(
            "server's maximum block size {maximum} is not valid"
        ));
    }
    Ok(BlockSizes {
        minimum,
        preferred,
        maximum,
    })
}

/// NBD_OPT_INFO or NBD_OPT_GO for `name`, asking for `requests`.
/// Ok(None) when the server does not support the option.
fn info_or_go<S: Read + Write>(
    stream: &mut S,
    option: u32,
    name: &[u8],
    requests: &[u16],
) -> Result<Option<Described>, String> {
    let mut data = Vec::with_capacity(6 + name.len() + 2 * requests.len());
    data.extend_from_slice(&(name.len() as u32).to_be_bytes());
    data.extend_from_slice(name);
    data.extend_from_slice(&(requests.len() as u16).to_be_bytes());
    for request in requests {
        data.extend_from_slice(&request.to_be_bytes());
    }
    send_option(stream, option, &data)?;

    let export = String::from_utf8_lossy(name);
    let mut size_and_flags = None;
    let mut block_sizes = None;
    let mut description = None;
    for _ in 0..MAX_REPLIES {
        let reply = read_reply(stream, option)?;
        match reply.kind {
            REP_ACK => {
                if !reply.payload.is_empty() {
                    return Err(unexpected(option, &reply));
                }
                // The server must send NBD_INFO_EXPORT before acknowledging.
                let Some((size, transmission_flags)) = size_and_flags else {
                    return Err(format!(
                        "server acknowledged {} for export '{export}' without NBD_INFO_EXPORT",
                        option_name(option)
                    ));
                };
                if let Some(BlockSizes { minimum, .. }) = block_sizes {
                    if size % u64::from(minimum) != 0 {
                        return Err(format!(
                            "export size {size} is not a multiple of the minimum block size {minimum}"
                        ));
                    }
                }
                return Ok(Some(Described {
                    info: ExportInfo {
                        size,
                        transmission_flags,
                        block_sizes,
                    },
                    description,
                }));
            }
            REP_INFO => {
                let mut r = Reader::new(&reply.payload);
                let malformed = || {
                    format!(
                        "server sent a malformed NBD_REP_INFO ({} bytes) to {}",
                        reply.payload.len(),
                        option_name(option)
                    )
                };
                let info_type = r.u16().ok_or_else(malformed)?;
                match info_type {
                    INFO_EXPORT => {
                        if r.remaining() != 10 {
                            return Err(malformed());
                        }
                        let size = r.u64().ok_or_else(malformed)?;
                        let flags = r.u16().ok_or_else(malformed)?;
                        size_and_flags = Some((size, flags));
                    }
                    INFO_BLOCK_SIZE => {
                        if r.remaining() != 12 {
                            return Err(malformed());
                        }
                        let minimum = r.u32().ok_or_else(malformed)?;
                        let preferred = r.u32().ok_or_else(malformed)?;
                        let maximum = r.u32().ok_or_else(malformed)?;
                        block_sizes = Some(check_block_sizes(minimum, preferred, maximum)?);
                    }
                    INFO_DESCRIPTION => {
                        let len = r.remaining();
                        description = r.bytes(len).map(<[u8]>::to_vec);
                    }
                    // NBD_INFO_NAME and types we do not know: nothing to keep.
                    _ => {}
                }
            }
            REP_ERR_UNSUP => return Ok(None),
            kind if is_error(kind) => {
                return Err(format!("export '{export}': {}", refusal(option, &reply)))
            }
            _ => return Err(unexpected(option, &reply)),
        }
    }
    Err(format!(
        "server sent more than {MAX_REPLIES} replies to {}",
        option_name(option)
    ))
}

/// NBD_OPT_EXPORT_NAME: the server either answers with size and flags or,
/// if it does not have the export, hangs up without a word.
fn export_name_option<S: Read + Write>(
    stream: &mut S,
    name: &[u8],
    no_zeroes: bool,
) -> Result<ExportInfo, String> {
    send_option(stream, OPT_EXPORT_NAME, name)?;
    let export = String::from_utf8_lossy(name);
    let what = format!("export '{export}' (is that its name?)");
    let size = read_u64(stream, &what)?;
    let transmission_flags = read_u16(stream, &what)?;
    if !no_zeroes {
        let mut padding = [0u8; EXPORT_NAME_PADDING];
        read_exact(stream, &mut padding, "the export padding")?;
    }
    Ok(ExportInfo {
        size,
        transmission_flags,
        block_sizes: None,
    })
}

// ---------------------------------------------------------------------------
// -L

/// One export as `-L` reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct ListedExport {
    name: Vec<u8>,
    description: Vec<u8>,
    /// None when the server does not support NBD_OPT_INFO.
    info: Option<ExportInfo>,
    meta_contexts: Vec<Vec<u8>>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Listing {
    exports: Vec<ListedExport>,
    /// Extended headers (64-bit transactions) were negotiated.
    extended: bool,
}

/// An export as NBD_OPT_LIST names it.
struct ListEntry {
    name: Vec<u8>,
    description: Vec<u8>,
}

/// NBD_OPT_LIST: every export's name and description.
fn list_names<S: Read + Write>(stream: &mut S) -> Result<Vec<ListEntry>, String> {
    send_option(stream, OPT_LIST, &[])?;
    let mut names = Vec::new();
    for _ in 0..=MAX_REPLIES {
        let reply = read_reply(stream, OPT_LIST)?;
        match reply.kind {
            REP_ACK if reply.payload.is_empty() => return Ok(names),
            REP_SERVER => {
                let mut r = Reader::new(&reply.payload);
                let entry = (|| {
                    let name = r.string32()?;
                    let len = r.remaining();
                    let description = r.bytes(len)?;
                    (description.len() <= MAX_STRING).then(|| ListEntry {
                        name: name.to_vec(),
                        description: description.to_vec(),
                    })
                })();
                let Some(entry) = entry else {
                    return Err(format!(
                        "server sent a malformed NBD_OPT_LIST entry ({} bytes)",
                        reply.payload.len()
                    ));
                };
                if names.len() == MAX_REPLIES {
                    return Err(format!("server lists more than {MAX_REPLIES} exports"));
                }
                names.push(entry);
            }
            // qemu treats a server without NBD_OPT_LIST as having nothing to list.
            REP_ERR_UNSUP => return Ok(names),
            kind if is_error(kind) => return Err(refusal(OPT_LIST, &reply)),
            _ => return Err(unexpected(OPT_LIST, &reply)),
        }
    }
    Err(format!("server lists more than {MAX_REPLIES} exports"))
}

/// NBD_OPT_LIST_META_CONTEXT with no query: every context the export offers.
/// Errors count as "none", as qemu does.
fn list_meta_contexts<S: Read + Write>(
    stream: &mut S,
    name: &[u8],
) -> Result<Vec<Vec<u8>>, String> {
    let mut data = Vec::with_capacity(8 + name.len());
    data.extend_from_slice(&(name.len() as u32).to_be_bytes());
    data.extend_from_slice(name);
    data.extend_from_slice(&0u32.to_be_bytes());
    send_option(stream, OPT_LIST_META_CONTEXT, &data)?;
    let mut contexts = Vec::new();
    for _ in 0..=MAX_REPLIES {
        let reply = read_reply(stream, OPT_LIST_META_CONTEXT)?;
        match reply.kind {
            REP_ACK if reply.payload.is_empty() => return Ok(contexts),
            REP_META_CONTEXT => {
                // A context id, then a name that may not be empty.
                let context = match reply.payload.get(4..) {
                    Some(context) if !context.is_empty() && context.len() <= MAX_STRING => context,
                    _ => {
                        return Err(format!(
                            "server sent a malformed meta context reply ({} bytes)",
                            reply.payload.len()
                        ))
                    }
                };
                if contexts.len() == MAX_REPLIES {
                    break;
                }
                contexts.push(context.to_vec());
            }
            kind if is_error(kind) => return Ok(contexts),
            _ => return Err(unexpected(OPT_LIST_META_CONTEXT, &reply)),
        }
    }
    Err(format!(
        "server lists more than {MAX_REPLIES} meta contexts"
    ))
}

/// What qemu-nbd's `--list` asks: the export list, then NBD_OPT_INFO and
/// the meta contexts of each export, then NBD_OPT_ABORT.
fn query_exports<S: Read + Write>(stream: &mut S) -> Result<Listing, String> {
    let fixed = match greet(stream)? {
        Greeting::Oldstyle(info) => {
            // The lone export is implied; say goodbye politely and report it.
            let mut disc = Vec::new();
            let request = Request {
                flags: 0,
                kind: CMD_DISC,
                cookie: 0,
                offset: 0,
                length: 0,
            };
            encode_request(&mut disc, &request, false);
            let _ = stream.write_all(&disc);
            return Ok(Listing {
                exports: vec![ListedExport {
                    name: Vec::new(),
                    description: Vec::new(),
                    info: Some(info),
                    meta_contexts: Vec::new(),
                }],
                extended: false,
            });
        }
        Greeting::Newstyle { fixed, .. } => fixed,
    };
    if !fixed {
        return Err("server does not support export lists (no fixed newstyle handshake)".into());
    }
    query_options(stream)
}

/// The options of `-L` after the greeting (and after STARTTLS, over TLS).
fn query_options<S: Read + Write>(stream: &mut S) -> Result<Listing, String> {
    // Like qemu: extended headers if offered, else structured replies; the
    // meta context listing needs one of the two.
    let extended = request_simple_option(stream, OPT_EXTENDED_HEADERS)?;
    let structured = extended || request_simple_option(stream, OPT_STRUCTURED_REPLY)?;

    let mut exports = Vec::new();
    let mut info_supported = true;
    for ListEntry { name, description } in list_names(stream)? {
        let mut export = ListedExport {
            name,
            description,
            info: None,
            meta_contexts: Vec::new(),
        };
        if info_supported {
            let requests = [INFO_NAME, INFO_DESCRIPTION, INFO_BLOCK_SIZE];
            match info_or_go(stream, OPT_INFO, &export.name, &requests)? {
                Some(described) => {
                    export.info = Some(described.info);
                    if export.description.is_empty() {
                        export.description = described.description.unwrap_or_default();
                    }
                    if structured {
                        export.meta_contexts = list_meta_contexts(stream, &export.name)?;
                    }
                }
                // Without NBD_OPT_INFO there is nothing more to ask about any export.
                None => info_supported = false,
            }
        }
        exports.push(export);
    }

    // A courtesy; the listing is complete whatever the server does now.
    if send_option(stream, OPT_ABORT, &[]).is_ok() {
        let _ = read_reply(stream, OPT_ABORT);
    }
    Ok(Listing { exports, extended })
}

/// The listing in qemu-nbd's `--list` layout, line for line.
fn render(listing: &Listing) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "exports available: {}", listing.exports.len());
    for export in &listing.exports {
        let _ = writeln!(out, " export: '{}'", String::from_utf8_lossy(&export.name));
        if !export.description.is_empty() {
            let _ = writeln!(
                out,
                "  description: {}",
                String::from_utf8_lossy(&export.description)
            );
        }
        if let Some(info) = &export.info {
            let flags = info.transmission_flags;
            if flags & TFLAG_HAS_FLAGS != 0 {
                let _ = writeln!(out, "  size:  {}", info.size);
                let _ = write!(out, "  flags: {flags:#x} (");
                for (bit, name) in FLAG_NAMES {
                    if flags & bit != 0 {
                        let _ = write!(out, " {name}");
                    }
                }
                out.push_str(" )\n");
            }
            if let Some(sizes) = &info.block_sizes {
                let _ = writeln!(out, "  min block: {}", sizes.minimum);
                let _ = writeln!(out, "  opt block: {}", sizes.preferred);
                let _ = writeln!(out, "  max block: {}", sizes.maximum);
            }
        }
        let width = if listing.extended { "64-bit" } else { "32-bit" };
        let _ = writeln!(out, "  transaction size: {width}");
        if !export.meta_contexts.is_empty() {
            let _ = writeln!(
                out,
                "  available meta contexts: {}",
                export.meta_contexts.len()
            );
            for context in &export.meta_contexts {
                let _ = writeln!(out, "   {}", String::from_utf8_lossy(context));
            }
        }
    }
    out
}

#[cfg(test)]
pub(super) mod testing {
    //! Our own server's handshake on the far end of a socket, for client tests.

    use std::os::unix::net::UnixStream;
    use std::sync::Arc;

    use crate::nbd::export::{Export, Exports};
    use crate::nbd::negotiate::{negotiate, Negotiated};

    pub use crate::nbd::backend::testing::Zeroes;

    pub fn export(name: &str, description: Option<&str>, size: u64) -> Export {
        Export {
            name: name.into(),
            description: description.map(Into::into),
            backend: Arc::new(Zeroes(size)),
            read_only: false,
            multi_conn: true,
            rotational: false,
            allocation_depth: false,
        }
    }

    /// Runs our server's negotiation on `stream` on a thread of its own.
    pub fn serve_handshake(
        stream: UnixStream,
        export: Export,
    ) -> std::thread::JoinHandle<Result<Negotiated, String>> {
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?;
            runtime.block_on(async move {
                stream.set_nonblocking(true).map_err(|e| e.to_string())?;
                let mut stream =
                    tokio::net::UnixStream::from_std(stream).map_err(|e| e.to_string())?;
                negotiate(&mut stream, &Exports::single(export))
                    .await
                    .map_err(|refused| format!("{refused:?}"))
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::testing::{export, serve_handshake};
    use super::*;
    use crate::nbd::export::{MAX_PAYLOAD, MIN_BLOCK, PREFERRED_BLOCK};
    use crate::nbd::negotiate::Negotiated;
    use crate::nbd::options::{CacheMode, Mode};

    /// A server that says pre-scripted bytes and records what the client sent.
    struct Scripted {
        server_says: io::Cursor<Vec<u8>>,
        client_sent: Vec<u8>,
    }

    impl Scripted {
        fn new(server_says: Vec<u8>) -> Self {
            Scripted {
                server_says: io::Cursor::new(server_says),
                client_sent: Vec::new(),
            }
        }
    }

    impl Read for Scripted {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            self.server_says.read(buf)
        }
    }

    impl Write for Scripted {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.client_sent.extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn greeting(flags: u16) -> Vec<u8> {
        let mut g = NBDMAGIC.to_be_bytes().to_vec();
        g.extend_from_slice(&IHAVEOPT.to_be_bytes());
        g.extend_from_slice(&flags.to_be_bytes());
        g
    }

    fn reply(out: &mut Vec<u8>, option: u32, kind: u32, payload: &[u8]) {
        put_option_reply(out, option, kind, payload.len() as u32);
        out.extend_from_slice(payload);
    }

    fn option_request(option: u32, data: &[u8]) -> Vec<u8> {
        let mut o = IHAVEOPT.to_be_bytes().to_vec();
        o.extend_from_slice(&option.to_be_bytes());
        o.extend_from_slice(&(data.len() as u32).to_be_bytes());
        o.extend_from_slice(data);
        o
    }

    fn info_export(size: u64, flags: u16) -> Vec<u8> {
        let mut p = INFO_EXPORT.to_be_bytes().to_vec();
        p.extend_from_slice(&size.to_be_bytes());
        p.extend_from_slice(&flags.to_be_bytes());
        p
    }

    fn info_block_size(min: u32, preferred: u32, max: u32) -> Vec<u8> {
        let mut p = INFO_BLOCK_SIZE.to_be_bytes().to_vec();
        for v in [min, preferred, max] {
            p.extend_from_slice(&v.to_be_bytes());
        }
        p
    }

    fn socket_pair() -> (UnixStream, UnixStream) {
        UnixStream::pair().expect("socketpair")
    }

    #[test]
    fn handshake_with_our_server_goes_with_simple_replies() {
        let (client, server) = socket_pair();
        let server = serve_handshake(server, export("disk", Some("a disk"), 1 << 20));
        let mut client = client;
        let info = handshake(&mut client, "disk").expect("handshake");
        assert_eq!(info.size, 1 << 20);
        let flags = info.transmission_flags;
        assert_ne!(flags & TFLAG_HAS_FLAGS, 0);
        assert_ne!(flags & TFLAG_SEND_FLUSH, 0);
        // No structured replies were asked for, so no DF.
        assert_eq!(flags & TFLAG_SEND_DF, 0);
        assert_eq!(
            info.block_sizes,
            Some(BlockSizes {
                minimum: MIN_BLOCK,
                preferred: PREFERRED_BLOCK,
                maximum: MAX_PAYLOAD,
            })
        );
        let negotiated = server.join().expect("server thread").expect("negotiated");
        assert_eq!(
            negotiated,
            Negotiated {
                style: ReplyStyle::Simple,
                contexts: Default::default(),
                export: 0,
            }
        );
    }

    #[test]
    fn handshake_for_an_unknown_export_names_it_in_one_line() {
        let (client, server) = socket_pair();
        let _server = serve_handshake(server, export("disk", None, 4096));
        let mut client = client;
        let err = handshake(&mut client, "nope").unwrap_err();
        assert!(err.contains("'nope'"), "{err}");
        assert!(err.contains("export not available"), "{err}");
        assert!(!err.contains('\n'), "{err}");
    }

    #[test]
    fn list_of_our_server_matches_qemu_layout() {
        let (client, server) = socket_pair();
        let server = serve_handshake(server, export("disk", Some("a disk"), 12345));
        let mut client = client;
        let listing = query_exports(&mut client).expect("listing");
        assert!(server.join().expect("server thread").is_err(), "aborted");
        assert_eq!(
            render(&listing),
            "exports available: 1\n\
             \x20export: 'disk'\n\
             \x20 description: a disk\n\
             \x20 size:  12345\n\
             \x20 flags: 0x5ed ( flush fua trim zeroes df multi cache )\n\
             \x20 min block: 1\n\
             \x20 opt block: 4096\n\
             \x20 max block: 33554432\n\
             \x20 transaction size: 64-bit\n\
             \x20 available meta contexts: 1\n\
             \x20  base:allocation\n"
        );
    }

    fn unix_config(path: &std::path::Path) -> Config {
        Config {
            mode: Mode::List,
            file: Default::default(),
            listen: Listen::Unix(path.to_path_buf()),
            shared: 1,
            persistent: false,
            exports: Vec::new(),
            empty_name_is_default: false,
            handshake_limit: None,
            cache: CacheMode::parse("writeback").expect("cache mode"),
            discard_unmap: false,
            rotational: None,
            verbose: 0,
            fork: false,
            pid_file: None,
            tls: None,
        }
    }

    #[test]
    fn list_dials_the_unix_socket_and_reports_failures_plainly() {
        let dir = std::env::temp_dir().join(format!("nbd-client-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("list.sock");
        let _ = std::fs::remove_file(&path);
        let listener = std::os::unix::net::UnixListener::bind(&path).expect("bind");
        let server = std::thread::spawn(move || {
            let (stream, _) = listener.accept().expect("accept");
            serve_handshake(stream, export("", None, 512)).join()
        });
        let text = list(&unix_config(&path)).expect("list");
        assert!(text.starts_with("exports available: 1\n export: ''\n  size:  512\n"));
        let _ = server.join();
        std::fs::remove_file(&path).expect("remove socket");
        let err = list(&unix_config(&path)).unwrap_err();
        assert_eq!(
            err,
            format!(
                "cannot connect to {}: No such file or directory",
                path.display()
            )
        );
        let _ = std::fs::remove_dir(&dir);
    }

    #[test]
    fn unspecified_bind_addresses_dial_loopback() {
        let v4: SocketAddr = "0.0.0.0:10809".parse().unwrap();
        let v6: SocketAddr = "[::]:99".parse().unwrap();
        let other: SocketAddr = "192.0.2.1:10809".parse().unwrap();
        assert_eq!(dial_address(v4), "127.0.0.1:10809".parse().unwrap());
        assert_eq!(dial_address(v6), "[::1]:99".parse().unwrap());
        assert_eq!(dial_address(other), other);
    }

    #[test]
    fn go_unsupported_falls_back_to_export_name_with_padding() {
        // Fixed newstyle without NO_ZEROES: the export-name reply is padded.
        let mut script = greeting(FLAG_FIXED_NEWSTYLE);
        reply(&mut script, OPT_GO, REP_ERR_UNSUP, b"what is GO?");
        script.extend_from_slice(&777u64.to_be_bytes());
        script.extend_from_slice(&(TFLAG_HAS_FLAGS | TFLAG_READ_ONLY).to_be_bytes());
        script.extend_from_slice(&[0; 124]);
        let mut server = Scripted::new(script);
        let info = handshake(&mut server, "vm").expect("handshake");
        assert_eq!(
            info,
            ExportInfo {
                size: 777,
                transmission_flags: TFLAG_HAS_FLAGS | TFLAG_READ_ONLY,
                block_sizes: None,
            }
        );
        let mut expected = FLAG_C_FIXED_NEWSTYLE.to_be_bytes().to_vec();
        let mut go = 2u32.to_be_bytes().to_vec();
        go.extend_from_slice(b"vm");
        go.extend_from_slice(&1u16.to_be_bytes());
        go.extend_from_slice(&INFO_BLOCK_SIZE.to_be_bytes());
        expected.extend(option_request(OPT_GO, &go));
        expected.extend(option_request(OPT_EXPORT_NAME, b"vm"));
        assert_eq!(server.client_sent, expected);
    }

    #[test]
    fn go_collects_info_in_any_order_and_checks_block_sizes() {
        let mut script = greeting(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES);
        reply(
            &mut script,
            OPT_GO,
            REP_INFO,
            &info_export(8192, TFLAG_HAS_FLAGS),
        );
        reply(&mut script, OPT_GO, REP_INFO, &[0, 1, b'x']); // NBD_INFO_NAME, ignored
        reply(&mut script, OPT_GO, REP_INFO, &[0x7f, 0x7f]); // unknown type, ignored
        reply(
            &mut script,
            OPT_GO,
            REP_INFO,
            &info_block_size(512, 4096, 1 << 20),
        );
        reply(&mut script, OPT_GO, REP_ACK, &[]);
        let mut server = Scripted::new(script);
        let info = handshake(&mut server, "").expect("handshake");
        assert_eq!(info.size, 8192);
        assert_eq!(info.block_sizes.map(|b| b.minimum), Some(512));
        assert_eq!(
            &server.client_sent[..4],
            &(FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES).to_be_bytes()
        );

        for (sizes, size, complaint) in [
            ((3, 4096, 4096), 4096, "minimum block size 3"),
            ((512, 256, 4096), 4096, "preferred block size 256"),
            ((512, 512, 256), 4096, "maximum block size 256"),
            ((512, 512, 4096), 1000, "not a multiple"),
        ] {
            let mut script = greeting(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES);
            reply(
                &mut script,
                OPT_GO,
                REP_INFO,
                &info_block_size(sizes.0, sizes.1, sizes.2),
            );
            reply(
                &mut script,
                OPT_GO,
                REP_INFO,
                &info_export(size, TFLAG_HAS_FLAGS),
            );
            reply(&mut script, OPT_GO, REP_ACK, &[]);
            let err = handshake(&mut Scripted::new(script), "").unwrap_err();
            assert!(err.contains(complaint), "{err}");
        }

        let mut script = greeting(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES);
        reply(&mut script, OPT_GO, REP_ACK, &[]);
        let err = handshake(&mut Scripted::new(script), "").unwrap_err();
        assert!(err.contains("without NBD_INFO_EXPORT"), "{err}");
    }

    #[test]
    fn oldstyle_and_plain_newstyle_servers_are_understood() {
        let mut script = NBDMAGIC.to_be_bytes().to_vec();
        script.extend_from_slice(&OLDSTYLE_MAGIC.to_be_bytes());
        script.extend_from_slice(&4096u64.to_be_bytes());
        script.extend_from_slice(&u32::from(TFLAG_HAS_FLAGS).to_be_bytes());
        script.extend_from_slice(&[0; 124]);
        let info = handshake(&mut Scripted::new(script.clone()), "").expect("oldstyle");
        assert_eq!(info.size, 4096);
        let err = handshake(&mut Scripted::new(script.clone()), "named").unwrap_err();
        assert!(err.contains("oldstyle"), "{err}");
        let listing = query_exports(&mut Scripted::new(script)).expect("oldstyle list");
        assert_eq!(listing.exports.len(), 1);

        // Newstyle without the "fixed" bit: straight to NBD_OPT_EXPORT_NAME.
        let mut script = greeting(FLAG_NO_ZEROES);
        script.extend_from_slice(&512u64.to_be_bytes());
        script.extend_from_slice(&TFLAG_HAS_FLAGS.to_be_bytes());
        let mut server = Scripted::new(script);
        assert_eq!(handshake(&mut server, "x").expect("newstyle").size, 512);
        let mut expected = FLAG_C_NO_ZEROES.to_be_bytes().to_vec();
        expected.extend(option_request(OPT_EXPORT_NAME, b"x"));
        assert_eq!(server.client_sent, expected);
    }

    #[test]
    fn hostile_lengths_and_magics_are_refused() {
        // An option reply claiming 4 GiB of payload.
        let mut script = greeting(FLAG_FIXED_NEWSTYLE);
        put_option_reply(&mut script, OPT_GO, REP_INFO, u32::MAX);
        let err = handshake(&mut Scripted::new(script), "").unwrap_err();
        assert!(err.contains("refusing"), "{err}");

        // A list entry whose name is longer than the entry.
        let mut script = greeting(FLAG_FIXED_NEWSTYLE);
        reply(&mut script, OPT_EXTENDED_HEADERS, REP_ACK, &[]);
        reply(&mut script, OPT_LIST, REP_SERVER, &[0, 0, 0, 9, b'a']);
        let err = query_exports(&mut Scripted::new(script)).unwrap_err();
        assert!(err.contains("malformed NBD_OPT_LIST entry"), "{err}");

        // Replies to the wrong option, with the wrong magic, from a non-server.
        let mut script = greeting(FLAG_FIXED_NEWSTYLE);
        reply(&mut script, OPT_LIST, REP_ACK, &[]);
        let err = handshake(&mut Scripted::new(script), "").unwrap_err();
        assert!(
            err.contains("NBD_OPT_LIST while the reply to NBD_OPT_GO"),
            "{err}"
        );
        let mut script = greeting(FLAG_FIXED_NEWSTYLE);
        script.extend_from_slice(&[0xee; 20]);
        assert!(handshake(&mut Scripted::new(script), "")
            .unwrap_err()
            .contains("bad magic"));
        let err =
            handshake(&mut Scripted::new(b"HTTP/1.1 400 Bad Request".to_vec()), "").unwrap_err();
        assert!(err.contains("not an NBD server"), "{err}");
    }

    /// The full conversation a qemu-style server has with `-L`.
    fn list_script() -> Vec<u8> {
        let mut s = greeting(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES);
        reply(&mut s, OPT_EXTENDED_HEADERS, REP_ERR_UNSUP, b"");
        reply(&mut s, OPT_STRUCTURED_REPLY, REP_ACK, &[]);
        let mut entry = 2u32.to_be_bytes().to_vec();
        entry.extend_from_slice(b"hd");
        entry.extend_from_slice(b"disk one");
        reply(&mut s, OPT_LIST, REP_SERVER, &entry);
        reply(&mut s, OPT_LIST, REP_SERVER, &[0, 0, 0, 2, b'c', b'd']);
        reply(&mut s, OPT_LIST, REP_ACK, &[]);
        let flags = TFLAG_HAS_FLAGS | TFLAG_READ_ONLY | TFLAG_ROTATIONAL | TFLAG_SEND_RESIZE;
        reply(&mut s, OPT_INFO, REP_INFO, &info_export(1 << 30, flags));
        reply(&mut s, OPT_INFO, REP_ACK, &[]);
        let mut context = 7u32.to_be_bytes().to_vec();
        context.extend_from_slice(b"qemu:dirty-bitmap:b");
        reply(&mut s, OPT_LIST_META_CONTEXT, REP_META_CONTEXT, &context);
        reply(&mut s, OPT_LIST_META_CONTEXT, REP_ACK, &[]);
        reply(&mut s, OPT_INFO, REP_ERR_UNSUP, b"");
        reply(&mut s, OPT_ABORT, REP_ACK, &[]);
        s
    }

    #[test]
    fn list_stops_asking_once_info_is_unsupported() {
        let listing = query_exports(&mut Scripted::new(list_script())).expect("listing");
        assert_eq!(
            render(&listing),
            "exports available: 2\n\
             \x20export: 'hd'\n\
             \x20 description: disk one\n\
             \x20 size:  1073741824\n\
             \x20 flags: 0x213 ( readonly rotational resize )\n\
             \x20 transaction size: 32-bit\n\
             \x20 available meta contexts: 1\n\
             \x20  qemu:dirty-bitmap:b\n\
             \x20export: 'cd'\n\
             \x20 transaction size: 32-bit\n"
        );
    }

    #[test]
    fn truncated_conversations_fail_cleanly_at_every_byte() {
        let script = list_script();
        // Everything up to NBD_OPT_ABORT's reply is needed.
        let needed = script.len() - 20;
        for cut in 0..needed {
            let err = query_exports(&mut Scripted::new(script[..cut].to_vec())).unwrap_err();
            assert!(!err.contains('\n'), "{err}");
        }
        assert!(query_exports(&mut Scripted::new(script[..needed].to_vec())).is_ok());

        let mut script = greeting(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES);
        reply(
            &mut script,
            OPT_GO,
            REP_INFO,
            &info_export(1, TFLAG_HAS_FLAGS),
        );
        reply(&mut script, OPT_GO, REP_ACK, &[]);
        for cut in 0..script.len() {
            assert!(handshake(&mut Scripted::new(script[..cut].to_vec()), "").is_err());
        }
        assert!(handshake(&mut Scripted::new(script), "").is_ok());
    }

    #[test]
    fn server_error_text_is_kept_on_one_line() {
        let mut script = greeting(FLAG_FIXED_NEWSTYLE);
        reply(&mut script, OPT_GO, REP_ERR_POLICY, b"go\naway\x1b[31m");
        let err = handshake(&mut Scripted::new(script), "x").unwrap_err();
        assert_eq!(
            err,
            "export 'x': NBD_OPT_GO failed: denied by the server's policy (server said: go away [31m)"
        );
    }
}
