//! The interface zcip manages: its index and Ethernet address.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use super::error::{Error, MacAddressError};
use crate::arp::Mac;

#[derive(Clone, Debug)]
pub struct Interface {
    pub name: String,
    pub index: u32,
    pub mac: Mac,
}

impl Interface {
    /// Looks `name` up; fails with a message users can act on if it is
    /// missing or not Ethernet-like.
    pub fn lookup(name: &str) -> Result<Interface, Error> {
        let c_name = CString::new(name).map_err(|_| Error::InterfaceName(name.to_owned()))?;
        // SAFETY: a valid NUL-terminated string.
        let index = unsafe { libc::if_nametoindex(c_name.as_ptr()) };
        if index == 0 {
            return Err(Error::Interface {
                name: name.to_owned(),
                error: io::Error::last_os_error(),
            });
        }
        let mac = hardware_address(name).map_err(|reason| Error::MacAddress {
            name: name.to_owned(),
            reason,
        })?;
        Ok(Interface {
            name: name.to_owned(),
            index,
            mac,
        })
    }
}

fn hardware_address(name: &str) -> Result<Mac, MacAddressError> {
    // SAFETY: plain socket creation; the fd is owned at once.
    let raw = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if raw < 0 {
        return Err(MacAddressError::Io(io::Error::last_os_error()));
    }
    // SAFETY: `raw` is a fresh descriptor nobody else owns.
    let sock = unsafe { OwnedFd::from_raw_fd(raw) };
    // SAFETY: ifreq is plain data; all-zero is a valid value.
    let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
    for (slot, byte) in request.ifr_name.iter_mut().zip(name.bytes()) {
        *slot = byte as libc::c_char;
    }
    // SAFETY: SIOCGIFHWADDR fills the ifreq we pass, which outlives the call.
    let rc = unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFHWADDR as _, &mut request) };
    if rc < 0 {
        return Err(MacAddressError::Io(io::Error::last_os_error()));
    }
    // SAFETY: SIOCGIFHWADDR set the hwaddr member of the union.
    let hwaddr = unsafe { request.ifr_ifru.ifru_hwaddr };
    if hwaddr.sa_family != libc::ARPHRD_ETHER {
        return Err(MacAddressError::NotEthernet(hwaddr.sa_family));
    }
    let mut mac = [0u8; 6];
    for (out, byte) in mac.iter_mut().zip(hwaddr.sa_data.iter()) {
        *out = *byte as u8;
    }
    Ok(mac)
}
