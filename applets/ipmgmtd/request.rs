//! Typed requests and replies, and their mapping onto wire records. The
//! daemon decodes what any local user sent, so decoding validates every
//! name and address again.

use super::addrspec::{self, StaticAddr};
use super::model::{Error, Proto, Status};
use super::names::{check_ifname, AddrObj, AddrObjArg};
use super::wire::{Packet, Record, KIND_REPLY, KIND_REQUEST};

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AddrFilter {
    All,
    Interface(String),
    Object(AddrObj),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NewAddr {
    Static {
        addr: StaticAddr,
        down: bool,
    },
    Addrconf,
    /// `-T dhcp`: wait this many seconds for a lease (None: forever),
    /// asking for `hostname` (option 12).
    Dhcp {
        wait: Option<u32>,
        hostname: Option<String>,
    },
}

/// `prop=value`, `prop+=value`, `prop-=value`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SetOp {
    Set,
    Add,
    Remove,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request {
    CreateIf {
        ifname: String,
        temporary: bool,
    },
    DeleteIf {
        ifname: String,
    },
    EnableIf {
        ifname: String,
    },
    DisableIf {
        ifname: String,
    },
    ShowIf {
        ifname: Option<String>,
    },
    CreateAddr {
        target: AddrObjArg,
        temporary: bool,
        kind: NewAddr,
    },
    DeleteAddr {
        aobj: AddrObj,
        /// `-r`: a DHCP lease is given back (RELEASE).
        release: bool,
    },
    UpAddr {
        aobj: AddrObj,
        temporary: bool,
    },
    DownAddr {
        aobj: AddrObj,
        temporary: bool,
    },
    EnableAddr {
        aobj: AddrObj,
    },
    DisableAddr {
        aobj: AddrObj,
    },
    RefreshAddr {
        aobj: AddrObj,
        /// `-i`: DHCP parameters only (INFORM).
        inform: bool,
    },
    ShowAddr {
        filter: AddrFilter,
    },
    /// `value: None` resets to the default.
    SetProp {
        proto: Proto,
        name: String,
        value: Option<String>,
        op: SetOp,
        temporary: bool,
    },
    ShowProp {
        proto: Option<Proto>,
        names: Vec<String>,
    },
    SetIfProp {
        ifname: String,
        proto: Proto,
        name: String,
        value: Option<String>,
        temporary: bool,
    },
    ShowIfProp {
        ifname: Option<String>,
        proto: Proto,
        names: Vec<String>,
    },
    SetAddrProp {
        aobj: AddrObj,
        name: String,
        value: Option<String>,
        temporary: bool,
    },
    ShowAddrProp {
        filter: AddrFilter,
        names: Vec<String>,
    },
    Init,
    Try {
        seconds: u32,
        change: Box<Request>,
    },
    Confirm,
}

/// The longest `ipadm try` window.
pub const MAX_TRY_SECONDS: u32 = 24 * 3600;

impl Request {
    /// Whether the request changes anything (and so needs authorization).
    pub fn is_write(&self) -> bool {
        !matches!(
            self,
            Request::ShowIf { .. }
                | Request::ShowAddr { .. }
                | Request::ShowProp { .. }
                | Request::ShowIfProp { .. }
                | Request::ShowAddrProp { .. }
        )
    }

    pub fn op(&self) -> &'static str {
        match self {
            Request::CreateIf { .. } => "create-if",
            Request::DeleteIf { .. } => "delete-if",
            Request::EnableIf { .. } => "enable-if",
            Request::DisableIf { .. } => "disable-if",
            Request::ShowIf { .. } => "show-if",
            Request::CreateAddr { .. } => "create-addr",
            Request::DeleteAddr { .. } => "delete-addr",
            Request::UpAddr { .. } => "up-addr",
            Request::DownAddr { .. } => "down-addr",
            Request::EnableAddr { .. } => "enable-addr",
            Request::DisableAddr { .. } => "disable-addr",
            Request::RefreshAddr { .. } => "refresh-addr",
            Request::ShowAddr { .. } => "show-addr",
            Request::SetProp { value: None, .. } => "reset-prop",
            Request::SetProp { .. } => "set-prop",
            Request::ShowProp { .. } => "show-prop",
            Request::SetIfProp { value: None, .. } => "reset-ifprop",
            Request::SetIfProp { .. } => "set-ifprop",
            Request::ShowIfProp { .. } => "show-ifprop",
            Request::SetAddrProp { value: None, .. } => "reset-addrprop",
            Request::SetAddrProp { .. } => "set-addrprop",
            Request::ShowAddrProp { .. } => "show-addrprop",
            Request::Init => "init",
            Request::Try { .. } => "try",
            Request::Confirm => "confirm",
        }
    }

    pub fn to_record(&self) -> Record {
        let mut r = Fields::default();
        r.put("op", self.op());
        match self {
            Request::CreateIf { ifname, temporary } => {
                r.put("ifname", ifname);
                r.flag("temporary", *temporary);
            }
            Request::DeleteIf { ifname }
            | Request::EnableIf { ifname }
            | Request::DisableIf { ifname } => r.put("ifname", ifname),
            Request::ShowIf { ifname } => r.opt("ifname", ifname.as_deref()),
            Request::CreateAddr {
                target,
                temporary,
                kind,
            } => {
                r.put("ifname", &target.ifname);
                r.opt("name", target.name.as_deref());
                r.flag("temporary", *temporary);
                match kind {
                    NewAddr::Static { addr, down } => {
                        r.put("type", "static");
                        r.put("local", &format!("{}/{}", addr.local, addr.plen));
                        if let Some(remote) = addr.remote {
                            r.put("remote", &remote.to_string());
                        }
                        r.flag("down", *down);
                    }
                    NewAddr::Addrconf => r.put("type", "addrconf"),
                    NewAddr::Dhcp { wait, hostname } => {
                        r.put("type", "dhcp");
                        r.put(
                            "wait",
                            &wait.map_or_else(|| "forever".to_owned(), |w| w.to_string()),
                        );
                        r.opt("hostname", hostname.as_deref());
                    }
                }
            }
            Request::DeleteAddr { aobj, release } => {
                r.put("aobj", &aobj.to_string());
                r.flag("release", *release);
            }
            Request::RefreshAddr { aobj, inform } => {
                r.put("aobj", &aobj.to_string());
                r.flag("inform", *inform);
            }
            Request::EnableAddr { aobj } | Request::DisableAddr { aobj } => {
                r.put("aobj", &aobj.to_string())
            }
            Request::UpAddr { aobj, temporary } | Request::DownAddr { aobj, temporary } => {
                r.put("aobj", &aobj.to_string());
                r.flag("temporary", *temporary);
            }
            Request::ShowAddr { filter } => r.filter(filter),
            Request::SetProp {
                proto,
                name,
                value,
                op,
                temporary,
            } => {
                r.put("proto", proto.name());
                r.put("name", name);
                r.opt("value", value.as_deref());
                r.put(
                    "mode",
                    match op {
                        SetOp::Set => "set",
                        SetOp::Add => "add",
                        SetOp::Remove => "remove",
                    },
                );
                r.flag("temporary", *temporary);
            }
            Request::ShowProp { proto, names } => {
                r.opt("proto", proto.map(Proto::name));
                r.names(names);
            }
            Request::SetIfProp {
                ifname,
                proto,
                name,
                value,
                temporary,
            } => {
                r.put("ifname", ifname);
                r.put("proto", proto.name());
                r.put("name", name);
                r.opt("value", value.as_deref());
                r.flag("temporary", *temporary);
            }
            Request::ShowIfProp {
                ifname,
                proto,
                names,
            } => {
                r.opt("ifname", ifname.as_deref());
                r.put("proto", proto.name());
                r.names(names);
            }
            Request::SetAddrProp {
                aobj,
                name,
                value,
                temporary,
            } => {
                r.put("aobj", &aobj.to_string());
                r.put("name", name);
                r.opt("value", value.as_deref());
                r.flag("temporary", *temporary);
            }
            Request::ShowAddrProp { filter, names } => {
                r.filter(filter);
                r.names(names);
            }
            Request::Init | Request::Confirm => {}
            Request::Try { seconds, change } => {
                r.put("seconds", &seconds.to_string());
                // The change rides along, its keys prefixed.
                for (k, v) in change.to_record() {
                    r.0.push((format!("change.{k}"), v));
                }
            }
        }
        r.0
    }

    pub fn from_record(record: &Record) -> Result<Request, Error> {
        Self::from_record_at(record, 0)
    }

    fn from_record_at(record: &Record, depth: u8) -> Result<Request, Error> {
        let f = Args(record);
        let op = f.get("op")?;
        let request = match op {
            "create-if" => Request::CreateIf {
                ifname: f.ifname("ifname")?,
                temporary: f.flag("temporary")?,
            },
            "delete-if" => Request::DeleteIf {
                ifname: f.ifname("ifname")?,
            },
            "enable-if" => Request::EnableIf {
                ifname: f.ifname("ifname")?,
            },
            "disable-if" => Request::DisableIf {
                ifname: f.ifname("ifname")?,
            },
            "show-if" => Request::ShowIf {
                ifname: f.opt_ifname("ifname")?,
            },
            "create-addr" => {
                let ifname = f.ifname("ifname")?;
                let target = match f.opt("name") {
                    Some(name) => AddrObjArg::parse(&format!("{ifname}/{name}"))?,
                    None => AddrObjArg { ifname, name: None },
                };
                let kind = match f.get("type")? {
                    "static" => {
                        let (local, plen) = addrspec::parse_prefixed(f.get("local")?)?;
                        let remote = match f.opt("remote") {
                            Some(r) => Some(
                                r.parse()
                                    .map_err(|_| Error::with(Status::BadAddr, r.to_owned()))?,
                            ),
                            None => None,
                        };
                        let addr = StaticAddr {
                            local,
                            plen,
                            remote,
                        };
                        if remote.is_some_and(|r| super::model::Family::of(&r) != addr.family()) {
                            return Err(Status::BadAddr.into());
                        }
                        NewAddr::Static {
                            addr,
                            down: f.flag("down")?,
                        }
                    }
                    "addrconf" => NewAddr::Addrconf,
                    "dhcp" => NewAddr::Dhcp {
                        wait: match f.get("wait")? {
                            "forever" => None,
                            w => Some(w.parse().map_err(|_| malformed("bad 'wait'"))?),
                        },
                        hostname: match f.opt("hostname") {
                            Some(h) if crate::ipmgmtd::names::valid_hostname(h) => {
                                Some(h.to_owned())
                            }
                            Some(h) => return Err(Error::with(Status::InvalidArg, h.to_owned())),
                            None => None,
                        },
                    },
                    other => return Err(Error::with(Status::InvalidArg, format!("type {other}"))),
                };
                Request::CreateAddr {
                    target,
                    temporary: f.flag("temporary")?,
                    kind,
                }
            }
            "delete-addr" => Request::DeleteAddr {
                aobj: f.aobj()?,
                release: f.flag("release")?,
            },
            "enable-addr" => Request::EnableAddr { aobj: f.aobj()? },
            "disable-addr" => Request::DisableAddr { aobj: f.aobj()? },
            "refresh-addr" => Request::RefreshAddr {
                aobj: f.aobj()?,
                inform: f.flag("inform")?,
            },
            "up-addr" => Request::UpAddr {
                aobj: f.aobj()?,
                temporary: f.flag("temporary")?,
            },
            "down-addr" => Request::DownAddr {
                aobj: f.aobj()?,
                temporary: f.flag("temporary")?,
            },
            "show-addr" => Request::ShowAddr {
                filter: f.filter()?,
            },
            "set-prop" | "reset-prop" => Request::SetProp {
                proto: f.proto("proto")?,
                name: f.prop_name()?,
                value: f.value(op == "set-prop")?,
                op: match f.opt("mode").unwrap_or("set") {
                    "set" => SetOp::Set,
                    "add" => SetOp::Add,
                    "remove" => SetOp::Remove,
                    _ => return Err(Status::Ebade.into()),
                },
                temporary: f.flag("temporary")?,
            },
            "show-prop" => Request::ShowProp {
                proto: match f.opt("proto") {
                    Some(_) => Some(f.proto("proto")?),
                    None => None,
                },
                names: f.names()?,
            },
            "set-ifprop" | "reset-ifprop" => Request::SetIfProp {
                ifname: f.ifname("ifname")?,
                proto: f.proto("proto")?,
                name: f.prop_name()?,
                value: f.value(op == "set-ifprop")?,
                temporary: f.flag("temporary")?,
            },
            "show-ifprop" => Request::ShowIfProp {
                ifname: f.opt_ifname("ifname")?,
                proto: f.proto("proto")?,
                names: f.names()?,
            },
            "set-addrprop" | "reset-addrprop" => Request::SetAddrProp {
                aobj: f.aobj()?,
                name: f.prop_name()?,
                value: f.value(op == "set-addrprop")?,
                temporary: f.flag("temporary")?,
            },
            "show-addrprop" => Request::ShowAddrProp {
                filter: f.filter()?,
                names: f.names()?,
            },
            "init" => Request::Init,
            "confirm" => Request::Confirm,
            "try" if depth == 0 => {
                let seconds: u32 = f
                    .get("seconds")?
                    .parse()
                    .map_err(|_| Error::new(Status::InvalidArg))?;
                if seconds == 0 || seconds > MAX_TRY_SECONDS {
                    return Err(Error::with(Status::Erange, "try timeout"));
                }
                let inner: Record = record
                    .iter()
                    .filter_map(|(k, v)| Some((k.strip_prefix("change.")?.to_owned(), v.clone())))
                    .collect();
                let change = Request::from_record_at(&inner, depth + 1)?;
                if !change.is_write()
                    || matches!(
                        change,
                        Request::Init | Request::Confirm | Request::Try { .. }
                    )
                {
                    return Err(Error::with(Status::NotSup, format!("try {}", change.op())));
                }
                Request::Try {
                    seconds,
                    change: Box::new(change),
                }
            }
            other => {
                return Err(Error::with(
                    Status::Ebade,
                    format!("unknown request '{other}'"),
                ))
            }
        };
        Ok(request)
    }

    pub fn to_packet(&self) -> Packet {
        Packet {
            kind: KIND_REQUEST,
            code: 0,
            records: vec![self.to_record()],
        }
    }
}

