//! The transmission phase of one connection.
//!
//! One task reads requests in batches: whatever the socket has is parsed at
//! once, each request is checked against the export, and served in place
//! when that cannot wait for the disk (cached reads and writes use
//! RWF_NOWAIT); the rest goes to blocking threads and completes out of
//! order. Replies of a batch travel as one buffer to a writer task that
//! gathers whatever is ready into one vectored write, so a queue-depth-32
//! client costs a few syscalls per 32 requests. Memory in flight is bounded
//! by a byte budget; replies never interleave.

use std::io::{self, IoSlice};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};

use super::backend::{is_would_block, Backend, Extent};
use super::export::{Export, MAX_PAYLOAD};
use super::negotiate::{MetaContexts, Negotiated};
use super::proto::*;
use crate::service::Shutdown;

/// Bytes of request and reply data a connection may hold in flight.
const INFLIGHT_BUDGET: usize = 64 << 20;
/// Budget unit: a permit per this many bytes (plus one per request).
const PERMIT_UNIT: usize = 4096;
/// An oversized WRITE payload up to this is read and dropped to stay in
/// sync; beyond it the connection is closed.
const MAX_DRAIN: u64 = 256 << 20;
/// Most extents in one block-status reply.
const MAX_STATUS_EXTENTS: usize = 1024;
/// Reads at least this long on a structured connection are checked for
/// holes and answered with OFFSET_HOLE chunks.
const SPARSE_READ_MIN: u64 = 64 * 1024;
const INPUT_BUFFER: usize = 256 * 1024;
/// Most blocking threads one batch's deferred requests are spread over.
const MAX_BLOCKING_GROUPS: usize = 8;
/// Deferred requests faster than this on average (page-cache writes) run as
/// one group: a single thread hop serves them best. Slower ones (the disk)
/// are spread so their waits overlap.
const FAST_BLOCKING_NS: u64 = 50_000;
/// Most replies gathered into one vectored write.
const MAX_GATHER: usize = 64;

struct Reply {
    buf: Vec<u8>,
    _permit: Option<OwnedSemaphorePermit>,
}

type ReplySender = mpsc::UnboundedSender<Reply>;

/// What a connection knows while serving requests.
struct Session {
    export: Arc<Export>,
    style: ReplyStyle,
    /// The metadata contexts BLOCK_STATUS may report.
    contexts: MetaContexts,
    /// Moving average of the time one deferred request takes, in ns.
    blocking_ns: AtomicU64,
    buffers: BufferPool,
}

/// Reply buffers come back here once written, so large reads reuse warm
/// memory instead of faulting in fresh pages for every reply.
#[derive(Default)]
struct BufferPool(std::sync::Mutex<Vec<Vec<u8>>>);

/// Buffers kept for reuse, and the largest one worth keeping.
const POOLED_BUFFERS: usize = 16;
const POOLED_MAX: usize = 40 << 20;
/// A batch buffer this full is sent at once rather than grown further.
const BATCH_FLUSH: usize = 256 * 1024;

impl BufferPool {
    fn get(&self) -> Vec<u8> {
        let mut pool = self.0.lock().unwrap_or_else(|e| e.into_inner());
        pool.pop().unwrap_or_default()
    }

    /// A buffer for about `bytes` of replies: the smallest pooled one that
    /// holds them, else the largest, so big reads land in warm memory
    /// rather than fresh pages faulted in (and zeroed) by the kernel.
    fn get_for(&self, bytes: usize) -> Vec<u8> {
        let mut pool = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let fits = (0..pool.len())
            .filter(|&i| pool[i].capacity() >= bytes)
            .min_by_key(|&i| pool[i].capacity());
        let pick = fits.or_else(|| (0..pool.len()).max_by_key(|&i| pool[i].capacity()));
        let mut buf = pick.map(|i| pool.swap_remove(i)).unwrap_or_default();
        drop(pool);
        buf.reserve(bytes);
        buf
    }

    fn put(&self, mut buf: Vec<u8>) {
        if buf.capacity() == 0 || buf.capacity() > POOLED_MAX {
            return;
        }
        buf.clear();
        let mut pool = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if pool.len() < POOLED_BUFFERS {
            pool.push(buf);
        }
    }
}

impl Session {
    fn note_blocking_time(&self, ns: u64) {
        let old = self.blocking_ns.load(Ordering::Relaxed);
        self.blocking_ns
            .store(old - old / 8 + ns / 8, Ordering::Relaxed);
    }
}

