//! The fixed-newstyle handshake, server side: greeting, then options until
//! the client picks the export (NBD_OPT_GO or NBD_OPT_EXPORT_NAME) or leaves.
//! Option payloads are bounded; anything malformed ends only this connection.

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::export::{Export, Exports, MAX_PAYLOAD, MIN_BLOCK, PREFERRED_BLOCK};
use super::proto::*;

/// Largest option payload read and parsed. Longer ones, up to
/// [`MAX_OPTION_DRAIN`], are read and thrown away and refused
/// (NBD_REP_ERR_UNSUP for an option we do not know, NBD_REP_ERR_TOO_BIG
/// for one we do); beyond that the refusal is the last thing sent.
pub const MAX_OPTION_LEN: u32 = 64 * 1024;
/// Most option bytes read and discarded to stay in step with a client.
pub const MAX_OPTION_DRAIN: u32 = 32 << 20;

/// The metadata contexts selected with NBD_OPT_SET_META_CONTEXT.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MetaContexts {
    pub base_allocation: bool,
    /// qemu:allocation-depth (only when the export offers it).
    pub allocation_depth: bool,
}

impl MetaContexts {
    pub fn any(self) -> bool {
        self.base_allocation || self.allocation_depth
    }
}

/// What the client and we agreed on for the transmission phase.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Negotiated {
    pub style: ReplyStyle,
    pub contexts: MetaContexts,
    /// The export picked: its index in [`Exports`].
    pub export: usize,
}

/// Why negotiation ended without a transmission phase.
#[derive(Debug)]
pub enum Refused {
    /// The client left cleanly (NBD_OPT_ABORT, or closed the socket).
    Aborted,
    /// A protocol violation or I/O error; the text says which.
    Failed(String),
}

impl From<std::io::Error> for Refused {
    fn from(e: std::io::Error) -> Self {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            Refused::Aborted
        } else {
            Refused::Failed(e.to_string())
        }
    }
}

/// Where the connection stands with TLS.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Tls {
    /// Not offered: NBD_OPT_STARTTLS is unsupported.
    Off,
    /// Required and not yet started: only NBD_OPT_STARTTLS and NBD_OPT_ABORT are served.
    Required,
    /// Running over TLS.
    Active,
}

#[derive(Clone)]
struct State {
    style: ReplyStyle,
    contexts: MetaContexts,
    /// The export `contexts` were selected for: they hold for it alone
    /// (qemu-nbd drops them when the client then picks another).
    contexts_for: Option<usize>,
    no_zeroes: bool,
    /// The client set NBD_FLAG_C_FIXED_NEWSTYLE; without it only
    /// NBD_OPT_EXPORT_NAME is understood.
    fixed: bool,
    tls: Tls,
}

/// The option phase between the greeting and the transmission phase;
/// carried across the TLS handshake that NBD_OPT_STARTTLS starts.
pub struct OptionPhase {
    state: State,
}

impl OptionPhase {
    /// The TLS handshake after NBD_OPT_STARTTLS succeeded: options continue over it.
    pub fn tls_established(&mut self) {
        self.state.tls = Tls::Active;
    }
}

/// How the option phase ended when it did not fail.
#[derive(Debug)]
pub enum Phase {
    Transmit(Negotiated),
    /// NBD_OPT_STARTTLS was acknowledged: the caller runs the TLS handshake
    /// on the same stream and then continues with [`options`].
    StartTls,
}

/// Negotiation without TLS: greeting, then options until the export is picked.
pub async fn negotiate<S>(stream: &mut S, exports: &Exports) -> Result<Negotiated, Refused>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut phase = greet(stream, false).await?;
    match options(stream, exports, &mut phase).await? {
        Phase::Transmit(n) => Ok(n),
        Phase::StartTls => Err(Refused::Failed("TLS was not offered".into())),
    }
}

/// Sends the greeting and reads the client's flags. With `tls_required`,
/// every option but NBD_OPT_STARTTLS and NBD_OPT_ABORT is refused with
/// NBD_REP_ERR_TLS_REQD until TLS is running (the spec's TLS-only mode).
pub async fn greet<S>(stream: &mut S, tls_required: bool) -> Result<OptionPhase, Refused>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut greeting = Vec::with_capacity(18);
    greeting.extend_from_slice(&NBDMAGIC.to_be_bytes());
    greeting.extend_from_slice(&IHAVEOPT.to_be_bytes());
    greeting.extend_from_slice(&(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES).to_be_bytes());
    stream.write_all(&greeting).await?;

    let client_flags = stream.read_u32().await?;
    if client_flags & !(FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES) != 0 {
        return Err(Refused::Failed(format!(
            "unknown client flags {client_flags:#x}"
        )));
    }
    Ok(OptionPhase {
        state: State {
            style: ReplyStyle::Simple,
            contexts: MetaContexts::default(),
            contexts_for: None,
            no_zeroes: client_flags & FLAG_C_NO_ZEROES != 0,
            fixed: client_flags & FLAG_C_FIXED_NEWSTYLE != 0,
            tls: if tls_required {
                Tls::Required
            } else {
                Tls::Off
            },
        },
    })
}