#[derive(Default)]
struct Fields(Record);

impl Fields {
    fn put(&mut self, key: &str, value: &str) {
        self.0.push((key.to_owned(), value.to_owned()));
    }

    fn opt(&mut self, key: &str, value: Option<&str>) {
        if let Some(v) = value {
            self.put(key, v);
        }
    }

    fn flag(&mut self, key: &str, on: bool) {
        if on {
            self.put(key, "yes");
        }
    }

    fn names(&mut self, names: &[String]) {
        if !names.is_empty() {
            self.put("names", &names.join(","));
        }
    }

    fn filter(&mut self, filter: &AddrFilter) {
        match filter {
            AddrFilter::All => {}
            AddrFilter::Interface(ifname) => self.put("ifname", ifname),
            AddrFilter::Object(aobj) => self.put("aobj", &aobj.to_string()),
        }
    }
}

/// Checked access to a request record.
struct Args<'a>(&'a Record);

fn malformed(what: &str) -> Error {
    Error::with(Status::Ebade, what.to_owned())
}

impl Args<'_> {
    fn opt(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    fn get(&self, key: &str) -> Result<&str, Error> {
        self.opt(key)
            .ok_or_else(|| malformed(&format!("missing '{key}'")))
    }

    fn flag(&self, key: &str) -> Result<bool, Error> {
        match self.opt(key) {
            None => Ok(false),
            Some("yes") => Ok(true),
            Some(_) => Err(malformed(&format!("bad '{key}'"))),
        }
    }

    fn ifname(&self, key: &str) -> Result<String, Error> {
        let name = self.get(key)?;
        check_ifname(name)?;
        Ok(name.to_owned())
    }

    fn opt_ifname(&self, key: &str) -> Result<Option<String>, Error> {
        match self.opt(key) {
            Some(_) => self.ifname(key).map(Some),
            None => Ok(None),
        }
    }

    fn aobj(&self) -> Result<AddrObj, Error> {
        AddrObj::parse(self.get("aobj")?)
    }

    fn filter(&self) -> Result<AddrFilter, Error> {
        match (self.opt("ifname"), self.opt("aobj")) {
            (None, None) => Ok(AddrFilter::All),
            (Some(_), None) => Ok(AddrFilter::Interface(self.ifname("ifname")?)),
            (None, Some(_)) => Ok(AddrFilter::Object(self.aobj()?)),
            (Some(_), Some(_)) => Err(malformed("both ifname and aobj")),
        }
    }

    fn proto(&self, key: &str) -> Result<Proto, Error> {
        let text = self.get(key)?;
        Proto::parse(text)
            .ok_or_else(|| Error::with(Status::InvalidArg, format!("protocol '{text}'")))
    }

    fn prop_name(&self) -> Result<String, Error> {
        let name = self.get("name")?;
        if name.is_empty()
            || name.len() > 64
            || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        {
            return Err(Error::new(Status::PropUnknown));
        }
        Ok(name.to_owned())
    }

    /// The value of a set (required) or a reset (absent).
    fn value(&self, set: bool) -> Result<Option<String>, Error> {
        match (set, self.opt("value")) {
            (true, Some(v)) if super::dbformat::storable(v) && !v.is_empty() => {
                Ok(Some(v.to_owned()))
            }
            (true, _) => Err(Error::new(Status::InvalidArg)),
            (false, None) => Ok(None),
            (false, Some(_)) => Err(malformed("reset with a value")),
        }
    }

    fn names(&self) -> Result<Vec<String>, Error> {
        match self.opt("names") {
            None => Ok(Vec::new()),
            Some(list) => Ok(list
                .split(',')
                .filter(|n| !n.is_empty())
                .map(str::to_owned)
                .collect()),
        }
    }
}

