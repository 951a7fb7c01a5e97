//! Carries out requests. Every change goes to the kernel (through the
//! `Kernel` trait: rtnetlink, /proc/sys), the address-object map and,
//! unless temporary, the datastore, under one write lock. A change that
//! fails halfway is undone from a snapshot taken before it; the same
//! snapshot is what `ipadm try` rolls back to.
//!
//! Nothing here waits. What takes time — the kernel's IPv6 duplicate
//! address detection, an ARP probe for an IPv4 address — becomes an
//! action for the shell (`Next::Poll`, `Next::Probe`); the request's reply
//! is held back and the lock released, so other clients are served
//! meanwhile. The shell comes back with `poll` (passing the time) or
//! `probed` (the probe's result).
//!
//! By concern: `interfaces`, `addresses`, `properties`, `show` (reads);
//! this module holds the transactions (snapshot, commit, undo, trials)
//! and the waits.

mod addresses;
mod interfaces;
mod properties;
mod show;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant};

use super::dhcp_table::DhcpTable;
use super::files;
use super::kernel::{Kernel, KernelOpener};
use super::snapshot::Snapshot;
use super::store::Store;
use crate::ipmgmtd::addrspec::StaticAddr;
use crate::ipmgmtd::aobjmap::{AobjMap, MapAddr};
use crate::ipmgmtd::datastore::{Body, Datastore, Record};
use crate::ipmgmtd::kstate::{KernelView, Link};
use crate::ipmgmtd::model::{Error, Family, Status};
use crate::ipmgmtd::names::AddrObj;
use crate::ipmgmtd::paths::Paths;
use crate::ipmgmtd::request::{Reply, Request};

pub use self::properties::apply_module_props;

/// How long a request waits for IPv6 duplicate address detection.
const DAD_WAIT: Duration = Duration::from_secs(5);
/// How often the kernel's DAD verdict is looked at.
const DAD_POLL: Duration = Duration::from_millis(100);
const CACHE_MODE: u32 = 0o644;

struct Trial {
    id: u64,
    snapshot: Snapshot,
}

/// A request whose reply waits for duplicate address detection.
#[derive(Clone, Debug)]
enum Wait {
    /// The kernel runs IPv6 DAD on an address we added: watch its flags.
    Dad6 {
        index: u32,
        addr: StaticAddr,
        deadline: Instant,
        /// Whether a duplicate fails the request (refresh-addr) or not
        /// (create-addr: the object stays, in state duplicate).
        report: bool,
        /// What to answer when DAD succeeds (warnings of the change).
        reply: Reply,
    },
    /// `create-addr -T dhcp -w`: until the client is bound, or the
    /// deadline (None: forever).
    Dhcp {
        aobj: AddrObj,
        deadline: Option<Instant>,
        /// What to answer once bound (a trial's note among it).
        reply: Reply,
    },
    /// `refresh-addr` of an IPv4 address: the shell probes, we decide.
    Probe4 {
        aobj: AddrObj,
        addr: StaticAddr,
        deprecated: bool,
    },
}

struct State {
    db: Datastore,
    map: AobjMap,
    store: Store,
    trial: Option<Trial>,
}

pub struct Engine {
    paths: Paths,
    kernel: Box<dyn KernelOpener>,
    /// What the DHCP clients report (written by the shell's runners).
    dhcp: Arc<DhcpTable>,
    state: RwLock<State>,
    /// Requests waiting on DAD, by id; kept apart from `state` so that
    /// adding one never waits for a reader.
    waits: Mutex<HashMap<u64, Wait>>,
    next_id: AtomicU64,
}

/// An ARP probe the shell is to run (no lock held) for a waiting request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Probe {
    pub ifindex: u32,
    pub hwaddr: Vec<u8>,
    pub addr: Ipv4Addr,
}

/// What the shell starts or stops for a change that committed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DhcpEffect {
    Start {
        aobj: AddrObj,
        ifindex: u32,
        mac: [u8; 6],
        hostname: Option<String>,
    },
    /// `release`: give the lease back (RELEASE); else let it run out.
    Stop {
        aobj: AddrObj,
        release: bool,
    },
    Refresh {
        aobj: AddrObj,
        inform: bool,
    },
}

