//! What the kernel reports about links and addresses, as plain data: the
//! netlink layer fills these in, the views and reconciliation read them.

use std::net::IpAddr;

use super::addrspec::StaticAddr;
use super::model::{AddrType, Family};

// Interface flags (linux/if.h).
pub const IFF_UP: u32 = 0x1;
pub const IFF_BROADCAST: u32 = 0x2;
pub const IFF_LOOPBACK: u32 = 0x8;
pub const IFF_POINTOPOINT: u32 = 0x10;
pub const IFF_RUNNING: u32 = 0x40;
pub const IFF_NOARP: u32 = 0x80;
pub const IFF_MULTICAST: u32 = 0x1000;

// Address flags (linux/if_addr.h).
pub const IFA_F_SECONDARY: u32 = 0x01;
pub const IFA_F_TEMPORARY: u32 = 0x01;
pub const IFA_F_NODAD: u32 = 0x02;
pub const IFA_F_DADFAILED: u32 = 0x08;
pub const IFA_F_DEPRECATED: u32 = 0x20;
pub const IFA_F_TENTATIVE: u32 = 0x40;
pub const IFA_F_PERMANENT: u32 = 0x80;

// Address origins (IFA_PROTO, Linux 6.1).
pub const IFAPROT_KERNEL_RA: u8 = 2;
pub const IFAPROT_KERNEL_LL: u8 = 3;

pub const INFINITY_LIFETIME: u32 = u32::MAX;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    pub flags: u32,
    pub mtu: u32,
    pub min_mtu: Option<u32>,
    pub max_mtu: Option<u32>,
    /// The link-layer address (empty when the link has none).
    pub hwaddr: Vec<u8>,
    /// From /proc/sys/net/ipv6/conf/IF/disable_ipv6 (filled in by the caller).
    pub ipv6: bool,
}

impl Link {
    pub fn has(&self, flag: u32) -> bool {
        self.flags & flag != 0
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KAddr {
    pub index: u32,
    pub family: Family,
    pub plen: u8,
    pub flags: u32,
    pub scope: u8,
    pub local: IpAddr,
    pub peer: Option<IpAddr>,
    pub proto: u8,
    pub preferred: u32,
    pub valid: u32,
    pub metric: Option<u32>,
}

impl KAddr {
    pub fn has(&self, flag: u32) -> bool {
        self.flags & flag != 0
    }

    /// Kernel-made IPv6 addresses (link-local, SLAAC) are addrconf; the
    /// rest, including addresses other tools added, are static.
    pub fn addr_type(&self) -> AddrType {
        if self.family != Family::Inet6 {
            return AddrType::Static;
        }
        let by_kernel = match self.proto {
            IFAPROT_KERNEL_RA | IFAPROT_KERNEL_LL => true,
            // Before Linux 6.1 there is no origin: dynamic, or a /64
            // link-local, is the kernel's doing.
            0 => !self.has(IFA_F_PERMANENT) || (is_link_local(&self.local) && self.plen == 64),
            _ => false,
        };
        if by_kernel {
            AddrType::Addrconf
        } else {
            AddrType::Static
        }
    }

    /// Whether this is the kernel's copy of a configured static address.
    pub fn matches(&self, addr: &StaticAddr) -> bool {
        self.local == addr.local && self.plen == addr.plen && self.peer == addr.remote
    }

    /// As a static address spec (for naming and rollback).
    pub fn as_static(&self) -> StaticAddr {
        StaticAddr {
            local: self.local,
            plen: self.plen,
            remote: self.peer,
        }
    }
}

pub fn is_link_local(addr: &IpAddr) -> bool {
    match addr {
        IpAddr::V6(a) => a.segments()[0] & 0xffc0 == 0xfe80,
        IpAddr::V4(a) => a.is_link_local(),
    }
}

/// The kernel's view in one piece.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KernelView {
    pub links: Vec<Link>,
    pub addrs: Vec<KAddr>,
}

impl KernelView {
    pub fn link(&self, name: &str) -> Option<&Link> {
        self.links.iter().find(|l| l.name == name)
    }

    pub fn link_by_index(&self, index: u32) -> Option<&Link> {
        self.links.iter().find(|l| l.index == index)
    }

    pub fn ifname_of(&self, addr: &KAddr) -> Option<&str> {
        self.link_by_index(addr.index).map(|l| l.name.as_str())
    }

    pub fn addrs_on<'a>(&'a self, ifname: &str) -> impl Iterator<Item = &'a KAddr> + 'a {
        let index = self.link(ifname).map(|l| l.index);
        self.addrs.iter().filter(move |a| Some(a.index) == index)
    }

    /// The kernel address for a static address on `ifname`.
    pub fn find_static(&self, ifname: &str, addr: &StaticAddr) -> Option<&KAddr> {
        self.addrs_on(ifname).find(|a| a.matches(addr))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kaddr(local: &str, plen: u8, flags: u32, proto: u8) -> KAddr {
        let local: IpAddr = local.parse().unwrap();
        KAddr {
            index: 2,
            family: Family::of(&local),
            plen,
            flags,
            scope: 0,
            local,
            peer: None,
            proto,
            preferred: INFINITY_LIFETIME,
            valid: INFINITY_LIFETIME,
            metric: None,
        }
    }

    #[test]
    fn kernel_made_ipv6_addresses_are_addrconf() {
        let ll = kaddr("fe80::1", 64, IFA_F_PERMANENT, IFAPROT_KERNEL_LL);
        assert_eq!(ll.addr_type(), AddrType::Addrconf);
        let slaac = kaddr("2001:db8::1", 64, 0, IFAPROT_KERNEL_RA);
        assert_eq!(slaac.addr_type(), AddrType::Addrconf);
        let old_kernel_slaac = kaddr("2001:db8::1", 64, 0, 0);
        assert_eq!(old_kernel_slaac.addr_type(), AddrType::Addrconf);
        let by_hand = kaddr("2001:db8::1", 64, IFA_F_PERMANENT, 0);
        assert_eq!(by_hand.addr_type(), AddrType::Static);
        let v4 = kaddr("10.0.0.1", 24, 0, 0);
        assert_eq!(v4.addr_type(), AddrType::Static);
    }

    #[test]
    fn link_local_detection() {
        assert!(is_link_local(&"fe80::1".parse().unwrap()));
        assert!(is_link_local(&"febf::1".parse().unwrap()));
        assert!(!is_link_local(&"fec0::1".parse().unwrap()));
        assert!(is_link_local(&"169.254.1.1".parse().unwrap()));
    }
}
