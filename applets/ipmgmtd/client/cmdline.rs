//! ipadm's command line, illumos syntax, turned into a request and an
//! output layout; and the daemon's failures turned into ipadm's messages.
//! Options are parsed getopt_long style (clusters, permutation, `--`), so
//! option errors read as illumos ipadm's.

use std::path::PathBuf;

use super::ofmt::Column;
use crate::ipmgmtd::addrspec;
use crate::ipmgmtd::model::{Error, Proto, Status};
use crate::ipmgmtd::names::{check_ifname, AddrObj, AddrObjArg};
use crate::ipmgmtd::request::{AddrFilter, NewAddr, Request, SetOp, MAX_TRY_SECONDS};

pub const SHOW_ADDR_COLUMNS: &[Column] = &[
    ("ADDROBJ", 18),
    ("TYPE", 9),
    ("STATE", 13),
    ("CURRENT", 8),
    ("PERSISTENT", 11),
    ("ADDR", 46),
];
/// With `-o`, DHCP lease columns too: seconds granted and left, the
/// server, the client's state (empty for other address types).
pub const SHOW_ADDR_LEASE_COLUMNS: &[Column] = &[
    ("ADDROBJ", 18),
    ("TYPE", 9),
    ("STATE", 13),
    ("CURRENT", 8),
    ("PERSISTENT", 11),
    ("ADDR", 46),
    ("LEASE", 9),
    ("EXPIRES", 9),
    ("SERVER", 16),
    ("DHCPSTATE", 12),
];
pub const SHOW_IF_COLUMNS: &[Column] = &[
    ("IFNAME", 11),
    ("STATE", 9),
    ("CURRENT", 13),
    ("PERSISTENT", 11),
];
pub const MODPROP_COLUMNS: &[Column] = &[
    ("PROTO", 6),
    ("PROPERTY", 22),
    ("PERM", 5),
    ("CURRENT", 13),
    ("PERSISTENT", 13),
    ("DEFAULT", 13),
    ("POSSIBLE", 15),
];
pub const IFPROP_COLUMNS: &[Column] = &[
    ("IFNAME", 12),
    ("PROPERTY", 16),
    ("PROTO", 6),
    ("PERM", 5),
    ("CURRENT", 11),
    ("PERSISTENT", 11),
    ("DEFAULT", 11),
    ("POSSIBLE", 16),
];
pub const ADDRPROP_COLUMNS: &[Column] = &[
    ("ADDROBJ", 18),
    ("PROPERTY", 11),
    ("PERM", 5),
    ("CURRENT", 16),
    ("PERSISTENT", 16),
    ("DEFAULT", 16),
    ("POSSIBLE", 15),
];

/// The default `try` window, as netplan's.
pub const DEFAULT_TRY_SECONDS: u32 = 120;

/// How a `show-*` reply is printed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Show {
    pub columns: &'static [Column],
    pub fields: Option<String>,
    pub parsable: bool,
    pub wrap: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    Help,
    Send {
        request: Request,
        show: Option<Show>,
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Invocation {
    pub root: Option<PathBuf>,
    pub action: Action,
}

/// A command line ipadm refuses: the message, and whether the general
/// usage follows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    pub message: Option<String>,
    pub usage: bool,
}

fn die(message: impl Into<String>) -> Refusal {
    Refusal {
        message: Some(message.into()),
        usage: false,
    }
}

const USAGE: &[(&str, &str)] = &[
    ("create-if", "\tcreate-if\t[-t] <interface>"),
    ("create-ip", "\tcreate-ip\t[-t] <interface>"),
    ("disable-if", "\tdisable-if\t-t <interface>"),
    ("enable-if", "\tenable-if\t-t <interface>"),
    ("delete-if", "\tdelete-if\t<interface>"),
    ("delete-ip", "\tdelete-ip\t<interface>"),
    (
        "show-if",
        "\tshow-if\t\t[[-p] -o <field>,...] [<interface>]\n",
    ),
    (
        "set-ifprop",
        "\tset-ifprop\t[-t] -p <prop>=<value[,...]> -m <protocol> <interface>",
    ),
    (
        "reset-ifprop",
        "\treset-ifprop\t[-t] -p <prop> -m <protocol> <interface>",
    ),
    (
        "show-ifprop",
        "\tshow-ifprop\t[[-c] -o <field>,...] [-p <prop>,...]\n\t\t\t[-m <protocol>] [interface]\n",
    ),
    (
        "create-addr",
        "\tcreate-addr\t[-t] -T static [-d] -a{local|remote}=addr[/prefixlen]\n\
         \t\t\t<addrobj>|<interface>\n\
         \tcreate-addr\t[-t] -T addrconf <addrobj>|<interface>",
    ),
    ("down-addr", "\tdown-addr\t[-t] <addrobj>"),
    ("up-addr", "\tup-addr\t\t[-t] <addrobj>"),
    ("disable-addr", "\tdisable-addr\t-t <addrobj>"),
    ("enable-addr", "\tenable-addr\t-t <addrobj>"),
    ("refresh-addr", "\trefresh-addr\t<addrobj>"),
    ("delete-addr", "\tdelete-addr\t<addrobj>"),
    (
        "show-addr",
        "\tshow-addr\t[[-p] -o <field>,...] [<addrobj>|<interface>/]\n",
    ),
    (
        "set-addrprop",
        "\tset-addrprop\t[-t] -p <prop>=<value[,...]> <addrobj>",
    ),
    (
        "reset-addrprop",
        "\treset-addrprop\t[-t] -p <prop> <addrobj>",
    ),
    (
        "show-addrprop",
        "\tshow-addrprop\t[[-c] -o <field>,...] [-p <prop>,...] [<addrobj>|<interface>/]\n",
    ),
    (
        "set-prop",
        "\tset-prop\t[-t] -p <prop>[+|-]=<value[,...]> <protocol>",
    ),
    ("reset-prop", "\treset-prop\t[-t] -p <prop> <protocol>"),
    (
        "show-prop",
        "\tshow-prop\t[[-c] -o <field>,...] [-p <prop>,...] [protocol]\n",
    ),
    ("init", "\tinit"),
    ("try", "\ttry\t\t[-t <seconds>] <subcommand> <args> ..."),
    ("confirm", "\tconfirm"),
];