/// Serves options until the client picks the export, asks for TLS, or leaves.
pub async fn options<S>(
    stream: &mut S,
    exports: &Exports,
    phase: &mut OptionPhase,
) -> Result<Phase, Refused>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let state = &mut phase.state;
    loop {
        let magic = stream.read_u64().await?;
        if magic != IHAVEOPT {
            return Err(Refused::Failed(format!("bad option magic {magic:#x}")));
        }
        let option = stream.read_u32().await?;
        let len = stream.read_u32().await?;
        let mut out = Vec::new();
        let outcome = if len > MAX_OPTION_LEN {
            let outcome = oversized_option(option, len, state, &mut out);
            if matches!(outcome, Next::Continue) {
                discard(stream, len as u64).await?;
            }
            outcome
        } else {
            let mut data = vec![0u8; len as usize];
            stream.read_exact(&mut data).await?;
            handle_option(option, &data, exports, state, &mut out)
        };
        stream.write_all(&out).await?;
        match outcome {
            Next::Continue => {}
            Next::Abort => return Err(Refused::Aborted),
            Next::Fail(why) => return Err(Refused::Failed(why)),
            Next::StartTls => {
                stream.flush().await?;
                return Ok(Phase::StartTls);
            }
            Next::Transmit(export) => {
                stream.flush().await?;
                return Ok(Phase::Transmit(Negotiated {
                    style: state.style,
                    contexts: state.contexts,
                    export,
                }));
            }
        }
    }
}

enum Next {
    Continue,
    /// The transmission phase on the export with this index.
    Transmit(usize),
    StartTls,
    Abort,
    Fail(String),
}