/// Serves requests until the client disconnects, breaks the protocol, or
/// shutdown is requested; in-flight requests are always answered first.
pub async fn serve<R, W>(
    mut reader: R,
    writer: W,
    negotiated: Negotiated,
    export: Arc<Export>,
    mut shutdown: Shutdown,
) -> io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let session = Arc::new(Session {
        export,
        style: negotiated.style,
        // Block status answers are chunks: never on a simple-reply
        // connection, whatever negotiation claimed.
        contexts: if negotiated.style == ReplyStyle::Simple {
            MetaContexts::default()
        } else {
            negotiated.contexts
        },
        blocking_ns: AtomicU64::new(0),
        buffers: BufferPool::default(),
    });
    let (tx, rx) = mpsc::unbounded_channel();
    let writer_task = tokio::spawn(write_replies(writer, rx, session.clone()));
    let budget = Arc::new(Semaphore::new(INFLIGHT_BUDGET / PERMIT_UNIT));
    let hdr_len = request_len(session.style == ReplyStyle::Extended);

    let mut input = InputBuffer::new();
    let mut batch = Batch::default();
    let extended = session.style == ReplyStyle::Extended;
    // Bytes of an oversized payload still to be read past, and the error
    // to send once they are: a reply before the client has finished
    // sending would answer a request it does not consider sent yet.
    let mut discard: u64 = 0;
    let mut after_discard: Option<(Request, u32, &'static str)> = None;
    let mut result = Ok(());
    'conn: loop {
        // Serve every complete request already buffered.
        loop {
            if discard > 0 {
                let n = (input.len() as u64).min(discard);
                input.consume(n as usize);
                discard -= n;
                if discard > 0 {
                    break;
                }
            }
            if let Some((req, errno, msg)) = after_discard.take() {
                put_error_reply(
                    &mut batch.buf,
                    session.style,
                    req.cookie,
                    req.offset,
                    errno,
                    msg,
                );
            }
            if input.len() < hdr_len {
                break;
            }
            let req = match decode_request(&input.data()[..hdr_len], extended) {
                Ok(req) => req,
                Err(RequestError::BadMagic(m)) => {
                    result = Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("bad request magic {m:#x}"),
                    ));
                    break 'conn;
                }
            };
            let payload_len = payload_len(&req, extended);
            if payload_len > MAX_PAYLOAD as u64 {
                if payload_len > MAX_DRAIN {
                    result = Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("request payload of {payload_len} bytes"),
                    ));
                    break 'conn;
                }
                input.consume(hdr_len);
                discard = payload_len;
                after_discard = Some(if req.kind == CMD_WRITE {
                    (req, EOVERFLOW, "write payload too large")
                } else {
                    (req, EINVAL, "request payload too large")
                });
                continue;
            }
            let needed = hdr_len + payload_len as usize;
            if input.len() < needed {
                input.reserve_total(needed);
                break;
            }
            let cost = 1 + (req.length.min(MAX_PAYLOAD as u64) as usize) / PERMIT_UNIT;
            let permit = match budget.clone().try_acquire_many_owned(cost as u32) {
                Ok(p) => p,
                Err(_) => {
                    // Send what we hold (it returns budget as it is written), then wait.
                    batch.send(&tx, &session);
                    match budget.clone().acquire_many_owned(cost as u32).await {
                        Ok(p) => p,
                        Err(_) => break 'conn,
                    }
                }
            };
            if req.kind == CMD_DISC {
                input.consume(hdr_len);
                break 'conn;
            }
            let payload = &input.data()[hdr_len..needed];
            handle(&session, &req, payload, &mut batch, permit);
            input.consume(needed);
            if batch.buf.len() >= BATCH_FLUSH {
                batch.send(&tx, &session);
                // Let the writer start on it while the rest is read: the
                // client gets data sooner and both ends stay busy.
                tokio::task::yield_now().await;
            }
        }
        batch.send(&tx, &session);

        input.make_room();
        tokio::select! {
            read = reader.read(input.spare()) => match read {
                Ok(0) => break,
                Ok(n) => input.filled(n),
                Err(e) => { result = Err(e); break; }
            },
            _ = shutdown.requested() => break,
            _ = tx.closed() => break,
        }
    }
    batch.send(&tx, &session);
    drop(tx);
    // The writer ends once every offloaded request has replied.
    let written = writer_task.await.unwrap_or(Ok(()));
    result.and(written)
}

/// A request that may wait on the disk, with its WRITE payload.
struct Deferred {
    req: Request,
    payload: Vec<u8>,
    permit: OwnedSemaphorePermit,
}

/// Replies gathered while parsing one read's worth of requests, and the
/// requests of that batch that must go to blocking threads.
#[derive(Default)]
struct Batch {
    buf: Vec<u8>,
    permit: Option<OwnedSemaphorePermit>,
    deferred: Vec<Deferred>,
}

impl Batch {
    fn add_permit(&mut self, permit: OwnedSemaphorePermit) {
        match &mut self.permit {
            Some(p) => p.merge(permit),
            None => self.permit = Some(permit),
        }
    }