/// The general usage, as ipadm prints it.
pub fn usage_text() -> String {
    let mut text = String::from("usage:  ipadm [--root <dir>] <subcommand> <args> ...\n");
    for (_, line) in USAGE {
        text.push_str(line);
        text.push('\n');
    }
    text
}

fn usage_of(subcommand: &str) -> &'static str {
    USAGE
        .iter()
        .find(|(name, _)| *name == subcommand)
        .map(|(_, u)| *u)
        .unwrap_or("")
}

/// Options as getopt_long returns them.
struct Parsed {
    options: Vec<(char, Option<String>)>,
    operands: Vec<String>,
}

impl Parsed {
    fn has(&self, c: char) -> bool {
        self.options.iter().any(|(o, _)| *o == c)
    }

    fn values(&self, c: char) -> Vec<&str> {
        self.options
            .iter()
            .filter(|(o, _)| *o == c)
            .filter_map(|(_, v)| v.as_deref())
            .collect()
    }

    fn single(&self, c: char, twice: &str) -> Result<Option<&str>, Refusal> {
        let values = self.values(c);
        if values.len() > 1 {
            return Err(die(twice));
        }
        Ok(values.first().copied())
    }
}

/// `spec` lists short options, `:` after those that take a value; `long`
/// maps long names to them.
fn getopt(
    args: &[String],
    spec: &str,
    long: &[(&str, char)],
    usage: &str,
) -> Result<Parsed, Refusal> {
    let takes_value = |c: char| -> Option<bool> {
        let at = spec.find(c)?;
        Some(spec[at + c.len_utf8()..].starts_with(':'))
    };
    let mut parsed = Parsed {
        options: Vec::new(),
        operands: Vec::new(),
    };
    let mut i = 0;
    while i < args.len() {
        let arg = &args[i];
        i += 1;
        if arg == "--" {
            parsed.operands.extend(args[i..].iter().cloned());
            break;
        }
        if let Some(rest) = arg.strip_prefix("--") {
            let (name, inline) = match rest.split_once('=') {
                Some((n, v)) => (n, Some(v.to_owned())),
                None => (rest, None),
            };
            let Some(&(_, c)) = long.iter().find(|(n, _)| *n == name) else {
                return Err(die(format!(
                    "unrecognized option '--{name}'\nusage: {usage}"
                )));
            };
            let value = if takes_value(c) == Some(true) {
                match inline {
                    Some(v) => Some(v),
                    None if i < args.len() => {
                        i += 1;
                        Some(args[i - 1].clone())
                    }
                    None => {
                        return Err(die(format!(
                            "option '--{name}' requires a value\nusage: {usage}"
                        )))
                    }
                }
            } else {
                None
            };
            parsed.options.push((c, value));
            continue;
        }
        if arg.len() > 1 && arg.starts_with('-') {
            let cluster: Vec<char> = arg[1..].chars().collect();
            let mut j = 0;
            while j < cluster.len() {
                let c = cluster[j];
                j += 1;
                let known = if c == ':' { None } else { takes_value(c) };
                match known {
                    None => return Err(die(format!("unrecognized option '-{c}'\nusage: {usage}"))),
                    Some(false) => parsed.options.push((c, None)),
                    Some(true) => {
                        let value: String = if j < cluster.len() {
                            cluster[j..].iter().collect()
                        } else if i < args.len() {
                            i += 1;
                            args[i - 1].clone()
                        } else {
                            return Err(die(format!(
                                "option '-{c}' requires a value\nusage: {usage}"
                            )));
                        };
                        parsed.options.push((c, Some(value)));
                        j = cluster.len();
                    }
                }
            }
            continue;
        }
        parsed.operands.push(arg.clone());
    }
    Ok(parsed)
}

fn usage_die(use_: &str) -> Refusal {
    die(format!("Usage: {use_}"))
}

fn one_operand(p: &Parsed, use_: &str) -> Result<String, Refusal> {
    match p.operands.as_slice() {
        [one] => Ok(one.clone()),
        _ => Err(usage_die(use_)),
    }
}

fn ifname_operand(p: &Parsed, use_: &str) -> Result<String, Refusal> {
    let ifname = one_operand(p, use_)?;
    check_ifname(&ifname).map_err(|_| die(format!("Invalid interface name '{ifname}'")))?;
    Ok(ifname)
}

fn aobj_operand(p: &Parsed, use_: &str) -> Result<AddrObj, Refusal> {
    let text = one_operand(p, use_)?;
    AddrObj::parse(&text).map_err(|_| die(format!("invalid address object name: {text}")))
}