/// Reads and drops `len` bytes in small pieces.
async fn discard<S: AsyncRead + Unpin>(stream: &mut S, len: u64) -> std::io::Result<()> {
    let copied = tokio::io::copy(&mut stream.take(len), &mut tokio::io::sink()).await?;
    if copied < len {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    Ok(())
}

/// Answers an option whose payload is too long to parse: refused, and the
/// connection kept only when the payload is small enough to read past.
fn oversized_option(option: u32, len: u32, state: &State, out: &mut Vec<u8>) -> Next {
    let why = format!("option {option} of {len} bytes is too long");
    if option == OPT_EXPORT_NAME || !state.fixed {
        // Neither can be answered with an error.
        return Next::Fail(why);
    }
    let known = matches!(
        option,
        OPT_ABORT
            | OPT_LIST
            | OPT_STARTTLS
            | OPT_INFO
            | OPT_GO
            | OPT_STRUCTURED_REPLY
            | OPT_LIST_META_CONTEXT
            | OPT_SET_META_CONTEXT
            | OPT_EXTENDED_HEADERS
    );
    if len > MAX_OPTION_DRAIN {
        error_reply(out, option, REP_ERR_TOO_BIG, "option data too long");
        return Next::Fail(why);
    }
    if known {
        error_reply(out, option, REP_ERR_TOO_BIG, "option data too long");
    } else {
        error_reply(out, option, REP_ERR_UNSUP, "option not supported");
    }
    Next::Continue
}

fn error_reply(out: &mut Vec<u8>, option: u32, error: u32, message: &str) {
    put_option_reply(out, option, error, message.len() as u32);
    out.extend_from_slice(message.as_bytes());
}

/// Handles one option: appends the replies to `out`; no I/O.
fn handle_option(
    option: u32,
    data: &[u8],
    exports: &Exports,
    state: &mut State,
    out: &mut Vec<u8>,
) -> Next {
    if !state.fixed && option != OPT_EXPORT_NAME {
        // Plain newstyle knows no option replies: hang up, as qemu-nbd does.
        return Next::Fail(format!(
            "option {option} from a client without fixed newstyle"
        ));
    }
    if state.tls == Tls::Required && !matches!(option, OPT_STARTTLS | OPT_ABORT) {
        if option == OPT_EXPORT_NAME {
            // Its answer cannot be an error: hang up, as the spec says.
            return Next::Fail("NBD_OPT_EXPORT_NAME before TLS".into());
        }
        error_reply(out, option, REP_ERR_TLS_REQD, "TLS is required");
        return Next::Continue;
    }
    match option {
        OPT_EXPORT_NAME => {
            if state.style == ReplyStyle::Extended {
                // Its answer has no way to say so; qemu-nbd hangs up too.
                return Next::Fail("NBD_OPT_EXPORT_NAME after extended headers".into());
            }
            let Some((index, export)) = lookup(exports, data) else {
                return Next::Fail(format!(
                    "client asked for unknown export '{}'",
                    String::from_utf8_lossy(data)
                ));
            };
            state.pick(index);
            out.extend_from_slice(&export.size().to_be_bytes());
            out.extend_from_slice(
                &export
                    .transmission_flags(state.style, state.contexts.any())
                    .to_be_bytes(),
            );
            if !state.no_zeroes {
                out.extend_from_slice(&[0u8; 124]);
            }
            Next::Transmit(index)
        }
        OPT_ABORT => {
            put_option_reply(out, option, REP_ACK, 0);
            Next::Abort
        }
        OPT_LIST => {
            if !data.is_empty() {
                error_reply(out, option, REP_ERR_INVALID, "NBD_OPT_LIST takes no data");
                return Next::Continue;
            }
            // One entry per export, its description as the entry's
            // details (as qemu-nbd sends it).
            for export in exports.all() {
                let name = export.name.as_bytes();
                let desc = export.description.as_deref().unwrap_or("").as_bytes();
                put_option_reply(
                    out,
                    option,
                    REP_SERVER,
                    (4 + name.len() + desc.len()) as u32,
                );
                out.extend_from_slice(&(name.len() as u32).to_be_bytes());
                out.extend_from_slice(name);
                out.extend_from_slice(desc);
            }
            put_option_reply(out, option, REP_ACK, 0);
            Next::Continue
        }
        OPT_INFO | OPT_GO => info_or_go(option, data, exports, state, out),
        OPT_STRUCTURED_REPLY => {
            if !data.is_empty() {
                error_reply(out, option, REP_ERR_INVALID, "option takes no data");
            } else if state.style == ReplyStyle::Extended {
                error_reply(
                    out,
                    option,
                    REP_ERR_EXT_HEADER_REQD,
                    "extended headers already negotiated",
                );
            } else if state.style == ReplyStyle::Structured {
                error_reply(
                    out,
                    option,
                    REP_ERR_INVALID,
                    "structured replies already negotiated",
                );
            } else {
                state.style = ReplyStyle::Structured;
                put_option_reply(out, option, REP_ACK, 0);
            }
            Next::Continue
        }
        OPT_EXTENDED_HEADERS => {
            if !data.is_empty() {
                error_reply(out, option, REP_ERR_INVALID, "option takes no data");
            } else if state.style == ReplyStyle::Extended {
                error_reply(
                    out,
                    option,
                    REP_ERR_INVALID,
                    "extended headers already negotiated",
                );
            } else {
                state.style = ReplyStyle::Extended;
                put_option_reply(out, option, REP_ACK, 0);
            }
            Next::Continue
        }
        OPT_LIST_META_CONTEXT | OPT_SET_META_CONTEXT => {
            meta_context(option, data, exports, state, out);
            Next::Continue
        }
        OPT_STARTTLS => match state.tls {
            Tls::Off => {
                error_reply(out, option, REP_ERR_UNSUP, "TLS is not configured");
                Next::Continue
            }
            Tls::Active => {
                error_reply(out, option, REP_ERR_INVALID, "TLS is already running");
                Next::Continue
            }
            Tls::Required if !data.is_empty() => {
                error_reply(
                    out,
                    option,
                    REP_ERR_INVALID,
                    "NBD_OPT_STARTTLS takes no data",
                );
                Next::Continue
            }
            Tls::Required => {
                put_option_reply(out, option, REP_ACK, 0);
                Next::StartTls
            }
        },
        _ => {
            error_reply(out, option, REP_ERR_UNSUP, "option not supported");
            Next::Continue
        }
    }
}

impl State {
    /// The client picked export `index`: contexts selected for another
    /// export do not carry over.
    fn pick(&mut self, index: usize) {
        if self.contexts_for != Some(index) {
            self.contexts = MetaContexts::default();
        }
    }

    /// The contexts that hold for export `index`.
    fn contexts_of(&self, index: usize) -> MetaContexts {
        if self.contexts_for == Some(index) {
            self.contexts
        } else {
            MetaContexts::default()
        }
    }
}

/// The export a client's name means, with its index.
fn lookup<'a>(exports: &'a Exports, name: &[u8]) -> Option<(usize, &'a Export)> {
    let index = exports.find(name)?;
    exports.get(index).map(|e| (index, &**e))
}