/// What the shell does next for a request.
#[derive(Debug)]
pub enum Next {
    /// Send this reply; the request is done.
    Reply(Reply),
    /// Call `poll(id, now)` again after this long.
    Poll { id: u64, after: Duration },
    /// Run the probe, then call `probed(id, result)`.
    Probe { id: u64, probe: Probe },
}

/// The next step for a request, and the rollback timer to arm when it
/// starts a trial.
#[derive(Debug)]
pub struct Outcome {
    pub next: Next,
    pub trial: Option<(u64, Duration)>,
    /// To carry out before the next step.
    pub effects: Vec<DhcpEffect>,
}

impl Outcome {
    fn reply(reply: Reply) -> Outcome {
        Outcome {
            next: Next::Reply(reply),
            trial: None,
            effects: Vec::new(),
        }
    }
}

impl Engine {
    /// Builds the engine around a loaded datastore: reads the map cache
    /// and reconciles it with the kernel before any request is served.
    /// `origin` names this boot and network namespace.
    pub fn new(
        paths: &Paths,
        kernel: Box<dyn KernelOpener>,
        dhcp: Arc<DhcpTable>,
        origin: String,
        store: Store,
        db: Datastore,
    ) -> Result<(Engine, Vec<String>), String> {
        files::remove_leftover(&paths.aobjmap);
        let mut notes = Vec::new();
        let (mut map, bad) = match files::read_optional(&paths.aobjmap) {
            Ok(Some(bytes)) => AobjMap::parse(&bytes),
            Ok(None) => (AobjMap::default(), Vec::new()),
            Err(e) => {
                notes.push(format!("cannot read {}: {e}", paths.aobjmap.display()));
                (AobjMap::default(), Vec::new())
            }
        };
        for b in bad {
            notes.push(format!("{}: {b}", paths.aobjmap.display()));
        }
        if map.origin != origin {
            if map != AobjMap::default() {
                notes.push(format!(
                    "{} describes another boot or network namespace; starting afresh",
                    paths.aobjmap.display()
                ));
            }
            map = AobjMap::default();
            map.origin = origin;
        }
        let mut k = kernel.open().map_err(|e| e.to_string())?;
        let view = k
            .view()
            .map_err(|e| format!("reading the kernel's addresses: {e}"))?;
        notes.extend(map.reconcile(&view, &db));
        files::write_atomic(&paths.aobjmap, &map.serialize(), CACHE_MODE)
            .map_err(|e| format!("cannot write {}: {e}", paths.aobjmap.display()))?;
        let engine = Engine {
            paths: paths.clone(),
            kernel,
            dhcp,
            state: RwLock::new(State {
                db,
                map,
                store,
                trial: None,
            }),
            waits: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
        };
        Ok((engine, notes))
    }