fn proto_arg(text: &str) -> Result<Proto, Refusal> {
    Proto::parse(text).ok_or_else(|| die(format!("invalid protocol '{text}' specified")))
}

/// illumos's check of a `-p` argument: `prop=value` for a set, `prop` for
/// a reset.
fn check_propstr(pstr: &str, reset: bool, use_: &str) -> Result<(), Refusal> {
    match pstr.split_once('=') {
        Some(_) if reset => Err(die(format!("incorrect syntax used for -p.\n{use_}"))),
        None if reset => Ok(()),
        None | Some((_, "")) => Err(die(format!("please specify the value to be set.\n{use_}"))),
        Some((_, value)) if value.contains('=') => Err(die(format!(
            "cannot specify more than one prop=val at a time.\n{use_}"
        ))),
        Some(_) => Ok(()),
    }
}

/// The property list of a `show-*prop -p` (names only).
fn prop_list(text: &str, what: &str) -> Result<Vec<String>, Refusal> {
    let names: Vec<String> = text
        .split(',')
        .filter(|n| !n.is_empty())
        .map(str::to_owned)
        .collect();
    if names.is_empty() || names.iter().any(|n| n.contains('=')) {
        return Err(die(format!("invalid {what} properties specified")));
    }
    Ok(names)
}

/// Parses the arguments after the program name.
pub fn parse(args: &[String]) -> Result<Invocation, Refusal> {
    let mut root = None;
    let mut i = 0;
    while let Some(arg) = args.get(i) {
        if arg == "--root" {
            let dir = args
                .get(i + 1)
                .ok_or_else(|| die("option '--root' requires a value"))?;
            root = Some(PathBuf::from(dir));
            i += 2;
        } else if let Some(dir) = arg.strip_prefix("--root=") {
            root = Some(PathBuf::from(dir));
            i += 1;
        } else {
            break;
        }
    }
    let rest = &args[i..];
    let Some(subcommand) = rest.first() else {
        // Plain `ipadm` is `ipadm show-addr`.
        return Ok(Invocation {
            root,
            action: subcommand_action("show-addr", &[])?,
        });
    };
    let action = match subcommand.as_str() {
        "help" | "-h" | "--help" | "-?" => Action::Help,
        name => subcommand_action(name, &rest[1..])?,
    };
    Ok(Invocation { root, action })
}

fn send(request: Request) -> Action {
    Action::Send {
        request,
        show: None,
    }
}

fn show(request: Request, show: Show) -> Action {
    Action::Send {
        request,
        show: Some(show),
    }
}