fn info_or_go(
    option: u32,
    data: &[u8],
    exports: &Exports,
    state: &mut State,
    out: &mut Vec<u8>,
) -> Next {
    let mut r = Reader::new(data);
    let parsed = (|| {
        let name = r.string32()?;
        let count = r.u16()? as usize;
        let mut requests = Vec::with_capacity(count.min(16));
        for _ in 0..count {
            requests.push(r.u16()?);
        }
        (r.remaining() == 0).then_some((name, requests))
    })();
    let Some((name, requests)) = parsed else {
        error_reply(out, option, REP_ERR_INVALID, "malformed NBD_OPT_INFO/GO");
        return Next::Continue;
    };
    let Some((index, export)) = lookup(exports, name) else {
        error_reply(out, option, REP_ERR_UNKNOWN, "export not found");
        return Next::Continue;
    };
    if requests.contains(&INFO_NAME) {
        let n = export.name.as_bytes();
        put_option_reply(out, option, REP_INFO, 2 + n.len() as u32);
        out.extend_from_slice(&INFO_NAME.to_be_bytes());
        out.extend_from_slice(n);
    }
    if let (true, Some(desc)) = (requests.contains(&INFO_DESCRIPTION), &export.description) {
        put_option_reply(out, option, REP_INFO, 2 + desc.len() as u32);
        out.extend_from_slice(&INFO_DESCRIPTION.to_be_bytes());
        out.extend_from_slice(desc.as_bytes());
    }
    put_option_reply(out, option, REP_INFO, 14);
    out.extend_from_slice(&INFO_BLOCK_SIZE.to_be_bytes());
    out.extend_from_slice(&MIN_BLOCK.to_be_bytes());
    out.extend_from_slice(&PREFERRED_BLOCK.to_be_bytes());
    out.extend_from_slice(&MAX_PAYLOAD.to_be_bytes());
    put_option_reply(out, option, REP_INFO, 12);
    out.extend_from_slice(&INFO_EXPORT.to_be_bytes());
    out.extend_from_slice(&export.size().to_be_bytes());
    out.extend_from_slice(
        &export
            .transmission_flags(state.style, state.contexts_of(index).any())
            .to_be_bytes(),
    );
    put_option_reply(out, option, REP_ACK, 0);
    if option == OPT_GO {
        state.pick(index);
        Next::Transmit(index)
    } else {
        Next::Continue
    }
}

/// Every metadata context we know, with the id a selection gets.
const CONTEXTS: [(&str, u32); 2] = [
    (BASE_ALLOCATION, BASE_ALLOCATION_ID),
    (ALLOCATION_DEPTH, ALLOCATION_DEPTH_ID),
];

impl MetaContexts {
    /// Whether `export` offers the context with this id.
    fn offered(export: &Export, id: u32) -> bool {
        match id {
            BASE_ALLOCATION_ID => true,
            ALLOCATION_DEPTH_ID => export.allocation_depth,
            _ => false,
        }
    }

    fn select(&mut self, id: u32) {
        match id {
            BASE_ALLOCATION_ID => self.base_allocation = true,
            ALLOCATION_DEPTH_ID => self.allocation_depth = true,
            _ => {}
        }
    }
}

/// Whether a query names `context`: exactly, or (listing) by its
/// namespace ("base:") or by nothing at all.
fn query_names(query: &[u8], context: &str, listing: bool) -> bool {
    if query == context.as_bytes() {
        return true;
    }
    let namespace = context.split_once(':').map_or(context, |(ns, _)| ns);
    listing && (query.is_empty() || query.strip_suffix(b":") == Some(namespace.as_bytes()))
}

