//! The transmission phase: requests built from the fuzz input (any command,
//! flags, offset and length, real payloads, then optional raw garbage) go
//! through the real request handler over an in-memory export. Checks that
//! every reply answers a request that was sent, once, and never claims
//! more data than was asked, nor data outside the request.
#![no_main]

#[path = "mem_backend.rs"]
mod mem_backend;

use std::collections::HashMap;
use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use toolbox::nbd::export::Export;
use toolbox::nbd::negotiate::{MetaContexts, Negotiated};
use toolbox::nbd::proto::*;
use toolbox::service::{Context, NullNotifier};

const SIZE: u64 = 1 << 16;

struct Cursor<'a>(&'a [u8]);

impl Cursor<'_> {
    fn take(&mut self, n: usize) -> Option<&[u8]> {
        (self.0.len() >= n).then(|| {
            let (h, t) = self.0.split_at(n);
            self.0 = t;
            h
        })
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
    fn u16(&mut self) -> Option<u16> {
        self.take(2).map(|b| u16::from_be_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> Option<u32> {
        self.take(4)
            .map(|b| u32::from_be_bytes(b.try_into().unwrap()))
    }
}

fuzz_target!(|data: &[u8]| {
    let mut input = Cursor(data);
    let Some(mode) = input.u8() else { return };
    let style = match mode % 3 {
        0 => ReplyStyle::Simple,
        1 => ReplyStyle::Structured,
        _ => ReplyStyle::Extended,
    };
    let extended = style == ReplyStyle::Extended;
    let negotiated = Negotiated {
        style,
        contexts: MetaContexts {
            base_allocation: mode & 4 != 0,
            allocation_depth: mode & 16 != 0,
        },
        export: 0,
    };
    // Which context a one-id BLOCK_STATUS payload names.
    let payload_id = if mode & 32 != 0 {
        ALLOCATION_DEPTH_ID
    } else {
        BASE_ALLOCATION_ID
    };
    let read_only = mode & 8 != 0;

    let mut stream = Vec::new();
    let mut sent: HashMap<u64, Request> = HashMap::new();
    let mut cookie = 0u64;
    while let Some(kind) = input.u8() {
        let (Some(flags), Some(offset), Some(length)) = (input.u16(), input.u32(), input.u32())
        else {
            break;
        };
        let kind = (kind % 10) as u16;
        // Mostly in range, sometimes around or past the end, sometimes huge.
        let offset = match offset >> 30 {
            0 => (offset as u64) % (SIZE + 16),
            1 => SIZE - (offset as u64 % 64),
            _ => (offset as u64) << 20,
        };
        let length = match length >> 30 {
            0 => (length as u64) % 20_000,
            1 => length as u64 % (SIZE + 16),
            _ => (length as u64) << 8,
        };
        if kind == CMD_DISC {
            continue;
        }
        cookie += 1;
        let req = Request {
            flags,
            kind,
            cookie,
            offset,
            length,
        };
        let declared = kind == CMD_WRITE || (extended && flags & CMD_FLAG_PAYLOAD_LEN != 0);
        if declared && length > 40 << 20 {
            break; // would only exercise the "drop the connection" rule
        }
        encode_request(&mut stream, &req, extended);
        // What the reply may cover: BLOCK_STATUS's payload form carries
        // its effect length in the payload.
        let mut effect = req;
        if declared && kind == CMD_BLOCK_STATUS && (length == 12 || length == 16) {
            // The well-formed payload form: effect length, one or both contexts.
            let effect_len = offset % (SIZE + 16);
            stream.extend_from_slice(&effect_len.to_be_bytes());
            if length == 12 {
                stream.extend_from_slice(&payload_id.to_be_bytes());
            } else {
                stream.extend_from_slice(&BASE_ALLOCATION_ID.to_be_bytes());
                stream.extend_from_slice(&ALLOCATION_DEPTH_ID.to_be_bytes());
            }
            effect.length = effect_len;
        } else if declared {
            stream.extend(std::iter::repeat_n(0xab, length as usize));
        }
        sent.insert(cookie, effect);
    }
    // Garbage after the requests; it never starts a valid request (that
    // would be a request this target did not record).
    if let Some((&first, rest)) = input.0.split_first() {
        let magic_start = if extended { 0x21 } else { 0x25 };
        stream.push(if first == magic_start { !first } else { first });
        stream.extend_from_slice(rest);
    }

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let out = rt.block_on(async {
        let export = Arc::new(Export {
            name: String::new(),
            description: None,
            backend: Arc::new(mem_backend::MemBackend::new(SIZE as usize)),
            read_only,
            multi_conn: false,
            rotational: false,
            allocation_depth: mode & 16 != 0,
        });
        let (mut client, server) = tokio::io::duplex(1 << 16);
        let (r, w) = tokio::io::split(server);
        let (ctx, _controller) = Context::new("fuzz", Arc::new(NullNotifier));
        let serve = tokio::spawn(toolbox::nbd::transmission::serve(
            r,
            w,
            negotiated,
            export,
            ctx.shutdown(),
        ));
        let (mut rd, mut wr) = tokio::io::split(&mut client);
        let writer = async {
            let _ = wr.write_all(&stream).await;
            let _ = wr.shutdown().await;
        };
        let mut out = Vec::new();
        let reader = rd.read_to_end(&mut out);
        let _ = tokio::join!(writer, reader);
        let _ = serve.await;
        out
    });

    // Every reply frames correctly and stays inside its request.
    let mut at = 0usize;
    let mut done: HashMap<u64, bool> = HashMap::new();
    let be32 = |b: &[u8], i: usize| u32::from_be_bytes(b[i..i + 4].try_into().unwrap());
    let be64 = |b: &[u8], i: usize| u64::from_be_bytes(b[i..i + 8].try_into().unwrap());
    while at < out.len() {
        let magic = be32(&out, at);
        match magic {
            SIMPLE_REPLY_MAGIC => {
                assert!(
                    style != ReplyStyle::Extended,
                    "simple reply on an extended connection"
                );
                let error = be32(&out, at + 4);
                let cookie = be64(&out, at + 8);
                let req = sent.get(&cookie).expect("reply to an unknown cookie");
                assert!(
                    done.insert(cookie, true).is_none(),
                    "two replies to one request"
                );
                at += 16;
                if req.kind == CMD_READ && error == 0 {
                    assert!(
                        style == ReplyStyle::Simple,
                        "simple READ data on a structured connection"
                    );
                    at += req.length as usize;
                }
            }
            STRUCTURED_REPLY_MAGIC | EXTENDED_REPLY_MAGIC => {
                let ext = magic == EXTENDED_REPLY_MAGIC;
                assert_eq!(ext, style == ReplyStyle::Extended);
                assert!(style != ReplyStyle::Simple, "chunk on a simple connection");
                let flags = u16::from_be_bytes([out[at + 4], out[at + 5]]);
                let kind = u16::from_be_bytes([out[at + 6], out[at + 7]]);
                let cookie = be64(&out, at + 8);
                let (len, hdr) = if ext {
                    (be64(&out, at + 24), 32)
                } else {
                    (be32(&out, at + 16) as u64, 20)
                };
                let req = sent.get(&cookie).expect("chunk for an unknown cookie");
                assert!(!done.contains_key(&cookie), "chunk after the final one");
                let payload = &out[at + hdr..at + hdr + len as usize];
                match kind {
                    REPLY_TYPE_OFFSET_DATA => {
                        assert_eq!(req.kind, CMD_READ);
                        let off = be64(payload, 0);
                        let n = len - 8;
                        assert!(
                            off >= req.offset && off + n <= req.offset + req.length,
                            "data outside the request"
                        );
                    }
                    REPLY_TYPE_OFFSET_HOLE => {
                        assert_eq!(req.kind, CMD_READ);
                        let off = be64(payload, 0);
                        let n = be32(payload, 8) as u64;
                        assert!(
                            n > 0 && off >= req.offset && off + n <= req.offset + req.length,
                            "hole outside the request"
                        );
                    }
                    REPLY_TYPE_BLOCK_STATUS | REPLY_TYPE_BLOCK_STATUS_EXT => {
                        assert_eq!(req.kind, CMD_BLOCK_STATUS);
                        let id = be32(payload, 0);
                        assert!(
                            (id == BASE_ALLOCATION_ID && negotiated.contexts.base_allocation)
                                || (id == ALLOCATION_DEPTH_ID
                                    && negotiated.contexts.allocation_depth),
                            "status for a context not negotiated"
                        );
                        let sum: u64 = if kind == REPLY_TYPE_BLOCK_STATUS {
                            payload[4..].chunks(8).map(|d| be32(d, 0) as u64).sum()
                        } else {
                            payload[8..].chunks(16).map(|d| be64(d, 0)).sum()
                        };
                        assert!(sum <= req.length, "block status covers more than asked");
                    }
                    REPLY_TYPE_NONE | REPLY_TYPE_ERROR => {}
                    other => panic!("unexpected chunk type {other}"),
                }
                if flags & REPLY_FLAG_DONE != 0 {
                    done.insert(cookie, true);
                }
                at += hdr + len as usize;
            }
            other => panic!("bad reply magic {other:#x} at {at}"),
        }
    }
});
