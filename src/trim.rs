//! Giving back start-up memory once a daemon has settled.
//!
//! Most of a small daemon's resident set is not its data but the code of
//! its own executable: every page fault on the image maps a whole 64 KiB
//! window around it (the kernel's fault-around), so start-up code that runs
//! once (argument parsing, configuration, resolver set-up) stays resident
//! for the daemon's lifetime. Once the daemon has been ready for a while,
//! we ask the kernel to reclaim the read-only pages of our own image
//! (`MADV_PAGEOUT`: pages shared with another process are left alone, and
//! pages in use are simply faulted back in) and return free heap to the
//! system (`malloc_trim`). Data is never lost: writable mappings are not
//! touched, and pageout, unlike `MADV_DONTNEED`, never discards contents.

use std::time::Duration;

/// How long a daemon must have been ready before its start-up pages go:
/// long enough for the first round of work after readiness to finish.
pub const SETTLE: Duration = Duration::from_secs(30);

/// One mapping to give back, `start..end`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Range {
    pub start: usize,
    pub end: usize,
}

/// The read-only mappings of the file that contains `anchor` (an address
/// in our own code), from `/proc/self/maps` text. Malformed lines are
/// skipped; an anchor outside every file mapping gives nothing.
pub fn image_ranges(maps: &str, anchor: usize) -> Vec<Range> {
    let lines: Vec<MapLine> = maps.lines().filter_map(MapLine::parse).collect();
    let Some(image) = lines
        .iter()
        .find(|l| l.range.start <= anchor && anchor < l.range.end)
        .and_then(|l| l.path)
        .filter(|p| p.starts_with('/'))
    else {
        return Vec::new();
    };
    lines
        .iter()
        .filter(|l| l.path == Some(image) && !l.writable)
        .map(|l| l.range)
        .collect()
}

struct MapLine<'a> {
    range: Range,
    writable: bool,
    path: Option<&'a str>,
}

impl<'a> MapLine<'a> {
    /// `start-end perms offset dev inode [path]`; the path may hold spaces.
    fn parse(line: &'a str) -> Option<MapLine<'a>> {
        let mut rest = line;
        let mut fields = [""; 5];
        for field in fields.iter_mut() {
            rest = rest.trim_start();
            let end = rest.find(' ').unwrap_or(rest.len());
            *field = &rest[..end];
            rest = &rest[end..];
        }
        let (start, end) = fields[0].split_once('-')?;
        let start = usize::from_str_radix(start, 16).ok()?;
        let end = usize::from_str_radix(end, 16).ok()?;
        if start >= end || fields[1].len() != 4 {
            return None;
        }
        let path = rest.trim();
        Some(MapLine {
            range: Range { start, end },
            writable: fields[1].as_bytes()[1] == b'w',
            path: (!path.is_empty()).then_some(path),
        })
    }
}

/// Gives back the start-up pages of our image and free heap; returns how
/// many KiB of image were advised. Best effort: a kernel without
/// `MADV_PAGEOUT` (before 5.4) just keeps the pages.
pub fn give_back() -> usize {
    let anchor = give_back as fn() -> usize as usize;
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap_or_default();
    let mut advised_kib = 0;
    for range in image_ranges(&maps, anchor) {
        let len = range.end - range.start;
        // SAFETY: the range is a whole read-only mapping of our own image;
        // pageout only drops clean copies the kernel can fault back in.
        let rc =
            unsafe { libc::madvise(range.start as *mut libc::c_void, len, libc::MADV_PAGEOUT) };
        if rc == 0 {
            advised_kib += len / 1024;
        }
    }
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only releases free memory back to the kernel.
    unsafe {
        libc::malloc_trim(0);
    }
    advised_kib
}

/// A `... kB` line of /proc/self/status (`VmRSS:`, `RssFile:`), in KiB.
fn status_kib(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// Waits until `SETTLE` after readiness, then trims once.
pub async fn after_ready(ready: tokio::sync::watch::Receiver<bool>) {
    let mut ready = ready;
    if ready.wait_for(|r| *r).await.is_err() {
        return;
    }
    tokio::time::sleep(SETTLE).await;
    let before = status_kib("VmRSS:");
    let advised_kib = give_back();
    let shown = |kib: Option<u64>| kib.map_or("?".into(), |v| v.to_string());
    tracing::debug!(
        "gave back start-up memory: {advised_kib} KiB of image advised, resident {} -> {} KiB",
        shown(before),
        shown(status_kib("VmRSS:")),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAPS: &str = "\
55555afad000-55555afcf000 rw-p 00000000 00:00 0                          [heap]
7fa638600000-7fa6386cb000 r--p 00000000 00:2a 1234                       /sbin/tool box
7fa6386cb000-7fa6388d9000 r-xp 000cb000 00:2a 1234                       /sbin/tool box
7fa6388d9000-7fa6388ed000 r--p 002d9000 00:2a 1234                       /sbin/tool box
7fa6388ed000-7fa6388f2000 rw-p 002ed000 00:2a 1234                       /sbin/tool box
7fa6388f2000-7fa6388fa000 rw-p 00000000 00:00 0
7fa638900000-7fa638a00000 r-xp 00000000 00:2a 99                         /usr/lib/libc.so.6
garbage line
7fff3f39e000-7fff3f3bf000 rw-p 00000000 00:00 0                          [stack]
";

    #[test]
    fn the_read_only_mappings_of_the_anchors_file_are_chosen() {
        let ranges = image_ranges(MAPS, 0x7fa6386cc000);
        assert_eq!(
            ranges,
            vec![
                Range {
                    start: 0x7fa638600000,
                    end: 0x7fa6386cb000
                },
                Range {
                    start: 0x7fa6386cb000,
                    end: 0x7fa6388d9000
                },
                Range {
                    start: 0x7fa6388d9000,
                    end: 0x7fa6388ed000
                },
            ]
        );
    }

    #[test]
    fn anonymous_or_unknown_anchors_give_nothing() {
        assert!(image_ranges(MAPS, 0x55555afad100).is_empty());
        assert!(image_ranges(MAPS, 0x7fff3f39e100).is_empty());
        assert!(image_ranges(MAPS, 0x10).is_empty());
        assert!(image_ranges("", 0x7fa6386cc000).is_empty());
    }

    #[test]
    fn a_replaced_executable_is_still_matched_by_its_deleted_name() {
        let maps = "\
400000-401000 r--p 00000000 00:2a 7 /sbin/toolbox (deleted)
401000-402000 r-xp 00001000 00:2a 7 /sbin/toolbox (deleted)
402000-403000 rw-p 00002000 00:2a 7 /sbin/toolbox (deleted)
";
        assert_eq!(image_ranges(maps, 0x401800).len(), 2);
    }

    #[test]
    fn giving_back_lowers_this_processes_resident_image() {
        let before = status_kib("RssFile:").unwrap_or(0);
        assert!(give_back() > 0, "no image mapping advised");
        let after = status_kib("RssFile:").unwrap_or(0);
        assert!(after < before, "resident file pages did not go down");
    }
}