fn meta_context(option: u32, data: &[u8], exports: &Exports, state: &mut State, out: &mut Vec<u8>) {
    if state.style == ReplyStyle::Simple {
        error_reply(
            out,
            option,
            REP_ERR_INVALID,
            "negotiate structured replies first",
        );
        return;
    }
    let mut r = Reader::new(data);
    let parsed = (|| {
        let name = r.string32()?;
        let count = r.u32()?;
        let mut queries = Vec::new();
        for _ in 0..count {
            queries.push(r.string32()?);
        }
        (r.remaining() == 0).then_some((name, queries))
    })();
    let Some((name, queries)) = parsed else {
        error_reply(
            out,
            option,
            REP_ERR_INVALID,
            "malformed meta context request",
        );
        return;
    };
    // The contexts are those of the export this option names.
    let Some((index, export)) = lookup(exports, name) else {
        error_reply(out, option, REP_ERR_UNKNOWN, "export not found");
        return;
    };
    let listing = option == OPT_LIST_META_CONTEXT;
    let mut selected = MetaContexts::default();
    for (context, id) in CONTEXTS {
        let wanted = (listing && queries.is_empty())
            || queries.iter().any(|q| query_names(q, context, listing));
        if !wanted || !MetaContexts::offered(export, id) {
            continue;
        }
        selected.select(id);
        let id = if listing { 0 } else { id };
        put_option_reply(out, option, REP_META_CONTEXT, 4 + context.len() as u32);
        out.extend_from_slice(&id.to_be_bytes());
        out.extend_from_slice(context.as_bytes());
    }
    if option == OPT_SET_META_CONTEXT {
        state.contexts = selected;
        state.contexts_for = Some(index);
    }
    put_option_reply(out, option, REP_ACK, 0);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nbd::backend::testing::Zeroes;
    use std::sync::Arc;

    fn disk() -> Export {
        Export {
            name: "disk".into(),
            description: Some("a disk".into()),
            backend: Arc::new(Zeroes(12345)),
            read_only: false,
            multi_conn: true,
            rotational: false,
            allocation_depth: false,
        }
    }

    fn export() -> Exports {
        Exports::single(disk())
    }

    fn state() -> State {
        State {
            style: ReplyStyle::Simple,
            contexts: MetaContexts::default(),
            contexts_for: None,
            no_zeroes: true,
            fixed: true,
            tls: Tls::Off,
        }
    }

    fn reply_types(out: &[u8]) -> Vec<u32> {
        let mut types = Vec::new();
        let mut r = Reader::new(out);
        while r.remaining() > 0 {
            assert_eq!(r.u64(), Some(OPTION_REPLY_MAGIC));
            r.u32();
            types.push(r.u32().unwrap());
            let len = r.u32().unwrap() as usize;
            r.bytes(len).unwrap();
        }
        types
    }

    fn go_request(name: &[u8], infos: &[u16]) -> Vec<u8> {
        let mut d = (name.len() as u32).to_be_bytes().to_vec();
        d.extend_from_slice(name);
        d.extend_from_slice(&(infos.len() as u16).to_be_bytes());
        for i in infos {
            d.extend_from_slice(&i.to_be_bytes());
        }
        d
    }

    /// Three exports: "disk" (the default), "b" with allocation depth, "c".
    fn three(empty_is_default: bool) -> Exports {
        let named = |name: &str, depth: bool| {
            Arc::new(Export {
                name: name.into(),
                description: Some(format!("export {name}")),
                allocation_depth: depth,
                ..disk()
            })
        };
        Exports::new(
            vec![named("disk", false), named("b", true), named("c", false)],
            empty_is_default,
        )
    }

    fn meta_request(name: &[u8], queries: &[&[u8]]) -> Vec<u8> {
        let mut d = (name.len() as u32).to_be_bytes().to_vec();
        d.extend_from_slice(name);
        d.extend_from_slice(&(queries.len() as u32).to_be_bytes());
        for q in queries {
            d.extend_from_slice(&(q.len() as u32).to_be_bytes());
            d.extend_from_slice(q);
        }
        d
    }

    /// (reply type, data) of each reply in `out`.
    fn replies(out: &[u8]) -> Vec<(u32, Vec<u8>)> {
        let mut all = Vec::new();
        let mut r = Reader::new(out);
        while r.remaining() > 0 {
            r.u64();
            r.u32();
            let kind = r.u32().unwrap();
            let len = r.u32().unwrap() as usize;
            all.push((kind, r.bytes(len).unwrap().to_vec()));
        }
        all
    }

    #[test]
    fn list_names_every_export_with_its_description() {
        let mut out = Vec::new();
        handle_option(OPT_LIST, &[], &three(true), &mut state(), &mut out);
        let got = replies(&out);
        assert_eq!(got.len(), 4);
        let mut b = 1u32.to_be_bytes().to_vec();
        b.extend_from_slice(b"bexport b");
        assert_eq!(got[1], (REP_SERVER, b));
        assert_eq!(got[3].0, REP_ACK);
    }

    #[test]
    fn go_and_export_name_pick_the_export_by_name() {
        let exports = three(true);
        for (name, index) in [(&b"disk"[..], 0), (b"b", 1), (b"c", 2), (b"", 0)] {
            let mut out = Vec::new();
            let next = handle_option(
                OPT_GO,
                &go_request(name, &[INFO_DESCRIPTION]),
                &exports,
                &mut state(),
                &mut out,
            );
            assert!(matches!(next, Next::Transmit(i) if i == index), "{name:?}");
            let desc = replies(&out)
                .into_iter()
                .find(|(k, d)| *k == REP_INFO && d[..2] == INFO_DESCRIPTION.to_be_bytes())
                .unwrap();
            let want = format!("export {}", ["disk", "b", "c"][index]);
            assert_eq!(&desc.1[2..], want.as_bytes());
            let mut out = Vec::new();
            let next = handle_option(OPT_EXPORT_NAME, name, &exports, &mut state(), &mut out);
            assert!(matches!(next, Next::Transmit(i) if i == index));
        }
        let mut out = Vec::new();
        let next = handle_option(
            OPT_INFO,
            &go_request(b"nope", &[]),
            &exports,
            &mut state(),
            &mut out,
        );
        assert!(matches!(next, Next::Continue));
        assert_eq!(reply_types(&out), vec![REP_ERR_UNKNOWN]);
        // Without --export the empty name is only an export's own name.
        let mut out = Vec::new();
        handle_option(
            OPT_GO,
            &go_request(b"", &[]),
            &three(false),
            &mut state(),
            &mut out,
        );
        assert_eq!(reply_types(&out), vec![REP_ERR_UNKNOWN]);
    }

    #[test]
    fn meta_contexts_are_those_of_the_export_named() {
        let exports = three(true);
        let mut st = state();
        st.style = ReplyStyle::Structured;
        let contexts = |out: &[u8]| -> Vec<(u32, String)> {
            replies(out)
                .into_iter()
                .filter(|(k, _)| *k == REP_META_CONTEXT)
                .map(|(_, d)| {
                    let id = u32::from_be_bytes(d[..4].try_into().unwrap());
                    (id, String::from_utf8_lossy(&d[4..]).into_owned())
                })
                .collect()
        };
        // Listing everything: "b" offers the depth, "disk" does not.
        let mut out = Vec::new();
        handle_option(
            OPT_LIST_META_CONTEXT,
            &meta_request(b"b", &[]),
            &exports,
            &mut st,
            &mut out,
        );
        assert_eq!(
            contexts(&out),
            [(0, BASE_ALLOCATION.into()), (0, ALLOCATION_DEPTH.into())]
        );
        let mut out = Vec::new();
        handle_option(
            OPT_LIST_META_CONTEXT,
            &meta_request(b"disk", &[]),
            &exports,
            &mut st,
            &mut out,
        );
        assert_eq!(contexts(&out), [(0, BASE_ALLOCATION.into())]);
        let mut out = Vec::new();
        handle_option(
            OPT_LIST_META_CONTEXT,
            &meta_request(b"b", &[b"qemu:"]),
            &exports,
            &mut st,
            &mut out,
        );
        assert_eq!(contexts(&out), [(0, ALLOCATION_DEPTH.into())]);
        let mut out = Vec::new();
        handle_option(
            OPT_SET_META_CONTEXT,
            &meta_request(b"nope", &[]),
            &exports,
            &mut st,
            &mut out,
        );
        assert_eq!(reply_types(&out), vec![REP_ERR_UNKNOWN]);
        // Selecting both on "b", then going to "b", keeps both.
        let both: [&[u8]; 2] = [BASE_ALLOCATION.as_bytes(), ALLOCATION_DEPTH.as_bytes()];
        let mut out = Vec::new();
        handle_option(
            OPT_SET_META_CONTEXT,
            &meta_request(b"b", &both),
            &exports,
            &mut st,
            &mut out,
        );
        assert_eq!(
            contexts(&out),
            [
                (BASE_ALLOCATION_ID, BASE_ALLOCATION.into()),
                (ALLOCATION_DEPTH_ID, ALLOCATION_DEPTH.into())
            ]
        );
        let mut go_b = st.clone();
        let mut out = Vec::new();
        handle_option(
            OPT_GO,
            &go_request(b"b", &[]),
            &exports,
            &mut go_b,
            &mut out,
        );
        assert!(go_b.contexts.base_allocation && go_b.contexts.allocation_depth);
        // ...while going to another export drops them (as qemu-nbd does).
        let mut out = Vec::new();
        handle_option(OPT_GO, &go_request(b"c", &[]), &exports, &mut st, &mut out);
        assert_eq!(st.contexts, MetaContexts::default());
        // "disk" cannot be given the depth it does not offer.
        let mut st = state();
        st.style = ReplyStyle::Structured;
        let mut out = Vec::new();
        handle_option(
            OPT_SET_META_CONTEXT,
            &meta_request(b"disk", &both),
            &exports,
            &mut st,
            &mut out,
        );
        assert_eq!(
            contexts(&out),
            [(BASE_ALLOCATION_ID, BASE_ALLOCATION.into())]
        );
        assert!(!st.contexts.allocation_depth);
    }

    #[test]
    fn go_answers_block_size_and_export_then_acks() {
        let mut out = Vec::new();
        let mut st = state();
        let next = handle_option(
            OPT_GO,
            &go_request(b"disk", &[INFO_NAME, INFO_DESCRIPTION]),
            &export(),
            &mut st,
            &mut out,
        );
        assert!(matches!(next, Next::Transmit(0)));
        assert_eq!(
            reply_types(&out),
            vec![REP_INFO, REP_INFO, REP_INFO, REP_INFO, REP_ACK]
        );
    }

    #[test]
    fn unknown_export_and_malformed_go_are_errors_not_crashes() {
        let mut out = Vec::new();
        let mut st = state();
        let next = handle_option(
            OPT_GO,
            &go_request(b"nope", &[]),
            &export(),
            &mut st,
            &mut out,
        );
        assert!(matches!(next, Next::Continue));
        assert_eq!(reply_types(&out), vec![REP_ERR_UNKNOWN]);
        for cut in 0..7 {
            let mut out = Vec::new();
            let req = go_request(b"disk", &[1]);
            handle_option(OPT_GO, &req[..cut], &export(), &mut st, &mut out);
            assert_eq!(reply_types(&out), vec![REP_ERR_INVALID]);
        }
    }

    #[test]
    fn meta_context_needs_structured_replies_and_selects_base_allocation() {
        let mut req = 4u32.to_be_bytes().to_vec();
        req.extend_from_slice(b"disk");
        req.extend_from_slice(&1u32.to_be_bytes());
        req.extend_from_slice(&(BASE_ALLOCATION.len() as u32).to_be_bytes());
        req.extend_from_slice(BASE_ALLOCATION.as_bytes());
        let mut st = state();
        let mut out = Vec::new();
        handle_option(OPT_SET_META_CONTEXT, &req, &export(), &mut st, &mut out);
        assert_eq!(reply_types(&out), vec![REP_ERR_INVALID]);
        let mut out = Vec::new();
        handle_option(OPT_STRUCTURED_REPLY, &[], &export(), &mut st, &mut out);
        let mut out = Vec::new();
        handle_option(OPT_SET_META_CONTEXT, &req, &export(), &mut st, &mut out);
        assert_eq!(reply_types(&out), vec![REP_META_CONTEXT, REP_ACK]);
        assert!(st.contexts.base_allocation);
        assert!(!st.contexts.allocation_depth);
    }

    #[test]
    fn reply_style_options_follow_the_spec_once_each() {
        let mut st = state();
        let mut out = Vec::new();
        handle_option(OPT_EXTENDED_HEADERS, &[], &export(), &mut st, &mut out);
        handle_option(OPT_STRUCTURED_REPLY, &[], &export(), &mut st, &mut out);
        handle_option(OPT_EXTENDED_HEADERS, &[], &export(), &mut st, &mut out);
        assert_eq!(
            reply_types(&out),
            vec![REP_ACK, REP_ERR_EXT_HEADER_REQD, REP_ERR_INVALID]
        );
        assert_eq!(st.style, ReplyStyle::Extended);
        let mut st = state();
        let mut out = Vec::new();
        handle_option(OPT_STRUCTURED_REPLY, &[], &export(), &mut st, &mut out);
        handle_option(OPT_STRUCTURED_REPLY, &[], &export(), &mut st, &mut out);
        handle_option(OPT_EXTENDED_HEADERS, &[], &export(), &mut st, &mut out);
        assert_eq!(reply_types(&out), vec![REP_ACK, REP_ERR_INVALID, REP_ACK]);
        assert_eq!(st.style, ReplyStyle::Extended);
    }

    #[test]
    fn export_name_after_extended_headers_is_refused() {
        let mut st = state();
        let mut out = Vec::new();
        handle_option(OPT_EXTENDED_HEADERS, &[], &export(), &mut st, &mut out);
        let mut out = Vec::new();
        let next = handle_option(OPT_EXPORT_NAME, b"disk", &export(), &mut st, &mut out);
        assert!(matches!(next, Next::Fail(_)));
        assert!(out.is_empty());
    }

    #[test]
    fn block_status_payload_is_advertised_only_with_extended_headers_and_a_context() {
        let e = disk();
        assert_eq!(
            e.transmission_flags(ReplyStyle::Structured, true) & TFLAG_BLOCK_STATUS_PAYLOAD,
            0
        );
        assert_eq!(
            e.transmission_flags(ReplyStyle::Extended, false) & TFLAG_BLOCK_STATUS_PAYLOAD,
            0
        );
        assert_ne!(
            e.transmission_flags(ReplyStyle::Extended, true) & TFLAG_BLOCK_STATUS_PAYLOAD,
            0
        );
    }

    #[test]
    fn plain_newstyle_gets_export_name_and_nothing_else() {
        let mut st = state();
        st.fixed = false;
        let mut out = Vec::new();
        let next = handle_option(
            OPT_GO,
            &go_request(b"disk", &[]),
            &export(),
            &mut st,
            &mut out,
        );
        assert!(matches!(next, Next::Fail(_)));
        assert!(out.is_empty());
        let next = handle_option(OPT_EXPORT_NAME, b"disk", &export(), &mut st, &mut out);
        assert!(matches!(next, Next::Transmit(0)));
        assert_eq!(out.len(), 10);
    }

    #[test]
    fn only_the_configured_name_is_the_export() {
        let mut st = state();
        let mut out = Vec::new();
        handle_option(OPT_GO, &go_request(b"", &[]), &export(), &mut st, &mut out);
        assert_eq!(reply_types(&out), vec![REP_ERR_UNKNOWN]);
        let next = handle_option(OPT_EXPORT_NAME, b"", &export(), &mut st, &mut out);
        assert!(matches!(next, Next::Fail(_)));
        let mut unnamed = disk();
        unnamed.name = String::new();
        assert!(unnamed.matches(b""));
        assert!(!unnamed.matches(b"disk"));
    }

    #[test]
    fn oversized_options_are_refused_and_skipped_within_the_drain_limit() {
        let st = state();
        let mut out = Vec::new();
        let next = oversized_option(99, 1 << 20, &st, &mut out);
        assert!(matches!(next, Next::Continue));
        assert_eq!(reply_types(&out), vec![REP_ERR_UNSUP]);
        let mut out = Vec::new();
        let next = oversized_option(OPT_GO, 1 << 20, &st, &mut out);
        assert!(matches!(next, Next::Continue));
        assert_eq!(reply_types(&out), vec![REP_ERR_TOO_BIG]);
        let mut out = Vec::new();
        let next = oversized_option(99, MAX_OPTION_DRAIN + 1, &st, &mut out);
        assert!(matches!(next, Next::Fail(_)));
        assert_eq!(reply_types(&out), vec![REP_ERR_TOO_BIG]);
        let mut out = Vec::new();
        let next = oversized_option(OPT_EXPORT_NAME, 1 << 20, &st, &mut out);
        assert!(matches!(next, Next::Fail(_)));
        assert!(out.is_empty());
    }

    #[test]
    fn unknown_options_are_unsupported() {
        let mut st = state();
        let mut out = Vec::new();
        handle_option(99, &[1, 2, 3], &export(), &mut st, &mut out);
        assert_eq!(reply_types(&out), vec![REP_ERR_UNSUP]);
    }

    #[test]
    fn multi_conn_and_read_only_flags_are_truthful() {
        let mut e = disk();
        assert_ne!(
            e.transmission_flags(ReplyStyle::Simple, false) & TFLAG_CAN_MULTI_CONN,
            0
        );
        e.read_only = true;
        e.multi_conn = false;
        let f = e.transmission_flags(ReplyStyle::Structured, true);
        assert_ne!(f & TFLAG_READ_ONLY, 0);
        assert_eq!(
            f & (TFLAG_SEND_TRIM | TFLAG_SEND_WRITE_ZEROES | TFLAG_CAN_MULTI_CONN),
            0
        );
        assert_ne!(f & TFLAG_SEND_DF, 0);
    }

    #[test]
    fn tls_required_refuses_every_option_but_starttls_and_abort() {
        let mut st = state();
        st.tls = Tls::Required;
        let mut out = Vec::new();
        for option in [
            OPT_LIST,
            OPT_STRUCTURED_REPLY,
            OPT_EXTENDED_HEADERS,
            OPT_LIST_META_CONTEXT,
            99,
        ] {
            let next = handle_option(option, &[], &export(), &mut st, &mut out);
            assert!(matches!(next, Next::Continue));
        }
        for option in [OPT_INFO, OPT_GO] {
            let next = handle_option(
                option,
                &go_request(b"disk", &[]),
                &export(),
                &mut st,
                &mut out,
            );
            assert!(matches!(next, Next::Continue));
        }
        assert_eq!(reply_types(&out), vec![REP_ERR_TLS_REQD; 7]);
        assert_eq!(st.style, ReplyStyle::Simple);
        let mut out = Vec::new();
        let next = handle_option(OPT_EXPORT_NAME, b"disk", &export(), &mut st, &mut out);
        assert!(matches!(next, Next::Fail(_)));
        assert!(out.is_empty(), "no export data before TLS");
        let next = handle_option(OPT_ABORT, &[], &export(), &mut st, &mut out);
        assert!(matches!(next, Next::Abort));
    }

    #[test]
    fn starttls_once_with_no_data_then_options_are_served() {
        let mut st = state();
        st.tls = Tls::Required;
        let mut out = Vec::new();
        let next = handle_option(OPT_STARTTLS, &[0], &export(), &mut st, &mut out);
        assert!(matches!(next, Next::Continue));
        let next = handle_option(OPT_STARTTLS, &[], &export(), &mut st, &mut out);
        assert!(matches!(next, Next::StartTls));
        assert_eq!(reply_types(&out), vec![REP_ERR_INVALID, REP_ACK]);
        st.tls = Tls::Active;
        let mut out = Vec::new();
        let next = handle_option(OPT_STARTTLS, &[], &export(), &mut st, &mut out);
        assert!(matches!(next, Next::Continue));
        let next = handle_option(
            OPT_GO,
            &go_request(b"disk", &[]),
            &export(),
            &mut st,
            &mut out,
        );
        assert!(matches!(next, Next::Transmit(0)));
        assert_eq!(reply_types(&out)[0], REP_ERR_INVALID);
        assert_eq!(*reply_types(&out).last().unwrap(), REP_ACK);
    }

    #[test]
    fn starttls_without_credentials_is_unsupported() {
        let mut st = state();
        let mut out = Vec::new();
        let next = handle_option(OPT_STARTTLS, &[], &export(), &mut st, &mut out);
        assert!(matches!(next, Next::Continue));
        assert_eq!(reply_types(&out), vec![REP_ERR_UNSUP]);
    }
}
