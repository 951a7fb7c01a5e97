//! Daemonizing with readiness: the parent stays until the child reports that
//! it is ready (exit 0) or why it failed (its message on stderr, exit 1), so a
//! supervisor never sees "started" for a daemon that then dies. Also the pid
//! file: written by the child, locked, removed at exit.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::path::{Path, PathBuf};

use nix::unistd::{fork, setsid, ForkResult};

const READY: u8 = b'R';
const FAILED: u8 = b'E';

/// The child's end of the readiness pipe.
pub struct ReadinessPipe(File);

impl ReadinessPipe {
    pub fn ready(&mut self) {
        let _ = self.0.write_all(&[READY]);
    }

    pub fn failed(&mut self, message: &str) {
        let mut msg = Vec::with_capacity(message.len() + 1);
        msg.push(FAILED);
        msg.extend_from_slice(message.as_bytes());
        let _ = self.0.write_all(&msg);
    }
}

/// Forks. Returns in the child only, detached from the terminal with stdio on
/// /dev/null and inherited descriptors closed; the parent waits for the
/// child's report and exits with the status it implies, printing failures
/// prefixed with `name`.
pub fn daemonize(name: &str) -> std::io::Result<ReadinessPipe> {
    let (read_end, write_end) = nix::unistd::pipe()?;
    // SAFETY: called before any runtime or thread exists; the child only
    // continues the single-threaded program.
    match unsafe { fork() }? {
        ForkResult::Parent { child } => {
            drop(write_end);
            let code = wait_for_child(name, File::from(read_end), child);
            std::process::exit(code);
        }
        ForkResult::Child => {
            drop(read_end);
            setsid()?;
            std::env::set_current_dir("/")?;
            redirect_stdio_to_null()?;
            close_inherited_fds(write_end.as_raw_fd());
            Ok(ReadinessPipe(File::from(write_end)))
        }
    }
}

fn wait_for_child(name: &str, mut pipe: File, child: nix::unistd::Pid) -> i32 {
    let mut report = Vec::new();
    let _ = pipe.read_to_end(&mut report);
    match report.split_first() {
        Some((&READY, _)) => 0,
        Some((&FAILED, message)) => {
            eprintln!("{name}: {}", String::from_utf8_lossy(message));
            let _ = nix::sys::wait::waitpid(child, None);
            1
        }
        _ => {
            let status = nix::sys::wait::waitpid(child, None);
            eprintln!("{name}: daemon exited during startup ({status:?})");
            1
        }
    }
}

fn redirect_stdio_to_null() -> std::io::Result<()> {
    let null = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")?;
    for fd in 0..3 {
        nix::unistd::dup2(null.as_raw_fd(), fd)?;
    }
    Ok(())
}

fn close_inherited_fds(keep: RawFd) {
    let fds: Vec<RawFd> = match std::fs::read_dir("/proc/self/fd") {
        Ok(dir) => dir
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
            .collect(),
        Err(_) => return,
    };
    for fd in fds {
        if fd > 2 && fd != keep {
            // SAFETY: descriptors inherited from the parent that nothing in
            // this fresh child owns. One of them was the /proc listing's
            // own, already closed: EBADF is expected and ignored, which is
            // why this is a raw close and not an OwnedFd.
            unsafe { libc::close(fd) };
        }
    }
}

/// A locked pid file, removed when dropped.
pub struct PidFile {
    path: PathBuf,
    _file: File,
}

impl PidFile {
    pub fn create(path: &Path) -> Result<PidFile, String> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(false)
            .open(path)
            .map_err(|e| format!("cannot open pid file {}: {e}", path.display()))?;
        // SAFETY: flock on a descriptor we own.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            return Err(format!(
                "pid file {} is locked by another running instance",
                path.display()
            ));
        }
        file.set_len(0)
            .and_then(|_| (&file).write_all(format!("{}\n", std::process::id()).as_bytes()))
            .map_err(|e| format!("cannot write pid file {}: {e}", path.display()))?;
        Ok(PidFile {
            path: path.to_owned(),
            _file: file,
        })
    }
}

impl Drop for PidFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pid_file_is_written_locked_and_removed() {
        let dir = std::env::temp_dir().join(format!("toolbox-pid-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("x.pid");
        let pid = PidFile::create(&path).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.trim(), std::process::id().to_string());
        let second = PidFile::create(&path);
        assert!(second.err().unwrap().contains("locked"));
        drop(pid);
        assert!(!path.exists());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
