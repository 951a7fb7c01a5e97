//! Handing an export to the Linux kernel NBD client: `-c DEV` / `-d DEV`.
//!
//! The preferred way is the "nbd" generic netlink family (Linux 4.12+): one
//! NBD_CMD_CONNECT hands over the socket and returns. Without it, the old
//! ioctls are used, with NBD_DO_IT parked on a thread for the connection's
//! life. The nbd and controller messages are built and parsed here by pure
//! functions; the netlink framing and socket are [`crate::netlink`].

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::path::Path;
use std::sync::mpsc;
use std::time::Duration;

use super::client::{self, ExportInfo};
use super::options::Remote;
use super::proto::TFLAG_READ_ONLY;
use crate::netlink::msg::{find_attr, u16_of, MsgBuilder, NLM_F_ACK, NLM_F_REQUEST};
use crate::netlink::socket::{self, Answer, Socket};
use crate::service::{errno_text, io_text};

// linux/genetlink.h
const GENL_HDRLEN: usize = 4;
const GENL_ID_CTRL: u16 = 0x10;
const CTRL_VERSION: u8 = 1;
const CTRL_CMD_NEWFAMILY: u8 = 1;
const CTRL_CMD_GETFAMILY: u8 = 3;
const CTRL_ATTR_FAMILY_ID: u16 = 1;
const CTRL_ATTR_FAMILY_NAME: u16 = 2;

// linux/nbd-netlink.h
const NBD_GENL_FAMILY_NAME: &[u8] = b"nbd";
const NBD_GENL_VERSION: u8 = 1;
const NBD_CMD_CONNECT: u8 = 1;
const NBD_CMD_DISCONNECT: u8 = 2;
const NBD_ATTR_INDEX: u16 = 1;
const NBD_ATTR_SIZE_BYTES: u16 = 2;
const NBD_ATTR_BLOCK_SIZE_BYTES: u16 = 3;
const NBD_ATTR_TIMEOUT: u16 = 4;
const NBD_ATTR_SERVER_FLAGS: u16 = 5;
const NBD_ATTR_CLIENT_FLAGS: u16 = 6;
const NBD_ATTR_SOCKETS: u16 = 7;
const NBD_SOCK_ITEM: u16 = 1;
const NBD_SOCK_FD: u16 = 1;

/// linux/nbd.h: `_IO(0xab, n)`.
const fn nbd_request(n: libc::c_ulong) -> libc::c_ulong {
    (0xab << 8) | n
}
const NBD_SET_SOCK: libc::c_ulong = nbd_request(0);
const NBD_SET_BLKSIZE: libc::c_ulong = nbd_request(1);
const NBD_SET_SIZE: libc::c_ulong = nbd_request(2);
const NBD_DO_IT: libc::c_ulong = nbd_request(3);
const NBD_CLEAR_SOCK: libc::c_ulong = nbd_request(4);
const NBD_CLEAR_QUE: libc::c_ulong = nbd_request(5);
const NBD_SET_SIZE_BLOCKS: libc::c_ulong = nbd_request(7);
const NBD_DISCONNECT: libc::c_ulong = nbd_request(8);
const NBD_SET_FLAGS: libc::c_ulong = nbd_request(10);
/// linux/fs.h `_IO(0x12, 93)`: the read-only switch for kernels without NBD_SET_FLAGS.
const BLKROSET: libc::c_ulong = (0x12 << 8) | 93;

/// The kernel's smallest logical block; smaller server minimums are met by it.
const SECTOR_SIZE: u64 = 512;
/// How long to wait for the kernel to answer a netlink request.
const NETLINK_TIMEOUT: Duration = Duration::from_secs(10);
/// Netlink datagrams read before giving up on the kernel's acknowledgement.
const MAX_DATAGRAMS: usize = 64;
/// How long the ioctl path waits to see whether NBD_DO_IT fails at once.
const DO_IT_GRACE: Duration = Duration::from_millis(200);
/// How long `-c DEV nbd://...` waits for the remote server to connect and
/// for each step of its handshake.
const REMOTE_TIMEOUT: Duration = Duration::from_secs(30);

