//! DHCPv4 for `-T dhcp` address objects: the message codec (`packet`),
//! the client state machine (`client`) and the lease file (`lease`), all
//! without I/O; the daemon's shell runs them.

pub mod client;
pub mod frame;
pub mod lease;
pub mod packet;
