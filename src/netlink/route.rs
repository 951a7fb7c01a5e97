//! rtnetlink's numbers (linux/rtnetlink.h, if_link.h, if_addr.h), shared by
//! ipmgmtd (which configures links and addresses) and zcip (which watches
//! them). What the messages mean stays with each applet.

pub const RTM_NEWLINK: u16 = 16;
pub const RTM_DELLINK: u16 = 17;
pub const RTM_GETLINK: u16 = 18;
pub const RTM_NEWADDR: u16 = 20;
pub const RTM_DELADDR: u16 = 21;
pub const RTM_GETADDR: u16 = 22;

/// Multicast groups a listener joins (nl_groups bits).
pub const RTMGRP_LINK: u32 = 0x1;
pub const RTMGRP_IPV4_IFADDR: u32 = 0x10;

pub const IFLA_ADDRESS: u16 = 1;
pub const IFLA_IFNAME: u16 = 3;
pub const IFLA_MTU: u16 = 4;
pub const IFLA_MIN_MTU: u16 = 50;
pub const IFLA_MAX_MTU: u16 = 51;

pub const IFA_ADDRESS: u16 = 1;
pub const IFA_LOCAL: u16 = 2;
pub const IFA_BROADCAST: u16 = 4;
pub const IFA_CACHEINFO: u16 = 6;
pub const IFA_FLAGS: u16 = 8;
pub const IFA_RT_PRIORITY: u16 = 9;
pub const IFA_PROTO: u16 = 11;

/// struct ifinfomsg: family, pad, type, index, flags, change.
pub const IFINFOMSG_LEN: usize = 16;
/// struct ifaddrmsg: family, prefixlen, flags, scope, index.
pub const IFADDRMSG_LEN: usize = 8;