fn subcommand_action(name: &str, args: &[String]) -> Result<Action, Refusal> {
    let use_ = usage_of(name);
    const TEMP: &[(&str, char)] = &[("temporary", 't')];
    let action = match name {
        "create-if" | "create-ip" => {
            let p = getopt(args, ":t", TEMP, use_)?;
            send(Request::CreateIf {
                ifname: ifname_operand(&p, use_)?,
                temporary: p.has('t'),
            })
        }
        "delete-if" | "delete-ip" => {
            if args.len() != 1 {
                return Err(usage_die(use_));
            }
            let p = getopt(args, "", &[], use_)?;
            send(Request::DeleteIf {
                ifname: ifname_operand(&p, use_)?,
            })
        }
        "enable-if" | "disable-if" => {
            let p = getopt(args, ":t", TEMP, use_)?;
            let ifname = ifname_operand(&p, use_)?;
            if !p.has('t') {
                return Err(die(format!(
                    "persistent operation not supported for {name}"
                )));
            }
            send(if name == "enable-if" {
                Request::EnableIf { ifname }
            } else {
                Request::DisableIf { ifname }
            })
        }
        "show-if" => {
            let p = getopt(args, ":po:", &[("parsable", 'p'), ("output", 'o')], use_)?;
            let ifname = match p.operands.as_slice() {
                [] => None,
                [one] => Some(one.clone()),
                _ => return Err(usage_die(use_)),
            };
            if let Some(ifname) = &ifname {
                check_ifname(ifname)
                    .map_err(|_| die(format!("Invalid interface name '{ifname}'")))?;
            }
            show(
                Request::ShowIf { ifname },
                Show {
                    columns: SHOW_IF_COLUMNS,
                    fields: p.values('o').last().map(|s| s.to_string()),
                    parsable: p.has('p'),
                    wrap: false,
                },
            )
        }
        "create-addr" => create_addr(args, use_)?,
        "delete-addr" => {
            // -r: a DHCP lease is released, not only dropped.
            let p = getopt(args, ":r", &[("release", 'r')], use_)?;
            send(Request::DeleteAddr {
                aobj: aobj_operand(&p, use_)?,
                release: p.has('r'),
            })
        }
        "up-addr" | "down-addr" => {
            let p = getopt(args, ":t", TEMP, use_)?;
            let aobj = aobj_operand(&p, use_)?;
            let temporary = p.has('t');
            send(if name == "up-addr" {
                Request::UpAddr { aobj, temporary }
            } else {
                Request::DownAddr { aobj, temporary }
            })
        }
        "enable-addr" | "disable-addr" => {
            let p = getopt(args, ":t", TEMP, use_)?;
            let aobj = aobj_operand(&p, use_)?;
            if !p.has('t') {
                return Err(die(format!(
                    "persistent operation not supported for {name}"
                )));
            }
            send(if name == "enable-addr" {
                Request::EnableAddr { aobj }
            } else {
                Request::DisableAddr { aobj }
            })
        }
        "refresh-addr" => {
            // -i: DHCP parameters only (INFORM), the lease stays.
            let p = getopt(args, ":i", &[("inform", 'i')], use_)?;
            send(Request::RefreshAddr {
                aobj: aobj_operand(&p, use_)?,
                inform: p.has('i'),
            })
        }
        "show-addr" => {
            let p = getopt(args, ":po:", &[("parsable", 'p'), ("output", 'o')], use_)?;
            let fields = p.values('o').last().map(|s| s.to_string());
            if p.has('p') && fields.is_none() {
                return Err(die("-p requires -o"));
            }
            let filter = match p.operands.as_slice() {
                [] => AddrFilter::All,
                [one] => addr_filter(one, "Invalid address object name provided")?,
                _ => return Err(usage_die(use_)),
            };
            // `-o all` stays illumos' six columns; lease ones by name.
            let lease_columns = fields.as_deref().is_some_and(|f| {
                f.split(',').any(|name| {
                    SHOW_ADDR_LEASE_COLUMNS[SHOW_ADDR_COLUMNS.len()..]
                        .iter()
                        .any(|(c, _)| c.eq_ignore_ascii_case(name))
                })
            });
            show(
                Request::ShowAddr { filter },
                Show {
                    columns: if lease_columns {
                        SHOW_ADDR_LEASE_COLUMNS
                    } else {
                        SHOW_ADDR_COLUMNS
                    },
                    fields: Some(fields.unwrap_or_else(|| "addrobj,type,state,addr".into())),
                    parsable: p.has('p'),
                    wrap: false,
                },
            )
        }
        "set-prop" | "reset-prop" => {
            let reset = name == "reset-prop";
            let p = getopt(args, ":p:t", &[("prop", 'p'), ("temporary", 't')], use_)?;
            let Some(nv) = p.single('p', "-p must be specified once only")? else {
                return Err(usage_die(use_));
            };
            check_propstr(nv, reset, use_)?;
            let protocol = one_operand(&p, use_)?;
            let (mut prop, value) = match nv.split_once('=') {
                Some((n, v)) => (n.to_owned(), Some(v.to_owned())),
                None => (nv.to_owned(), None),
            };
            if prop.is_empty() {
                return Err(die(format!("Invalid prop=val specified\n{use_}")));
            }
            let mut op = SetOp::Set;
            if value.is_some() {
                if let Some(stripped) = prop.strip_suffix('+') {
                    op = SetOp::Add;
                    prop = stripped.to_owned();
                } else if let Some(stripped) = prop.strip_suffix('-') {
                    op = SetOp::Remove;
                    prop = stripped.to_owned();
                }
                if prop.is_empty() {
                    return Err(die(format!("Invalid prop=val specified\n{use_}")));
                }
            }
            send(Request::SetProp {
                proto: proto_arg(&protocol)?,
                name: prop,
                value,
                op,
                temporary: p.has('t'),
            })
        }
        "show-prop" => {
            let p = getopt(
                args,
                ":p:co:",
                &[("parsable", 'c'), ("prop", 'p'), ("output", 'o')],
                use_,
            )?;
            let names = match p.single('p', "-p must be specified once only")? {
                Some(list) => prop_list(list, "protocol")?,
                None => Vec::new(),
            };
            let proto = match p.operands.as_slice() {
                [] if !names.is_empty() => {
                    return Err(die("protocol must be specified when property name is used"))
                }
                [] => None,
                [one] => Some(proto_arg(one)?),
                _ => return Err(usage_die(use_)),
            };
            let parsable = p.has('c');
            show(
                Request::ShowProp { proto, names },
                Show {
                    columns: MODPROP_COLUMNS,
                    fields: p.values('o').last().map(|s| s.to_string()),
                    parsable,
                    wrap: !parsable,
                },
            )
        }
        "set-ifprop" | "reset-ifprop" => {
            let reset = name == "reset-ifprop";
            let p = getopt(
                args,
                ":m:p:t",
                &[("module", 'm'), ("prop", 'p'), ("temporary", 't')],
                use_,
            )?;
            let nv = p.single('p', "-p must be specified once only")?;
            if let Some(nv) = nv {
                check_propstr(nv, reset, use_)?;
            }
            let module = p.single('m', "-m must be specified once only")?;
            let (Some(nv), Some(module), [ifname]) = (nv, module, p.operands.as_slice()) else {
                return Err(usage_die(use_));
            };
            check_ifname(ifname).map_err(|_| die(format!("Invalid interface name '{ifname}'")))?;
            let (prop, value) = match nv.split_once('=') {
                Some((n, v)) => (n.to_owned(), Some(v.to_owned())),
                None => (nv.to_owned(), None),
            };
            send(Request::SetIfProp {
                ifname: ifname.clone(),
                proto: proto_arg(module)?,
                name: prop,
                value,
                temporary: p.has('t'),
            })
        }
        "show-ifprop" => {
            let p = getopt(
                args,
                ":p:m:co:",
                &[
                    ("module", 'm'),
                    ("parsable", 'c'),
                    ("prop", 'p'),
                    ("output", 'o'),
                ],
                use_,
            )?;
            let mut names = Vec::new();
            for list in p.values('p') {
                names.extend(prop_list(list, "interface")?);
            }
            let module = p.single('m', "cannot specify more than one -m")?;
            let ifname = match p.operands.as_slice() {
                [] => None,
                [one] => Some(one.clone()),
                _ => return Err(usage_die(use_)),
            };
            if let Some(ifname) = &ifname {
                check_ifname(ifname)
                    .map_err(|_| die(format!("Invalid interface name '{ifname}'")))?;
            }
            let parsable = p.has('c');
            show(
                Request::ShowIfProp {
                    ifname,
                    proto: proto_arg(module.unwrap_or("ip"))?,
                    names,
                },
                Show {
                    columns: IFPROP_COLUMNS,
                    fields: p.values('o').last().map(|s| s.to_string()),
                    parsable,
                    wrap: false,
                },
            )
        }
        "set-addrprop" | "reset-addrprop" => {
            let reset = name == "reset-addrprop";
            let p = getopt(args, ":p:t", &[("prop", 'p'), ("temporary", 't')], use_)?;
            let Some(nv) = p.single('p', "-p must be specified once only")? else {
                return Err(usage_die(use_));
            };
            check_propstr(nv, reset, use_)?;
            let aobj = aobj_operand(&p, use_)?;
            let (prop, value) = match nv.split_once('=') {
                Some((n, v)) => (n.to_owned(), Some(v.to_owned())),
                None => (nv.to_owned(), None),
            };
            send(Request::SetAddrProp {
                aobj,
                name: prop,
                value,
                temporary: p.has('t'),
            })
        }
        "show-addrprop" => {
            let p = getopt(
                args,
                ":p:co:",
                &[("parsable", 'c'), ("prop", 'p'), ("output", 'o')],
                use_,
            )?;
            let mut names = Vec::new();
            for list in p.values('p') {
                names.extend(prop_list(list, "addrobj")?);
            }
            let filter = match p.operands.as_slice() {
                [] => AddrFilter::All,
                [one] => addr_filter(one, "invalid addrobj name provided")?,
                _ => return Err(usage_die(use_)),
            };
            show(
                Request::ShowAddrProp { filter, names },
                Show {
                    columns: ADDRPROP_COLUMNS,
                    fields: p.values('o').last().map(|s| s.to_string()),
                    parsable: p.has('c'),
                    wrap: false,
                },
            )
        }
        "init" | "confirm" => {
            if !args.is_empty() {
                return Err(usage_die(use_));
            }
            send(if name == "init" {
                Request::Init
            } else {
                Request::Confirm
            })
        }
        "try" => try_action(args, use_)?,
        other => {
            return Err(Refusal {
                message: Some(format!("unknown subcommand '{other}'")),
                usage: true,
            })
        }
    };
    Ok(action)
}

