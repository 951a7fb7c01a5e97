//! What the running DHCP clients report, shared between their runners
//! (which write) and the engine (which lists and waits).

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::sync::{Mutex, MutexGuard};
use std::time::Instant;

use crate::ipmgmtd::names::AddrObj;
use crate::ipmgmtd::view::{DhcpStatus, DhcpView};

struct Entry {
    status: DhcpStatus,
    expires: Option<Instant>,
}

#[derive(Default)]
pub struct DhcpTable(Mutex<HashMap<AddrObj, Entry>>);

impl DhcpTable {
    fn lock(&self) -> MutexGuard<'_, HashMap<AddrObj, Entry>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The client's state now; `expires`: when its lease runs out.
    pub fn publish(&self, aobj: &AddrObj, status: DhcpStatus, expires: Option<Instant>) {
        self.lock().insert(aobj.clone(), Entry { status, expires });
    }

    pub fn remove(&self, aobj: &AddrObj) {
        self.lock().remove(aobj);
    }

    /// The addresses the clients hold now, by interface name.
    pub fn leases(&self) -> Vec<(String, Ipv4Addr, u8)> {
        self.lock()
            .iter()
            .filter_map(|(aobj, e)| {
                let (addr, plen) = e.status.addr?;
                Some((aobj.ifname.clone(), addr, plen))
            })
            .collect()
    }

    pub fn bound(&self, aobj: &AddrObj) -> bool {
        self.lock()
            .get(aobj)
            .is_some_and(|e| e.status.state == "ok")
    }

    /// Every client, with the seconds left on its lease at `now`.
    pub fn view(&self, now: Instant) -> DhcpView {
        self.lock()
            .iter()
            .map(|(aobj, e)| {
                let mut status = e.status.clone();
                if let Some(at) = e.expires {
                    status.left = Some(at.saturating_duration_since(now).as_secs());
                }
                (aobj.clone(), status)
            })
            .collect()
    }
}
