//! The state file: the last address used on an interface, tried first next
//! time (RFC 3927 §2.1: a host should keep its address across restarts).
//! One file per interface, `DIR/IFACE`, holding the address as text.

use std::io;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

pub struct LastAddress {
    path: PathBuf,
}

impl LastAddress {
    pub fn new(dir: &Path, interface: &str) -> LastAddress {
        LastAddress {
            path: dir.join(interface),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The remembered address; `None` if there is none or the file does
    /// not hold exactly one address (whether it is usable is the state
    /// machine's call).
    pub fn load(&self) -> Option<Ipv4Addr> {
        let text = std::fs::read(&self.path).ok()?;
        if text.len() > 64 {
            return None;
        }
        std::str::from_utf8(&text).ok()?.trim().parse().ok()
    }

    /// Replaces the file atomically, creating the directory if need be.
    pub fn save(&self, address: Ipv4Addr) -> io::Result<()> {
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let mut temporary = self.path.clone().into_os_string();
        temporary.push(".tmp");
        std::fs::write(&temporary, format!("{address}\n"))?;
        std::fs::rename(&temporary, &self.path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("zcip-last-address-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn saves_then_loads_creating_the_directory() {
        let dir = scratch("roundtrip");
        let file = LastAddress::new(&dir.join("sub"), "eth0");
        assert_eq!(file.load(), None);
        file.save(Ipv4Addr::new(169, 254, 3, 4)).unwrap();
        assert_eq!(file.load(), Some(Ipv4Addr::new(169, 254, 3, 4)));
        assert_eq!(
            std::fs::read_to_string(file.path()).unwrap(),
            "169.254.3.4\n"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn garbage_is_ignored() {
        let dir = scratch("garbage");
        std::fs::create_dir_all(&dir).unwrap();
        let file = LastAddress::new(&dir, "eth0");
        for junk in [
            &b"not an address"[..],
            b"\xff\xfe",
            &[b'1'; 100],
            b"1.2.3.4 5.6.7.8",
        ] {
            std::fs::write(file.path(), junk).unwrap();
            assert_eq!(file.load(), None);
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