    /// Sends the replies made in place and hands deferred requests to
    /// blocking threads in a few groups: a thread hop per group, not per
    /// request, while groups still overlap their waits on the disk.
    fn send(&mut self, tx: &ReplySender, session: &Arc<Session>) {
        if self.buf.is_empty() {
            self.permit = None;
        } else {
            let next = session.buffers.get();
            let _ = tx.send(Reply {
                buf: std::mem::replace(&mut self.buf, next),
                _permit: self.permit.take(),
            });
        }
        let n = self.deferred.len();
        if n == 0 {
            return;
        }
        let groups = if session.blocking_ns.load(Ordering::Relaxed) < FAST_BLOCKING_NS {
            1
        } else {
            n.min(MAX_BLOCKING_GROUPS)
        };
        let group = n.div_ceil(groups);
        let mut rest = std::mem::take(&mut self.deferred);
        while !rest.is_empty() {
            let tail = rest.split_off(group.min(rest.len()));
            let jobs = std::mem::replace(&mut rest, tail);
            let session = session.clone();
            let tx = tx.clone();
            tokio::task::spawn_blocking(move || {
                let started = Instant::now();
                let count = jobs.len() as u64;
                let reply_bytes: u64 = jobs
                    .iter()
                    .map(|j| {
                        32 + if j.req.kind == CMD_READ {
                            j.req.length
                        } else {
                            0
                        }
                    })
                    .sum();
                let mut buf = session.buffers.get_for(reply_bytes as usize);
                let mut permits = Vec::with_capacity(jobs.len());
                for job in jobs {
                    serve_blocking(&session, &job.req, &job.payload, &mut buf);
                    permits.push(job.permit);
                }
                session.note_blocking_time(started.elapsed().as_nanos() as u64 / count);
                let mut permits = permits.into_iter();
                let permit = permits.next().map(|mut first| {
                    permits.for_each(|p| first.merge(p));
                    first
                });
                let _ = tx.send(Reply {
                    buf,
                    _permit: permit,
                });
            });
        }
    }
}

/// A growable input buffer with a consumed prefix. It grows to hold one
/// whole request with its payload and shrinks back once that is consumed.
struct InputBuffer {
    buf: Vec<u8>,
    start: usize,
    end: usize,
    /// Size of the message being waited for (0 when only a header is).
    want: usize,
}

impl InputBuffer {
    fn new() -> Self {
        InputBuffer {
            buf: vec![0; INPUT_BUFFER],
            start: 0,
            end: 0,
            want: 0,
        }
    }
    fn len(&self) -> usize {
        self.end - self.start
    }
    fn data(&self) -> &[u8] {
        &self.buf[self.start..self.end]
    }
    fn consume(&mut self, n: usize) {
        self.start += n;
        self.want = 0;
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
    }
    /// Waits for a message of `total` bytes: it must fit once the prefix is gone.
    fn reserve_total(&mut self, total: usize) {
        self.want = total;
        if self.buf.len() - self.start < total {
            self.compact();
            if self.buf.len() < total {
                self.buf.resize(total, 0);
            }
        }
    }
    fn compact(&mut self) {
        if self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
    }
    /// Leaves free space at the end for the next read.
    fn make_room(&mut self) {
        if self.want == 0 && self.buf.len() > INPUT_BUFFER && self.len() <= INPUT_BUFFER {
            // Shrink after a large payload so an idle connection stays small.
            self.compact();
            self.buf.truncate(INPUT_BUFFER);
            self.buf.shrink_to_fit();
        }
        if self.buf.len() - self.end < 64 * 1024 {
            self.compact();
        }
        if self.end == self.buf.len() {
            // Only a header-sized remainder can be here: room after compacting.
            self.buf.resize(self.buf.len() + INPUT_BUFFER, 0);
        }
    }
    fn spare(&mut self) -> &mut [u8] {
        &mut self.buf[self.end..]
    }
    fn filled(&mut self, n: usize) {
        self.end += n;
    }
}

/// Bytes of payload that follow a request header: a WRITE's data always
/// (qemu-nbd too takes an extended WRITE without NBD_CMD_FLAG_PAYLOAD_LEN),
/// and with extended headers whatever NBD_CMD_FLAG_PAYLOAD_LEN declares,
/// whether or not the command takes one, so the stream stays in step.
fn payload_len(req: &Request, extended: bool) -> u64 {
    if req.kind == CMD_WRITE || (extended && req.flags & CMD_FLAG_PAYLOAD_LEN != 0) {
        req.length
    } else {
        0
    }
}

