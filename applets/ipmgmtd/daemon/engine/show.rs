//! Read requests: `show-addr`, `show-if` and the `show-*prop` listings.

use super::properties::{
    family_of, fixed_default, if_default, if_possible, read_module_prop, words,
};
use super::{Kernel, State};
use crate::ipmgmtd::addrspec::StaticAddr;
use crate::ipmgmtd::aobjmap::{AddrEntry, AddrState, MapAddr};
use crate::ipmgmtd::datastore::PersistAddr;
use crate::ipmgmtd::kstate::{Link, IFA_F_DEPRECATED, IFF_NOARP};
use crate::ipmgmtd::model::{Error, Proto, Status};
use crate::ipmgmtd::names::AddrObj;
use crate::ipmgmtd::props::{self, Class, Place, PropDef};
use crate::ipmgmtd::request::{AddrFilter, Reply, Request};
use crate::ipmgmtd::view;
use crate::ipmgmtd::wire::Record as Row;

pub(super) fn row(pairs: &[(&str, Option<String>)]) -> Row {
    pairs
        .iter()
        .filter_map(|(k, v)| v.as_ref().map(|v| ((*k).to_owned(), v.clone())))
        .collect()
}

/// Read requests.
pub(super) fn show(
    st: &State,
    k: &mut dyn Kernel,
    dhcp: &view::DhcpView,
    request: &Request,
) -> Result<Reply, Error> {
    match request {
        Request::ShowAddr { filter } => {
            let view = k.view()?;
            let rows = view::addr_rows(&view, &st.map, &st.db, dhcp);
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
            let view = k.view()?;
            let rows: Vec<_> = view::if_rows(&view, &st.map, &st.db)
                .into_iter()
                .filter(|r| ifname.as_ref().is_none_or(|n| &r.ifname == n))
                .collect();
            if ifname.is_some() && rows.is_empty() {
                return Err(Status::Enxio.into());
            }
            Ok(Reply::rows(rows.iter().map(|r| r.to_record()).collect()))
        }
        Request::ShowProp { proto, names } => Ok(show_prop(st, k, *proto, names)),
        Request::ShowIfProp {
            ifname,
            proto,
            names,
        } => show_ifprop(st, k, ifname.as_deref(), *proto, names),
        Request::ShowAddrProp { filter, names } => show_addrprop(st, k, filter, names),
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

fn show_prop(st: &State, k: &mut dyn Kernel, proto: Option<Proto>, names: &[String]) -> Reply {
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
            ("CURRENT", read_module_prop(k, def).ok()),
            (
                "PERSISTENT",
                Some(st.db.modprop(def.proto, def.name).unwrap_or("").to_owned()),
            ),
            ("DEFAULT", Some(fixed_default(def))),
            ("POSSIBLE", Some(def.possible(&words(k, def)))),
        ]));
    }
    Reply {
        result: unknown_names(&list).map_or(Ok(()), Err),
        ..Reply::rows(rows)
    }
}

fn read_ifprop(st: &State, k: &mut dyn Kernel, link: &Link, def: &PropDef) -> Option<String> {
    match def.place {
        Place::Sysctl(_) => def
            .sysctl_paths(&link.name)
            .first()
            .and_then(|p| k.sysctl_read(p).ok())
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
    k: &mut dyn Kernel,
    ifname: Option<&str>,
    proto: Proto,
    names: &[String],
) -> Result<Reply, Error> {
    let mut links = k.links()?;
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
                Some(l) if !disabled => read_ifprop(st, k, l, def),
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
    k: &mut dyn Kernel,
    filter: &AddrFilter,
    names: &[String],
) -> Result<Reply, Error> {
    let view = k.view()?;
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
                        PersistAddr::Addrconf | PersistAddr::Dhcp { .. } => None,
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
                        (MapAddr::Addrconf | MapAddr::Dhcp { .. }, _) => String::new(),
                    }),
                    record.and_then(|r| match &r.kind {
                        PersistAddr::Static { deprecated, .. } => Some(on_off(*deprecated)),
                        PersistAddr::Addrconf | PersistAddr::Dhcp { .. } => None,
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