/// What the daemon answers: the outcome, warnings (things that went wrong
/// without failing the request), an informational line, and output rows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    pub result: Result<(), Error>,
    pub warnings: Vec<String>,
    pub info: Option<String>,
    pub rows: Vec<Record>,
}

impl Reply {
    pub fn ok() -> Reply {
        Reply {
            result: Ok(()),
            warnings: Vec::new(),
            info: None,
            rows: Vec::new(),
        }
    }

    pub fn error(e: Error) -> Reply {
        Reply {
            result: Err(e),
            ..Reply::ok()
        }
    }

    pub fn rows(rows: Vec<Record>) -> Reply {
        Reply {
            rows,
            ..Reply::ok()
        }
    }

    pub fn to_packet(&self) -> Packet {
        let mut header: Record = Vec::new();
        let code = match &self.result {
            Ok(()) => 0,
            Err(e) => {
                if let Some(detail) = &e.detail {
                    header.push(("detail".into(), clip(detail)));
                }
                e.status.code()
            }
        };
        if let Some(info) = &self.info {
            header.push(("info".into(), clip(info)));
        }
        for w in self.warnings.iter().take(super::wire::MAX_FIELDS - 2) {
            header.push(("warning".into(), clip(w)));
        }
        let mut records = vec![header];
        records.extend(self.rows.iter().cloned());
        Packet {
            kind: KIND_REPLY,
            code,
            records,
        }
    }