/// The request a payload-carrying command stands for. BLOCK_STATUS's
/// payload form (NBD_FLAG_BLOCK_STATUS_PAYLOAD) is a 64-bit effect length
/// and the ids of the negotiated contexts wanted. Any other non-WRITE
/// command with a payload is invalid.
fn effective_request(
    session: &Session,
    req: &Request,
    payload: &[u8],
) -> Result<Request, (u32, &'static str)> {
    if req.kind == CMD_WRITE || req.flags & CMD_FLAG_PAYLOAD_LEN == 0 {
        return Ok(*req);
    }
    if session.style != ReplyStyle::Extended {
        return Err((EINVAL, "PAYLOAD_LEN needs extended headers"));
    }
    if req.kind != CMD_BLOCK_STATUS {
        return Err((EINVAL, "command takes no payload"));
    }
    if !session.contexts.any() {
        return Err((EINVAL, "no metadata context was negotiated"));
    }
    let mut r = Reader::new(payload);
    let effect = r.u64().ok_or((EINVAL, "block status payload too short"))?;
    requested_contexts(session, &payload[8..])?;
    Ok(Request {
        flags: req.flags & !CMD_FLAG_PAYLOAD_LEN,
        length: effect,
        ..*req
    })
}

/// Checks a request against the export; the error to reply with if it fails.
fn check(session: &Session, req: &Request) -> Result<(), (u32, &'static str)> {
    let export = &session.export;
    let size = export.size();
    let end = req
        .offset
        .checked_add(req.length)
        .ok_or((EINVAL, "offset + length overflows"))?;
    let writes = matches!(req.kind, CMD_WRITE | CMD_TRIM | CMD_WRITE_ZEROES);
    if writes && export.read_only {
        return Err((EPERM, "export is read-only"));
    }
    match req.kind {
        CMD_READ | CMD_WRITE if req.length == 0 => return Err((EINVAL, "zero-length request")),
        CMD_READ if req.length > MAX_PAYLOAD as u64 => {
            return Err((EOVERFLOW, "read longer than the maximum block size"))
        }
        CMD_BLOCK_STATUS if !session.contexts.any() => {
            return Err((EINVAL, "no metadata context was negotiated"))
        }
        // A descriptor's length must be non-zero, so there is no answer.
        CMD_BLOCK_STATUS if req.length == 0 => return Err((EINVAL, "zero-length block status")),
        CMD_READ | CMD_WRITE | CMD_TRIM | CMD_WRITE_ZEROES | CMD_CACHE | CMD_BLOCK_STATUS
        | CMD_FLUSH => {}
        _ => return Err((EINVAL, "unknown command")),
    }
    if req.flags & !0x3f != 0 {
        return Err((EINVAL, "unknown command flags"));
    }
    if req.flags & CMD_FLAG_PAYLOAD_LEN != 0 && session.style != ReplyStyle::Extended {
        return Err((EINVAL, "PAYLOAD_LEN needs extended headers"));
    }
    if req.kind != CMD_FLUSH && end > size {
        return Err(match req.kind {
            CMD_WRITE | CMD_WRITE_ZEROES => (ENOSPC, "request beyond the end of the export"),
            _ => (EINVAL, "request beyond the end of the export"),
        });
    }
    if req.flags & CMD_FLAG_FAST_ZERO != 0 && req.kind != CMD_WRITE_ZEROES {
        return Err((EINVAL, "FAST_ZERO is only valid on WRITE_ZEROES"));
    }
    Ok(())
}

/// Serves one request in place or hands it to a blocking thread.
fn handle(
    session: &Session,
    req: &Request,
    payload: &[u8],
    batch: &mut Batch,
    permit: OwnedSemaphorePermit,
) {
    let style = session.style;
    let checked =
        effective_request(session, req, payload).and_then(|req| check(session, &req).map(|()| req));
    let req = match checked {
        Ok(req) => req,
        Err((errno, msg)) => {
            put_error_reply(&mut batch.buf, style, req.cookie, req.offset, errno, msg);
            batch.add_permit(permit);
            return;
        }
    };
    let req = &req;
    let backend = &*session.export.backend;
    let mark = batch.buf.len();
    let inline = match req.kind {
        CMD_READ => read_reply(&mut batch.buf, backend, req, style, true),
        CMD_WRITE => backend
            .write_at(payload, req.offset, req.flags & CMD_FLAG_FUA != 0, true)
            .map(|()| put_ok_reply(&mut batch.buf, style, req.cookie, req.offset)),
        CMD_CACHE => {
            let _ = backend.cache(req.offset, req.length);
            put_ok_reply(&mut batch.buf, style, req.cookie, req.offset);
            Ok(())
        }
        // Flush, trim, zeroing and block status may all wait on the disk.
        _ => Err(super::backend::would_block()),
    };
    match inline {
        Ok(()) => batch.add_permit(permit),
        Err(e) if is_would_block(&e) => {
            batch.buf.truncate(mark);
            batch.deferred.push(Deferred {
                req: *req,
                payload: payload.to_vec(),
                permit,
            });
        }
        Err(e) => {
            batch.buf.truncate(mark);
            put_error_reply(
                &mut batch.buf,
                style,
                req.cookie,
                req.offset,
                errno_to_nbd(&e),
                &e.to_string(),
            );
            batch.add_permit(permit);
        }
    }
}

