//! Files that must survive a kill -9 or a power cut intact: written to a
//! new file in the same directory, synced, renamed over the old one, and
//! the directory synced, so a reader finds the old or the new contents,
//! never a mix. Plus advisory locks (flock) for the instance and writers.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

fn temp_path(path: &Path) -> io::Result<PathBuf> {
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::from_raw_os_error(libc::EINVAL))?;
    let mut temp = std::ffi::OsString::from(".");
    temp.push(name);
    temp.push(".new");
    Ok(path.with_file_name(temp))
}

/// Replaces `path` with `data` atomically and durably. Writers must hold
/// the file's lock: the temporary file's name is fixed.
pub fn write_atomic(path: &Path, data: &[u8], mode: u32) -> io::Result<()> {
    let temp = temp_path(path)?;
    let dir = path.parent().unwrap_or(Path::new("."));
    let result = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&temp)?;
        file.write_all(data)?;
        file.sync_all()?;
        drop(file);
        std::fs::rename(&temp, path)?;
        File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&temp);
    }
    result
}

/// Removes a temporary file a crash left behind.
pub fn remove_leftover(path: &Path) {
    if let Ok(temp) = temp_path(path) {
        let _ = std::fs::remove_file(temp);
    }
}

/// The file's contents, or None if it does not exist.
pub fn read_optional(path: &Path) -> io::Result<Option<Vec<u8>>> {
    match std::fs::read(path) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// An exclusive flock, released when dropped.
pub struct FileLock {
    _file: File,
}

impl FileLock {
    /// Takes the lock, waiting for it unless `wait` is false (then
    /// EWOULDBLOCK says someone holds it).
    pub fn acquire(path: &Path, wait: bool) -> io::Result<FileLock> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o644)
            .custom_flags(libc::O_CLOEXEC)
            .open(path)?;
        let op = if wait {
            libc::LOCK_EX
        } else {
            libc::LOCK_EX | libc::LOCK_NB
        };
        loop {
            // SAFETY: flock on a descriptor we own.
            if unsafe { libc::flock(file.as_raw_fd(), op) } == 0 {
                return Ok(FileLock { _file: file });
            }
            let e = io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EINTR) {
                return Err(e);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("ipmgmtd-files-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn atomic_writes_replace_and_leave_no_temporary() {
        let dir = temp_dir("atomic");
        let path = dir.join("ipadm.conf");
        write_atomic(&path, b"one\n", 0o644).unwrap();
        write_atomic(&path, b"two\n", 0o644).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"two\n");
        let names: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["ipadm.conf"]);
        assert_eq!(read_optional(&dir.join("missing")).unwrap(), None);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_failed_write_keeps_the_old_file() {
        let dir = temp_dir("failed");
        let path = dir.join("f");
        write_atomic(&path, b"old", 0o644).unwrap();
        // A directory where the temporary file should go makes the write fail.
        std::fs::create_dir(dir.join(".f.new")).unwrap();
        assert!(write_atomic(&path, b"new", 0o644).is_err());
        assert_eq!(std::fs::read(&path).unwrap(), b"old");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn locks_exclude_each_other() {
        let dir = temp_dir("lock");
        let path = dir.join("lock");
        let held = FileLock::acquire(&path, false).unwrap();
        let second = FileLock::acquire(&path, false);
        assert_eq!(
            second.err().and_then(|e| e.raw_os_error()),
            Some(libc::EWOULDBLOCK)
        );
        drop(held);
        assert!(FileLock::acquire(&path, false).is_ok());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