/// How the kernel holds a connection once it is attached.
#[derive(Debug)]
pub enum Attached {
    /// Through netlink: the kernel owns the socket; nothing to keep alive.
    Netlink,
    /// Through the ioctls: a thread sits in NBD_DO_IT until the device is
    /// disconnected, then sends how that ended.
    Ioctl(mpsc::Receiver<io::Result<()>>),
}

/// Hands `sock`, a connection to an NBD server, to the kernel device `dev`
/// once the handshake for `export_name` is done.
pub fn attach<S>(dev: &Path, mut sock: S, export_name: &str) -> Result<Attached, String>
where
    S: Read + Write + AsFd + Into<OwnedFd>,
{
    let index = device_index(dev)?;
    // Find the way into the kernel first: without one, the handshake is wasted.
    let route = route_to_driver(dev)?;
    let info =
        client::handshake(&mut sock, export_name).map_err(|e| format!("{}: {e}", dev.display()))?;
    // Handshake timeouts would also cut the kernel's own waits for replies
    // (SO_RCVTIMEO applies to its receives too): an idle device would fail.
    let sock_ref = socket2::SockRef::from(&sock);
    sock_ref
        .set_read_timeout(None)
        .and_then(|()| sock_ref.set_write_timeout(None))
        .map_err(|e| {
            format!(
                "{}: cannot clear socket timeouts: {}",
                dev.display(),
                io_text(&e)
            )
        })?;
    let sock: OwnedFd = sock.into();
    let block_size = kernel_block_size(&info);
    if i64::try_from(info.size).is_err() {
        return Err(format!(
            "{}: export size {} is too large for the kernel",
            dev.display(),
            info.size
        ));
    }
    match route {
        Route::Netlink { mut socket, family } => {
            tracing::info!("{}: handing the connection over by netlink", dev.display());
            let socket_fd = u32::try_from(sock.as_raw_fd())
                .map_err(|_| format!("{}: invalid socket descriptor", dev.display()))?;
            let connect = Connect {
                index,
                size: info.size,
                block_size,
                server_flags: u64::from(info.transmission_flags),
                timeout_secs: None,
                socket_fd,
            };
            socket
                .transact(connect_request(family, &connect))
                .map_err(|e| format!("cannot connect {}: {}", dev.display(), e.describe()))?;
            // The kernel took its own reference to the socket; ours can go.
            Ok(Attached::Netlink)
        }
        Route::Ioctl(device) => {
            tracing::info!("{}: handing the connection over by ioctl", dev.display());
            ioctl_attach(dev, device, sock, &info, block_size).map(Attached::Ioctl)
        }
    }
}

/// `-c DEV nbd://HOST:PORT/EXPORT`: connects to a remote server and hands
/// the connection to the kernel, which then talks to the server directly.
/// `attached` is called once the device works; on the ioctl path this then
/// waits until the device is disconnected.
pub fn attach_remote(dev: &Path, server: &Remote, attached: impl FnOnce()) -> Result<(), String> {
    let stream = dial(server)?;
    match attach(dev, stream, &server.export)? {
        Attached::Netlink => {
            attached();
            Ok(())
        }
        Attached::Ioctl(done) => {
            attached();
            match done.recv() {
                Ok(Err(e)) if e.raw_os_error() != Some(libc::EPIPE) => Err(format!(
                    "{}: kernel NBD client stopped: {}",
                    dev.display(),
                    io_text(&e)
                )),
                _ => Ok(()),
            }
        }
    }
}

