//! Carries out requests: every change goes to the kernel (rtnetlink,
//! /proc/sys), the address-object map and, unless temporary, the
//! datastore, under one write lock. A change that fails halfway is undone
//! from a snapshot taken before it; the same snapshot is what `ipadm try`
//! rolls back to.

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant};

use super::files;
use super::netlink::Netlink;
use super::probe;
use super::snapshot::Snapshot;
use super::store::Store;
use super::sysctl;
use crate::ipmgmtd::addrspec::StaticAddr;
use crate::ipmgmtd::aobjmap::{AddrEntry, AddrState, AobjMap, MapAddr};
use crate::ipmgmtd::datastore::{AddrRecord, Body, Datastore, PersistAddr, Record};
use crate::ipmgmtd::kstate::{
    KernelView, Link, IFA_F_DADFAILED, IFA_F_DEPRECATED, IFA_F_TENTATIVE, IFF_LOOPBACK, IFF_NOARP,
    IFF_UP,
};
use crate::ipmgmtd::model::{AddrType, Error, Family, Proto, Status};
use crate::ipmgmtd::names::{AddrObj, AddrObjArg};
use crate::ipmgmtd::nlmsg::AddrOptions;
use crate::ipmgmtd::paths::Paths;
use crate::ipmgmtd::props::{self, Class, DefaultValue, Kind, Place, PropDef};
use crate::ipmgmtd::request::{AddrFilter, NewAddr, Reply, Request, SetOp};
use crate::ipmgmtd::view;
use crate::ipmgmtd::wire::Record as Row;

/// How long `refresh-addr` waits for IPv6 duplicate address detection.
const DAD_WAIT: Duration = Duration::from_secs(5);
const CACHE_MODE: u32 = 0o644;

struct Trial {
    id: u64,
    snapshot: Snapshot,
}

struct State {
    db: Datastore,
    map: AobjMap,
    store: Store,
    trial: Option<Trial>,
}

pub struct Engine {
    paths: Paths,
    state: RwLock<State>,
    next_trial: AtomicU64,
}

/// A reply, and the rollback timer to arm when it starts a trial.
pub struct Outcome {
    pub reply: Reply,
    pub trial: Option<(u64, Duration)>,
}

impl Outcome {
    fn reply(reply: Reply) -> Outcome {
        Outcome { reply, trial: None }
    }
}

/// Applies the persisted protocol properties (at start, before privileges
/// are dropped); returns a line per failure.
pub fn apply_module_props(db: &Datastore) -> Vec<String> {
    let mut problems = Vec::new();
    for (proto, name, value) in db.modprops() {
        let defs: Vec<&PropDef> = props::lookup(Class::Module, proto, name)
            .into_iter()
            .filter(|d| d.proto == proto)
            .collect();
        if defs.is_empty() {
            problems.push(format!(
                "{} {name}: {}",
                proto.name(),
                Status::PropUnknown.text()
            ));
        }
        for def in defs {
            if let Err(e) = write_module_prop(def, value) {
                problems.push(format!("{} {name}={value}: {e}", proto.name()));
            }
        }
    }
    problems
}

/// This boot and network namespace, to tell our own map cache from one
/// left by another system under the same root.
fn origin() -> String {
    use std::os::unix::fs::MetadataExt;
    let boot = sysctl::read("kernel/random/boot_id").unwrap_or_default();
    let netns = std::fs::metadata("/proc/self/ns/net")
        .map(|m| format!("{}:{}", m.dev(), m.ino()))
        .unwrap_or_default();
    format!("{boot}/{netns}")
}

fn words(def: &PropDef) -> Vec<String> {
    if def.kind != Kind::Word {
        return Vec::new();
    }
    sysctl::read("net/ipv4/tcp_available_congestion_control")
        .map(|v| v.split_whitespace().map(str::to_owned).collect())
        .unwrap_or_default()
}

fn read_module_prop(def: &PropDef) -> Result<String, Error> {
    match def.place {
        Place::Sysctl(paths) => {
            let path = paths.first().ok_or(Status::NotSup)?;
            Ok(def.from_raw(&sysctl::read(path)?))
        }
        Place::SysctlField(path, field) => {
            let line = sysctl::read(path)?;
            Ok(def.from_raw(props::get_field(&line, field).unwrap_or("")))
        }
        _ => Err(Status::NotSup.into()),
    }
}

fn write_module_prop(def: &PropDef, value: &str) -> Result<(), Error> {
    let raw = def.to_raw(value, &words(def))?;
    match def.place {
        Place::Sysctl(paths) => {
            for p in paths {
                sysctl::write(p, &raw)?;
            }
            Ok(())
        }
        Place::SysctlField(path, field) => {
            let line = sysctl::read(path)?;
            let new = props::replace_field(&line, field, &raw)
                .ok_or_else(|| Error::with(Status::Failure, format!("unexpected {path}")))?;
            sysctl::write(path, &new)
        }
        _ => Err(Status::NotSup.into()),
    }
}

fn fixed_default(def: &PropDef) -> String {
    match def.default {
        DefaultValue::Fixed(v) => v.to_owned(),
        _ => String::new(),
    }
}

fn if_default(def: &PropDef, link: &Link) -> String {
    match def.default {
        DefaultValue::Fixed(v) => v.to_owned(),
        DefaultValue::LinkTypeMtu if link.has(IFF_LOOPBACK) => "65536".into(),
        DefaultValue::LinkTypeMtu => "1500".into(),
        DefaultValue::LinkMtu => link.mtu.to_string(),
        DefaultValue::None => String::new(),
    }
}

