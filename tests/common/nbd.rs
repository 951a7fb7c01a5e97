//! A minimal NBD client for tests: fixed newstyle, NBD_OPT_GO, simple
//! replies, and requests no real client would send.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

/// A minimal NBD client speaking simple replies, for what real clients won't send.
pub struct RawClient {
    pub sock: UnixStream,
    pub cookie: u64,
}

impl RawClient {
    pub fn connect(path: &Path) -> RawClient {
        let mut sock = UnixStream::connect(path).unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        let mut greet = [0u8; 18];
        sock.read_exact(&mut greet).unwrap();
        assert_eq!(&greet[..16], b"NBDMAGICIHAVEOPT");
        sock.write_all(&3u32.to_be_bytes()).unwrap();
        RawClient { sock, cookie: 0 }
    }

    pub fn go(&mut self, name: &str) {
        let mut data = (name.len() as u32).to_be_bytes().to_vec();
        data.extend_from_slice(name.as_bytes());
        data.extend_from_slice(&0u16.to_be_bytes());
        let mut msg = b"IHAVEOPT".to_vec();
        msg.extend_from_slice(&7u32.to_be_bytes());
        msg.extend_from_slice(&(data.len() as u32).to_be_bytes());
        msg.extend_from_slice(&data);
        self.sock.write_all(&msg).unwrap();
        loop {
            let mut hdr = [0u8; 20];
            self.sock.read_exact(&mut hdr).unwrap();
            let kind = u32::from_be_bytes(hdr[12..16].try_into().unwrap());
            let len = u32::from_be_bytes(hdr[16..20].try_into().unwrap());
            let mut payload = vec![0u8; len as usize];
            self.sock.read_exact(&mut payload).unwrap();
            match kind {
                1 => return,
                3 => continue,
                other => panic!("NBD_OPT_GO failed with reply {other:#x}"),
            }
        }
    }

    pub fn request(
        &mut self,
        kind: u16,
        flags: u16,
        offset: u64,
        len: u64,
        payload: Option<&[u8]>,
    ) {
        self.cookie += 1;
        let mut msg = 0x2560_9513u32.to_be_bytes().to_vec();
        msg.extend_from_slice(&flags.to_be_bytes());
        msg.extend_from_slice(&kind.to_be_bytes());
        msg.extend_from_slice(&self.cookie.to_be_bytes());
        msg.extend_from_slice(&offset.to_be_bytes());
        msg.extend_from_slice(&(len as u32).to_be_bytes());
        self.sock.write_all(&msg).unwrap();
        if let Some(p) = payload {
            self.sock.write_all(p).unwrap();
        }
    }

    /// (cookie offset from the last request, error) of the next simple reply.
    pub fn simple_reply(&mut self) -> (u64, u32) {
        let mut hdr = [0u8; 16];
        self.sock.read_exact(&mut hdr).unwrap();
        assert_eq!(&hdr[..4], &0x6744_6698u32.to_be_bytes());
        let error = u32::from_be_bytes(hdr[4..8].try_into().unwrap());
        let cookie = u64::from_be_bytes(hdr[8..16].try_into().unwrap());
        (self.cookie - cookie, error)
    }

    pub fn read_check(&mut self, offset: u64, len: usize, expected: &[u8]) {
        self.request(0, 0, offset, len as u64, None);
        assert_eq!(self.simple_reply(), (0, 0));
        let mut buf = vec![0u8; len];
        self.sock.read_exact(&mut buf).unwrap();
        assert_eq!(buf, expected);
    }

    pub fn disconnect(mut self) {
        self.request(2, 0, 0, 0, None);
        let _ = self.sock.shutdown(std::net::Shutdown::Write);
    }
}

/// Starts `toolbox nbd ARGS... -k SOCK` and waits for the socket file.
/// It waits for the file rather than connecting: a probe connection would
/// count as the one client of a non-persistent server.
pub fn serve_on(sock: &Path, args: &[&str]) -> super::Daemon {
    let mut cmd = std::process::Command::new(super::toolbox());
    cmd.arg("nbd").arg("-k").arg(sock).args(args);
    let daemon = super::Daemon::spawn(cmd);
    super::wait_until(Duration::from_secs(10), || sock.exists()).expect("nbd never listened");
    daemon
}
