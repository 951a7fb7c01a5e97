//! Netlink plumbing shared by the applets that talk to the kernel this way
//! (rtnetlink for ipmgmtd and zcip, generic netlink for nbd): messages are
//! built and parsed by pure code in [`msg`]; [`socket`] is the blocking
//! request/answer socket, the event listener's socket (zcip's) and the raw
//! send/receive calls under them; [`route`] holds rtnetlink's numbers.
//! Family-specific payloads (ifaddrmsg, NBD_ATTR_*, ...) stay in the applets.

pub mod msg;
pub mod route;
pub mod socket;
