//! Who is on the other end of the socket (SO_PEERCRED, SO_PEERGROUPS), and
//! whether they may change the configuration: root, or a member of group
//! `netadm`. Anyone may read.

use std::io;
use std::os::fd::RawFd;

pub const ADMIN_GROUP: &str = "netadm";
/// The most supplementary groups asked for.
const MAX_GROUPS: usize = 65536;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Peer {
    pub pid: i32,
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
}

impl Peer {
    /// Whether the peer may write, `admin_gid` being netadm's gid if the
    /// group exists.
    pub fn may_write(&self, admin_gid: Option<u32>) -> bool {
        self.uid == 0 || admin_gid.is_some_and(|gid| self.gid == gid || self.groups.contains(&gid))
    }
}

fn peer_groups(fd: RawFd) -> io::Result<Vec<u32>> {
    let mut groups: Vec<libc::gid_t> = vec![0; 64];
    loop {
        let mut len = (groups.len() * std::mem::size_of::<libc::gid_t>()) as libc::socklen_t;
        // SAFETY: the buffer holds `len` bytes; the kernel writes at most that.
        let rc = unsafe {
            libc::getsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_PEERGROUPS,
                groups.as_mut_ptr().cast(),
                &mut len,
            )
        };
        let count = len as usize / std::mem::size_of::<libc::gid_t>();
        if rc == 0 {
            groups.truncate(count);
            return Ok(groups);
        }
        let e = io::Error::last_os_error();
        // ERANGE: the buffer was short; `len` says how much is needed.
        if e.raw_os_error() == Some(libc::ERANGE) && count > groups.len() && count <= MAX_GROUPS {
            groups.resize(count, 0);
            continue;
        }
        return Err(e);
    }
}

pub fn peer(fd: RawFd) -> io::Result<Peer> {
    // SAFETY: ucred is plain data; the kernel fills it in.
    let mut cred: libc::ucred = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: getsockopt into a ucred-sized buffer.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(Peer {
        pid: cred.pid,
        uid: cred.uid,
        gid: cred.gid,
        groups: peer_groups(fd)?,
    })
}

/// netadm's gid, looked up now (the group may come and go while we run).
pub fn admin_gid() -> Option<u32> {
    nix::unistd::Group::from_name(ADMIN_GROUP)
        .ok()
        .flatten()
        .map(|g| g.gid.as_raw())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    #[test]
    fn root_or_the_admin_group_may_write() {
        let p = |uid, gid, groups: &[u32]| Peer {
            pid: 1,
            uid,
            gid,
            groups: groups.to_vec(),
        };
        assert!(p(0, 0, &[]).may_write(None));
        assert!(!p(1000, 1000, &[]).may_write(None));
        assert!(!p(1000, 1000, &[5]).may_write(Some(7)));
        assert!(p(1000, 7, &[]).may_write(Some(7)));
        assert!(p(1000, 1000, &[3, 7]).may_write(Some(7)));
    }

    #[test]
    fn credentials_of_a_socket_pair_are_our_own() {
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        let peer = peer(a.as_raw_fd()).unwrap();
        assert_eq!(peer.pid, std::process::id() as i32);
        // SAFETY: plain getters.
        assert_eq!(peer.uid, unsafe { libc::geteuid() });
        assert_eq!(peer.gid, unsafe { libc::getegid() });
    }
}