/// A TCP connection to `server`, trying each address it resolves to.
fn dial(server: &Remote) -> Result<TcpStream, String> {
    let name = format!("{}:{}", server.host, server.port);
    let addrs = (server.host.as_str(), server.port)
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {name}: {e}"))?;
    let mut failure = format!("cannot resolve {name}");
    for addr in addrs {
        match TcpStream::connect_timeout(&addr, REMOTE_TIMEOUT) {
            Ok(stream) => {
                let _ = stream.set_nodelay(true);
                stream
                    .set_read_timeout(Some(REMOTE_TIMEOUT))
                    .and_then(|()| stream.set_write_timeout(Some(REMOTE_TIMEOUT)))
                    .map_err(|e| format!("cannot set socket timeouts: {}", io_text(&e)))?;
                return Ok(stream);
            }
            Err(e) => failure = format!("cannot connect to {addr}: {}", io_text(&e)),
        }
    }
    Err(failure)
}

/// `-d DEV`: disconnects the kernel device.
pub fn disconnect(dev: &Path) -> Result<(), String> {
    let index = device_index(dev)?;
    match route_to_driver(dev)? {
        Route::Netlink { mut socket, family } => socket
            .transact(disconnect_request(family, index))
            .map(drop)
            .map_err(|e| format!("cannot disconnect {}: {}", dev.display(), e.describe())),
        Route::Ioctl(device) => {
            let fd = device.as_raw_fd();
            nbd_ioctl(fd, NBD_DISCONNECT, 0)
                .map_err(|e| format!("cannot disconnect {}: {}", dev.display(), io_text(&e)))?;
            nbd_ioctl(fd, NBD_CLEAR_SOCK, 0).map_err(|e| {
                format!(
                    "cannot clear the socket of {}: {}",
                    dev.display(),
                    io_text(&e)
                )
            })
        }
    }
}

/// `/dev/nbd3` → 3: the kernel addresses devices by index.
fn device_index(dev: &Path) -> Result<u32, String> {
    let not_nbd = || {
        format!(
            "'{}' is not an NBD device (expected /dev/nbdN)",
            dev.display()
        )
    };
    if dev.parent() != Some(Path::new("/dev")) {
        return Err(not_nbd());
    }
    let name = dev
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(not_nbd)?;
    let digits = name.strip_prefix("nbd").ok_or_else(not_nbd)?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(not_nbd());
    }
    digits.parse().map_err(|_| not_nbd())
}

/// The kernel's block size for an export: the server's minimum, but never
/// below a sector.
fn kernel_block_size(info: &ExportInfo) -> u64 {
    let minimum = info.block_sizes.map_or(1, |b| u64::from(b.minimum));
    minimum.max(SECTOR_SIZE)
}

/// How we reach the kernel's nbd driver.
enum Route {
    Netlink { socket: GenlSocket, family: u16 },
    Ioctl(File),
}

fn route_to_driver(dev: &Path) -> Result<Route, String> {
    let lookup = GenlSocket::open()
        .map_err(NetlinkError::Io)
        .and_then(|mut socket| resolve_nbd_family(&mut socket).map(|family| (socket, family)));
    let netlink_failure = match lookup {
        Ok((socket, family)) => return Ok(Route::Netlink { socket, family }),
        Err(e) => e,
    };
    match OpenOptions::new().read(true).write(true).open(dev) {
        Ok(device) => Ok(Route::Ioctl(device)),
        // A missing node, or a node without a driver behind it.
        Err(e)
            if e.kind() == io::ErrorKind::NotFound
                || matches!(e.raw_os_error(), Some(libc::ENXIO) | Some(libc::ENODEV)) =>
        {
            match netlink_failure {
                NetlinkError::Kernel(libc::ENOENT) => Err(format!(
                    "{}: kernel has no nbd support (modprobe nbd)",
                    dev.display()
                )),
                other => Err(format!(
                    "{}: kernel nbd support not found (device: {}; netlink: {})",
                    dev.display(),
                    io_text(&e),
                    other.describe()
                )),
            }
        }
        Err(e) => Err(format!("cannot open {}: {}", dev.display(), io_text(&e))),
    }
}

// ---------------------------------------------------------------------------
// Netlink messages (pure)

