//! What one export offers: its backend and the facts negotiation announces.

use std::sync::Arc;

use super::backend::Backend;
use super::proto::*;

/// Block-size constraints announced with NBD_INFO_BLOCK_SIZE.
pub const MIN_BLOCK: u32 = 1;
pub const PREFERRED_BLOCK: u32 = 4096;
/// Largest READ/WRITE payload served (32 MiB).
pub const MAX_PAYLOAD: u32 = 32 << 20;

pub struct Export {
    pub name: String,
    pub description: Option<String>,
    pub backend: Arc<dyn Backend>,
    pub read_only: bool,
    /// More than one client may connect (all share `backend`, so a flush on
    /// one covers the writes of all).
    pub multi_conn: bool,
    /// NBD_FLAG_ROTATIONAL: the backing device's own flag unless the
    /// command line (`--rotational`) says otherwise.
    pub rotational: bool,
    /// The qemu:allocation-depth metadata context is offered (`-A`).
    pub allocation_depth: bool,
}

impl Export {
    pub fn size(&self) -> u64 {
        self.backend.size()
    }

    /// The transmission flags, truthfully, for a connection with this reply
    /// style that has (or has not) selected a metadata context.
    pub fn transmission_flags(&self, style: ReplyStyle, any_context: bool) -> u16 {
        let mut flags = TFLAG_HAS_FLAGS | TFLAG_SEND_CACHE | TFLAG_SEND_FLUSH;
        if self.read_only {
            flags |= TFLAG_READ_ONLY;
        } else {
            flags |= TFLAG_SEND_FUA | TFLAG_SEND_TRIM | TFLAG_SEND_WRITE_ZEROES;
            if self.backend.can_fast_zero() {
                flags |= TFLAG_SEND_FAST_ZERO;
            }
        }
        if style != ReplyStyle::Simple {
            flags |= TFLAG_SEND_DF;
        }
        if style == ReplyStyle::Extended && any_context {
            flags |= TFLAG_BLOCK_STATUS_PAYLOAD;
        }
        if self.multi_conn {
            flags |= TFLAG_CAN_MULTI_CONN;
        }
        if self.rotational {
            flags |= TFLAG_ROTATIONAL;
        }
        flags
    }

    /// Whether a client asking for `name` means this export by its name.
    pub fn matches(&self, name: &[u8]) -> bool {
        name == self.name.as_bytes()
    }
}

/// Every export of one server, in command-line order; the first is the
/// default one.
pub struct Exports {
    list: Vec<Arc<Export>>,
    /// Whether the empty name stands for the default export when no export
    /// is called "". qemu-nbd's single export (FILE with `-x`) answers only
    /// to its name; with `--export` the empty name means the default, as
    /// nbdkit's "" does.
    empty_is_default: bool,
}

impl Exports {
    /// Exports with unique names (the command line checked them), at least one.
    pub fn new(list: Vec<Arc<Export>>, empty_is_default: bool) -> Exports {
        Exports {
            list,
            empty_is_default,
        }
    }

    /// qemu-nbd's one export.
    pub fn single(export: Export) -> Exports {
        Exports::new(vec![Arc::new(export)], false)
    }

    pub fn all(&self) -> &[Arc<Export>] {
        &self.list
    }

    /// The export a client asking for `name` means: its index.
    pub fn find(&self, name: &[u8]) -> Option<usize> {
        self.list.iter().position(|e| e.matches(name)).or_else(|| {
            (name.is_empty() && self.empty_is_default && !self.list.is_empty()).then_some(0)
        })
    }

    pub fn get(&self, index: usize) -> Option<&Arc<Export>> {
        self.list.get(index)
    }
}