fn addr_filter(text: &str, invalid: &str) -> Result<AddrFilter, Refusal> {
    match text.split_once('/') {
        None => Err(die(invalid)),
        Some((ifname, "")) => {
            check_ifname(ifname).map_err(|_| die(invalid))?;
            Ok(AddrFilter::Interface(ifname.to_owned()))
        }
        Some(_) => Ok(AddrFilter::Object(
            AddrObj::parse(text).map_err(|_| die(invalid))?,
        )),
    }
}

/// How long `create-addr -T dhcp` waits for a lease without `-w`
/// (illumos: 120 seconds).
const DEFAULT_DHCP_WAIT: u32 = 120;

fn create_addr(args: &[String], use_: &str) -> Result<Action, Refusal> {
    let p = getopt(
        args,
        ":1T:a:dh:i:p:w:t",
        &[
            ("address", 'a'),
            ("down", 'd'),
            ("interface-id", 'i'),
            ("primary", '1'),
            ("prop", 'p'),
            ("reqhost", 'h'),
            ("temporary", 't'),
            ("type", 'T'),
            ("wait", 'w'),
        ],
        use_,
    )?;
    let atype = p.values('T').last().map(|s| s.to_string());
    let (Some(atype), [target]) = (atype, p.operands.as_slice()) else {
        return Err(die(format!("Invalid arguments\nusage: {use_}")));
    };
    let target = AddrObjArg::parse(target).map_err(|_| {
        die(format!(
            "invalid address object name: {target}\nusage: {use_}"
        ))
    })?;
    let static_opts = p.has('a') || p.has('d');
    let auto_opts = p.has('i') || p.has('p');
    let dhcp_opts = p.has('w') || p.has('h') || p.has('1');
    let invalid_for = || die(format!("Invalid arguments for type {atype}\nusage: {use_}"));
    let kind = match atype.as_str() {
        "static" => {
            let spec = p.values('a');
            let (Some(spec), false, false) = (spec.last(), auto_opts, dhcp_opts) else {
                return Err(invalid_for());
            };
            let addr = addrspec::parse_static(spec).map_err(|e| die(e.to_string()))?;
            NewAddr::Static {
                addr,
                down: p.has('d'),
            }
        }
        "addrconf" => {
            if static_opts || dhcp_opts {
                return Err(invalid_for());
            }
            if auto_opts {
                return Err(die(
                    "interface ids and stateful/stateless choices are left to the kernel (-i, -p)",
                ));
            }
            NewAddr::Addrconf
        }
        "dhcp" => {
            if static_opts || auto_opts {
                return Err(invalid_for());
            }
            let wait =
                match p.values('w').last().copied() {
                    None => Some(DEFAULT_DHCP_WAIT),
                    Some("forever") => None,
                    Some(w) => Some(w.parse::<u32>().map_err(|_| {
                        die(format!("Invalid wait time '{w}': seconds or 'forever'"))
                    })?),
                };
            let hostname = match p.values('h').last().copied() {
                Some(h) if crate::ipmgmtd::names::valid_hostname(h) => Some(h.to_owned()),
                Some(h) => return Err(die(format!("Invalid hostname '{h}'"))),
                None => None,
            };
            NewAddr::Dhcp { wait, hostname }
        }
        other => return Err(die(format!("Invalid address type {other}"))),
    };
    Ok(send(Request::CreateAddr {
        target,
        temporary: p.has('t'),
        kind,
    }))
}