/// A generic netlink request for `cmd` asking for an acknowledgement;
/// attributes follow.
fn genl_request(family: u16, cmd: u8, version: u8) -> MsgBuilder {
    let mut msg = MsgBuilder::new(family, NLM_F_REQUEST | NLM_F_ACK);
    msg.fixed(&[cmd, version, 0, 0]);
    msg
}

/// CTRL_CMD_GETFAMILY for "nbd".
fn family_request() -> MsgBuilder {
    let mut name = NBD_GENL_FAMILY_NAME.to_vec();
    name.push(0); // the controller wants a C string
    let mut msg = genl_request(GENL_ID_CTRL, CTRL_CMD_GETFAMILY, CTRL_VERSION);
    msg.attr(CTRL_ATTR_FAMILY_NAME, &name);
    msg
}

/// What NBD_CMD_CONNECT tells the kernel.
struct Connect {
    index: u32,
    size: u64,
    block_size: u64,
    server_flags: u64,
    timeout_secs: Option<u64>,
    socket_fd: u32,
}

fn connect_request(family: u16, connect: &Connect) -> MsgBuilder {
    let mut msg = genl_request(family, NBD_CMD_CONNECT, NBD_GENL_VERSION);
    msg.attr(NBD_ATTR_INDEX, &connect.index.to_ne_bytes());
    msg.attr(NBD_ATTR_SIZE_BYTES, &connect.size.to_ne_bytes());
    msg.attr(NBD_ATTR_BLOCK_SIZE_BYTES, &connect.block_size.to_ne_bytes());
    msg.attr(NBD_ATTR_SERVER_FLAGS, &connect.server_flags.to_ne_bytes());
    // No NBD_CFLAG_DISCONNECT_ON_CLOSE: the device stays connected when the
    // last opener closes it; `-d` disconnects explicitly.
    msg.attr(NBD_ATTR_CLIENT_FLAGS, &0u64.to_ne_bytes());
    if let Some(secs) = connect.timeout_secs {
        msg.attr(NBD_ATTR_TIMEOUT, &secs.to_ne_bytes());
    }
    msg.nested(NBD_ATTR_SOCKETS, |sockets| {
        sockets.nested(NBD_SOCK_ITEM, |item| {
            item.attr(NBD_SOCK_FD, &connect.socket_fd.to_ne_bytes());
        });
    });
    msg
}

fn disconnect_request(family: u16, index: u32) -> MsgBuilder {
    let mut msg = genl_request(family, NBD_CMD_DISCONNECT, NBD_GENL_VERSION);
    msg.attr(NBD_ATTR_INDEX, &index.to_ne_bytes());
    msg
}

// ---------------------------------------------------------------------------
// Netlink replies (pure)

/// The family id in a CTRL_CMD_NEWFAMILY message's payload.
fn family_id(payload: &[u8]) -> Option<u16> {
    if *payload.first()? != CTRL_CMD_NEWFAMILY {
        return None;
    }
    let attr = find_attr(payload.get(GENL_HDRLEN..)?, CTRL_ATTR_FAMILY_ID)?;
    u16_of(attr)
}

// ---------------------------------------------------------------------------
// Netlink I/O

enum NetlinkError {
    /// The kernel refused the request with this errno.
    Kernel(i32),
    Io(io::Error),
    Protocol(String),
}

impl NetlinkError {
    fn describe(&self) -> String {
        match self {
            NetlinkError::Kernel(libc::EPERM) => {
                "Operation not permitted (needs CAP_SYS_ADMIN)".into()
            }
            NetlinkError::Kernel(libc::EBUSY) => "device is already in use".into(),
            NetlinkError::Kernel(code) => errno_text(*code),
            NetlinkError::Io(e) => io_text(e),
            NetlinkError::Protocol(text) => text.clone(),
        }
    }
}