    fn read(&self) -> RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(|p| p.into_inner())
    }

    fn waits(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Wait>> {
        self.waits.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn new_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Opens a kernel handle for the shell's own use (probes).
    pub fn open_kernel(&self) -> Result<Box<dyn Kernel>, Error> {
        self.kernel.open()
    }

    /// Handles an authorized request at time `now`.
    pub fn handle(&self, request: Request, now: Instant) -> Outcome {
        if !request.is_write() {
            let st = self.read();
            let result = self
                .kernel
                .open()
                .and_then(|mut k| show::show(&st, k.as_mut(), &self.dhcp.view(now), &request));
            return Outcome::reply(result.unwrap_or_else(Reply::error));
        }
        let mut st = self.write();
        if let Request::Confirm = request {
            return Outcome::reply(match st.trial.take() {
                Some(_) => Reply {
                    info: Some("change confirmed".into()),
                    ..Reply::ok()
                },
                None => Reply::error(Status::NoPending.into()),
            });
        }
        if st.trial.is_some() {
            return Outcome::reply(Reply::error(Status::Busy.into()));
        }
        let mut kernel = match self.kernel.open() {
            Ok(k) => k,
            Err(e) => return Outcome::reply(Reply::error(e)),
        };
        let k = kernel.as_mut();
        let snapshot = match Snapshot::take(k, &st.db, &st.map, self.dhcp.leases()) {
            Ok(s) => s,
            Err(e) => return Outcome::reply(Reply::error(e)),
        };
        let (change, trial_seconds) = match request {
            Request::Try { seconds, change } => (*change, Some(seconds)),
            other => (other, None),
        };
        let mut txn = Txn {
            st: &mut st,
            k,
            view: snapshot.view.clone(),
            warnings: Vec::new(),
            wait: None,
            effects: Vec::new(),
            release: false,
            now,
        };
        let result = txn.apply(&change);
        let wait = txn.wait.take();
        let effects = std::mem::take(&mut txn.effects);
        let result = result.and_then(|mut reply| {
            if let Some(warning) = self.commit(&mut st, &snapshot)? {
                reply.warnings.push(warning);
            }
            Ok(reply)
        });
        match result {
            Ok(mut reply) => {
                let trial = trial_seconds.map(|seconds| {
                    let id = self.new_id();
                    st.trial = Some(Trial { id, snapshot });
                    reply.info = Some(format!(
                        "change applied; run 'ipadm confirm' within {seconds} seconds or it is rolled back"
                    ));
                    (id, Duration::from_secs(u64::from(seconds)))
                });
                drop(st);
                let next = match wait {
                    None => Next::Reply(reply),
                    Some(wait) => self.start_wait(wait, reply),
                };
                Outcome {
                    next,
                    trial,
                    effects,
                }
            }
            Err(e) => {
                for p in self.restore(&mut st, kernel.as_mut(), &snapshot) {
                    tracing::warn!("undoing a failed {}: {p}", change.op());
                }
                Outcome::reply(Reply::error(e))
            }
        }
    }

    /// Parks a request on its wait; the reply so far goes with it.
    fn start_wait(&self, mut wait: Wait, reply: Reply) -> Next {
        let id = self.new_id();
        let next = match &wait {
            Wait::Dad6 { .. } | Wait::Dhcp { .. } => Next::Poll {
                id,
                after: DAD_POLL,
            },
            Wait::Probe4 { aobj, addr, .. } => {
                let link = self.read_link(&aobj.ifname);
                match (link, addr.local) {
                    (Some(link), std::net::IpAddr::V4(v4)) => Next::Probe {
                        id,
                        probe: Probe {
                            ifindex: link.index,
                            hwaddr: link.hwaddr,
                            addr: v4,
                        },
                    },
                    _ => return Next::Reply(Reply::error(Status::Enxio.into())),
                }
            }
        };
        if let Wait::Dad6 { reply: held, .. } | Wait::Dhcp { reply: held, .. } = &mut wait {
            *held = reply;
        }
        self.waits().insert(id, wait);
        next
    }

    fn read_link(&self, ifname: &str) -> Option<Link> {
        let mut k = self.kernel.open().ok()?;
        k.links().ok()?.into_iter().find(|l| l.name == ifname)
    }

    /// A request waiting on IPv6 DAD, looked at again at `now`.
    pub fn poll(&self, id: u64, now: Instant) -> Outcome {
        let Some(wait) = self.waits().get(&id).cloned() else {
            return Outcome::reply(Reply::error(Error::with(Status::Failure, "no such wait")));
        };
        let (index, addr, deadline, report, reply) = match wait {
            Wait::Dad6 {
                index,
                addr,
                deadline,
                report,
                reply,
            } => (index, addr, deadline, report, reply),
            Wait::Dhcp {
                aobj,
                deadline,
                reply,
            } => return self.poll_dhcp(id, &aobj, deadline, reply, now),
            Wait::Probe4 { .. } => {
                return Outcome::reply(Reply::error(Error::with(Status::Failure, "not a DAD wait")))
            }
        };
        let verdict = self.kernel.open().and_then(|mut k| k.addrs()).map(|addrs| {
            addrs
                .into_iter()
                .find(|a| a.index == index && a.matches(&addr))
        });
        let done = |reply: Reply| {
            self.waits().remove(&id);
            Outcome::reply(reply)
        };
        use crate::ipmgmtd::kstate::{IFA_F_DADFAILED, IFA_F_TENTATIVE};
        match verdict {
            Err(e) => done(Reply::error(e)),
            Ok(None) => done(Reply::error(Error::with(
                Status::Failure,
                "address vanished during DAD",
            ))),
            Ok(Some(a)) if a.has(IFA_F_DADFAILED) && report => {
                done(Reply::error(Status::DadFound.into()))
            }
            Ok(Some(a)) if a.has(IFA_F_DADFAILED) => done(reply),
            Ok(Some(a)) if !a.has(IFA_F_TENTATIVE) => done(reply),
            // Still tentative: the kernel goes on; we stop waiting.
            Ok(Some(_)) if now >= deadline => done(reply),
            Ok(Some(_)) => Outcome {
                next: Next::Poll {
                    id,
                    after: DAD_POLL,
                },
                trial: None,
                effects: Vec::new(),
            },
        }
    }

    /// `create-addr -T dhcp` waiting for its lease.
    fn poll_dhcp(
        &self,
        id: u64,
        aobj: &AddrObj,
        deadline: Option<Instant>,
        reply: Reply,
        now: Instant,
    ) -> Outcome {
        let bound = self.dhcp.bound(aobj);
        let gone = self.read().map.addr(aobj).is_none();
        if bound || gone || deadline.is_some_and(|d| now >= d) {
            self.waits().remove(&id);
            return Outcome::reply(if bound {
                reply
            } else if gone {
                Reply::error(Status::NotFound.into())
            } else {
                // The client goes on trying, as illumos' does.
                Reply::error(Status::DhcpTimeout.into())
            });
        }
        Outcome {
            next: Next::Poll {
                id,
                after: DAD_POLL,
            },
            trial: None,
            effects: Vec::new(),
        }
    }

    /// DHCP clients to start for the objects the map holds (a restart of
    /// the daemon while they were running).
    pub fn dhcp_resume(&self) -> Vec<DhcpEffect> {
        let st = self.read();
        let mut effects = Vec::new();
        let links = self
            .kernel
            .open()
            .and_then(|mut k| k.links())
            .unwrap_or_default();
        for e in st.map.addrs() {
            if let MapAddr::Dhcp { hostname } = &e.kind {
                let link = links.iter().find(|l| l.name == e.aobj.ifname);
                if let Some((link, mac)) =
                    link.and_then(|l| Some((l, <[u8; 6]>::try_from(l.hwaddr.as_slice()).ok()?)))
                {
                    effects.push(DhcpEffect::Start {
                        aobj: e.aobj.clone(),
                        ifindex: link.index,
                        mac,
                        hostname: hostname.clone(),
                    });
                }
            }
        }
        effects
    }

    /// The result of the probe a waiting `refresh-addr` asked for.
    pub fn probed(&self, id: u64, result: Result<bool, Error>) -> Outcome {
        let Some(wait) = self.waits().remove(&id) else {
            return Outcome::reply(Reply::error(Error::with(Status::Failure, "no such wait")));
        };
        let Wait::Probe4 {
            aobj,
            addr,
            deprecated,
        } = wait
        else {
            return Outcome::reply(Reply::error(Error::with(Status::Failure, "not a probe")));
        };
        let in_use = match result {
            Ok(in_use) => in_use,
            Err(e) => return Outcome::reply(Reply::error(e)),
        };
        let mut st = self.write();
        let mut kernel = match self.kernel.open() {
            Ok(k) => k,
            Err(e) => return Outcome::reply(Reply::error(e)),
        };
        let before_map = st.map.clone();
        let result =
            addresses::settle_probe(&mut st, kernel.as_mut(), &aobj, &addr, deprecated, in_use);
        if st.map != before_map {
            if let Err(e) =
                files::write_atomic(&self.paths.aobjmap, &st.map.serialize(), CACHE_MODE)
            {
                tracing::warn!("{}: {e}", self.paths.aobjmap.display());
            }
        }
        Outcome::reply(result.unwrap_or_else(Reply::error))
    }

    /// How many requests wait on DAD now.
    #[cfg(test)]
    pub fn waiting(&self) -> usize {
        self.waits().len()
    }

    /// Writes the map cache and the datastore if the change touched them;
    /// a warning says the datastore went to /run instead of /etc.
    fn commit(&self, st: &mut State, before: &Snapshot) -> Result<Option<String>, Error> {
        if st.map != before.map {
            files::write_atomic(&self.paths.aobjmap, &st.map.serialize(), CACHE_MODE)
                .map_err(|e| Error::io(&e))?;
        }
        if st.db != before.db {
            let db = st.db.clone();
            return st.store.save(&db);
        }
        Ok(None)
    }

    fn restore(&self, st: &mut State, k: &mut dyn Kernel, snapshot: &Snapshot) -> Vec<String> {
        let mut problems = snapshot.restore_kernel(k, &self.dhcp.leases());
        let map_changed = st.map != snapshot.map;
        let db_changed = st.db != snapshot.db;
        st.map = snapshot.map.clone();
        st.db = snapshot.db.clone();
        if map_changed {
            if let Err(e) =
                files::write_atomic(&self.paths.aobjmap, &st.map.serialize(), CACHE_MODE)
            {
                problems.push(format!("{}: {e}", self.paths.aobjmap.display()));
            }
        }
        if db_changed {
            let db = st.db.clone();
            if let Err(e) = st.store.save(&db) {
                problems.push(format!("saving the datastore: {e}"));
            }
        }
        problems
    }

    /// The trial `id` ran out without a confirm: roll it back. Returns
    /// the DHCP clients to stop and start for that.
    pub fn expire(&self, id: u64) -> Vec<DhcpEffect> {
        let mut st = self.write();
        if st.trial.as_ref().is_none_or(|t| t.id != id) {
            return Vec::new();
        }
        match st.trial.take() {
            Some(trial) => self.roll_back(&mut st, trial, "not confirmed in time"),
            None => Vec::new(),
        }
    }

    /// Puts everything back as the trial found it. The DHCP clients the
    /// trial started are stopped (their leases left to run out, as
    /// disable-addr leaves them), the ones it stopped started again: the
    /// kernel addresses of leases are theirs to put back, from a lease
    /// that may have moved on since (see `Snapshot::restore_kernel`).
    fn roll_back(&self, st: &mut State, trial: Trial, why: &str) -> Vec<DhcpEffect> {
        tracing::warn!("trial change {why}: rolling back");
        let mut k = match self.kernel.open() {
            Ok(k) => k,
            Err(e) => {
                tracing::error!("rollback impossible: {e}");
                return Vec::new();
            }
        };
        let during = st.map.clone();
        for p in self.restore(st, k.as_mut(), &trial.snapshot) {
            tracing::warn!("rollback: {p}");
        }
        let links = k.links().unwrap_or_default();
        dhcp_changes(&during, &st.map, &links)
    }

    /// Shutting down: an unconfirmed trial is rolled back now. Returns the
    /// DHCP clients to stop for that (the ones to start again start with
    /// the next daemon, from the map).
    pub fn shutdown(&self) -> Vec<DhcpEffect> {
        let mut st = self.write();
        match st.trial.take() {
            Some(trial) => self
                .roll_back(&mut st, trial, "pending at shutdown")
                .into_iter()
                .filter(|e| matches!(e, DhcpEffect::Stop { .. }))
                .collect(),
            None => Vec::new(),
        }
    }

    /// Retries writing a datastore kept under /run back to /etc; true when
    /// nothing is pending any more.
    pub fn retry_writeback(&self) -> bool {
        let mut st = self.write();
        if !st.store.pending_writeback() {
            return true;
        }
        let db = st.db.clone();
        st.store.retry_writeback(&db)
    }
}

/// The DHCP clients to stop and start to go from the objects of map
/// `from` to those of `to`.
fn dhcp_changes(from: &AobjMap, to: &AobjMap, links: &[Link]) -> Vec<DhcpEffect> {
    let dhcp = |map: &AobjMap| -> Vec<(AddrObj, Option<String>)> {
        map.addrs()
            .iter()
            .filter_map(|e| match &e.kind {
                MapAddr::Dhcp { hostname } => Some((e.aobj.clone(), hostname.clone())),
                _ => None,
            })
            .collect()
    };
    let (before, after) = (dhcp(from), dhcp(to));
    let mut effects: Vec<DhcpEffect> = before
        .iter()
        .filter(|b| !after.contains(b))
        .map(|(aobj, _)| DhcpEffect::Stop {
            aobj: aobj.clone(),
            release: false,
        })
        .collect();
    for (aobj, hostname) in after.into_iter().filter(|a| !before.contains(a)) {
        let link = links.iter().find(|l| l.name == aobj.ifname);
        match link.and_then(|l| Some((l.index, <[u8; 6]>::try_from(l.hwaddr.as_slice()).ok()?))) {
            Some((ifindex, mac)) => effects.push(DhcpEffect::Start {
                aobj,
                ifindex,
                mac,
                hostname,
            }),
            None => tracing::warn!("rollback: {aobj}: no Ethernet link to run DHCP on"),
        }
    }
    effects
}

/// One write request in progress.
struct Txn<'a> {
    st: &'a mut State,
    k: &'a mut dyn Kernel,
    /// The kernel as it was when the request started.
    view: KernelView,
    warnings: Vec<String>,
    /// Set when the reply must wait for duplicate address detection.
    wait: Option<Wait>,
    /// DHCP clients to start or stop once the change is committed.
    effects: Vec<DhcpEffect>,
    /// delete-addr -r: DHCP leases are released.
    release: bool,
    now: Instant,
}

