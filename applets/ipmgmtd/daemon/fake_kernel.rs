//! An in-memory kernel for the engine's unit tests: links, addresses and
//! /proc/sys values in a shared table, IPv6 DAD that stays tentative until
//! the test settles it, and ARP probes answered from a list of addresses
//! "another host" holds.

use std::collections::{BTreeMap, HashSet};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::{Arc, Mutex, MutexGuard};

use super::kernel::{Kernel, KernelOpener};
use crate::ipmgmtd::addrspec::StaticAddr;
use crate::ipmgmtd::kstate::{
    KAddr, Link, IFA_F_DADFAILED, IFA_F_DEPRECATED, IFA_F_PERMANENT, IFA_F_TENTATIVE, IFF_RUNNING,
    IFF_UP, INFINITY_LIFETIME,
};
use crate::ipmgmtd::model::{Error, Family, Status};
use crate::ipmgmtd::nlmsg::AddrOptions;

#[derive(Default)]
pub struct FakeState {
    pub links: Vec<Link>,
    pub addrs: Vec<KAddr>,
    pub sysctls: BTreeMap<String, String>,
    /// Links (by index) where a new IPv6 address starts tentative.
    pub dad_links: HashSet<u32>,
    /// IPv4 addresses another host on the link answers ARP for.
    pub taken: HashSet<Ipv4Addr>,
    /// Probes run so far.
    pub probes: usize,
}

#[derive(Clone, Default)]
pub struct FakeKernel {
    state: Arc<Mutex<FakeState>>,
}

impl FakeKernel {
    /// A kernel with `lo` and the given Ethernet links (index 2, 3, ...),
    /// down, with the sysctls the engine reads.
    pub fn with_links(names: &[&str]) -> FakeKernel {
        let fake = FakeKernel::default();
        {
            let mut st = fake.state();
            let mut all = vec!["lo"];
            all.extend_from_slice(names);
            for (i, name) in all.iter().enumerate() {
                let index = i as u32 + 1;
                st.links.push(Link {
                    index,
                    name: (*name).to_owned(),
                    flags: if index == 1 { 0x8 } else { 0x2 | 0x1000 },
                    mtu: if index == 1 { 65536 } else { 1500 },
                    min_mtu: Some(68),
                    max_mtu: Some(9000),
                    hwaddr: if index == 1 {
                        vec![0; 6]
                    } else {
                        vec![2, 0, 0, 0, 0, index as u8]
                    },
                    ipv6: true,
                });
                for (leaf, value) in [
                    ("disable_ipv6", "0"),
                    ("addr_gen_mode", "1"),
                    ("mtu", "1500"),
                    ("forwarding", "0"),
                ] {
                    st.sysctls
                        .insert(format!("net/ipv6/conf/{name}/{leaf}"), value.into());
                }
                st.sysctls
                    .insert(format!("net/ipv4/conf/{name}/forwarding"), "0".into());
            }
            st.sysctls.insert("net/ipv4/ip_forward".into(), "0".into());
            st.sysctls.insert(
                "net/ipv4/tcp_available_congestion_control".into(),
                "reno cubic".into(),
            );
        }
        fake
    }

    pub fn state(&self) -> MutexGuard<'_, FakeState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn index_of(&self, name: &str) -> u32 {
        self.state()
            .links
            .iter()
            .find(|l| l.name == name)
            .map(|l| l.index)
            .unwrap_or(0)
    }

    /// Ends DAD on every tentative address: failed or passed.
    pub fn settle_dad(&self, failed: bool) {
        for a in self.state().addrs.iter_mut() {
            if a.has(IFA_F_TENTATIVE) {
                a.flags &= !IFA_F_TENTATIVE;
                if failed {
                    a.flags |= IFA_F_DADFAILED;
                }
            }
        }
    }

    /// The addresses on a link, as text (`10.0.0.1/24`).
    pub fn addrs_on(&self, name: &str) -> Vec<String> {
        let index = self.index_of(name);
        self.state()
            .addrs
            .iter()
            .filter(|a| a.index == index)
            .map(|a| format!("{}/{}", a.local, a.plen))
            .collect()
    }
}

impl KernelOpener for FakeKernel {
    fn open(&self) -> Result<Box<dyn Kernel>, Error> {
        Ok(Box::new(self.clone()))
    }
}

