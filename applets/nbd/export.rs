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
}

impl Export {
    pub fn size(&self) -> u64 {
        self.backend.size()
    }

    /// The transmission flags, truthfully, for a connection with this reply
    /// style that has (or has not) selected base:allocation.
    pub fn transmission_flags(&self, style: ReplyStyle, base_allocation: bool) -> u16 {
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
        if style == ReplyStyle::Extended && base_allocation {
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

    /// Whether a client asking for `name` means this export. As with
    /// qemu-nbd, "" is the default name only when `-x` did not give another.
    pub fn matches(&self, name: &[u8]) -> bool {
        name == self.name.as_bytes()
    }
}
