//! The engine against the fake kernel: requests in, kernel state and
//! replies out, time passed in.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{DhcpEffect, Engine, Next, Outcome};
use crate::ipmgmtd::addrspec::parse_static;
use crate::ipmgmtd::daemon::dhcp_table::DhcpTable;
use crate::ipmgmtd::daemon::fake_kernel::FakeKernel;
use crate::ipmgmtd::daemon::store::Store;
use crate::ipmgmtd::datastore::Datastore;
use crate::ipmgmtd::kstate::IFF_UP;
use crate::ipmgmtd::model::Status;
use crate::ipmgmtd::names::{AddrObj, AddrObjArg};
use crate::ipmgmtd::paths::Paths;
use crate::ipmgmtd::request::{AddrFilter, NewAddr, Reply, Request};

struct Rig {
    dir: PathBuf,
    kernel: FakeKernel,
    dhcp: Arc<DhcpTable>,
    engine: Engine,
}

impl Drop for Rig {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn rig(name: &str) -> Rig {
    let dir = std::env::temp_dir().join(format!("ipmgmtd-engine-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let paths = Paths::new(&dir);
    std::fs::create_dir_all(&paths.run_dir).unwrap();
    std::fs::create_dir_all(&paths.etc_dir).unwrap();
    let kernel = FakeKernel::with_links(&["net0", "net1"]);
    let dhcp = Arc::new(DhcpTable::default());
    let (engine, _) = Engine::new(
        &paths,
        Box::new(kernel.clone()),
        dhcp.clone(),
        "test".into(),
        Store::new(&paths),
        Datastore::default(),
    )
    .unwrap();
    Rig {
        dir,
        kernel,
        dhcp,
        engine,
    }
}

fn aobj(text: &str) -> AddrObj {
    let (ifname, name) = text.split_once('/').unwrap();
    AddrObj {
        ifname: ifname.into(),
        name: name.into(),
    }
}

fn create(target: &str, spec: &str) -> Request {
    let a = aobj(target);
    Request::CreateAddr {
        target: AddrObjArg {
            ifname: a.ifname,
            name: Some(a.name),
        },
        temporary: false,
        kind: NewAddr::Static {
            addr: parse_static(spec).unwrap(),
            down: false,
        },
    }
}

fn reply(outcome: Outcome) -> Reply {
    match outcome.next {
        Next::Reply(r) => r,
        other => panic!("expected a reply, got {other:?}"),
    }
}

fn status(r: &Reply) -> Option<Status> {
    r.result.as_ref().err().map(|e| e.status)
}

impl Rig {
    fn handle(&self, request: Request) -> Outcome {
        self.engine.handle(request, Instant::now())
    }

    fn ok(&self, request: Request) {
        let r = reply(self.handle(request));
        assert_eq!(r.result, Ok(()), "{r:?}");
    }

    fn show_addr(&self) -> Vec<(String, String, String)> {
        let r = reply(self.handle(Request::ShowAddr {
            filter: AddrFilter::All,
        }));
        r.rows
            .iter()
            .map(|row| {
                let get = |k: &str| {
                    row.iter()
                        .find(|(key, _)| key == k)
                        .map(|(_, v)| v.clone())
                        .unwrap_or_default()
                };
                (get("ADDROBJ"), get("STATE"), get("ADDR"))
            })
            .collect()
    }

    fn db(&self) -> String {
        std::fs::read_to_string(Paths::new(&self.dir).db).unwrap_or_default()
    }
}

#[test]
fn create_addr_plumbs_adds_and_persists() {
    let rig = rig("create");
    rig.ok(create("net0/v4", "192.0.2.5/24"));
    assert_eq!(rig.kernel.addrs_on("net0"), ["192.0.2.5/24"]);
    let up = rig.kernel.state().links[1].flags & IFF_UP;
    assert_eq!(up, IFF_UP);
    assert!(rig.db().contains("net0/v4"), "{}", rig.db());
    let rows = rig.show_addr();
    assert!(
        rows.iter()
            .any(|(o, s, a)| o == "net0/v4" && s == "ok" && a == "192.0.2.5/24"),
        "{rows:?}"
    );
    let again = reply(rig.handle(create("net0/v4", "192.0.2.6/24")));
    assert_eq!(status(&again), Some(Status::AddrObjExists));
}

#[test]
fn a_change_failing_halfway_is_undone() {
    let rig = rig("undo");
    // Someone else holds the address: adding it fails after the link
    // was brought up; the link goes down again and nothing is persisted.
    rig.kernel
        .state()
        .addrs
        .push(crate::ipmgmtd::kstate::KAddr {
            index: 2,
            family: crate::ipmgmtd::model::Family::Inet,
            plen: 24,
            flags: 0x80,
            scope: 0,
            local: "192.0.2.5".parse().unwrap(),
            peer: None,
            proto: 0,
            preferred: u32::MAX,
            valid: u32::MAX,
            metric: None,
        });
    let r = reply(rig.handle(create("net0/v4", "192.0.2.5/24")));
    assert!(r.result.is_err());
    assert_eq!(rig.kernel.state().links[1].flags & IFF_UP, 0);
    assert!(!rig.db().contains("net0/v4"));
    assert!(rig.show_addr().iter().all(|(o, _, _)| o != "net0/v4"));
}

#[test]
fn ipv6_dad_is_a_timer_and_other_requests_go_on_meanwhile() {
    let rig = rig("dad");
    let net0 = rig.kernel.index_of("net0");
    rig.kernel.state().dad_links.insert(net0);
    let start = Instant::now();
    let outcome = rig
        .engine
        .handle(create("net0/v6", "2001:db8::5/64"), start);
    let Next::Poll { id, after } = outcome.next else {
        panic!("expected a DAD wait, got {:?}", outcome.next);
    };
    assert!(after <= Duration::from_millis(100));
    assert_eq!(rig.engine.waiting(), 1);
    // The lock is free: another client's change and a listing go through.
    rig.ok(create("net1/v4", "198.51.100.1/24"));
    assert!(rig.show_addr().iter().any(|(o, _, _)| o == "net1/v4"));
    // Still tentative: poll again.
    let again = rig.engine.poll(id, start + Duration::from_millis(200));
    assert!(matches!(again.next, Next::Poll { .. }), "{:?}", again.next);
    rig.kernel.settle_dad(false);
    let done = reply(rig.engine.poll(id, start + Duration::from_millis(300)));
    assert_eq!(done.result, Ok(()));
    assert_eq!(rig.engine.waiting(), 0);
}

#[test]
fn ipv6_dad_failure_is_reported_by_refresh_and_a_long_dad_stops_waiting() {
    let rig = rig("dadfail");
    let net0 = rig.kernel.index_of("net0");
    rig.kernel.state().dad_links.insert(net0);
    let start = Instant::now();
    let Next::Poll { id, .. } = rig
        .engine
        .handle(create("net0/a", "2001:db8::5/64"), start)
        .next
    else {
        panic!("no wait");
    };
    rig.kernel.settle_dad(true);
    // create-addr answers once DAD is over; the duplicate is a state.
    let r = reply(rig.engine.poll(id, start));
    assert_eq!(r.result, Ok(()));
    assert!(rig
        .show_addr()
        .iter()
        .any(|(o, s, _)| o == "net0/a" && s == "duplicate"));
    let Next::Poll { id, .. } = rig
        .engine
        .handle(
            Request::RefreshAddr {
                aobj: aobj("net0/a"),
                inform: false,
            },
            start,
        )
        .next
    else {
        panic!("no wait");
    };
    rig.kernel.settle_dad(true);
    let r = reply(rig.engine.poll(id, start));
    assert_eq!(status(&r), Some(Status::DadFound));

    let Next::Poll { id, .. } = rig
        .engine
        .handle(create("net0/b", "2001:db8::6/64"), start)
        .next
    else {
        panic!("no wait");
    };
    // Five seconds on, still tentative: the request is answered anyway.
    let r = reply(rig.engine.poll(id, start + Duration::from_secs(6)));
    assert_eq!(r.result, Ok(()));
}

#[test]
fn ipv4_refresh_probes_with_no_lock_held_and_marks_duplicates() {
    let rig = rig("probe");
    rig.ok(create("net0/v4", "192.0.2.5/24"));
    let conflict = Ipv4Addr::new(192, 0, 2, 5);
    rig.kernel.state().taken.insert(conflict);
    let refresh = || Request::RefreshAddr {
        aobj: aobj("net0/v4"),
        inform: false,
    };
    let Next::Probe { id, probe } = rig.handle(refresh()).next else {
        panic!("expected a probe");
    };
    assert_eq!(probe.addr, conflict);
    assert_eq!(probe.ifindex, rig.kernel.index_of("net0"));
    // Served while the probe runs.
    rig.ok(create("net1/v4", "198.51.100.1/24"));
    let mut k = rig.engine.open_kernel().unwrap();
    let in_use = k.probe_ipv4(probe.ifindex, &probe.hwaddr, probe.addr);
    let r = reply(rig.engine.probed(id, in_use));
    assert_eq!(status(&r), Some(Status::DadFound));
    assert!(rig.kernel.addrs_on("net0").is_empty());
    assert!(rig
        .show_addr()
        .iter()
        .any(|(o, s, _)| o == "net0/v4" && s == "duplicate"));

    // The other host went away: the address comes back.
    rig.kernel.state().taken.clear();
    let Next::Probe { id, .. } = rig.handle(refresh()).next else {
        panic!("expected a probe");
    };
    let r = reply(rig.engine.probed(id, Ok(false)));
    assert_eq!(r.result, Ok(()));
    assert_eq!(rig.kernel.addrs_on("net0"), ["192.0.2.5/24"]);
    assert_eq!(rig.kernel.state().probes, 1);
}

#[test]
fn an_unconfirmed_try_is_rolled_back_when_its_timer_fires() {
    let rig = rig("try");
    let outcome = rig.handle(Request::Try {
        seconds: 30,
        change: Box::new(create("net0/v4", "192.0.2.5/24")),
    });
    let (id, after) = outcome.trial.expect("a rollback timer");
    assert_eq!(after, Duration::from_secs(30));
    assert_eq!(rig.kernel.addrs_on("net0"), ["192.0.2.5/24"]);
    // Other changes wait for the trial's end.
    let busy = reply(rig.handle(create("net1/v4", "198.51.100.1/24")));
    assert_eq!(status(&busy), Some(Status::Busy));
    rig.engine.expire(id);
    assert!(rig.kernel.addrs_on("net0").is_empty());
    assert_eq!(rig.kernel.state().links[1].flags & IFF_UP, 0);
    assert!(!rig.db().contains("net0/v4"));
}

#[test]
fn module_and_interface_properties_go_to_sysctls() {
    let rig = rig("props");
    rig.ok(Request::SetProp {
        proto: crate::ipmgmtd::model::Proto::Ipv4,
        name: "forwarding".into(),
        value: Some("on".into()),
        op: crate::ipmgmtd::request::SetOp::Set,
        temporary: false,
    });
    assert_eq!(
        rig.kernel.state().sysctls["net/ipv4/ip_forward"],
        "1",
        "{:?}",
        rig.kernel.state().sysctls
    );
    rig.ok(Request::CreateIf {
        ifname: "net0".into(),
        temporary: false,
    });
    rig.ok(Request::SetIfProp {
        ifname: "net0".into(),
        proto: crate::ipmgmtd::model::Proto::Ip,
        name: "mtu".into(),
        value: Some("1400".into()),
        temporary: false,
    });
    assert_eq!(rig.kernel.state().links[1].mtu, 1400);
    let r = reply(rig.handle(Request::SetIfProp {
        ifname: "net0".into(),
        proto: crate::ipmgmtd::model::Proto::Ip,
        name: "mtu".into(),
        value: Some("20000".into()),
        temporary: false,
    }));
    assert_eq!(status(&r), Some(Status::Erange));
    assert_eq!(rig.kernel.state().links[1].mtu, 1400);
}

fn create_dhcp(target: &str, wait: Option<u32>) -> Request {
    let a = aobj(target);
    Request::CreateAddr {
        target: AddrObjArg {
            ifname: a.ifname,
            name: Some(a.name),
        },
        temporary: false,
        kind: NewAddr::Dhcp {
            wait,
            hostname: Some("box".into()),
        },
    }
}

fn bound_status() -> crate::ipmgmtd::view::DhcpStatus {
    crate::ipmgmtd::view::DhcpStatus {
        state: "ok",
        phase: "BOUND",
        addr: Some((Ipv4Addr::new(10, 0, 0, 50), 24)),
        lease: Some(120),
        left: None,
        server: Some(Ipv4Addr::new(10, 0, 0, 1)),
    }
}

#[test]
fn dhcp_objects_start_a_client_wait_for_its_lease_and_stop_it() {
    let rig = rig("dhcp");
    let start = Instant::now();
    let out = rig.engine.handle(create_dhcp("net0/d", Some(30)), start);
    assert_eq!(
        out.effects,
        vec![DhcpEffect::Start {
            aobj: aobj("net0/d"),
            ifindex: rig.kernel.index_of("net0"),
            mac: [2, 0, 0, 0, 0, 2],
            hostname: Some("box".into()),
        }]
    );
    let Next::Poll { id, .. } = out.next else {
        panic!("create-addr -w waits for the lease");
    };
    assert!(
        rig.db()
            .contains("_aobjname=net0/d;_dhcp=30,no;_reqhost=box;"),
        "{}",
        rig.db()
    );
    // One DHCP object an interface.
    let again = reply(rig.handle(create_dhcp("net0/e", None)));
    assert_eq!(status(&again), Some(Status::DhcpExists));
    // Other clients go on while it waits; no lease yet: still waiting.
    rig.ok(create("net1/v4", "198.51.100.1/24"));
    assert!(matches!(
        rig.engine.poll(id, start + Duration::from_secs(1)).next,
        Next::Poll { .. }
    ));
    assert!(rig
        .show_addr()
        .iter()
        .any(|(o, s, a)| o == "net0/d" && s == "tentative" && a.is_empty()));
    // The runner reports a lease (and the address is in the kernel).
    rig.dhcp.publish(&aobj("net0/d"), bound_status(), None);
    let net0 = rig.kernel.index_of("net0");
    rig.kernel
        .state()
        .addrs
        .push(crate::ipmgmtd::kstate::KAddr {
            index: net0,
            family: crate::ipmgmtd::model::Family::Inet,
            plen: 24,
            flags: 0,
            scope: 0,
            local: "10.0.0.50".parse().unwrap(),
            peer: None,
            proto: 0,
            preferred: 100,
            valid: 100,
            metric: None,
        });
    assert_eq!(
        reply(rig.engine.poll(id, start + Duration::from_secs(2))).result,
        Ok(())
    );
    assert!(rig
        .show_addr()
        .iter()
        .any(|(o, s, a)| o == "net0/d" && s == "ok" && a == "10.0.0.50/24"));

    let out = rig.handle(Request::RefreshAddr {
        aobj: aobj("net0/d"),
        inform: true,
    });
    assert_eq!(
        out.effects,
        vec![DhcpEffect::Refresh {
            aobj: aobj("net0/d"),
            inform: true
        }]
    );
    let out = rig.handle(Request::DeleteAddr {
        aobj: aobj("net0/d"),
        release: true,
    });
    assert_eq!(
        out.effects,
        vec![DhcpEffect::Stop {
            aobj: aobj("net0/d"),
            release: true
        }]
    );
    assert!(!rig.db().contains("net0/d"));
}

#[test]
fn a_dhcp_wait_runs_out_with_illumos_timeout_and_the_object_stays() {
    let rig = rig("dhcpwait");
    let start = Instant::now();
    let Next::Poll { id, .. } = rig
        .engine
        .handle(create_dhcp("net1/d", Some(5)), start)
        .next
    else {
        panic!("no wait");
    };
    let r = reply(rig.engine.poll(id, start + Duration::from_secs(6)));
    assert_eq!(status(&r), Some(Status::DhcpTimeout));
    assert!(rig.show_addr().iter().any(|(o, _, _)| o == "net1/d"));
    // -w 0: no wait at all.
    rig.ok(Request::DeleteAddr {
        aobj: aobj("net1/d"),
        release: false,
    });
    let out = rig.engine.handle(create_dhcp("net1/d", Some(0)), start);
    assert!(matches!(out.next, Next::Reply(ref r) if r.result.is_ok()));
}

impl Rig {
    /// What a DHCP runner does on binding: the lease in the kernel and in
    /// the table.
    fn lease(&self, target: &str, addr: &str) {
        let a = aobj(target);
        let index = self.kernel.index_of(&a.ifname);
        let local: Ipv4Addr = addr.parse().unwrap();
        self.kernel
            .state()
            .addrs
            .push(crate::ipmgmtd::kstate::KAddr {
                index,
                family: crate::ipmgmtd::model::Family::Inet,
                plen: 24,
                flags: 0,
                scope: 0,
                local: local.into(),
                peer: None,
                proto: 0,
                preferred: 100,
                valid: 100,
                metric: None,
            });
        let status = crate::ipmgmtd::view::DhcpStatus {
            addr: Some((local, 24)),
            ..bound_status()
        };
        self.dhcp.publish(&a, status, None);
    }

    /// What a runner does on losing its lease (or stopping).
    fn unlease(&self, target: &str, addr: &str) {
        let a = aobj(target);
        let index = self.kernel.index_of(&a.ifname);
        let local: std::net::IpAddr = addr.parse().unwrap();
        self.kernel
            .state()
            .addrs
            .retain(|k| !(k.index == index && k.local == local));
        self.dhcp.remove(&a);
    }

    fn try_change(&self, change: Request) -> (u64, Vec<DhcpEffect>, Next) {
        let out = self.engine.handle(
            Request::Try {
                seconds: 30,
                change: Box::new(change),
            },
            Instant::now(),
        );
        let (id, _) = out.trial.expect("a rollback timer");
        (id, out.effects, out.next)
    }
}

#[test]
fn rolling_back_a_dhcp_object_stops_its_client_which_takes_its_lease_off() {
    let rig = rig("trydhcp");
    let (id, effects, next) = rig.try_change(create_dhcp("net0/d", Some(30)));
    assert!(matches!(effects[..], [DhcpEffect::Start { .. }]));
    let Next::Poll { id: wait, .. } = next else {
        panic!("-w 30 waits for the lease");
    };
    rig.lease("net0/d", "10.0.0.50");
    // Bound: the reply says the change awaits confirmation.
    let bound = reply(rig.engine.poll(wait, Instant::now()));
    assert_eq!(bound.result, Ok(()));
    assert!(
        bound
            .info
            .as_deref()
            .is_some_and(|i| i.contains("ipadm confirm")),
        "{bound:?}"
    );
    let undo = rig.engine.expire(id);
    assert_eq!(
        undo,
        vec![DhcpEffect::Stop {
            aobj: aobj("net0/d"),
            release: false,
        }]
    );
    // The address is the client's to take off, as it stops; nothing of
    // the object is left in the configuration.
    assert_eq!(rig.kernel.addrs_on("net0"), ["10.0.0.50/24"]);
    assert!(!rig.db().contains("net0/d"), "{}", rig.db());
    rig.unlease("net0/d", "10.0.0.50");
    assert!(rig.show_addr().iter().all(|(o, _, _)| o != "net0/d"));
    // The trial is over: the name is free again.
    assert_eq!(
        rig.handle(create_dhcp("net0/d", Some(0))).effects.len(),
        1,
        "a new client"
    );
}

#[test]
fn rolling_back_a_dhcp_delete_starts_the_client_again_without_putting_its_old_address_back() {
    let rig = rig("trydhcpdel");
    assert_eq!(rig.handle(create_dhcp("net0/d", Some(0))).effects.len(), 1);
    rig.lease("net0/d", "10.0.0.50");
    let (id, effects, _) = rig.try_change(Request::DeleteAddr {
        aobj: aobj("net0/d"),
        release: true,
    });
    assert_eq!(
        effects,
        vec![DhcpEffect::Stop {
            aobj: aobj("net0/d"),
            release: true,
        }]
    );
    // The client released the lease: its address is no longer ours.
    rig.unlease("net0/d", "10.0.0.50");
    let undo = rig.engine.expire(id);
    assert_eq!(
        undo,
        vec![DhcpEffect::Start {
            aobj: aobj("net0/d"),
            ifindex: rig.kernel.index_of("net0"),
            mac: [2, 0, 0, 0, 0, 2],
            hostname: Some("box".into()),
        }]
    );
    assert!(
        rig.kernel.addrs_on("net0").is_empty(),
        "a released address put back: {:?}",
        rig.kernel.addrs_on("net0")
    );
    assert!(rig
        .db()
        .contains("_aobjname=net0/d;_dhcp=0,no;_reqhost=box;"));
}

#[test]
fn rolling_back_another_change_leaves_a_lease_that_moved_meanwhile_alone() {
    let rig = rig("trylease");
    assert_eq!(rig.handle(create_dhcp("net0/d", Some(0))).effects.len(), 1);
    rig.lease("net0/d", "10.0.0.50");
    let (id, effects, _) = rig.try_change(create("net1/v4", "198.51.100.1/24"));
    assert!(effects.is_empty());
    // During the trial the server NAKs the lease; the client gets another.
    rig.unlease("net0/d", "10.0.0.50");
    rig.lease("net0/d", "10.0.0.60");
    assert!(rig.engine.expire(id).is_empty(), "no client to touch");
    assert!(rig.kernel.addrs_on("net1").is_empty(), "the trial undone");
    assert_eq!(rig.kernel.addrs_on("net0"), ["10.0.0.60/24"]);
}