/// A request served where waiting is fine; appends its whole reply.
fn serve_blocking(session: &Session, req: &Request, payload: &[u8], out: &mut Vec<u8>) {
    let backend = &*session.export.backend;
    let style = session.style;
    let fua = req.flags & CMD_FLAG_FUA != 0;
    let mark = out.len();
    let result = match req.kind {
        CMD_READ => read_reply(out, backend, req, style, false),
        CMD_WRITE => backend.write_at(payload, req.offset, fua, false),
        CMD_FLUSH => backend.flush(),
        CMD_TRIM => backend.trim(req.offset, req.length).and_then(|()| {
            if fua {
                backend.flush()
            } else {
                Ok(())
            }
        }),
        CMD_WRITE_ZEROES => backend
            .write_zeroes(
                req.offset,
                req.length,
                req.flags & CMD_FLAG_NO_HOLE == 0,
                req.flags & CMD_FLAG_FAST_ZERO != 0,
            )
            .and_then(|()| if fua { backend.flush() } else { Ok(()) }),
        CMD_BLOCK_STATUS => {
            // The payload form was checked when the request came in.
            let contexts = match payload.get(8..) {
                Some(ids) if !ids.is_empty() => {
                    requested_contexts(session, ids).unwrap_or(session.contexts)
                }
                _ => session.contexts,
            };
            block_status_reply(out, backend, req, style, contexts)
        }
        _ => Err(io::Error::from_raw_os_error(libc::EINVAL)),
    };
    match result {
        Ok(()) if req.kind == CMD_READ || req.kind == CMD_BLOCK_STATUS => {}
        Ok(()) => put_ok_reply(out, style, req.cookie, req.offset),
        Err(e) => {
            out.truncate(mark);
            put_error_reply(
                out,
                style,
                req.cookie,
                req.offset,
                errno_to_nbd(&e),
                &e.to_string(),
            );
        }
    }
}

/// Appends the complete reply to a READ: data, or on structured connections
/// data and hole chunks. On error `out` may hold a partial reply that the
/// caller truncates.
fn read_reply(
    out: &mut Vec<u8>,
    backend: &dyn Backend,
    req: &Request,
    style: ReplyStyle,
    nowait: bool,
) -> io::Result<()> {
    let len = req.length as usize;
    if style == ReplyStyle::Simple {
        put_simple_reply(out, 0, req.cookie);
        return read_into(out, backend, req.offset, len, nowait);
    }
    let sparse = req.flags & CMD_FLAG_DF == 0 && req.length >= SPARSE_READ_MIN;
    let extents = if sparse && nowait {
        backend.extents_nowait(req.offset, req.length)?
    } else if sparse {
        backend.extents(req.offset, req.length)?
    } else {
        Vec::new()
    };
    if extents.len() <= 1 && extents.first().is_none_or(|e| e.flags & STATE_ZERO == 0) {
        put_chunk_header(
            out,
            style,
            REPLY_FLAG_DONE,
            REPLY_TYPE_OFFSET_DATA,
            req.cookie,
            req.offset,
            8 + req.length,
        );
        out.extend_from_slice(&req.offset.to_be_bytes());
        return read_into(out, backend, req.offset, len, nowait);
    }
    // Chunks in order, covering exactly the request; the last one says DONE.
    let mut at = req.offset;
    let end = req.offset + req.length;
    let mut pieces: Vec<(u64, u64, bool)> = Vec::new();
    for e in extents {
        if at >= end {
            break;
        }
        let n = e.length.min(end - at);
        pieces.push((at, n, e.flags & STATE_ZERO != 0));
        at += n;
    }
    if at < end {
        pieces.push((at, end - at, false));
    }
    let last = pieces.len() - 1;
    for (i, (at, n, zero)) in pieces.into_iter().enumerate() {
        let flags = if i == last { REPLY_FLAG_DONE } else { 0 };
        if zero {
            put_chunk_header(
                out,
                style,
                flags,
                REPLY_TYPE_OFFSET_HOLE,
                req.cookie,
                req.offset,
                12,
            );
            out.extend_from_slice(&at.to_be_bytes());
            out.extend_from_slice(&(n as u32).to_be_bytes());
        } else {
            put_chunk_header(
                out,
                style,
                flags,
                REPLY_TYPE_OFFSET_DATA,
                req.cookie,
                req.offset,
                8 + n,
            );
            out.extend_from_slice(&at.to_be_bytes());
            read_into(out, backend, at, n as usize, nowait)?;
        }
    }
    Ok(())
}