impl From<socket::Error> for NetlinkError {
    fn from(e: socket::Error) -> NetlinkError {
        match e {
            socket::Error::Io { err, .. } => NetlinkError::Io(err),
            socket::Error::Kernel { errno, .. } => NetlinkError::Kernel(errno),
            socket::Error::Protocol(text) => NetlinkError::Protocol(text),
        }
    }
}

/// A generic netlink socket talking to the kernel.
struct GenlSocket(Socket);

impl GenlSocket {
    fn open() -> io::Result<GenlSocket> {
        Socket::open(libc::NETLINK_GENERIC, NETLINK_TIMEOUT).map(GenlSocket)
    }

    /// Sends `request` and returns the kernel's answers up to its
    /// acknowledgement.
    fn transact(&mut self, request: MsgBuilder) -> Result<Vec<Answer>, NetlinkError> {
        Ok(self.0.transact(request, MAX_DATAGRAMS)?.answers)
    }
}

fn resolve_nbd_family(socket: &mut GenlSocket) -> Result<u16, NetlinkError> {
    socket
        .transact(family_request())?
        .iter()
        .filter(|answer| answer.kind == GENL_ID_CTRL)
        .find_map(|answer| family_id(&answer.payload))
        .ok_or_else(|| NetlinkError::Protocol("no family id in the controller's reply".into()))
}

// ---------------------------------------------------------------------------
// ioctl fallback