fn ignore_gone(result: Result<(), Error>) -> Result<(), Error> {
    match result {
        Err(e) if matches!(e.status, Status::AddrNotAvail | Status::NotFound) => Ok(()),
        other => other,
    }
}

impl Txn<'_> {
    fn apply(&mut self, request: &Request) -> Result<Reply, Error> {
        let reply = match request {
            Request::CreateIf { ifname, temporary } => self.create_if(ifname, *temporary),
            Request::DeleteIf { ifname } => self.delete_if(ifname),
            Request::EnableIf { ifname } => self.enable_if(ifname),
            Request::DisableIf { ifname } => self.disable_if(ifname),
            Request::CreateAddr {
                target,
                temporary,
                kind,
            } => self.create_addr(target, *temporary, kind),
            Request::DeleteAddr { aobj, release } => self.delete_addr(aobj, *release),
            Request::UpAddr { aobj, temporary } => self.up_down_addr(aobj, *temporary, true),
            Request::DownAddr { aobj, temporary } => self.up_down_addr(aobj, *temporary, false),
            Request::EnableAddr { aobj } => self.enable_addr(aobj),
            Request::DisableAddr { aobj } => self.disable_addr(aobj),
            Request::RefreshAddr { aobj, inform } => self.refresh_addr(aobj, *inform),
            Request::SetProp {
                proto,
                name,
                value,
                op,
                temporary,
            } => self.set_prop(*proto, name, value.as_deref(), *op, *temporary),
            Request::SetIfProp {
                ifname,
                proto,
                name,
                value,
                temporary,
            } => self.set_ifprop(ifname, *proto, name, value.as_deref(), *temporary),
            Request::SetAddrProp {
                aobj,
                name,
                value,
                temporary,
            } => self.set_addrprop(aobj, name, value.as_deref(), *temporary),
            Request::Init => self.init(),
            _ => Err(Error::new(Status::Ebade)),
        }?;
        Ok(Reply {
            warnings: std::mem::take(&mut self.warnings),
            ..reply
        })
    }

    fn link(&self, ifname: &str) -> Result<Link, Error> {
        self.view
            .link(ifname)
            .cloned()
            .ok_or_else(|| Error::new(Status::Enxio))
    }

    fn metric(&self, ifname: &str, family: Family) -> u32 {
        self.st
            .map
            .iface(ifname)
            .map(|e| e.metric(family))
            .unwrap_or(0)
    }

    fn persist_interface(&mut self, ifname: &str) {
        for family in [Family::Inet, Family::Inet6] {
            self.st.db.upsert(Record::new(Body::Interface {
                ifname: ifname.to_owned(),
                family,
            }));
        }
    }
}
