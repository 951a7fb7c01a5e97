//! After the server has bound port 123, a daemon started as root becomes
//! an unprivileged user keeping only CAP_SYS_TIME, as systemd-timesyncd
//! runs (`-u USER`, chrony's option; by default systemd's
//! `systemd-timesync` user when it exists). Its state and clock files are
//! handed to that user first. Under svchost the group's `user =` and
//! `capabilities =` decide instead, since the drop is process-wide.

use std::path::Path;

pub const DEFAULT_USER: &str = "systemd-timesync";
const KEEP: &[&str] = &["CAP_SYS_TIME"];

/// Whether this process is timesyncd alone (not a host of services).
pub fn alone_in_process() -> bool {
    let args: Vec<std::ffi::OsString> = std::env::args_os().take(2).collect();
    let named = |a: &std::ffi::OsString| {
        Path::new(a)
            .file_name()
            .is_some_and(|n| n == "timesyncd" || n == "ntpd")
    };
    args.first().is_some_and(named) || args.get(1).is_some_and(|a| a == "timesyncd")
}

/// The user to become and the capabilities to keep, or `None` when no
/// drop is due (not root, under svchost, or no such default user).
pub fn plan(user: Option<&str>) -> Result<Option<(String, Vec<u32>)>, String> {
    // SAFETY: plain getter.
    if unsafe { libc::geteuid() } != 0 || !alone_in_process() {
        return Ok(None);
    }
    let name = match user {
        Some(u) => u.to_owned(),
        None => {
            if !matches!(nix::unistd::User::from_name(DEFAULT_USER), Ok(Some(_))) {
                return Ok(None);
            }
            DEFAULT_USER.to_owned()
        }
    };
    if matches!(name.as_str(), "root" | "0") {
        return Ok(None);
    }
    let keep = KEEP
        .iter()
        .map(|c| crate::privs::capability(c))
        .collect::<Result<Vec<u32>, String>>()?;
    Ok(Some((name, keep)))
}

/// Creates `files` (and their directories) owned by `user`, so the daemon
/// can still write them once it is that user.
pub fn hand_over(user: &str, files: &[&Path]) -> Result<(), String> {
    let account = nix::unistd::User::from_name(user)
        .map_err(|e| format!("cannot look up user {user}: {e}"))?
        .ok_or_else(|| format!("unknown user: {user}"))?;
    for path in files {
        if let Some(dir) = path.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        let _ = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path);
        let _ = nix::unistd::chown(*path, Some(account.uid), Some(account.gid));
    }
    Ok(())
}

/// Rewrites `path` in place: what an unprivileged daemon can do with a
/// file it owns in a directory it may not write (no temp file and rename).
pub fn write_in_place(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(path)?;
    f.write_all(text.as_bytes())
}
