//! Dropping privileges: become a named user (and its groups) while keeping a
//! listed set of capabilities, e.g. CAP_NET_ADMIN for zcip under a service user.

use nix::unistd::User;

/// The capabilities the applets may ask to keep, by their Linux names.
const CAPABILITIES: &[(&str, u32)] = &[
    ("CAP_CHOWN", 0),
    ("CAP_DAC_OVERRIDE", 1),
    ("CAP_NET_BIND_SERVICE", 10),
    ("CAP_NET_BROADCAST", 11),
    ("CAP_NET_ADMIN", 12),
    ("CAP_NET_RAW", 13),
    ("CAP_SYS_ADMIN", 21),
    ("CAP_SYS_TIME", 25),
];

/// `CAP_NET_ADMIN` (or `net_admin`) to its number.
pub fn capability(name: &str) -> Result<u32, String> {
    let upper = name.to_ascii_uppercase();
    let full = if upper.starts_with("CAP_") {
        upper
    } else {
        format!("CAP_{upper}")
    };
    CAPABILITIES
        .iter()
        .find(|(n, _)| *n == full)
        .map(|(_, bit)| *bit)
        .ok_or_else(|| format!("unknown capability: {name}"))
}

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;

/// The two 32-bit words of a capability set holding exactly `caps`.
fn cap_words(caps: &[u32]) -> [u32; 2] {
    let mut words = [0u32; 2];
    for &cap in caps {
        if let Some(word) = words.get_mut((cap / 32) as usize) {
            *word |= 1 << (cap % 32);
        }
    }
    words
}

/// Becomes `user` (its uid, primary gid and supplementary groups), keeping
/// only `keep` as permitted and effective capabilities.
pub fn drop_to(user: &str, keep: &[u32]) -> Result<(), String> {
    let account = User::from_name(user)
        .map_err(|e| format!("cannot look up user {user}: {e}"))?
        .ok_or_else(|| format!("unknown user: {user}"))?;
    let name = std::ffi::CString::new(user).map_err(|_| format!("bad user name: {user}"))?;
    // SAFETY: plain prctl flag; keeps permitted caps across the setuid below.
    if unsafe { libc::prctl(libc::PR_SET_KEEPCAPS, 1, 0, 0, 0) } != 0 {
        return Err(format!(
            "prctl(PR_SET_KEEPCAPS): {}",
            std::io::Error::last_os_error()
        ));
    }
    nix::unistd::initgroups(&name, account.gid).map_err(|e| format!("initgroups: {e}"))?;
    nix::unistd::setgid(account.gid).map_err(|e| format!("setgid: {e}"))?;
    nix::unistd::setuid(account.uid).map_err(|e| format!("setuid: {e}"))?;
    set_capabilities(keep)
}

fn set_capabilities(keep: &[u32]) -> Result<(), String> {
    let words = cap_words(keep);
    let mut header = CapHeader {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    let data = [
        CapData {
            effective: words[0],
            permitted: words[0],
            inheritable: 0,
        },
        CapData {
            effective: words[1],
            permitted: words[1],
            inheritable: 0,
        },
    ];
    // SAFETY: header and a two-element data array, as capset(2) v3 expects.
    let rc = unsafe { libc::syscall(libc::SYS_capset, &mut header, data.as_ptr()) };
    if rc != 0 {
        return Err(format!("capset: {}", std::io::Error::last_os_error()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capability_names_in_either_spelling() {
        assert_eq!(capability("CAP_NET_ADMIN"), Ok(12));
        assert_eq!(capability("net_raw"), Ok(13));
        assert_eq!(capability("CAP_SYS_TIME"), Ok(25));
        assert!(capability("CAP_FLY").unwrap_err().contains("CAP_FLY"));
    }

    /// Runs `f` in a forked child and returns its exit code (0 = passed).
    fn in_child(f: impl FnOnce() -> i32) -> i32 {
        // SAFETY: the child only runs `f` and exits without unwinding.
        match unsafe { libc::fork() } {
            0 => {
                let code = f();
                unsafe { libc::_exit(code) }
            }
            pid => {
                let mut status = 0;
                unsafe { libc::waitpid(pid, &mut status, 0) };
                libc::WEXITSTATUS(status)
            }
        }
    }

    fn effective_caps() -> u64 {
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("CapEff:"))
            .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
            .unwrap_or(u64::MAX)
    }

    #[test]
    fn dropping_to_nobody_keeps_only_the_listed_capabilities() {
        // SAFETY: plain getter.
        if unsafe { libc::geteuid() } != 0 || User::from_name("nobody").ok().flatten().is_none() {
            eprintln!("skipping: needs root and a 'nobody' user");
            return;
        }
        let code = in_child(|| {
            if drop_to("nobody", &[12, 13]).is_err() {
                return 1;
            }
            // SAFETY: plain getters.
            if unsafe { libc::getuid() } == 0 || unsafe { libc::geteuid() } == 0 {
                return 2;
            }
            if effective_caps() != (1 << 12) | (1 << 13) {
                return 3;
            }
            0
        });
        assert_eq!(code, 0, "child reported failure step {code}");
    }

    #[test]
    fn capability_sets_span_two_words() {
        assert_eq!(cap_words(&[12, 13]), [(1 << 12) | (1 << 13), 0]);
        assert_eq!(cap_words(&[33]), [0, 1 << 1]);
    }
}
