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

/// One reply, or one chunk of a structured or extended reply.
#[derive(Debug, PartialEq, Eq)]
pub struct Chunk {
    /// 0 for a simple reply.
    pub flags: u16,
    /// The chunk type; 0 (NONE) for a simple reply.
    pub kind: u16,
    pub cookie: u64,
    /// The error of a simple reply or of an ERROR chunk, else 0.
    pub error: u32,
    pub payload: Vec<u8>,
}

pub const OPT_EXPORT_NAME: u32 = 1;
pub const OPT_GO: u32 = 7;
pub const OPT_STRUCTURED_REPLY: u32 = 8;
pub const OPT_SET_META_CONTEXT: u32 = 10;
pub const OPT_EXTENDED_HEADERS: u32 = 11;
pub const REP_ACK: u32 = 1;
pub const REP_INFO: u32 = 3;
pub const CMD_FLAG_PAYLOAD_LEN: u16 = 1 << 5;

impl RawClient {
    pub fn connect(path: &Path) -> RawClient {
        RawClient::connect_with_flags(path, 3)
    }

    /// Connects and answers the greeting with these client flags.
    pub fn connect_with_flags(path: &Path, flags: u32) -> RawClient {
        // The socket file appears at bind(), a moment before listen().
        let mut refused = 0;
        let mut sock = loop {
            match UnixStream::connect(path) {
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused && refused < 50 => {
                    refused += 1;
                    std::thread::sleep(Duration::from_millis(20));
                }
                other => break other.unwrap(),
            }
        };
        sock.set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        let mut greet = [0u8; 18];
        sock.read_exact(&mut greet).unwrap();
        assert_eq!(&greet[..16], b"NBDMAGICIHAVEOPT");
        sock.write_all(&flags.to_be_bytes()).unwrap();
        RawClient { sock, cookie: 0 }
    }

    pub fn option(&mut self, option: u32, data: &[u8]) {
        let mut msg = b"IHAVEOPT".to_vec();
        msg.extend_from_slice(&option.to_be_bytes());
        msg.extend_from_slice(&(data.len() as u32).to_be_bytes());
        msg.extend_from_slice(data);
        self.sock.write_all(&msg).unwrap();
    }

    /// (reply type, data) of the next option reply.
    pub fn option_reply(&mut self) -> (u32, Vec<u8>) {
        let mut hdr = [0u8; 20];
        self.sock.read_exact(&mut hdr).unwrap();
        assert_eq!(&hdr[..8], &0x0003_e889_0455_65a9u64.to_be_bytes());
        let kind = u32::from_be_bytes(hdr[12..16].try_into().unwrap());
        let len = u32::from_be_bytes(hdr[16..20].try_into().unwrap());
        let mut data = vec![0u8; len as usize];
        self.sock.read_exact(&mut data).unwrap();
        (kind, data)
    }

    /// Negotiates extended headers (or structured replies) and
    /// base:allocation, then NBD_OPT_GO; the transmission flags.
    pub fn go_with_replies(&mut self, name: &str, extended: bool) -> u16 {
        let style = if extended {
            OPT_EXTENDED_HEADERS
        } else {
            OPT_STRUCTURED_REPLY
        };
        self.option(style, &[]);
        assert_eq!(self.option_reply().0, REP_ACK);
        let context = b"base:allocation";
        let mut data = (name.len() as u32).to_be_bytes().to_vec();
        data.extend_from_slice(name.as_bytes());
        data.extend_from_slice(&1u32.to_be_bytes());
        data.extend_from_slice(&(context.len() as u32).to_be_bytes());
        data.extend_from_slice(context);
        self.option(OPT_SET_META_CONTEXT, &data);
        while self.option_reply().0 != REP_ACK {}
        let mut data = (name.len() as u32).to_be_bytes().to_vec();
        data.extend_from_slice(name.as_bytes());
        data.extend_from_slice(&0u16.to_be_bytes());
        self.option(OPT_GO, &data);
        let mut flags = None;
        loop {
            match self.option_reply() {
                (REP_ACK, _) => return flags.expect("no NBD_INFO_EXPORT"),
                (REP_INFO, info) if info.len() == 12 && info[..2] == [0, 0] => {
                    flags = Some(u16::from_be_bytes([info[10], info[11]]));
                }
                (REP_INFO, _) => {}
                (other, _) => panic!("NBD_OPT_GO failed with reply {other:#x}"),
            }
        }
    }

    /// Sends an extended-header request; returns its cookie.
    pub fn request_ext(
        &mut self,
        kind: u16,
        flags: u16,
        offset: u64,
        len: u64,
        payload: &[u8],
    ) -> u64 {
        self.cookie += 1;
        let mut msg = 0x21e4_1c71u32.to_be_bytes().to_vec();
        msg.extend_from_slice(&flags.to_be_bytes());
        msg.extend_from_slice(&kind.to_be_bytes());
        msg.extend_from_slice(&self.cookie.to_be_bytes());
        msg.extend_from_slice(&offset.to_be_bytes());
        msg.extend_from_slice(&len.to_be_bytes());
        msg.extend_from_slice(payload);
        self.sock.write_all(&msg).unwrap();
        self.cookie
    }

    /// The next simple reply or reply chunk, in any header style.
    pub fn chunk(&mut self) -> Chunk {
        let mut magic = [0u8; 4];
        self.sock.read_exact(&mut magic).unwrap();
        let be16 = |b: &[u8], i: usize| u16::from_be_bytes([b[i], b[i + 1]]);
        let be32 = |b: &[u8], i: usize| u32::from_be_bytes(b[i..i + 4].try_into().unwrap());
        let be64 = |b: &[u8], i: usize| u64::from_be_bytes(b[i..i + 8].try_into().unwrap());
        let (hdr_len, extended) = match u32::from_be_bytes(magic) {
            0x6744_6698 => {
                let mut rest = [0u8; 12];
                self.sock.read_exact(&mut rest).unwrap();
                return Chunk {
                    flags: 0,
                    kind: 0,
                    cookie: be64(&rest, 4),
                    error: be32(&rest, 0),
                    payload: Vec::new(),
                };
            }
            0x668e_33ef => (20, false),
            0x6e8a_278c => (32, true),
            other => panic!("bad reply magic {other:#x}"),
        };
        let mut hdr = vec![0u8; hdr_len - 4];
        self.sock.read_exact(&mut hdr).unwrap();
        let len = if extended {
            be64(&hdr, 20)
        } else {
            be32(&hdr, 12) as u64
        };
        let mut payload = vec![0u8; len as usize];
        self.sock.read_exact(&mut payload).unwrap();
        let kind = be16(&hdr, 2);
        Chunk {
            flags: be16(&hdr, 0),
            kind,
            cookie: be64(&hdr, 4),
            error: if kind == 0x8001 { be32(&payload, 0) } else { 0 },
            payload,
        }
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
