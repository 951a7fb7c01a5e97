//! Internal snapshots: the snapshot table (read-only here) and choosing one
//! by qemu-nbd's `-l` syntax.

use std::io;

use super::header::{Header, MAX_L1_BYTES};
use super::io::{corrupt, ImageFile};
use crate::bytes::{be16, be32, be64};

/// qemu's limits on one entry's extra data and on the whole table.
const MAX_EXTRA_DATA: u32 = 1024;
const MAX_TABLE_BYTES: u64 = 64 << 20;
const ENTRY_FIXED: usize = 40;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Snapshot {
    pub id: String,
    pub name: String,
    pub l1_offset: u64,
    pub l1_size: u32,
    /// Virtual disk size when the snapshot was taken (extra data, v3).
    pub disk_size: Option<u64>,
}

/// Reads every entry; each L1 table must lie inside the image.
/// Also returns the table's length in bytes (its clusters are in use).
pub fn read_table(img: &ImageFile, h: &Header) -> io::Result<(Vec<Snapshot>, u64)> {
    let cs = h.cluster_size();
    let mut out = Vec::new();
    let mut pos = h.snapshots_offset;
    for n in 0..h.nb_snapshots {
        if pos - h.snapshots_offset > MAX_TABLE_BYTES {
            return Err(corrupt("snapshot table larger than 64 MiB"));
        }
        let mut fixed = [0u8; ENTRY_FIXED];
        img.read_meta(&mut fixed, pos, false)?;
        let l1_offset = be64(&fixed, 0);
        let l1_size = be32(&fixed, 8);
        let id_len = be16(&fixed, 12) as usize;
        let name_len = be16(&fixed, 14) as usize;
        let extra_len = be32(&fixed, 36);
        if extra_len > MAX_EXTRA_DATA {
            return Err(corrupt(format!(
                "snapshot {n} has {extra_len} bytes of extra data"
            )));
        }
        let mut rest = vec![0u8; extra_len as usize + id_len + name_len];
        img.read_meta(&mut rest, pos + ENTRY_FIXED as u64, false)?;
        let extra = &rest[..extra_len as usize];
        let disk_size = extra
            .get(8..16)
            .map(|b| u64::from_be_bytes(b.try_into().unwrap_or_default()));
        let id = &rest[extra_len as usize..extra_len as usize + id_len];
        let name = &rest[extra_len as usize + id_len..];
        let l1_bytes = l1_size as u64 * 8;
        if l1_offset % cs != 0
            || l1_bytes > MAX_L1_BYTES
            || l1_offset
                .checked_add(l1_bytes)
                .is_none_or(|end| end > img.len())
            || (l1_offset == 0 && l1_size > 0)
        {
            return Err(corrupt(format!("snapshot {n} has an invalid L1 table")));
        }
        out.push(Snapshot {
            id: String::from_utf8_lossy(id).into_owned(),
            name: String::from_utf8_lossy(name).into_owned(),
            l1_offset,
            l1_size,
            disk_size,
        });
        pos += (ENTRY_FIXED + rest.len()).next_multiple_of(8) as u64;
    }
    Ok((out, pos - h.snapshots_offset))
}

/// `-l` as qemu-nbd takes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Selector {
    /// A bare word: a snapshot id, else a snapshot name.
    IdOrName(String),
    /// `snapshot.id=ID,snapshot.name=NAME`: every given field must match.
    Fields {
        id: Option<String>,
        name: Option<String>,
    },
}

impl Selector {
    pub fn parse(text: &str) -> Result<Selector, String> {
        if !text.starts_with("snapshot.") {
            if text.is_empty() {
                return Err("empty snapshot name".into());
            }
            return Ok(Selector::IdOrName(text.to_owned()));
        }
        let (mut id, mut name) = (None, None);
        for part in text.split(',') {
            match part.split_once('=') {
                Some(("snapshot.id", v)) => id = Some(v.to_owned()),
                Some(("snapshot.name", v)) => name = Some(v.to_owned()),
                _ => return Err(format!("Invalid snapshot option '{part}'")),
            }
        }
        if id.is_none() && name.is_none() {
            return Err("snapshot.id or snapshot.name is needed".into());
        }
        Ok(Selector::Fields { id, name })
    }

    pub fn find<'a>(&self, snapshots: &'a [Snapshot]) -> Option<&'a Snapshot> {
        match self {
            Selector::IdOrName(word) => snapshots
                .iter()
                .find(|s| &s.id == word)
                .or_else(|| snapshots.iter().find(|s| &s.name == word)),
            Selector::Fields { id, name } => snapshots.iter().find(|s| {
                id.as_ref().is_none_or(|i| &s.id == i) && name.as_ref().is_none_or(|n| &s.name == n)
            }),
        }
    }
}

impl std::fmt::Display for Selector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Selector::IdOrName(w) => write!(f, "'{w}'"),
            Selector::Fields { id, name } => {
                write!(
                    f,
                    "id '{}' name '{}'",
                    id.as_deref().unwrap_or("*"),
                    name.as_deref().unwrap_or("*")
                )
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap(id: &str, name: &str) -> Snapshot {
        Snapshot {
            id: id.into(),
            name: name.into(),
            l1_offset: 0,
            l1_size: 0,
            disk_size: None,
        }
    }

    #[test]
    fn selects_by_id_then_name_like_qemu_nbd() {
        let all = [snap("1", "2"), snap("2", "base")];
        let by = |t: &str| Selector::parse(t).unwrap().find(&all).map(|s| s.id.clone());
        assert_eq!(by("2").as_deref(), Some("2"), "id wins over name");
        assert_eq!(by("base").as_deref(), Some("2"));
        assert_eq!(by("snapshot.name=2").as_deref(), Some("1"));
        assert_eq!(by("snapshot.id=1,snapshot.name=2").as_deref(), Some("1"));
        assert_eq!(by("snapshot.id=1,snapshot.name=base"), None);
        assert_eq!(by("nope"), None);
        assert!(Selector::parse("snapshot.size=3").is_err());
        assert!(Selector::parse("").is_err());
    }
}
