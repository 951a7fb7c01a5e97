//! What the engine asks of the kernel, as a trait: links and addresses
//! (rtnetlink), /proc/sys, and the IPv4 duplicate-address probe. The real
//! one talks to the kernel of the daemon's network namespace; unit tests
//! put a fake in its place (`fake_kernel`).

use std::net::{IpAddr, Ipv4Addr};

use super::netlink::Netlink;
use super::{probe, sysctl};
use crate::ipmgmtd::addrspec::StaticAddr;
use crate::ipmgmtd::kstate::{KAddr, KernelView, Link};
use crate::ipmgmtd::model::{Error, Family};
use crate::ipmgmtd::nlmsg::AddrOptions;

pub trait Kernel: Send {
    /// Every link, with its IPv6 switch filled in.
    fn links(&mut self) -> Result<Vec<Link>, Error>;
    fn addrs(&mut self) -> Result<Vec<KAddr>, Error>;
    fn add_addr(
        &mut self,
        index: u32,
        addr: &StaticAddr,
        options: &AddrOptions,
    ) -> Result<(), Error>;
    fn del_addr(
        &mut self,
        index: u32,
        family: Family,
        local: &IpAddr,
        plen: u8,
        peer: Option<&IpAddr>,
    ) -> Result<(), Error>;
    /// Sets the link flags in `mask` to their values in `flags`.
    fn set_flags(&mut self, index: u32, flags: u32, mask: u32) -> Result<(), Error>;
    fn set_mtu(&mut self, index: u32, mtu: u32) -> Result<(), Error>;
    /// A /proc/sys value (path relative to /proc/sys), newline trimmed.
    fn sysctl_read(&mut self, path: &str) -> Result<String, Error>;
    fn sysctl_write(&mut self, path: &str, value: &str) -> Result<(), Error>;
    /// Whether another host answers ARP for `addr` (RFC 5227 probe). This
    /// one takes time: the shell calls it with no lock held.
    fn probe_ipv4(&mut self, ifindex: u32, hwaddr: &[u8], addr: Ipv4Addr) -> Result<bool, Error>;

    fn view(&mut self) -> Result<KernelView, Error> {
        Ok(KernelView {
            links: self.links()?,
            addrs: self.addrs()?,
        })
    }

    fn del_kaddr(&mut self, a: &KAddr) -> Result<(), Error> {
        self.del_addr(a.index, a.family, &a.local, a.plen, a.peer.as_ref())
    }

    /// Writes only when the value differs (a write can have side effects,
    /// such as addr_gen_mode regenerating addresses).
    fn sysctl_write_if_changed(&mut self, path: &str, value: &str) -> Result<(), Error> {
        match self.sysctl_read(path) {
            Ok(current) if current.split_whitespace().eq(value.split_whitespace()) => Ok(()),
            _ => self.sysctl_write(path, value),
        }
    }
}

/// Opens a kernel handle per request (each has its own netlink socket, so
/// readers run side by side).
pub trait KernelOpener: Send + Sync {
    fn open(&self) -> Result<Box<dyn Kernel>, Error>;
}

/// The kernel of this network namespace.
pub struct RealKernel {
    nl: Netlink,
}

pub struct RealOpener;

impl KernelOpener for RealOpener {
    fn open(&self) -> Result<Box<dyn Kernel>, Error> {
        Ok(Box::new(RealKernel {
            nl: Netlink::open()?,
        }))
    }
}

impl Kernel for RealKernel {
    fn links(&mut self) -> Result<Vec<Link>, Error> {
        self.nl.links()
    }

    fn addrs(&mut self) -> Result<Vec<KAddr>, Error> {
        self.nl.addrs()
    }

    fn add_addr(
        &mut self,
        index: u32,
        addr: &StaticAddr,
        options: &AddrOptions,
    ) -> Result<(), Error> {
        self.nl.add_addr(index, addr, options)
    }

    fn del_addr(
        &mut self,
        index: u32,
        family: Family,
        local: &IpAddr,
        plen: u8,
        peer: Option<&IpAddr>,
    ) -> Result<(), Error> {
        self.nl.del_addr(index, family, local, plen, peer)
    }

    fn set_flags(&mut self, index: u32, flags: u32, mask: u32) -> Result<(), Error> {
        self.nl.set_flags(index, flags, mask)
    }

    fn set_mtu(&mut self, index: u32, mtu: u32) -> Result<(), Error> {
        self.nl.set_mtu(index, mtu)
    }

    fn sysctl_read(&mut self, path: &str) -> Result<String, Error> {
        sysctl::read(path)
    }

    fn sysctl_write(&mut self, path: &str, value: &str) -> Result<(), Error> {
        sysctl::write(path, value)
    }

    fn probe_ipv4(&mut self, ifindex: u32, hwaddr: &[u8], addr: Ipv4Addr) -> Result<bool, Error> {
        probe::ipv4_in_use(ifindex, hwaddr, addr)
    }
}