/// Appends `len` bytes read at `offset` to `out`.
fn read_into(
    out: &mut Vec<u8>,
    backend: &dyn Backend,
    offset: u64,
    len: usize,
    nowait: bool,
) -> io::Result<()> {
    backend.read_append(out, offset, len, nowait)
}

/// The contexts a BLOCK_STATUS payload names by id: each one negotiated,
/// none twice (qemu-nbd refuses repeats too).
fn requested_contexts(session: &Session, ids: &[u8]) -> Result<MetaContexts, (u32, &'static str)> {
    if ids.is_empty() || ids.len() % 4 != 0 {
        return Err((EINVAL, "block status payload names no contexts"));
    }
    let unknown = (EINVAL, "block status payload names unknown contexts");
    let mut wanted = MetaContexts::default();
    for id in ids.chunks_exact(4) {
        let (negotiated, flag) = match u32::from_be_bytes([id[0], id[1], id[2], id[3]]) {
            BASE_ALLOCATION_ID => (
                session.contexts.base_allocation,
                &mut wanted.base_allocation,
            ),
            ALLOCATION_DEPTH_ID => (
                session.contexts.allocation_depth,
                &mut wanted.allocation_depth,
            ),
            _ => return Err(unknown),
        };
        if !negotiated || *flag {
            return Err(unknown);
        }
        *flag = true;
    }
    Ok(wanted)
}

/// One block-status chunk per context wanted, base:allocation first; the
/// last one says DONE.
fn block_status_reply(
    out: &mut Vec<u8>,
    backend: &dyn Backend,
    req: &Request,
    style: ReplyStyle,
    contexts: MetaContexts,
) -> io::Result<()> {
    let mut wanted = Vec::with_capacity(2);
    if contexts.base_allocation {
        wanted.push(BASE_ALLOCATION_ID);
    }
    if contexts.allocation_depth {
        wanted.push(ALLOCATION_DEPTH_ID);
    }
    let last = wanted.len().saturating_sub(1);
    for (i, id) in wanted.into_iter().enumerate() {
        let mut extents = if id == ALLOCATION_DEPTH_ID {
            backend.allocation_depth(req.offset, req.length)?
        } else {
            backend.extents(req.offset, req.length)?
        };
        clip_extents(
            &mut extents,
            req.length,
            req.flags & CMD_FLAG_REQ_ONE != 0,
            style,
        );
        let flags = if i == last { REPLY_FLAG_DONE } else { 0 };
        put_status_chunk(out, req, style, flags, id, &extents);
    }
    Ok(())
}

/// A BLOCK_STATUS (or BLOCK_STATUS_EXT) chunk for context `id`.
fn put_status_chunk(
    out: &mut Vec<u8>,
    req: &Request,
    style: ReplyStyle,
    flags: u16,
    id: u32,
    extents: &[Extent],
) {
    let n = extents.len() as u64;
    if style == ReplyStyle::Extended {
        put_chunk_header(
            out,
            style,
            flags,
            REPLY_TYPE_BLOCK_STATUS_EXT,
            req.cookie,
            req.offset,
            8 + 16 * n,
        );
        out.extend_from_slice(&id.to_be_bytes());
        out.extend_from_slice(&(n as u32).to_be_bytes());
        for e in extents {
            out.extend_from_slice(&e.length.to_be_bytes());
            out.extend_from_slice(&(e.flags as u64).to_be_bytes());
        }
    } else {
        put_chunk_header(
            out,
            style,
            flags,
            REPLY_TYPE_BLOCK_STATUS,
            req.cookie,
            req.offset,
            4 + 8 * n,
        );
        out.extend_from_slice(&id.to_be_bytes());
        for e in extents {
            out.extend_from_slice(&(e.length as u32).to_be_bytes());
            out.extend_from_slice(&e.flags.to_be_bytes());
        }
    }
}

/// Keeps a block-status answer within the request, the extent cap, REQ_ONE
/// and (compact headers) 32-bit extent lengths.
fn clip_extents(extents: &mut Vec<Extent>, length: u64, req_one: bool, style: ReplyStyle) {
    let max_extent = if style == ReplyStyle::Extended {
        u64::MAX
    } else {
        // Largest 32-bit length that keeps 512-byte alignment.
        u32::MAX as u64 & !511
    };
    let limit = if req_one { 1 } else { MAX_STATUS_EXTENTS };
    let mut covered = 0u64;
    let mut kept = 0;
    for e in extents.iter_mut() {
        if kept == limit || covered >= length {
            break;
        }
        e.length = e.length.min(length - covered).min(max_extent);
        covered += e.length;
        kept += 1;
    }
    extents.truncate(kept);
    if extents.is_empty() {
        extents.push(Extent {
            length: length.min(max_extent),
            flags: 0,
        });
    }
}