    pub fn from_packet(packet: &Packet) -> Result<Reply, Error> {
        if packet.kind != KIND_REPLY {
            return Err(Status::Ebade.into());
        }
        let (header, rows) = packet
            .records
            .split_first()
            .ok_or_else(|| Error::new(Status::Ebade))?;
        let get = |key: &str| {
            header
                .iter()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v.clone())
        };
        let result = match packet.code {
            0 => Ok(()),
            code => Err(Error {
                status: Status::from_code(code).unwrap_or(Status::Failure),
                detail: get("detail"),
            }),
        };
        Ok(Reply {
            result,
            warnings: header
                .iter()
                .filter(|(k, _)| k == "warning")
                .map(|(_, v)| v.clone())
                .collect(),
            info: get("info"),
            rows: rows.to_vec(),
        })
    }
}

/// Cuts a message to what one wire string holds.
fn clip(text: &str) -> String {
    let mut end = text.len().min(super::wire::MAX_STRING);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn aobj(s: &str) -> AddrObj {
        AddrObj::parse(s).unwrap()
    }

    fn samples() -> Vec<Request> {
        vec![
            Request::CreateIf {
                ifname: "eth0".into(),
                temporary: true,
            },
            Request::DeleteIf {
                ifname: "eth0".into(),
            },
            Request::ShowIf { ifname: None },
            Request::CreateAddr {
                target: AddrObjArg::parse("eth0/v4").unwrap(),
                temporary: false,
                kind: NewAddr::Static {
                    addr: addrspec::parse_static("10.0.0.1/24").unwrap(),
                    down: true,
                },
            },
            Request::CreateAddr {
                target: AddrObjArg::parse("eth0").unwrap(),
                temporary: true,
                kind: NewAddr::Static {
                    addr: addrspec::parse_static("fe80::1,remote=fe80::2").unwrap(),
                    down: false,
                },
            },
            Request::CreateAddr {
                target: AddrObjArg::parse("eth0/v6").unwrap(),
                temporary: false,
                kind: NewAddr::Addrconf,
            },
            Request::DownAddr {
                aobj: aobj("eth0/v4"),
                temporary: true,
            },
            Request::ShowAddr {
                filter: AddrFilter::Interface("eth0".into()),
            },
            Request::ShowAddr {
                filter: AddrFilter::Object(aobj("eth0/_a")),
            },
            Request::SetProp {
                proto: Proto::Tcp,
                name: "ecn".into(),
                value: Some("active".into()),
                op: SetOp::Set,
                temporary: false,
            },
            Request::SetProp {
                proto: Proto::Tcp,
                name: "reserved_ports".into(),
                value: Some("8080".into()),
                op: SetOp::Remove,
                temporary: true,
            },
            Request::SetProp {
                proto: Proto::Ipv4,
                name: "ttl".into(),
                value: None,
                op: SetOp::Set,
                temporary: false,
            },
            Request::ShowProp {
                proto: Some(Proto::Ip),
                names: vec!["ttl".into(), "forwarding".into()],
            },
            Request::SetIfProp {
                ifname: "eth0".into(),
                proto: Proto::Ipv4,
                name: "mtu".into(),
                value: Some("1400".into()),
                temporary: true,
            },
            Request::ShowIfProp {
                ifname: None,
                proto: Proto::Ip,
                names: vec![],
            },
            Request::SetAddrProp {
                aobj: aobj("eth0/v4"),
                name: "prefixlen".into(),
                value: Some("16".into()),
                temporary: false,
            },
            Request::CreateAddr {
                target: AddrObjArg::parse("eth0/d").unwrap(),
                temporary: false,
                kind: NewAddr::Dhcp {
                    wait: Some(30),
                    hostname: Some("box".into()),
                },
            },
            Request::CreateAddr {
                target: AddrObjArg::parse("eth0").unwrap(),
                temporary: true,
                kind: NewAddr::Dhcp {
                    wait: None,
                    hostname: None,
                },
            },
            Request::RefreshAddr {
                aobj: aobj("eth0/d"),
                inform: true,
            },
            Request::Init,
            Request::Confirm,
            Request::Try {
                seconds: 30,
                change: Box::new(Request::DeleteAddr {
                    aobj: aobj("eth0/v4"),
                    release: true,
                }),
            },
        ]
    }

    #[test]
    fn every_request_round_trips() {
        for request in samples() {
            let record = request.to_record();
            assert_eq!(
                Request::from_record(&record).unwrap(),
                request,
                "{record:?}"
            );
        }
    }

    fn rec(pairs: &[(&str, &str)]) -> Record {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn hostile_records_are_refused_with_a_status() {
        let cases: &[(&[(&str, &str)], Status)] = &[
            (&[], Status::Ebade),
            (&[("op", "format-disk")], Status::Ebade),
            (&[("op", "create-if")], Status::Ebade),
            (
                &[("op", "create-if"), ("ifname", "a/b")],
                Status::InvalidName,
            ),
            (
                &[("op", "create-if"), ("ifname", "x"), ("temporary", "maybe")],
                Status::Ebade,
            ),
            (
                &[("op", "delete-addr"), ("aobj", "eth0/1x")],
                Status::InvalidName,
            ),
            (
                &[
                    ("op", "create-addr"),
                    ("ifname", "e"),
                    ("type", "static"),
                    ("local", "1.2.3.4/40"),
                ],
                Status::BadAddr,
            ),
            (
                &[
                    ("op", "create-addr"),
                    ("ifname", "e"),
                    ("type", "static"),
                    ("local", "1.2.3.4"),
                    ("remote", "::1"),
                ],
                Status::BadAddr,
            ),
            (
                &[("op", "create-addr"), ("ifname", "e"), ("type", "bootp")],
                Status::InvalidArg,
            ),
            (
                &[
                    ("op", "set-prop"),
                    ("proto", "sctp"),
                    ("name", "x"),
                    ("value", "1"),
                ],
                Status::InvalidArg,
            ),
            (
                &[
                    ("op", "set-prop"),
                    ("proto", "tcp"),
                    ("name", "x;y"),
                    ("value", "1"),
                ],
                Status::PropUnknown,
            ),
            (
                &[("op", "set-prop"), ("proto", "tcp"), ("name", "ecn")],
                Status::InvalidArg,
            ),
            (
                &[
                    ("op", "set-prop"),
                    ("proto", "tcp"),
                    ("name", "ecn"),
                    ("value", "a;b"),
                ],
                Status::InvalidArg,
            ),
            (
                &[("op", "try"), ("seconds", "0"), ("change.op", "init")],
                Status::Erange,
            ),
            (
                &[("op", "try"), ("seconds", "5"), ("change.op", "show-if")],
                Status::NotSup,
            ),
            (
                &[
                    ("op", "try"),
                    ("seconds", "5"),
                    ("change.op", "try"),
                    ("change.seconds", "5"),
                ],
                Status::Ebade,
            ),
        ];
        for (pairs, status) in cases {
            let err = Request::from_record(&rec(pairs)).unwrap_err();
            assert_eq!(err.status, *status, "{pairs:?}");
        }
    }

    #[test]
    fn writes_are_told_from_reads() {
        for request in samples() {
            let read = request.op().starts_with("show-");
            assert_eq!(request.is_write(), !read, "{}", request.op());
        }
    }

    #[test]
    fn replies_round_trip() {
        let mut reply = Reply::error(Error::with(Status::Enxio, "eth9"));
        reply.warnings = vec!["w1".into(), "w2".into()];
        reply.info = Some("note".into());
        let back = Reply::from_packet(&reply.to_packet()).unwrap();
        assert_eq!(back, reply);
        let rows = Reply::rows(vec![rec(&[("A", "1")]), rec(&[])]);
        assert_eq!(Reply::from_packet(&rows.to_packet()).unwrap(), rows);
        let empty = Packet {
            kind: KIND_REPLY,
            code: 0,
            records: vec![],
        };
        assert!(Reply::from_packet(&empty).is_err());
    }
}