fn try_action(args: &[String], use_: &str) -> Result<Action, Refusal> {
    // Options end at the subcommand, whose own options follow it.
    let mut seconds = DEFAULT_TRY_SECONDS;
    let mut i = 0;
    while let Some(arg) = args.get(i) {
        let value = if arg == "-t" || arg == "--timeout" {
            i += 1;
            args.get(i)
                .ok_or_else(|| die(format!("option '-t' requires a value\nusage: {use_}")))?
                .as_str()
        } else if let Some(v) = arg.strip_prefix("--timeout=") {
            v
        } else if let Some(v) = arg.strip_prefix("-t").filter(|v| !v.is_empty()) {
            v
        } else {
            break;
        };
        seconds = value
            .parse()
            .ok()
            .filter(|s| (1..=MAX_TRY_SECONDS).contains(s))
            .ok_or_else(|| {
                die(format!(
                    "invalid timeout '{value}': give 1 to {MAX_TRY_SECONDS} seconds"
                ))
            })?;
        i += 1;
    }
    let Some(sub) = args.get(i) else {
        return Err(usage_die(use_));
    };
    let Action::Send {
        request,
        show: None,
    } = subcommand_action(sub, &args[i + 1..])?
    else {
        return Err(die(format!("'{sub}' cannot be tried: it changes nothing")));
    };
    if matches!(
        request,
        Request::Init | Request::Confirm | Request::Try { .. }
    ) {
        return Err(die(format!("'{sub}' cannot be tried")));
    }
    Ok(send(Request::Try {
        seconds,
        change: Box::new(request),
    }))
}