fn no_link() -> Error {
    Error::errno(libc::ENODEV, None)
}

impl Kernel for FakeKernel {
    fn links(&mut self) -> Result<Vec<Link>, Error> {
        let st = self.state();
        let mut links = st.links.clone();
        for l in &mut links {
            l.ipv6 = st
                .sysctls
                .get(&format!("net/ipv6/conf/{}/disable_ipv6", l.name))
                .is_some_and(|v| v == "0");
        }
        Ok(links)
    }

    fn addrs(&mut self) -> Result<Vec<KAddr>, Error> {
        Ok(self.state().addrs.clone())
    }

    fn add_addr(
        &mut self,
        index: u32,
        addr: &StaticAddr,
        options: &AddrOptions,
    ) -> Result<(), Error> {
        let mut st = self.state();
        if !st.links.iter().any(|l| l.index == index) {
            return Err(no_link());
        }
        let existing = st
            .addrs
            .iter()
            .position(|a| a.index == index && a.local == addr.local);
        if existing.is_some() && !options.replace {
            return Err(Error::errno(libc::EEXIST, None));
        }
        let family = addr.family();
        let mut flags = IFA_F_PERMANENT;
        if options.deprecated {
            flags |= IFA_F_DEPRECATED;
        }
        if family == Family::Inet6 && st.dad_links.contains(&index) && existing.is_none() {
            flags |= IFA_F_TENTATIVE;
        }
        let new = KAddr {
            index,
            family,
            plen: addr.plen,
            flags,
            scope: 0,
            local: addr.local,
            peer: addr.remote,
            proto: 0,
            preferred: if options.deprecated {
                0
            } else {
                INFINITY_LIFETIME
            },
            valid: options.valid,
            metric: (options.metric != 0).then_some(options.metric),
        };
        match existing {
            Some(i) => {
                let keep = st.addrs[i].flags & (IFA_F_TENTATIVE | IFA_F_DADFAILED);
                st.addrs[i] = KAddr {
                    flags: new.flags | keep,
                    ..new
                };
            }
            None => st.addrs.push(new),
        }
        Ok(())
    }

    fn del_addr(
        &mut self,
        index: u32,
        _family: Family,
        local: &IpAddr,
        plen: u8,
        _peer: Option<&IpAddr>,
    ) -> Result<(), Error> {
        let mut st = self.state();
        let before = st.addrs.len();
        st.addrs
            .retain(|a| !(a.index == index && a.local == *local && a.plen == plen));
        if st.addrs.len() == before {
            return Err(Error::new(Status::AddrNotAvail));
        }
        Ok(())
    }

    fn set_flags(&mut self, index: u32, flags: u32, mask: u32) -> Result<(), Error> {
        let mut st = self.state();
        let link = st
            .links
            .iter_mut()
            .find(|l| l.index == index)
            .ok_or_else(no_link)?;
        link.flags = (link.flags & !mask) | (flags & mask);
        // The cable is in: carrier follows the administrative state.
        if link.flags & IFF_UP != 0 {
            link.flags |= IFF_RUNNING;
        } else {
            link.flags &= !IFF_RUNNING;
        }
        Ok(())
    }

    fn set_mtu(&mut self, index: u32, mtu: u32) -> Result<(), Error> {
        let mut st = self.state();
        let link = st
            .links
            .iter_mut()
            .find(|l| l.index == index)
            .ok_or_else(no_link)?;
        link.mtu = mtu;
        Ok(())
    }

    fn sysctl_read(&mut self, path: &str) -> Result<String, Error> {
        self.state()
            .sysctls
            .get(path)
            .cloned()
            .ok_or_else(|| Error::errno(libc::ENOENT, Some(path.to_owned())))
    }

    fn sysctl_write(&mut self, path: &str, value: &str) -> Result<(), Error> {
        let mut st = self.state();
        match st.sysctls.get_mut(path) {
            Some(v) => {
                *v = value.to_owned();
                Ok(())
            }
            None => Err(Error::errno(libc::ENOENT, Some(path.to_owned()))),
        }
    }

    fn probe_ipv4(&mut self, _ifindex: u32, _hwaddr: &[u8], addr: Ipv4Addr) -> Result<bool, Error> {
        let mut st = self.state();
        st.probes += 1;
        Ok(st.taken.contains(&addr))
    }
}