fn if_possible(def: &PropDef, link: Option<&Link>) -> String {
    match (def.place, link) {
        (Place::LinkMtu, Some(l)) => {
            format!("{}-{}", l.min_mtu.unwrap_or(68), l.max_mtu.unwrap_or(65535))
        }
        (Place::Sysctl(_), Some(l)) if def.name == "mtu" => format!("1280-{}", l.mtu),
        _ => def.possible(&[]),
    }
}

fn family_of(proto: Proto) -> Family {
    if proto == Proto::Ipv6 {
        Family::Inet6
    } else {
        Family::Inet
    }
}

fn row(pairs: &[(&str, Option<String>)]) -> Row {
    pairs
        .iter()
        .filter_map(|(k, v)| v.as_ref().map(|v| ((*k).to_owned(), v.clone())))
        .collect()
}

impl Engine {
    /// Builds the engine around a loaded datastore: reads the map cache
    /// and reconciles it with the kernel before any request is served.
    pub fn new(
        paths: &Paths,
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
        let origin = origin();
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
        let mut nl = Netlink::open().map_err(|e| e.to_string())?;
        let view = nl
            .view()
            .map_err(|e| format!("reading the kernel's addresses: {e}"))?;
        notes.extend(map.reconcile(&view, &db));
        files::write_atomic(&paths.aobjmap, &map.serialize(), CACHE_MODE)
            .map_err(|e| format!("cannot write {}: {e}", paths.aobjmap.display()))?;
        let engine = Engine {
            paths: paths.clone(),
            state: RwLock::new(State {
                db,
                map,
                store,
                trial: None,
            }),
            next_trial: AtomicU64::new(1),
        };
        Ok((engine, notes))
    }