/// Writes replies in arrival order, gathering all that are ready into one
/// vectored write.
async fn write_replies<W>(
    mut writer: W,
    mut rx: mpsc::UnboundedReceiver<Reply>,
    session: Arc<Session>,
) -> io::Result<()>
where
    W: AsyncWrite + Unpin,
{
    let mut pending: Vec<Reply> = Vec::with_capacity(MAX_GATHER);
    while let Some(first) = rx.recv().await {
        pending.push(first);
        while pending.len() < MAX_GATHER {
            match rx.try_recv() {
                Ok(r) => pending.push(r),
                Err(_) => break,
            }
        }
        let mut slices: Vec<IoSlice<'_>> = pending.iter().map(|r| IoSlice::new(&r.buf)).collect();
        let mut rest: &mut [IoSlice<'_>] = &mut slices;
        while !rest.is_empty() {
            let n = writer.write_vectored(rest).await?;
            if n == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
            IoSlice::advance_slices(&mut rest, n);
        }
        // A no-op on a socket; over TLS it sends what rustls still holds
        // (a write may be taken into its buffer while the socket is full).
        writer.flush().await?;
        drop(slices);
        for reply in pending.drain(..) {
            session.buffers.put(reply.buf);
        }
    }
    writer.flush().await?;
    let _ = writer.shutdown().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nbd::backend::testing::Zeroes;

    /// Found by the nbd_requests fuzz target: a block-status chunk went out
    /// on a simple-reply connection that claimed base:allocation.
    #[test]
    fn block_status_on_a_simple_connection_is_einval_not_a_chunk() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let out = rt.block_on(async {
            let export = Arc::new(Export {
                name: String::new(),
                description: None,
                backend: Arc::new(Zeroes(1 << 20)),
                read_only: false,
                multi_conn: false,
                rotational: false,
                allocation_depth: false,
            });
            let negotiated = Negotiated {
                style: ReplyStyle::Simple,
                contexts: MetaContexts {
                    base_allocation: true,
                    allocation_depth: false,
                },
                export: 0,
            };
            let (mut client, server) = tokio::io::duplex(1 << 16);
            let (r, w) = tokio::io::split(server);
            let (ctx, _c) =
                crate::service::Context::new("t", Arc::new(crate::service::NullNotifier));
            let task = tokio::spawn(serve(r, w, negotiated, export, ctx.shutdown()));
            let mut req = Vec::new();
            encode_request(
                &mut req,
                &Request {
                    flags: 0,
                    kind: CMD_BLOCK_STATUS,
                    cookie: 9,
                    offset: 0,
                    length: 4096,
                },
                false,
            );
            client.write_all(&req).await.unwrap();
            client.shutdown().await.unwrap();
            let mut out = Vec::new();
            client.read_to_end(&mut out).await.unwrap();
            let _ = task.await;
            out
        });
        let mut expected = Vec::new();
        put_simple_reply(&mut expected, EINVAL, 9);
        assert_eq!(out, expected);
    }

    fn session(style: ReplyStyle) -> Session {
        Session {
            export: Arc::new(Export {
                name: String::new(),
                description: None,
                backend: Arc::new(Zeroes(1 << 20)),
                read_only: false,
                multi_conn: false,
                rotational: false,
                allocation_depth: true,
            }),
            style,
            contexts: MetaContexts {
                base_allocation: true,
                allocation_depth: false,
            },
            blocking_ns: AtomicU64::new(0),
            buffers: BufferPool::default(),
        }
    }

    fn request(kind: u16, flags: u16, length: u64) -> Request {
        Request {
            flags,
            kind,
            cookie: 1,
            offset: 0,
            length,
        }
    }

    #[test]
    fn declared_payloads_are_consumed_whatever_the_command() {
        let trim = request(CMD_TRIM, CMD_FLAG_PAYLOAD_LEN, 16);
        assert_eq!(payload_len(&trim, true), 16);
        assert_eq!(payload_len(&trim, false), 0);
        assert_eq!(payload_len(&request(CMD_WRITE, 0, 512), false), 512);
        assert_eq!(payload_len(&request(CMD_WRITE, 0, 512), true), 512);
        let s = session(ReplyStyle::Extended);
        assert_eq!(
            effective_request(&s, &trim, &[0; 16]).map_err(|e| e.0),
            Err(EINVAL)
        );
        let compact = session(ReplyStyle::Structured);
        let flush = request(CMD_FLUSH, CMD_FLAG_PAYLOAD_LEN, 0);
        assert_eq!(check(&compact, &flush).map_err(|e| e.0), Err(EINVAL));
    }

    #[test]
    fn block_status_payload_gives_the_effect_length_for_our_one_context() {
        let s = session(ReplyStyle::Extended);
        let bs = request(CMD_BLOCK_STATUS, CMD_FLAG_PAYLOAD_LEN, 12);
        let mut payload = 65536u64.to_be_bytes().to_vec();
        payload.extend_from_slice(&BASE_ALLOCATION_ID.to_be_bytes());
        let eff = effective_request(&s, &bs, &payload).unwrap();
        assert_eq!(eff.length, 65536);
        assert_eq!(eff.flags & CMD_FLAG_PAYLOAD_LEN, 0);
        assert_eq!(check(&s, &eff), Ok(()));
        for bad in [
            &payload[..8],
            &[payload.clone(), payload[8..].to_vec()].concat()[..],
            &[&payload[..8], &7u32.to_be_bytes()[..]].concat()[..],
        ] {
            assert_eq!(
                effective_request(&s, &bs, bad).map_err(|e| e.0),
                Err(EINVAL)
            );
        }
    }

    /// (flags, context id, first extent's flags) of each block-status chunk.
    fn status_chunks(out: &[u8]) -> Vec<(u16, u32, u32)> {
        let mut chunks = Vec::new();
        let mut r = Reader::new(out);
        while r.remaining() > 0 {
            assert_eq!(r.u32(), Some(STRUCTURED_REPLY_MAGIC));
            let flags = r.u16().unwrap();
            assert_eq!(r.u16(), Some(REPLY_TYPE_BLOCK_STATUS));
            r.u64();
            let len = r.u32().unwrap() as usize;
            let mut body = Reader::new(r.bytes(len).unwrap());
            let id = body.u32().unwrap();
            body.u32();
            chunks.push((flags, id, body.u32().unwrap()));
        }
        chunks
    }

    #[test]
    fn block_status_answers_each_negotiated_context_in_one_reply() {
        let mut s = session(ReplyStyle::Structured);
        s.contexts.allocation_depth = true;
        let bs = request(CMD_BLOCK_STATUS, 0, 4096);
        let mut out = Vec::new();
        serve_blocking(&s, &bs, &[], &mut out);
        assert_eq!(
            status_chunks(&out),
            [
                (0, BASE_ALLOCATION_ID, 0),
                (REPLY_FLAG_DONE, ALLOCATION_DEPTH_ID, 1)
            ]
        );
        // The payload form names the contexts wanted: the depth alone.
        let mut s = session(ReplyStyle::Extended);
        s.contexts.allocation_depth = true;
        let mut payload = 4096u64.to_be_bytes().to_vec();
        payload.extend_from_slice(&ALLOCATION_DEPTH_ID.to_be_bytes());
        let with_payload = request(CMD_BLOCK_STATUS, CMD_FLAG_PAYLOAD_LEN, 12);
        let eff = effective_request(&s, &with_payload, &payload).unwrap();
        let mut out = Vec::new();
        serve_blocking(&s, &eff, &payload, &mut out);
        let mut r = Reader::new(&out);
        assert_eq!(r.u32(), Some(EXTENDED_REPLY_MAGIC));
        assert_eq!(r.u16(), Some(REPLY_FLAG_DONE));
        assert_eq!(r.u16(), Some(REPLY_TYPE_BLOCK_STATUS_EXT));
        r.bytes(24);
        assert_eq!(r.u32(), Some(ALLOCATION_DEPTH_ID));
        // A context not negotiated is refused.
        let s = session(ReplyStyle::Extended);
        assert_eq!(
            effective_request(&s, &with_payload, &payload).map_err(|e| e.0),
            Err(EINVAL)
        );
    }

    #[test]
    fn zero_length_block_status_is_einval() {
        for style in [ReplyStyle::Structured, ReplyStyle::Extended] {
            let s = session(style);
            let bs = request(CMD_BLOCK_STATUS, 0, 0);
            assert_eq!(check(&s, &bs).map_err(|e| e.0), Err(EINVAL));
        }
    }

    #[test]
    fn block_status_honours_req_one_and_length() {
        let mut e = vec![
            Extent {
                length: 100,
                flags: 0,
            },
            Extent {
                length: 100,
                flags: 3,
            },
        ];
        clip_extents(&mut e, 150, false, ReplyStyle::Structured);
        assert_eq!(
            e,
            vec![
                Extent {
                    length: 100,
                    flags: 0
                },
                Extent {
                    length: 50,
                    flags: 3
                }
            ]
        );
        let mut e = vec![
            Extent {
                length: 100,
                flags: 0,
            },
            Extent {
                length: 100,
                flags: 3,
            },
        ];
        clip_extents(&mut e, 150, true, ReplyStyle::Structured);
        assert_eq!(
            e,
            vec![Extent {
                length: 100,
                flags: 0
            }]
        );
    }

    #[test]
    fn compact_block_status_fits_32_bits() {
        let mut e = vec![Extent {
            length: 8 << 30,
            flags: 3,
        }];
        clip_extents(&mut e, 8 << 30, false, ReplyStyle::Structured);
        assert!(e[0].length <= u32::MAX as u64);
        assert_eq!(e[0].length % 512, 0);
    }
}