fn nbd_ioctl(fd: RawFd, request: libc::c_ulong, arg: libc::c_ulong) -> io::Result<()> {
    // SAFETY: the NBD ioctls used here take an integer argument, never a pointer.
    let rc = unsafe { libc::ioctl(fd, request as _, arg) };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

fn set_read_only(fd: RawFd, read_only: bool) -> io::Result<()> {
    let flag: libc::c_int = read_only.into();
    // SAFETY: BLKROSET reads one int through the pointer, which stays valid.
    let rc = unsafe { libc::ioctl(fd, BLKROSET as _, &flag as *const libc::c_int) };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

fn ioctl_attach(
    dev: &Path,
    device: File,
    sock: OwnedFd,
    info: &ExportInfo,
    block_size: u64,
) -> Result<mpsc::Receiver<io::Result<()>>, String> {
    let fd = device.as_raw_fd();
    let failed =
        |step: &str, e: io::Error| format!("cannot {step} of {}: {}", dev.display(), io_text(&e));
    let block_arg = libc::c_ulong::try_from(block_size)
        .map_err(|_| format!("{}: block size {block_size} is too large", dev.display()))?;
    nbd_ioctl(fd, NBD_SET_BLKSIZE, block_arg).map_err(|e| failed("set the block size", e))?;
    // NBD_SET_SIZE takes bytes in an unsigned long; 32-bit hosts count blocks.
    match libc::c_ulong::try_from(info.size) {
        Ok(bytes) => nbd_ioctl(fd, NBD_SET_SIZE, bytes),
        Err(_) => libc::c_ulong::try_from(info.size / block_size)
            .map_err(|_| io::Error::from_raw_os_error(libc::EFBIG))
            .and_then(|blocks| nbd_ioctl(fd, NBD_SET_SIZE_BLOCKS, blocks)),
    }
    .map_err(|e| failed("set the size", e))?;
    let flags = libc::c_ulong::from(info.transmission_flags);
    match nbd_ioctl(fd, NBD_SET_FLAGS, flags) {
        // Kernels before NBD_SET_FLAGS only learn about read-only devices.
        Err(e) if e.raw_os_error() == Some(libc::ENOTTY) => {
            set_read_only(fd, info.transmission_flags & TFLAG_READ_ONLY != 0)
        }
        other => other,
    }
    .map_err(|e| failed("set the flags", e))?;
    let sock_fd = libc::c_ulong::try_from(sock.as_raw_fd())
        .map_err(|_| format!("{}: invalid socket descriptor", dev.display()))?;
    nbd_ioctl(fd, NBD_SET_SOCK, sock_fd).map_err(|e| match e.raw_os_error() {
        Some(libc::EBUSY) => format!("{}: device is already in use", dev.display()),
        _ => failed("hand over the socket", e),
    })?;

    // NBD_DO_IT serves the device until it is disconnected; it needs a thread.
    let (done_tx, done_rx) = mpsc::channel();
    let name = dev.display().to_string();
    let spawned = std::thread::Builder::new()
        .name("nbd-do-it".into())
        .spawn(move || {
            let fd = device.as_raw_fd();
            let result = nbd_ioctl(fd, NBD_DO_IT, 0);
            let _ = nbd_ioctl(fd, NBD_CLEAR_QUE, 0);
            let _ = nbd_ioctl(fd, NBD_CLEAR_SOCK, 0);
            drop(sock);
            match &result {
                // EPIPE is how the kernel reports an ordinary disconnect.
                Err(e) if e.raw_os_error() != Some(libc::EPIPE) => {
                    tracing::warn!("{name}: kernel NBD client stopped: {}", io_text(e));
                }
                _ => tracing::debug!("{name}: disconnected"),
            }
            let _ = done_tx.send(result);
        });
    if let Err(e) = spawned {
        let _ = nbd_ioctl(fd, NBD_CLEAR_SOCK, 0);
        return Err(format!(
            "{}: cannot start the NBD thread: {e}",
            dev.display()
        ));
    }
    // A device that cannot start fails at once; report that instead of success.
    match done_rx.recv_timeout(DO_IT_GRACE) {
        Ok(Err(e)) if e.raw_os_error() != Some(libc::EPIPE) => {
            Err(format!("cannot start {}: {}", dev.display(), io_text(&e)))
        }
        // Already over (disconnected at once): pass the ending on.
        Ok(ended) => {
            let (tx, rx) = mpsc::channel();
            let _ = tx.send(ended);
            Ok(rx)
        }
        Err(_) => Ok(done_rx),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nbd::client::testing::{export, serve_handshake};
    use crate::netlink::msg::testing::{ne16, ne32, ne64};
    use crate::netlink::msg::{parse_error, split, NLMSG_ERROR, NLM_F_CAPPED};
    use std::os::unix::net::UnixStream;

    fn bytes(parts: &[Vec<u8>]) -> Vec<u8> {
        parts.concat()
    }

    #[test]
    fn device_index_comes_from_the_path() {
        assert_eq!(device_index(Path::new("/dev/nbd3")), Ok(3));
        assert_eq!(device_index(Path::new("/dev/nbd0")), Ok(0));
        assert_eq!(device_index(Path::new("/dev/nbd127")), Ok(127));
        for bad in [
            "/dev/sda",
            "/dev/nbd",
            "/dev/nbd3p1",
            "/dev/nbd-1",
            "/dev/nbd+1",
            "/tmp/nbd3",
            "nbd3",
            "/dev/nbd99999999999",
        ] {
            let err = device_index(Path::new(bad)).unwrap_err();
            assert_eq!(
                err,
                format!("'{bad}' is not an NBD device (expected /dev/nbdN)")
            );
        }
    }

    #[test]
    fn family_lookup_request_bytes() {
        let msg = family_request().finish(42);
        assert_eq!(
            msg,
            bytes(&[
                ne32(28),         // nlmsg_len: 16 + 4 + 8
                ne16(0x10),       // GENL_ID_CTRL
                ne16(0x1 | 0x4),  // NLM_F_REQUEST | NLM_F_ACK
                ne32(42),         // seq
                ne32(0),          // port id
                vec![3, 1, 0, 0], // CTRL_CMD_GETFAMILY, version 1
                ne16(8),          // attr len: 4 + "nbd\0"
                ne16(2),          // CTRL_ATTR_FAMILY_NAME
                b"nbd\0".to_vec(),
            ])
        );
    }

    #[test]
    fn connect_request_bytes() {
        let connect = Connect {
            index: 3,
            size: 1 << 30,
            block_size: 4096,
            server_flags: 0x0d,
            timeout_secs: None,
            socket_fd: 9,
        };
        let expected_attrs = bytes(&[
            ne16(8),
            ne16(1),
            ne32(3), // NBD_ATTR_INDEX
            ne16(12),
            ne16(2),
            ne64(1 << 30), // NBD_ATTR_SIZE_BYTES
            ne16(12),
            ne16(3),
            ne64(4096), // NBD_ATTR_BLOCK_SIZE_BYTES
            ne16(12),
            ne16(5),
            ne64(0x0d), // NBD_ATTR_SERVER_FLAGS
            ne16(12),
            ne16(6),
            ne64(0), // NBD_ATTR_CLIENT_FLAGS: no DISCONNECT_ON_CLOSE
            ne16(16),
            ne16(7 | 0x8000), // NBD_ATTR_SOCKETS (nested)
            ne16(12),
            ne16(1 | 0x8000), // NBD_SOCK_ITEM (nested)
            ne16(8),
            ne16(1),
            ne32(9), // NBD_SOCK_FD
        ]);
        assert_eq!(expected_attrs.len(), 72);
        let expected = bytes(&[
            ne32(16 + 4 + 72),
            ne16(0x1b), // the family id we were given
            ne16(0x5),
            ne32(7),
            ne32(0),
            vec![1, 1, 0, 0], // NBD_CMD_CONNECT, version 1
            expected_attrs.clone(),
        ]);
        assert_eq!(connect_request(0x1b, &connect).finish(7), expected);

        // With a timeout, NBD_ATTR_TIMEOUT sits before the sockets.
        let timed = Connect {
            timeout_secs: Some(30),
            ..connect
        };
        let msg = connect_request(0x1b, &timed).finish(7);
        assert_eq!(msg.len(), 16 + 4 + 72 + 12);
        assert_eq!(&msg[..4], &ne32(104)[..]);
        assert_eq!(
            &msg[20 + 56..20 + 68],
            &bytes(&[ne16(12), ne16(4), ne64(30)])[..]
        );
    }

    #[test]
    fn disconnect_request_bytes() {
        assert_eq!(
            disconnect_request(0x1b, 5).finish(1),
            bytes(&[
                ne32(28),
                ne16(0x1b),
                ne16(0x5),
                ne32(1),
                ne32(0),
                vec![2, 1, 0, 0], // NBD_CMD_DISCONNECT, version 1
                ne16(8),
                ne16(1),
                ne32(5), // NBD_ATTR_INDEX
            ])
        );
    }

    /// What the kernel's controller answers to CTRL_CMD_GETFAMILY "nbd",
    /// followed by the acknowledgement, in one datagram.
    fn newfamily_datagram(seq: u32, id: u16) -> Vec<u8> {
        let mut reply = MsgBuilder::new(GENL_ID_CTRL, 0);
        reply.fixed(&[CTRL_CMD_NEWFAMILY, 2, 0, 0]);
        reply.attr(CTRL_ATTR_FAMILY_NAME, b"nbd\0");
        reply.attr(CTRL_ATTR_FAMILY_ID, &id.to_ne_bytes()); // 6, padded to 8
        reply.attr(3, &1u32.to_ne_bytes()); // CTRL_ATTR_VERSION
        reply.nested(6, |ops| ops.attr(1, &1u32.to_ne_bytes())); // CTRL_ATTR_OPS
        let mut datagram = reply.finish(seq);
        let ack = bytes(&[
            ne32(16 + 4 + 16),
            ne16(NLMSG_ERROR),
            ne16(NLM_F_CAPPED),
            ne32(seq),
            ne32(1234),
            ne32(0),
            vec![0; 16], // the request's header
        ]);
        datagram.extend(ack);
        datagram
    }

    #[test]
    fn newfamily_reply_yields_the_family_id() {
        let datagram = newfamily_datagram(5, 0x1b);
        let messages = split(&datagram).expect("parse");
        assert_eq!(messages.len(), 2);
        assert_eq!(messages[0].kind, GENL_ID_CTRL);
        assert_eq!(family_id(messages[0].payload), Some(0x1b));
        assert_eq!(messages[1].kind, NLMSG_ERROR);
        assert_eq!(parse_error(messages[1].payload, messages[1].flags).errno, 0);
    }

    #[test]
    fn garbage_is_reported_not_trusted() {
        // Every truncation of a good datagram parses or fails, never panics,
        // and never yields a family id from half an attribute.
        let datagram = newfamily_datagram(5, 0x1b);
        for cut in 0..datagram.len() {
            if let Ok(messages) = split(&datagram[..cut]) {
                for m in messages.iter().filter(|m| m.kind == GENL_ID_CTRL) {
                    assert_eq!(family_id(m.payload), Some(0x1b));
                }
            }
        }
        // An attribute whose length overruns its message.
        let payload = bytes(&[
            vec![CTRL_CMD_NEWFAMILY, 2, 0, 0],
            ne16(200),
            ne16(1),
            ne16(7),
        ]);
        assert_eq!(family_id(&payload), None);
        // The wrong command carries no family id.
        let payload = bytes(&[vec![CTRL_CMD_GETFAMILY, 2, 0, 0], ne16(6), ne16(1), ne16(7)]);
        assert_eq!(family_id(&payload), None);
    }

    /// Whether this machine could really attach a device (then the tests
    /// below must not run: they would touch real kernel state).
    fn kernel_has_nbd() -> bool {
        Path::new("/dev/nbd0").exists()
            || GenlSocket::open()
                .map_err(NetlinkError::Io)
                .and_then(|mut s| resolve_nbd_family(&mut s))
                .is_ok()
    }

    #[test]
    fn attach_without_kernel_support_fails_in_one_line() {
        if kernel_has_nbd() {
            eprintln!("skipped: this kernel has nbd support");
            return;
        }
        let (client, server) = UnixStream::pair().expect("socketpair");
        let server = serve_handshake(server, export("disk", None, 1 << 20));
        let err = attach(Path::new("/dev/nbd0"), client, "disk").unwrap_err();
        assert!(!err.contains('\n'), "{err}");
        assert!(err.starts_with("/dev/nbd0: "), "{err}");
        if !Path::new("/dev/nbd0").exists() {
            assert!(
                err.contains("nbd support") || err.contains("netlink"),
                "{err}"
            );
        }
        // Our server saw the client leave, nothing worse.
        assert!(server.join().is_ok());
    }

    #[test]
    fn disconnect_without_kernel_support_fails_in_one_line() {
        if kernel_has_nbd() {
            eprintln!("skipped: this kernel has nbd support");
            return;
        }
        let err = disconnect(Path::new("/dev/nbd0")).unwrap_err();
        assert!(!err.contains('\n'), "{err}");
        assert!(err.starts_with("/dev/nbd0: "), "{err}");
    }

    #[test]
    fn attach_refuses_other_devices_before_talking_to_anyone() {
        let (client, server) = UnixStream::pair().expect("socketpair");
        let err = attach(Path::new("/dev/sda"), client, "").unwrap_err();
        assert_eq!(err, "'/dev/sda' is not an NBD device (expected /dev/nbdN)");
        // Nothing was written to the server side.
        drop(server);
        let err = disconnect(Path::new("/dev/loop0")).unwrap_err();
        assert!(err.contains("/dev/loop0"), "{err}");
    }

    #[test]
    fn kernel_block_size_is_at_least_a_sector() {
        let mut info = ExportInfo {
            size: 1 << 20,
            transmission_flags: 1,
            block_sizes: None,
        };
        assert_eq!(kernel_block_size(&info), 512);
        info.block_sizes = Some(client::BlockSizes {
            minimum: 4096,
            preferred: 4096,
            maximum: 1 << 25,
        });
        assert_eq!(kernel_block_size(&info), 4096);
    }
}