    fn read(&self) -> RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Handles an authorized request.
    pub fn handle(&self, request: Request) -> Outcome {
        if !request.is_write() {
            let st = self.read();
            let result = Netlink::open().and_then(|mut nl| show(&st, &mut nl, &request));
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
        let mut nl = match Netlink::open() {
            Ok(nl) => nl,
            Err(e) => return Outcome::reply(Reply::error(e)),
        };
        let snapshot = match Snapshot::take(&mut nl, &st.db, &st.map) {
            Ok(s) => s,
            Err(e) => return Outcome::reply(Reply::error(e)),
        };
        let (change, trial_seconds) = match request {
            Request::Try { seconds, change } => (*change, Some(seconds)),
            other => (other, None),
        };
        let result = Txn {
            st: &mut st,
            nl: &mut nl,
            view: snapshot.view.clone(),
            warnings: Vec::new(),
        }
        .apply(&change);
        let result = result.and_then(|mut reply| {
            if let Some(warning) = self.commit(&mut st, &snapshot)? {
                reply.warnings.push(warning);
            }
            Ok(reply)
        });
        match result {
            Ok(mut reply) => {
                let trial = trial_seconds.map(|seconds| {
                    let id = self.next_trial.fetch_add(1, Ordering::Relaxed);
                    st.trial = Some(Trial { id, snapshot });
                    reply.info = Some(format!(
                        "change applied; run 'ipadm confirm' within {seconds} seconds or it is rolled back"
                    ));
                    (id, Duration::from_secs(u64::from(seconds)))
                });
                Outcome { reply, trial }
            }
            Err(e) => {
                for p in self.restore(&mut st, &mut nl, &snapshot) {
                    tracing::warn!("undoing a failed {}: {p}", change.op());
                }
                Outcome::reply(Reply::error(e))
            }
        }
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

    fn restore(&self, st: &mut State, nl: &mut Netlink, snapshot: &Snapshot) -> Vec<String> {
        let mut problems = snapshot.restore_kernel(nl);
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

    /// The trial `id` ran out without a confirm: roll it back.
    pub fn expire(&self, id: u64) {
        let mut st = self.write();
        if st.trial.as_ref().is_none_or(|t| t.id != id) {
            return;
        }
        if let Some(trial) = st.trial.take() {
            self.roll_back(&mut st, trial, "not confirmed in time");
        }
    }

    fn roll_back(&self, st: &mut State, trial: Trial, why: &str) {
        tracing::warn!("trial change {why}: rolling back");
        match Netlink::open() {
            Ok(mut nl) => {
                for p in self.restore(st, &mut nl, &trial.snapshot) {
                    tracing::warn!("rollback: {p}");
                }
            }
            Err(e) => tracing::error!("rollback impossible: {e}"),
        }
    }

    /// Shutting down: an unconfirmed trial is rolled back now.
    pub fn shutdown(&self) {
        let mut st = self.write();
        if let Some(trial) = st.trial.take() {
            self.roll_back(&mut st, trial, "pending at shutdown");
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

/// One write request in progress.
struct Txn<'a> {
    st: &'a mut State,
    nl: &'a mut Netlink,
    /// The kernel as it was when the request started.
    view: KernelView,
    warnings: Vec<String>,
}

fn ignore_gone(result: Result<(), Error>) -> Result<(), Error> {
    match result {
        Err(e) if matches!(e.status, Status::AddrNotAvail | Status::NotFound) => Ok(()),
        other => other,
    }
}

impl Txn<'_> {
    fn apply(mut self, request: &Request) -> Result<Reply, Error> {
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
            Request::DeleteAddr { aobj } => self.delete_addr(aobj),
            Request::UpAddr { aobj, temporary } => self.up_down_addr(aobj, *temporary, true),
            Request::DownAddr { aobj, temporary } => self.up_down_addr(aobj, *temporary, false),
            Request::EnableAddr { aobj } => self.enable_addr(aobj),
            Request::DisableAddr { aobj } => self.disable_addr(aobj),
            Request::RefreshAddr { aobj } => self.refresh_addr(aobj),
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
            warnings: self.warnings,
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

    /// Takes an interface into service: link up, IPv6 on or off.
    fn plumb(&mut self, link: &Link, ipv6: bool) -> Result<(), Error> {
        if !link.has(IFF_UP) {
            self.nl.set_flags(link.index, IFF_UP, IFF_UP)?;
        }
        let path = sysctl::ipv6_conf(&link.name, "disable_ipv6");
        sysctl::write_if_changed(&path, if ipv6 { "0" } else { "1" })?;
        self.st.map.update_iface(&link.name, |e| {
            e.plumbed = true;
            e.disabled = false;
        });
        Ok(())
    }

    /// Takes an interface out of service: every address off, link down.
    fn unplumb(&mut self, link: &Link) -> Result<(), Error> {
        let addrs: Vec<_> = self.view.addrs_on(&link.name).cloned().collect();
        for a in addrs.iter().filter(|a| a.family == Family::Inet) {
            ignore_gone(self.nl.del_kaddr(a))?;
        }
        self.nl.set_flags(link.index, 0, IFF_UP)?;
        for a in addrs.iter().filter(|a| a.family == Family::Inet6) {
            ignore_gone(self.nl.del_kaddr(a))?;
        }
        Ok(())
    }

    fn start_addrconf(&mut self, link: &Link) -> Result<(), Error> {
        sysctl::write_if_changed(&sysctl::ipv6_conf(&link.name, "disable_ipv6"), "0")?;
        let mode = sysctl::ipv6_conf(&link.name, "addr_gen_mode");
        // 1 is "none"; EUI-64, stable-privacy and random all make one.
        if sysctl::read(&mode)? == "1" {
            sysctl::write(&mode, "0")?;
        }
        Ok(())
    }

    fn stop_addrconf(&mut self, ifname: &str) -> Result<(), Error> {
        let Some(link) = self.view.link(ifname).cloned() else {
            return Ok(());
        };
        sysctl::write_if_changed(&sysctl::ipv6_conf(&link.name, "addr_gen_mode"), "1")?;
        let made: Vec<_> = self
            .view
            .addrs_on(ifname)
            .filter(|a| a.addr_type() == AddrType::Addrconf)
            .cloned()
            .collect();
        for a in made {
            ignore_gone(self.nl.del_kaddr(&a))?;
        }
        Ok(())
    }

    fn add_static(
        &mut self,
        link: &Link,
        addr: &StaticAddr,
        deprecated: bool,
    ) -> Result<(), Error> {
        let metric = self.metric(&link.name, addr.family());
        self.nl
            .add_addr(link.index, addr, &AddrOptions::new(deprecated, metric))
    }

    fn del_static(&mut self, link: &Link, addr: &StaticAddr) -> Result<(), Error> {
        ignore_gone(self.nl.del_addr(
            link.index,
            addr.family(),
            &addr.local,
            addr.plen,
            addr.remote.as_ref(),
        ))
    }

    /// Takes an address object out of the kernel.
    fn deactivate(&mut self, entry: &AddrEntry) -> Result<(), Error> {
        match &entry.kind {
            MapAddr::Static { addr, .. } => {
                if entry.state == AddrState::Up {
                    if let Some(link) = self.view.link(&entry.aobj.ifname).cloned() {
                        self.del_static(&link, addr)?;
                    }
                }
                Ok(())
            }
            MapAddr::Addrconf => self.stop_addrconf(&entry.aobj.ifname),
        }
    }

    /// Puts a persisted address into the kernel and the map.
    fn activate(&mut self, link: &Link, record: &AddrRecord) -> Result<(), Error> {
        let entry = match &record.kind {
            PersistAddr::Static {
                addr,
                up,
                deprecated,
            } => {
                let present = self.view.find_static(&link.name, addr).is_some();
                if *up && !present {
                    self.add_static(link, addr, *deprecated)?;
                }
                AddrEntry {
                    aobj: record.aobj.clone(),
                    kind: MapAddr::Static {
                        addr: *addr,
                        deprecated: *deprecated,
                    },
                    state: if *up { AddrState::Up } else { AddrState::Down },
                }
            }
            PersistAddr::Addrconf => {
                self.start_addrconf(link)?;
                AddrEntry {
                    aobj: record.aobj.clone(),
                    kind: MapAddr::Addrconf,
                    state: AddrState::Up,
                }
            }
        };
        self.st.map.insert_addr(entry);
        Ok(())
    }

    fn create_if(&mut self, ifname: &str, temporary: bool) -> Result<Reply, Error> {
        let link = self.link(ifname)?;
        let plumbed = self.st.map.iface(ifname).is_some_and(|e| e.plumbed);
        if plumbed || self.st.db.has_interface(ifname) {
            return Err(Status::IfExists.into());
        }
        self.plumb(&link, true)?;
        if !temporary {
            self.persist_interface(ifname);
        }
        Ok(Reply::ok())
    }

    fn delete_if(&mut self, ifname: &str) -> Result<Reply, Error> {
        let link = self.view.link(ifname).cloned();
        let known = link.is_some()
            || self.st.db.has_interface(ifname)
            || self.st.map.iface(ifname).is_some()
            || self.st.map.addrs_on(ifname).next().is_some();
        if !known {
            return Err(Status::Enxio.into());
        }
        if let Some(link) = link {
            self.unplumb(&link)?;
        }
        self.st.map.remove_interface(ifname);
        self.st.db.remove_interface(ifname);
        Ok(Reply::ok())
    }

    fn disable_if(&mut self, ifname: &str) -> Result<Reply, Error> {
        let link = self.link(ifname)?;
        if self.st.map.is_disabled(ifname) {
            return Err(Status::OpDisableObj.into());
        }
        if !self.st.db.has_interface(ifname) {
            return Err(Status::TemporaryObj.into());
        }
        self.unplumb(&link)?;
        self.st.map.remove_interface(ifname);
        self.st.map.update_iface(ifname, |e| e.disabled = true);
        Ok(Reply::ok())
    }

    fn enable_if(&mut self, ifname: &str) -> Result<Reply, Error> {
        let link = self.link(ifname)?;
        if !self.st.db.has_interface(ifname) {
            return Err(Status::NotFound.into());
        }
        self.enable_interface(&link)?;
        Ok(Reply::ok())
    }

    /// Applies an interface's persistent configuration; failures of single
    /// properties and addresses become warnings.
    fn enable_interface(&mut self, link: &Link) -> Result<(), Error> {
        let ifname = link.name.clone();
        let ipv6 = self
            .st
            .db
            .interface_families(&ifname)
            .contains(&Family::Inet6);
        self.plumb(link, ipv6)?;
        for (proto, name, value) in self.st.db.ifprops(&ifname) {
            let defs: Vec<&PropDef> = props::lookup(Class::Interface, proto, &name)
                .into_iter()
                .filter(|d| d.proto == proto)
                .collect();
            if defs.is_empty() {
                self.warnings.push(format!(
                    "{ifname}: {} {name}: {}",
                    proto.name(),
                    Status::PropUnknown.text()
                ));
            }
            for def in defs {
                if let Err(e) = self.write_ifprop(link, def, &value) {
                    self.warnings
                        .push(format!("{ifname}: {} {name}={value}: {e}", proto.name()));
                }
            }
        }
        let records: Vec<AddrRecord> = self
            .st
            .db
            .addresses()
            .filter(|r| r.aobj.ifname == ifname)
            .cloned()
            .collect();
        for record in records {
            if self.st.map.addr(&record.aobj).is_some() {
                continue;
            }
            if let Err(e) = self.activate(link, &record) {
                self.warnings
                    .push(format!("could not enable {}: {e}", record.aobj));
            }
        }
        Ok(())
    }

    fn init(&mut self) -> Result<Reply, Error> {
        for ifname in self.st.db.interfaces() {
            if self.st.map.is_disabled(&ifname) {
                continue;
            }
            let Some(link) = self.view.link(&ifname).cloned() else {
                self.warnings
                    .push(format!("{ifname}: {}", Status::Enxio.text()));
                continue;
            };
            if let Err(e) = self.enable_interface(&link) {
                self.warnings.push(format!("{ifname}: {e}"));
            }
        }
        Ok(Reply::ok())
    }

    fn create_addr(
        &mut self,
        target: &AddrObjArg,
        temporary: bool,
        kind: &NewAddr,
    ) -> Result<Reply, Error> {
        let ifname = target.ifname.as_str();
        let link = self.link(ifname)?;
        if self.st.map.is_disabled(ifname) {
            return Err(Status::OpDisableObj.into());
        }
        let aobj = match &target.name {
            Some(name) => {
                let aobj = AddrObj {
                    ifname: ifname.to_owned(),
                    name: name.clone(),
                };
                if self.st.map.addr(&aobj).is_some() || self.st.db.address(&aobj).is_some() {
                    return Err(Status::AddrObjExists.into());
                }
                aobj
            }
            None => AddrObj {
                ifname: ifname.to_owned(),
                name: self.st.map.free_name(ifname, &self.st.db),
            },
        };
        let plumbed = self.st.map.iface(ifname).is_some_and(|e| e.plumbed);
        let persistent_if = self.st.db.has_interface(ifname);
        if !temporary && plumbed && !persistent_if {
            return Err(Status::TemporaryObj.into());
        }
        if let NewAddr::Addrconf = kind {
            let exists = self.st.map.addrconf_on(ifname).is_some()
                || self
                    .st
                    .db
                    .addresses()
                    .any(|r| r.aobj.ifname == ifname && r.kind == PersistAddr::Addrconf);
            if exists {
                return Err(Status::AddrconfExists.into());
            }
        }
        // Like illumos, an address on an interface not yet in service
        // brings the interface into service.
        if !plumbed {
            let ipv6 = !persistent_if
                || self
                    .st
                    .db
                    .interface_families(ifname)
                    .contains(&Family::Inet6);
            self.plumb(&link, ipv6)?;
            if !temporary && !persistent_if {
                self.persist_interface(ifname);
            }
        }
        let (entry, record) = match kind {
            NewAddr::Static { addr, down } => {
                if !down {
                    self.add_static(&link, addr, false)?;
                }
                (
                    AddrEntry {
                        aobj: aobj.clone(),
                        kind: MapAddr::Static {
                            addr: *addr,
                            deprecated: false,
                        },
                        state: if *down {
                            AddrState::Down
                        } else {
                            AddrState::Up
                        },
                    },
                    PersistAddr::Static {
                        addr: *addr,
                        up: !down,
                        deprecated: false,
                    },
                )
            }
            NewAddr::Addrconf => {
                self.start_addrconf(&link)?;
                (
                    AddrEntry {
                        aobj: aobj.clone(),
                        kind: MapAddr::Addrconf,
                        state: AddrState::Up,
                    },
                    PersistAddr::Addrconf,
                )
            }
        };
        self.st.map.insert_addr(entry);
        if !temporary {
            self.st.db.upsert(Record::new(Body::Address(AddrRecord {
                aobj,
                kind: record,
            })));
        }
        Ok(Reply::ok())
    }

    /// The map entry of an active object; a disabled or unknown one is an error.
    fn active_entry(&self, aobj: &AddrObj) -> Result<AddrEntry, Error> {
        match self.st.map.addr(aobj) {
            Some(e) => Ok(e.clone()),
            None if self.st.db.address(aobj).is_some() => Err(Status::OpDisableObj.into()),
            None => Err(Status::NotFound.into()),
        }
    }

    fn delete_addr(&mut self, aobj: &AddrObj) -> Result<Reply, Error> {
        let entry = self.st.map.addr(aobj).cloned();
        let persistent = self.st.db.address(aobj).is_some();
        if entry.is_none() && !persistent {
            return Err(Status::NotFound.into());
        }
        if let Some(entry) = entry {
            self.deactivate(&entry)?;
            self.st.map.remove_addr(aobj);
        }
        self.st.db.remove_address(aobj);
        Ok(Reply::ok())
    }

    fn update_record(
        &mut self,
        aobj: &AddrObj,
        change: impl FnOnce(&mut StaticAddr, &mut bool, &mut bool),
    ) {
        let Some(mut record) = self.st.db.address(aobj).cloned() else {
            return;
        };
        if let PersistAddr::Static {
            addr,
            up,
            deprecated,
        } = &mut record.kind
        {
            change(addr, up, deprecated);
        }
        self.st.db.upsert(Record::new(Body::Address(record)));
    }

    fn up_down_addr(&mut self, aobj: &AddrObj, temporary: bool, up: bool) -> Result<Reply, Error> {
        let entry = self.active_entry(aobj)?;
        let MapAddr::Static { addr, deprecated } = entry.kind else {
            return Err(Status::NotSup.into());
        };
        if !temporary && self.st.db.address(aobj).is_none() {
            return Err(Status::TemporaryObj.into());
        }
        let link = self.link(&aobj.ifname)?;
        match (up, entry.state) {
            (true, AddrState::Down | AddrState::Duplicate) => {
                self.add_static(&link, &addr, deprecated)?;
            }
            (false, AddrState::Up) => self.del_static(&link, &addr)?,
            _ => {}
        }
        if let Some(e) = self.st.map.addr_mut(aobj) {
            e.state = if up { AddrState::Up } else { AddrState::Down };
        }
        if !temporary {
            self.update_record(aobj, |_, u, _| *u = up);
        }
        Ok(Reply::ok())
    }

    fn disable_addr(&mut self, aobj: &AddrObj) -> Result<Reply, Error> {
        if self.st.db.address(aobj).is_none() {
            return Err(if self.st.map.addr(aobj).is_some() {
                Status::TemporaryObj
            } else {
                Status::NotFound
            }
            .into());
        }
        let Some(entry) = self.st.map.addr(aobj).cloned() else {
            return Err(Status::OpDisableObj.into());
        };
        self.deactivate(&entry)?;
        self.st.map.remove_addr(aobj);
        Ok(Reply::ok())
    }

    fn enable_addr(&mut self, aobj: &AddrObj) -> Result<Reply, Error> {
        if self.st.map.addr(aobj).is_some() {
            return Err(Status::AddrObjExists.into());
        }
        let Some(record) = self.st.db.address(aobj).cloned() else {
            return Err(Status::NotFound.into());
        };
        if self.st.map.is_disabled(&aobj.ifname) {
            return Err(Status::OpDisableObj.into());
        }
        let link = self.link(&aobj.ifname)?;
        self.activate(&link, &record)?;
        Ok(Reply::ok())
    }

    fn refresh_addr(&mut self, aobj: &AddrObj) -> Result<Reply, Error> {
        let entry = self.active_entry(aobj)?;
        let MapAddr::Static { addr, deprecated } = entry.kind else {
            return Err(Status::NotSup.into());
        };
        if entry.state == AddrState::Down {
            return Ok(Reply::ok());
        }
        let link = self.link(&aobj.ifname)?;
        match addr.local {
            IpAddr::V6(_) => {
                // Re-adding the address makes the kernel run DAD again.
                if self.view.find_static(&link.name, &addr).is_some() {
                    self.del_static(&link, &addr)?;
                }
                self.add_static(&link, &addr, deprecated)?;
                if let Some(e) = self.st.map.addr_mut(aobj) {
                    e.state = AddrState::Up;
                }
                let start = Instant::now();
                loop {
                    let now = self.nl.addrs()?;
                    let found = now
                        .iter()
                        .find(|a| a.index == link.index && a.matches(&addr));
                    match found {
                        Some(a) if a.has(IFA_F_DADFAILED) => {
                            return Ok(Reply::error(Status::DadFound.into()))
                        }
                        Some(a) if !a.has(IFA_F_TENTATIVE) => return Ok(Reply::ok()),
                        None => {
                            return Err(Error::with(Status::Failure, "address vanished during DAD"))
                        }
                        _ if start.elapsed() > DAD_WAIT => return Ok(Reply::ok()),
                        _ => std::thread::sleep(Duration::from_millis(100)),
                    }
                }
            }
            IpAddr::V4(v4) => {
                let in_use = probe::ipv4_in_use(link.index, &link.hwaddr, v4)?;
                if in_use {
                    if entry.state == AddrState::Up {
                        self.del_static(&link, &addr)?;
                    }
                    if let Some(e) = self.st.map.addr_mut(aobj) {
                        e.state = AddrState::Duplicate;
                    }
                    return Ok(Reply::error(Status::DadFound.into()));
                }
                if entry.state == AddrState::Duplicate {
                    self.add_static(&link, &addr, deprecated)?;
                    if let Some(e) = self.st.map.addr_mut(aobj) {
                        e.state = AddrState::Up;
                    }
                }
                Ok(Reply::ok())
            }
        }
    }

    fn set_prop(
        &mut self,
        proto: Proto,
        name: &str,
        value: Option<&str>,
        op: SetOp,
        temporary: bool,
    ) -> Result<Reply, Error> {
        let defs = props::lookup(Class::Module, proto, name);
        if defs.is_empty() {
            return Err(Status::PropUnknown.into());
        }
        for def in defs {
            let shown = match value {
                None => fixed_default(def),
                Some(v) => {
                    let current = if op == SetOp::Set {
                        String::new()
                    } else {
                        read_module_prop(def)?
                    };
                    def.edit(&current, op, v)?
                }
            };
            write_module_prop(def, &shown)?;
            if !temporary {
                self.st
                    .db
                    .set_modprop(def.proto, name, value.map(|_| shown.as_str()));
            }
        }
        Ok(Reply::ok())
    }

    fn write_ifprop(&mut self, link: &Link, def: &PropDef, value: &str) -> Result<(), Error> {
        let raw = def.to_raw(value, &[])?;
        match def.place {
            Place::Sysctl(_) => {
                for path in def.sysctl_paths(&link.name) {
                    sysctl::write(&path, &raw)?;
                }
                Ok(())
            }
            Place::LinkMtu => {
                let mtu: u32 = raw.parse().map_err(|_| Error::new(Status::InvalidArg))?;
                let (lo, hi) = (link.min_mtu.unwrap_or(68), link.max_mtu.unwrap_or(65535));
                if mtu < lo || mtu > hi {
                    return Err(Error::with(
                        Status::Erange,
                        format!("{mtu} not in {lo}-{hi}"),
                    ));
                }
                self.nl.set_mtu(link.index, mtu)
            }
            Place::LinkArp => {
                let flags = if raw == "1" { 0 } else { IFF_NOARP };
                self.nl.set_flags(link.index, flags, IFF_NOARP)
            }
            Place::Metric => {
                let metric: u32 = raw.parse().map_err(|_| Error::new(Status::InvalidArg))?;
                let family = family_of(def.proto);
                self.st
                    .map
                    .update_iface(&link.name, |e| e.set_metric(family, metric));
                // The kernel keeps metrics per address: set it on every
                // static address of the family.
                let addrs: Vec<_> = self
                    .nl
                    .addrs()?
                    .into_iter()
                    .filter(|a| {
                        a.index == link.index
                            && a.family == family
                            && a.addr_type() == AddrType::Static
                    })
                    .collect();
                for a in addrs {
                    let options = AddrOptions {
                        deprecated: a.has(IFA_F_DEPRECATED),
                        metric,
                        valid: a.valid,
                        preferred: Some(a.preferred),
                        replace: true,
                    };
                    self.nl.add_addr(a.index, &a.as_static(), &options)?;
                }
                Ok(())
            }
            Place::SysctlField(..) | Place::AddrPrefixlen | Place::AddrDeprecated => {
                Err(Status::NotSup.into())
            }
        }
    }

    fn set_ifprop(
        &mut self,
        ifname: &str,
        proto: Proto,
        name: &str,
        value: Option<&str>,
        temporary: bool,
    ) -> Result<Reply, Error> {
        let link = self.link(ifname)?;
        if self.st.map.is_disabled(ifname) {
            return Err(Status::OpDisableObj.into());
        }
        let defs = props::lookup(Class::Interface, proto, name);
        if defs.is_empty() {
            return Err(Status::PropUnknown.into());
        }
        if !temporary && !self.st.db.has_interface(ifname) {
            if self.st.map.iface(ifname).is_some_and(|e| e.plumbed) {
                return Err(Status::TemporaryObj.into());
            }
            self.persist_interface(ifname);
        }
        for def in defs {
            let shown = match value {
                Some(v) => v.to_owned(),
                None => if_default(def, &link),
            };
            self.write_ifprop(&link, def, &shown)?;
            if !temporary {
                self.st
                    .db
                    .set_ifprop(ifname, def.proto, name, value.map(|_| shown.as_str()));
            }
        }
        Ok(Reply::ok())
    }

    fn set_addrprop(
        &mut self,
        aobj: &AddrObj,
        name: &str,
        value: Option<&str>,
        temporary: bool,
    ) -> Result<Reply, Error> {
        let Some(def) = props::lookup(Class::Address, Proto::Ip, name)
            .first()
            .copied()
        else {
            return Err(Status::PropUnknown.into());
        };
        let entry = self.active_entry(aobj)?;
        let MapAddr::Static { addr, deprecated } = entry.kind else {
            return Err(Status::NotSup.into());
        };
        if !temporary && self.st.db.address(aobj).is_none() {
            return Err(Status::TemporaryObj.into());
        }
        let link = self.link(&aobj.ifname)?;
        let up = entry.state == AddrState::Up;
        match def.place {
            Place::AddrPrefixlen => {
                let Some(v) = value else {
                    return Err(Error::with(Status::InvalidArg, "prefixlen has no default"));
                };
                if addr.remote.is_some() {
                    return Err(Error::with(Status::NotSup, "point-to-point address"));
                }
                let max = addr.family().max_prefix();
                let plen: u8 = match v.parse::<u64>() {
                    Ok(n) if (1..=u64::from(max)).contains(&n) => n as u8,
                    Ok(_) => {
                        return Err(Error::with(Status::Erange, format!("{v} not in 1-{max}")))
                    }
                    Err(_) => return Err(Error::new(Status::InvalidArg)),
                };
                let new = StaticAddr { plen, ..addr };
                if up && new != addr {
                    self.del_static(&link, &addr)?;
                    self.add_static(&link, &new, deprecated)?;
                }
                if let Some(e) = self.st.map.addr_mut(aobj) {
                    e.kind = MapAddr::Static {
                        addr: new,
                        deprecated,
                    };
                }
                if !temporary {
                    self.update_record(aobj, |a, _, _| *a = new);
                }
            }
            Place::AddrDeprecated => {
                let on = match value.unwrap_or("off") {
                    "on" => true,
                    "off" => false,
                    _ => return Err(Error::new(Status::InvalidArg)),
                };
                if up {
                    let metric = self.metric(&aobj.ifname, addr.family());
                    let options = AddrOptions {
                        replace: true,
                        ..AddrOptions::new(on, metric)
                    };
                    self.nl.add_addr(link.index, &addr, &options)?;
                }
                if let Some(e) = self.st.map.addr_mut(aobj) {
                    e.kind = MapAddr::Static {
                        addr,
                        deprecated: on,
                    };
                }
                if !temporary {
                    self.update_record(aobj, |_, _, d| *d = on);
                }
            }
            _ => return Err(Status::NotSup.into()),
        }
        Ok(Reply::ok())
    }
}

/// Read requests.
fn show(st: &State, nl: &mut Netlink, request: &Request) -> Result<Reply, Error> {
    match request {
        Request::ShowAddr { filter } => {
            let view = nl.view()?;
            let rows = view::addr_rows(&view, &st.map, &st.db);
            let rows: Vec<view::AddrRow> = match filter {
                AddrFilter::All => rows,
                AddrFilter::Interface(ifname) => {
                    let known = view.link(ifname).is_some() || st.db.has_interface(ifname);
                    let rows: Vec<_> = rows.into_iter().filter(|r| &r.ifname == ifname).collect();
                    if rows.is_empty() && !known {
                        return Err(Status::Enxio.into());
                    }
                    rows
                }
                AddrFilter::Object(aobj) => {
                    let name = aobj.to_string();
                    let rows: Vec<_> = rows.into_iter().filter(|r| r.addrobj == name).collect();
                    if rows.is_empty() {
                        return Err(Status::NotFound.into());
                    }
                    rows
                }
            };
            Ok(Reply::rows(rows.iter().map(|r| r.to_record()).collect()))
        }
        Request::ShowIf { ifname } => {
            let view = nl.view()?;
            let rows: Vec<_> = view::if_rows(&view, &st.map, &st.db)
                .into_iter()
                .filter(|r| ifname.as_ref().is_none_or(|n| &r.ifname == n))
                .collect();
            if ifname.is_some() && rows.is_empty() {
                return Err(Status::Enxio.into());
            }
            Ok(Reply::rows(rows.iter().map(|r| r.to_record()).collect()))
        }
        Request::ShowProp { proto, names } => Ok(show_prop(st, *proto, names)),
        Request::ShowIfProp {
            ifname,
            proto,
            names,
        } => show_ifprop(st, nl, ifname.as_deref(), *proto, names),
        Request::ShowAddrProp { filter, names } => show_addrprop(st, nl, filter, names),
        _ => Err(Status::Ebade.into()),
    }
}

/// The definitions asked for: all of the class, or the named ones (an
/// unknown name yields None, shown as a row of `?`).
fn wanted(
    class: Class,
    proto: Option<Proto>,
    names: &[String],
) -> Vec<(String, Option<&'static PropDef>)> {
    if names.is_empty() {
        return props::all(class, proto)
            .into_iter()
            .map(|d| (d.name.to_owned(), Some(d)))
            .collect();
    }
    let mut out = Vec::new();
    for name in names {
        let defs = props::lookup(class, proto.unwrap_or(Proto::Ip), name);
        if defs.is_empty() {
            out.push((name.clone(), None));
        }
        out.extend(defs.into_iter().map(|d| (name.clone(), Some(d))));
    }
    out
}

fn unknown_names(list: &[(String, Option<&PropDef>)]) -> Option<Error> {
    let unknown: Vec<&str> = list
        .iter()
        .filter(|(_, d)| d.is_none())
        .map(|(n, _)| n.as_str())
        .collect();
    (!unknown.is_empty()).then(|| Error::with(Status::PropUnknown, unknown.join(",")))
}

fn show_prop(st: &State, proto: Option<Proto>, names: &[String]) -> Reply {
    let list = wanted(Class::Module, proto, names);
    let mut rows = Vec::new();
    for (name, def) in &list {
        let Some(def) = def else {
            rows.push(row(&[
                ("PROTO", proto.map(|p| p.name().to_owned())),
                ("PROPERTY", Some(name.clone())),
            ]));
            continue;
        };
        rows.push(row(&[
            ("PROTO", Some(def.proto.name().to_owned())),
            ("PROPERTY", Some(def.name.to_owned())),
            ("PERM", Some("rw".into())),
            ("CURRENT", read_module_prop(def).ok()),
            (
                "PERSISTENT",
                Some(st.db.modprop(def.proto, def.name).unwrap_or("").to_owned()),
            ),
            ("DEFAULT", Some(fixed_default(def))),
            ("POSSIBLE", Some(def.possible(&words(def)))),
        ]));
    }
    Reply {
        result: unknown_names(&list).map_or(Ok(()), Err),
        ..Reply::rows(rows)
    }
}

fn read_ifprop(st: &State, link: &Link, def: &PropDef) -> Option<String> {
    match def.place {
        Place::Sysctl(_) => def
            .sysctl_paths(&link.name)
            .first()
            .and_then(|p| sysctl::read(p).ok())
            .map(|raw| def.from_raw(&raw)),
        Place::LinkMtu => Some(link.mtu.to_string()),
        Place::LinkArp => Some(if link.has(IFF_NOARP) { "off" } else { "on" }.into()),
        Place::Metric => Some(
            st.map
                .iface(&link.name)
                .map(|e| e.metric(family_of(def.proto)))
                .unwrap_or(0)
                .to_string(),
        ),
        _ => None,
    }
}

fn show_ifprop(
    st: &State,
    nl: &mut Netlink,
    ifname: Option<&str>,
    proto: Proto,
    names: &[String],
) -> Result<Reply, Error> {
    let mut links = nl.links()?;
    links.sort_by_key(|l| l.index);
    let mut ifnames: Vec<String> = links.iter().map(|l| l.name.clone()).collect();
    for name in st.db.interfaces() {
        if !ifnames.contains(&name) {
            ifnames.push(name);
        }
    }
    if let Some(wanted_if) = ifname {
        if !ifnames.iter().any(|n| n == wanted_if) {
            return Err(Status::Enxio.into());
        }
        ifnames.retain(|n| n == wanted_if);
    }
    let list = wanted(Class::Interface, Some(proto), names);
    let mut rows = Vec::new();
    for ifname in &ifnames {
        let link = links.iter().find(|l| &l.name == ifname);
        let disabled = st.map.is_disabled(ifname) || link.is_none();
        for (name, def) in &list {
            let Some(def) = def else {
                rows.push(row(&[
                    ("IFNAME", Some(ifname.clone())),
                    ("PROPERTY", Some(name.clone())),
                    ("PROTO", Some(proto.name().to_owned())),
                ]));
                continue;
            };
            let current = match link {
                Some(l) if !disabled => read_ifprop(st, l, def),
                _ => Some(String::new()),
            };
            rows.push(row(&[
                ("IFNAME", Some(ifname.clone())),
                ("PROPERTY", Some(def.name.to_owned())),
                ("PROTO", Some(def.proto.name().to_owned())),
                ("PERM", Some("rw".into())),
                ("CURRENT", current),
                (
                    "PERSISTENT",
                    Some(
                        st.db
                            .ifprop(ifname, def.proto, def.name)
                            .unwrap_or_default(),
                    ),
                ),
                (
                    "DEFAULT",
                    Some(
                        link.map(|l| if_default(def, l))
                            .unwrap_or_else(|| fixed_default(def)),
                    ),
                ),
                ("POSSIBLE", Some(if_possible(def, link))),
            ]));
        }
    }
    Ok(Reply {
        result: unknown_names(&list).map_or(Ok(()), Err),
        ..Reply::rows(rows)
    })
}

fn show_addrprop(
    st: &State,
    nl: &mut Netlink,
    filter: &AddrFilter,
    names: &[String],
) -> Result<Reply, Error> {
    let view = nl.view()?;
    // Static addresses with names: active ones from the map, disabled ones
    // from the datastore.
    let mut objects: Vec<(AddrObj, StaticAddr, Option<&AddrEntry>)> = Vec::new();
    for e in st.map.addrs() {
        if let MapAddr::Static { addr, .. } = &e.kind {
            objects.push((e.aobj.clone(), *addr, Some(e)));
        }
    }
    for r in st.db.addresses() {
        if let PersistAddr::Static { addr, .. } = &r.kind {
            if st.map.addr(&r.aobj).is_none() {
                objects.push((r.aobj.clone(), *addr, None));
            }
        }
    }
    objects.retain(|(aobj, _, _)| match filter {
        AddrFilter::All => true,
        AddrFilter::Interface(ifname) => &aobj.ifname == ifname,
        AddrFilter::Object(wanted) => aobj == wanted,
    });
    if let AddrFilter::Object(_) = filter {
        if objects.is_empty() {
            return Err(Status::NotFound.into());
        }
    }
    let list = wanted(Class::Address, None, names);
    let mut rows = Vec::new();
    for (aobj, addr, entry) in &objects {
        let record = st.db.address(aobj);
        for (name, def) in &list {
            let Some(def) = def else {
                rows.push(row(&[
                    ("ADDROBJ", Some(aobj.to_string())),
                    ("PROPERTY", Some(name.clone())),
                ]));
                continue;
            };
            let on_off = |b: bool| if b { "on" } else { "off" }.to_owned();
            let (current, persistent, default, possible) = match def.place {
                Place::AddrPrefixlen => (
                    entry.map(|_| addr.plen.to_string()),
                    record.and_then(|r| match &r.kind {
                        PersistAddr::Static { addr, .. } => Some(addr.plen.to_string()),
                        PersistAddr::Addrconf => None,
                    }),
                    String::new(),
                    format!("1-{}", addr.family().max_prefix()),
                ),
                _ => (
                    entry.map(|e| match (&e.kind, e.state) {
                        (MapAddr::Static { addr, .. }, AddrState::Up) => on_off(
                            view.find_static(&aobj.ifname, addr)
                                .is_some_and(|k| k.has(IFA_F_DEPRECATED)),
                        ),
                        (MapAddr::Static { deprecated, .. }, _) => on_off(*deprecated),
                        (MapAddr::Addrconf, _) => String::new(),
                    }),
                    record.and_then(|r| match &r.kind {
                        PersistAddr::Static { deprecated, .. } => Some(on_off(*deprecated)),
                        PersistAddr::Addrconf => None,
                    }),
                    fixed_default(def),
                    def.possible(&[]),
                ),
            };
            rows.push(row(&[
                ("ADDROBJ", Some(aobj.to_string())),
                ("PROPERTY", Some(def.name.to_owned())),
                ("PERM", Some("rw".into())),
                ("CURRENT", Some(current.unwrap_or_default())),
                ("PERSISTENT", Some(persistent.unwrap_or_default())),
                ("DEFAULT", Some(default)),
                ("POSSIBLE", Some(possible)),
            ]));
        }
    }
    Ok(Reply {
        result: unknown_names(&list).map_or(Ok(()), Err),
        ..Reply::rows(rows)
    })
}
