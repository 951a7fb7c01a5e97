//! sd_notify: readiness and status reports to systemd (Type=notify), sent to
//! `$NOTIFY_SOCKET` when it is set. Path and abstract (`@name`) sockets.

use std::os::unix::net::UnixDatagram;

pub struct SdNotify {
    sock: UnixDatagram,
    addr: std::os::unix::net::SocketAddr,
}

impl SdNotify {
    /// The notifier named by `$NOTIFY_SOCKET`, if any.
    pub fn from_env() -> Option<SdNotify> {
        let path = std::env::var_os("NOTIFY_SOCKET")?;
        Self::connect(path.as_encoded_bytes())
    }

    fn connect(name: &[u8]) -> Option<SdNotify> {
        use std::os::linux::net::SocketAddrExt;
        use std::os::unix::ffi::OsStrExt;
        let addr = match name.split_first() {
            Some((b'@', abstract_name)) => {
                std::os::unix::net::SocketAddr::from_abstract_name(abstract_name).ok()?
            }
            Some((b'/', _)) => {
                std::os::unix::net::SocketAddr::from_pathname(std::ffi::OsStr::from_bytes(name))
                    .ok()?
            }
            _ => return None,
        };
        let sock = UnixDatagram::unbound().ok()?;
        Some(SdNotify { sock, addr })
    }

    /// Sends `state` (newline-separated `KEY=VALUE` assignments); failures are
    /// not the service's problem and are only logged.
    pub fn send(&self, state: &str) {
        if let Err(e) = self.sock.send_to_addr(state.as_bytes(), &self.addr) {
            tracing::debug!("sd_notify: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sends_to_a_path_socket() {
        let dir = std::env::temp_dir().join(format!("toolbox-notify-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let path = dir.join("notify.sock");
        let _ = std::fs::remove_file(&path);
        let server = UnixDatagram::bind(&path).unwrap();
        let n = SdNotify::connect(path.as_os_str().as_encoded_bytes()).unwrap();
        n.send("READY=1");
        let mut buf = [0u8; 64];
        let len = server.recv(&mut buf).unwrap();
        assert_eq!(&buf[..len], b"READY=1");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn sends_to_an_abstract_socket() {
        use std::os::linux::net::SocketAddrExt;
        let name = format!("toolbox-notify-test-{}", std::process::id());
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let server = UnixDatagram::bind_addr(&addr).unwrap();
        let n = SdNotify::connect(format!("@{name}").as_bytes()).unwrap();
        n.send("STATUS=hello");
        let mut buf = [0u8; 64];
        let len = server.recv(&mut buf).unwrap();
        assert_eq!(&buf[..len], b"STATUS=hello");
    }

    #[test]
    fn relative_names_are_ignored() {
        assert!(SdNotify::connect(b"relative/path").is_none());
        assert!(SdNotify::connect(b"").is_none());
    }
}