/// The message for a request the daemon refused, worded as ipadm's.
pub fn failure_message(request: &Request, err: &Error) -> String {
    match request {
        Request::CreateIf { ifname, .. } => format!("Could not create {ifname} : {err}"),
        Request::DeleteIf { ifname } => format!("Could not delete {ifname}: {err}"),
        Request::EnableIf { ifname } => format!("Could not enable {ifname} : {err}"),
        Request::DisableIf { ifname } => format!("Could not disable {ifname}: {err}"),
        Request::ShowIf { .. } => format!("Could not get interface(s): {err}"),
        Request::CreateAddr { .. } => format!("Could not create address: {err}"),
        Request::DeleteAddr { .. } => format!("could not delete address: {err}"),
        Request::EnableAddr { .. } => format!("could not enable address: {err}"),
        Request::DisableAddr { .. } => format!("could not disable address: {err}"),
        Request::UpAddr { .. } => format!("Could not mark the address up: {err}"),
        Request::DownAddr { .. } => format!("Could not mark the address down: {err}"),
        Request::RefreshAddr { .. } => format!("could not refresh address: {err}"),
        Request::ShowAddr {
            filter: AddrFilter::Object(_),
        } if err.status == Status::NotFound => "Address object not found".into(),
        Request::ShowAddr { .. } => format!("Could not get address: {err}"),
        Request::SetProp { name, value, .. } => {
            let verb = if value.is_some() {
                "set-prop"
            } else {
                "reset-prop"
            };
            format!("{verb}: {name}: {err}")
        }
        Request::ShowProp { .. } => format!("show-prop: {err}"),
        Request::SetIfProp { name, value, .. } => {
            let verb = if value.is_some() {
                "set-ifprop"
            } else {
                "reset-ifprop"
            };
            format!("{verb}: {name}: {err}")
        }
        Request::ShowIfProp {
            ifname: Some(ifname),
            ..
        } if err.status == Status::Enxio => format!("no such object '{ifname}': {err}"),
        Request::ShowIfProp { .. } => format!("Error retrieving interface(s): {err}"),
        Request::SetAddrProp { name, value, .. } => {
            let verb = if value.is_some() {
                "set-addrprop"
            } else {
                "reset-addrprop"
            };
            format!("{verb}: {name}: {err}")
        }
        Request::ShowAddrProp {
            filter: AddrFilter::Object(aobj),
            ..
        } if err.status == Status::NotFound => format!("addrobj not found: {aobj}"),
        Request::ShowAddrProp { .. } => format!("error retrieving address: {err}"),
        Request::Init => format!("init: {err}"),
        Request::Try { change, .. } => failure_message(change, err),
        Request::Confirm => format!("confirm: {err}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(line: &str) -> Vec<String> {
        line.split_whitespace().map(str::to_owned).collect()
    }

    fn request(line: &str) -> Request {
        match parse(&args(line)) {
            Ok(Invocation {
                action: Action::Send { request, .. },
                ..
            }) => request,
            other => panic!("{line}: {other:?}"),
        }
    }

    fn refused(line: &str) -> String {
        match parse(&args(line)) {
            Err(Refusal {
                message: Some(m), ..
            }) => m,
            other => panic!("{line}: accepted: {other:?}"),
        }
    }

    fn aobj(s: &str) -> AddrObj {
        AddrObj::parse(s).unwrap()
    }

    #[test]
    fn interface_subcommands() {
        assert_eq!(
            request("create-ip -t eth0"),
            Request::CreateIf {
                ifname: "eth0".into(),
                temporary: true
            }
        );
        assert_eq!(
            request("create-if --temporary eth0"),
            request("create-if -t eth0")
        );
        assert_eq!(
            request("delete-ip eth0"),
            Request::DeleteIf {
                ifname: "eth0".into()
            }
        );
        assert_eq!(
            request("disable-if -t eth0"),
            Request::DisableIf {
                ifname: "eth0".into()
            }
        );
        assert_eq!(
            refused("enable-if eth0"),
            "persistent operation not supported for enable-if"
        );
        assert!(refused("create-if").starts_with("Usage: \tcreate-if"));
        assert!(refused("create-if -x eth0").starts_with("unrecognized option '-x'\nusage: "));
        assert_eq!(
            refused("create-if eth0/x"),
            "Invalid interface name 'eth0/x'"
        );
    }

    #[test]
    fn plain_ipadm_is_show_addr() {
        let inv = parse(&[]).unwrap();
        let Action::Send {
            request,
            show: Some(show),
        } = inv.action
        else {
            panic!()
        };
        assert_eq!(
            request,
            Request::ShowAddr {
                filter: AddrFilter::All
            }
        );
        assert_eq!(show.fields.as_deref(), Some("addrobj,type,state,addr"));
        let inv = parse(&args("--root /tmp/r show-if")).unwrap();
        assert_eq!(inv.root, Some(PathBuf::from("/tmp/r")));
        let inv = parse(&args("--root=/x")).unwrap();
        assert_eq!(inv.root, Some(PathBuf::from("/x")));
    }

    #[test]
    fn create_addr_forms() {
        let r = request("create-addr -T static -a local=10.0.0.1/24 eth0/v4");
        let Request::CreateAddr {
            target,
            temporary: false,
            kind: NewAddr::Static { addr, down: false },
        } = r
        else {
            panic!("{r:?}")
        };
        assert_eq!(target.name.as_deref(), Some("v4"));
        assert_eq!(addr.to_string(), "10.0.0.1/24");
        // Options after the operand, clusters, attached values.
        let r2 = request("create-addr eth0/v4 -tdTstatic -a 10.0.0.1/24");
        assert!(matches!(
            r2,
            Request::CreateAddr {
                temporary: true,
                kind: NewAddr::Static { down: true, .. },
                ..
            }
        ));
        let r3 = request("create-addr -T static -a 10.0.0.1/24 eth0");
        assert!(matches!(
            r3,
            Request::CreateAddr {
                target: AddrObjArg { name: None, .. },
                ..
            }
        ));
        assert_eq!(
            request("create-addr -T addrconf eth0/v6"),
            Request::CreateAddr {
                target: AddrObjArg::parse("eth0/v6").unwrap(),
                temporary: false,
                kind: NewAddr::Addrconf
            }
        );
        assert!(refused("create-addr -a 1.2.3.4 eth0/v4").starts_with("Invalid arguments\nusage:"));
        assert!(refused("create-addr -T static eth0/v4")
            .starts_with("Invalid arguments for type static"));
        assert!(refused("create-addr -T addrconf -d eth0/v6")
            .starts_with("Invalid arguments for type addrconf"));
        assert!(refused("create-addr -T static -a 1.2.3.4 eth0/4x")
            .starts_with("invalid address object name: eth0/4x"));
        assert_eq!(
            refused("create-addr -T static -a 1.2.3.4/33 eth0/v4"),
            "Error in setting address '1.2.3.4/33': Invalid prefix length"
        );
        assert_eq!(
            refused("create-addr -T bogus eth0/v4"),
            "Invalid address type bogus"
        );
        assert!(refused("create-addr -T static -a").starts_with("option '-a' requires a value"));
    }

    #[test]
    fn address_subcommands() {
        assert_eq!(
            request("delete-addr eth0/v4"),
            Request::DeleteAddr {
                aobj: aobj("eth0/v4"),
                release: false,
            }
        );
        assert_eq!(
            request("delete-addr -r eth0/v4"),
            Request::DeleteAddr {
                aobj: aobj("eth0/v4"),
                release: true,
            }
        );
        assert_eq!(
            request("refresh-addr -i eth0/v4"),
            Request::RefreshAddr {
                aobj: aobj("eth0/v4"),
                inform: true,
            }
        );
        assert_eq!(
            request("create-addr -T dhcp -w forever -h box.lan eth0/d"),
            Request::CreateAddr {
                target: AddrObjArg::parse("eth0/d").unwrap(),
                temporary: false,
                kind: NewAddr::Dhcp {
                    wait: None,
                    hostname: Some("box.lan".into()),
                },
            }
        );
        assert_eq!(
            request("create-addr -T dhcp eth0"),
            Request::CreateAddr {
                target: AddrObjArg::parse("eth0").unwrap(),
                temporary: false,
                kind: NewAddr::Dhcp {
                    wait: Some(120),
                    hostname: None,
                },
            }
        );
        assert_eq!(
            request("down-addr -t eth0/v4"),
            Request::DownAddr {
                aobj: aobj("eth0/v4"),
                temporary: true
            }
        );
        assert_eq!(
            refused("disable-addr eth0/v4"),
            "persistent operation not supported for disable-addr"
        );
        assert_eq!(
            request("show-addr eth0/"),
            Request::ShowAddr {
                filter: AddrFilter::Interface("eth0".into())
            }
        );
        assert_eq!(
            refused("show-addr eth0"),
            "Invalid address object name provided"
        );
        assert_eq!(refused("show-addr -p"), "-p requires -o");
        assert_eq!(
            refused("delete-addr eth0/"),
            "invalid address object name: eth0/"
        );
    }

    #[test]
    fn property_subcommands() {
        assert_eq!(
            request("set-prop -p ecn=active tcp"),
            Request::SetProp {
                proto: Proto::Tcp,
                name: "ecn".into(),
                value: Some("active".into()),
                op: SetOp::Set,
                temporary: false
            }
        );
        assert!(matches!(
            request("set-prop -t -p reserved_ports+=8080 tcp"),
            Request::SetProp { op: SetOp::Add, temporary: true, ref name, .. } if name == "reserved_ports"
        ));
        assert!(matches!(
            request("set-prop -p reserved_ports-=8080 tcp"),
            Request::SetProp {
                op: SetOp::Remove,
                ..
            }
        ));
        assert!(matches!(
            request("reset-prop -p ttl ipv4"),
            Request::SetProp { value: None, .. }
        ));
        assert!(refused("set-prop -p ttl ipv4").starts_with("please specify the value to be set."));
        assert!(refused("set-prop -p ttl= ipv4").starts_with("please specify the value to be set."));
        assert!(refused("set-prop -p a=1=2 ipv4").starts_with("cannot specify more than one"));
        assert!(refused("reset-prop -p ttl=1 ipv4").starts_with("incorrect syntax used for -p."));
        assert_eq!(
            refused("set-prop -p ttl=1 -p ttl=2 ipv4"),
            "-p must be specified once only"
        );
        assert_eq!(
            refused("set-prop -p ttl=1 sctp"),
            "invalid protocol 'sctp' specified"
        );
        assert!(refused("set-prop -p =1 ipv4").starts_with("Invalid prop=val specified"));
        assert_eq!(
            refused("show-prop -p ttl"),
            "protocol must be specified when property name is used"
        );
        assert_eq!(
            request("show-prop -p ttl,forwarding ip"),
            Request::ShowProp {
                proto: Some(Proto::Ip),
                names: vec!["ttl".into(), "forwarding".into()]
            }
        );
        assert_eq!(
            request("set-ifprop -p mtu=1400 -m ipv4 eth0"),
            Request::SetIfProp {
                ifname: "eth0".into(),
                proto: Proto::Ipv4,
                name: "mtu".into(),
                value: Some("1400".into()),
                temporary: false
            }
        );
        assert!(refused("set-ifprop -p mtu=1400 eth0").starts_with("Usage:"));
        assert_eq!(
            request("show-ifprop -p mtu eth0"),
            Request::ShowIfProp {
                ifname: Some("eth0".into()),
                proto: Proto::Ip,
                names: vec!["mtu".into()]
            }
        );
        assert_eq!(
            request("set-addrprop -p prefixlen=16 eth0/v4"),
            Request::SetAddrProp {
                aobj: aobj("eth0/v4"),
                name: "prefixlen".into(),
                value: Some("16".into()),
                temporary: false
            }
        );
    }

    #[test]
    fn try_wraps_a_change() {
        assert_eq!(
            request("try -t 30 delete-addr eth0/v4"),
            Request::Try {
                seconds: 30,
                change: Box::new(Request::DeleteAddr {
                    aobj: aobj("eth0/v4"),
                    release: false,
                })
            }
        );
        let r = request("try create-addr -t -T static -a 10.0.0.1/24 eth0/v4");
        assert!(matches!(
            r,
            Request::Try { seconds: DEFAULT_TRY_SECONDS, ref change } if matches!(**change, Request::CreateAddr { temporary: true, .. })
        ));
        assert!(refused("try show-addr").contains("cannot be tried"));
        assert!(refused("try -t 0 init").starts_with("invalid timeout"));
        assert!(refused("try confirm").contains("cannot be tried"));
        assert!(refused("try").starts_with("Usage:"));
    }

    #[test]
    fn unknown_subcommands_come_with_usage() {
        let r = parse(&args("frobnicate")).unwrap_err();
        assert_eq!(
            r.message.as_deref(),
            Some("unknown subcommand 'frobnicate'")
        );
        assert!(r.usage);
        assert!(usage_text().contains("\tcreate-addr\t[-t] -T static"));
    }

    #[test]
    fn failure_messages_follow_ipadm() {
        let perm = Error::new(Status::Perm);
        assert_eq!(
            failure_message(&request("create-addr -T static -a 1.1.1.1 e/v4"), &perm),
            "Could not create address: permission denied"
        );
        assert_eq!(
            failure_message(&request("create-if eth0"), &Error::new(Status::Enxio)),
            "Could not create eth0 : Interface does not exist"
        );
        assert_eq!(
            failure_message(&request("show-addr eth0/x"), &Error::new(Status::NotFound)),
            "Address object not found"
        );
        assert_eq!(
            failure_message(
                &request("reset-prop -p ttl ipv4"),
                &Error::new(Status::PropUnknown)
            ),
            "reset-prop: ttl: Unknown property"
        );
    }
}
