//! A group file, `DIR/GROUP.conf`: the seed's registry keys as an INI file
//! in systemd-unit style. Parsed without I/O; every error names the file
//! and line.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::words;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StartType {
    Auto,
    Demand,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailureAction {
    None,
    Restart(Duration),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ServiceKind {
    /// A built-in daemon applet with its command-line arguments.
    Applet { applet: String, args: Vec<String> },
    /// A plugin: `ServiceMain`-style entry point in a shared library.
    Library { path: PathBuf, entry: String },
}

/// Where a plugin service runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Isolation {
    /// On a thread of the group's process (`isolate = none`, the default).
    InProcess,
    /// In a child process of its own (`isolate = process`): its crash ends
    /// only that service.
    Process,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceConfig {
    pub name: String,
    pub kind: ServiceKind,
    pub start: StartType,
    pub failure_actions: Vec<FailureAction>,
    pub reset_period: Duration,
    pub isolation: Isolation,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupConfig {
    /// Services in start order.
    pub services: Vec<ServiceConfig>,
    pub threads: usize,
    pub stack_size_kb: Option<usize>,
    pub user: Option<String>,
    pub capabilities: Vec<u32>,
}

/// Reads and parses `dir/group.conf`.
pub fn load(
    dir: &Path,
    group: &str,
    is_applet: &dyn Fn(&str) -> bool,
) -> Result<GroupConfig, String> {
    if group.is_empty() || group.contains('/') || group.starts_with('.') {
        return Err(format!("invalid group name '{group}'"));
    }
    let path = dir.join(format!("{group}.conf"));
    let text = std::fs::read_to_string(&path).map_err(|e| {
        format!(
            "unknown group '{group}': cannot read {}: {}",
            path.display(),
            crate::service::io_text(&e)
        )
    })?;
    parse(&text, &path.display().to_string(), is_applet, &|name| {
        std::env::var(name).ok()
    })
}

enum Section {
    None,
    Group,
    Service(String),
}

#[derive(Default)]
struct RawService {
    line: usize,
    applet: Option<String>,
    args: Vec<String>,
    library: Option<String>,
    entry: Option<String>,
    start: Option<StartType>,
    failure_actions: Vec<FailureAction>,
    reset_period: Option<Duration>,
    isolation: Option<Isolation>,
}

/// Parses a group file's text; `file` names it in messages, `env` looks
/// up `$VARS` in library paths.
pub fn parse(
    text: &str,
    file: &str,
    is_applet: &dyn Fn(&str) -> bool,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<GroupConfig, String> {
    let mut section = Section::None;
    let mut list: Option<(usize, Vec<String>)> = None;
    let mut threads = 1usize;
    let mut stack_size_kb = None;
    let mut user = None;
    let mut capabilities = Vec::new();
    let mut raw: HashMap<String, RawService> = HashMap::new();

    for (index, line) in text.lines().enumerate() {
        let n = index + 1;
        let err = |msg: String| format!("{file}:{n}: {msg}");
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(header) = line.strip_prefix('[') {
            let header = header
                .strip_suffix(']')
                .ok_or_else(|| err(format!("malformed section header '{line}'")))?
                .trim();
            section = if header == "group" {
                Section::Group
            } else if let Some(name) = header.strip_prefix("service ") {
                let name = name.trim();
                if !valid_name(name) {
                    return Err(err(format!("invalid service name '{name}'")));
                }
                if raw.contains_key(name) {
                    return Err(err(format!("service '{name}' is defined twice")));
                }
                raw.insert(
                    name.to_owned(),
                    RawService {
                        line: n,
                        ..RawService::default()
                    },
                );
                Section::Service(name.to_owned())
            } else {
                return Err(err(format!("unknown section [{header}]")));
            };
            continue;
        }
        let (key, value) = line
            .split_once('=')
            .ok_or_else(|| err(format!("malformed line '{line}' (expected key = value)")))?;
        let key = key.trim();
        let value = strip_comment(value).trim();
        match &section {
            Section::None => return Err(err(format!("'{key}' outside any section"))),
            Section::Group => match key {
                "services" => {
                    let names: Vec<String> = value.split_whitespace().map(str::to_owned).collect();
                    for name in &names {
                        if !valid_name(name) {
                            return Err(err(format!("invalid service name '{name}'")));
                        }
                    }
                    list = Some((n, names));
                }
                "threads" => {
                    threads = number(value)
                        .filter(|t| (1..=64).contains(t))
                        .ok_or_else(|| err(format!("threads must be 1 to 64, not '{value}'")))?
                        as usize
                }
                "stack_size_kb" => {
                    stack_size_kb = Some(
                        number(value)
                            .filter(|k| (16..=65536).contains(k))
                            .ok_or_else(|| {
                                err(format!("stack_size_kb must be 16 to 65536, not '{value}'"))
                            })? as usize,
                    )
                }
                "user" => {
                    if value.is_empty() {
                        return Err(err("user needs a name".into()));
                    }
                    user = Some(value.to_owned())
                }
                "capabilities" => {
                    capabilities = value
                        .split_whitespace()
                        .map(crate::privs::capability)
                        .collect::<Result<_, _>>()
                        .map_err(err)?
                }
                other => return Err(err(format!("unknown key '{other}' in [group]"))),
            },
            Section::Service(name) => {
                let svc = raw
                    .get_mut(name)
                    .ok_or_else(|| err("internal: section".into()))?;
                match key {
                    "applet" => svc.applet = Some(value.to_owned()),
                    "args" => svc.args = words::split(value).map_err(err)?,
                    "library" => svc.library = Some(value.to_owned()),
                    "entry" => svc.entry = Some(value.to_owned()),
                    "start" => {
                        svc.start = Some(match value {
                            "auto" => StartType::Auto,
                            "demand" => StartType::Demand,
                            other => {
                                return Err(err(format!(
                                    "start must be auto or demand, not '{other}'"
                                )))
                            }
                        })
                    }
                    "failure_actions" => {
                        svc.failure_actions = value
                            .split_whitespace()
                            .map(failure_action)
                            .collect::<Result<_, _>>()
                            .map_err(err)?
                    }
                    "isolate" => {
                        svc.isolation = Some(match value {
                            "none" => Isolation::InProcess,
                            "process" => Isolation::Process,
                            other => {
                                return Err(err(format!(
                                    "isolate must be none or process, not '{other}'"
                                )))
                            }
                        })
                    }
                    "reset_period" => {
                        svc.reset_period =
                            Some(Duration::from_secs(number(value).ok_or_else(|| {
                                err(format!("reset_period must be seconds, not '{value}'"))
                            })?))
                    }
                    other => return Err(err(format!("unknown key '{other}' in [service {name}]"))),
                }
            }
        }
    }

    let (list_line, names) = list.ok_or_else(|| format!("{file}: [group] has no services list"))?;
    if names.is_empty() {
        return Err(format!("{file}:{list_line}: the services list is empty"));
    }
    let mut services = Vec::new();
    for name in &names {
        let svc = raw.remove(name).ok_or_else(|| {
            format!("{file}:{list_line}: service '{name}' has no [service {name}] section")
        })?;
        if services.iter().any(|s: &ServiceConfig| &s.name == name) {
            return Err(format!(
                "{file}:{list_line}: service '{name}' is listed twice"
            ));
        }
        let err = |msg: String| format!("{file}:{}: {msg}", svc.line);
        let kind = match (svc.applet, svc.library) {
            (Some(applet), None) => {
                if !is_applet(&applet) {
                    return Err(err(format!(
                        "unknown applet '{applet}' for service '{name}'"
                    )));
                }
                if svc.entry.is_some() {
                    return Err(err("entry is for library services".into()));
                }
                if svc.isolation.is_some() {
                    return Err(err(
                        "isolate is for library services (applets are Rust, a panic ends only their task)"
                            .into(),
                    ));
                }
                ServiceKind::Applet {
                    applet,
                    args: svc.args,
                }
            }
            (None, Some(library)) => ServiceKind::Library {
                path: PathBuf::from(expand(&library, env).map_err(err)?),
                entry: svc.entry.unwrap_or_else(|| "ServiceMain".into()),
            },
            (Some(_), Some(_)) => {
                return Err(err(format!("service '{name}' has both applet and library")))
            }
            (None, None) => {
                return Err(err(format!(
                    "service '{name}' needs an applet or a library"
                )))
            }
        };
        services.push(ServiceConfig {
            name: name.clone(),
            kind,
            start: svc.start.unwrap_or(StartType::Auto),
            failure_actions: svc.failure_actions,
            reset_period: svc.reset_period.unwrap_or(Duration::from_secs(86400)),
            isolation: svc.isolation.unwrap_or(Isolation::InProcess),
        });
    }
    if let Some((name, svc)) = raw.into_iter().next() {
        return Err(format!(
            "{file}:{}: service '{name}' is not in the group's services list",
            svc.line
        ));
    }
    Ok(GroupConfig {
        services,
        threads,
        stack_size_kb,
        user,
        capabilities,
    })
}

/// Service and group names: what fits in a file name and an `sc` line.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

fn number(text: &str) -> Option<u64> {
    text.parse().ok()
}

fn failure_action(text: &str) -> Result<FailureAction, String> {
    match text.split_once('/') {
        None if text == "none" => Ok(FailureAction::None),
        Some(("restart", ms)) => ms
            .parse()
            .map(|ms| FailureAction::Restart(Duration::from_millis(ms)))
            .map_err(|_| format!("bad restart delay in '{text}' (milliseconds)")),
        Some(("none", _)) => Ok(FailureAction::None),
        _ => Err(format!(
            "unknown failure action '{text}' (restart/MS or none)"
        )),
    }
}

/// Drops a trailing `# comment` that is outside quotes and after whitespace.
fn strip_comment(value: &str) -> &str {
    let mut quote = None;
    let mut prev_space = true;
    for (i, c) in value.char_indices() {
        match (quote, c) {
            (None, '\'' | '"') => quote = Some(c),
            (Some(q), c) if c == q => quote = None,
            (None, '#') if prev_space => return &value[..i],
            _ => {}
        }
        prev_space = c.is_whitespace();
    }
    value
}

/// Expands `$ARCH`, `$NAME` and `${NAME}` from the environment.
fn expand(text: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::new();
    let mut rest = text;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        rest = &rest[at + 1..];
        let (name, after) = if let Some(braced) = rest.strip_prefix('{') {
            let end = braced
                .find('}')
                .ok_or_else(|| format!("unterminated ${{ in '{text}'"))?;
            (&braced[..end], &braced[end + 1..])
        } else {
            let end = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(rest.len());
            (&rest[..end], &rest[end..])
        };
        let value = match name {
            "ARCH" => Some(std::env::consts::ARCH.to_owned()),
            _ => env(name),
        }
        .ok_or_else(|| format!("${name} is not set (in '{text}')"))?;
        out.push_str(&value);
        rest = after;
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_ok(text: &str) -> Result<GroupConfig, String> {
        parse(text, "g.conf", &|a| a == "nbd" || a == "timesyncd", &|v| {
            (v == "LIBDIR").then(|| "/usr/lib".to_string())
        })
    }

    const EXAMPLE: &str = "\
# a group
[group]
services = disk1 disk2 hello      # the seed's REG_MULTI_SZ list, in start order
threads = 1
stack_size_kb = 256
user = netadm
capabilities = CAP_NET_ADMIN CAP_NET_RAW

[service disk1]
applet = nbd
args = -t -k /run/disk1.sock '/srv/my disk.img'
start = auto
failure_actions = restart/1000 restart/5000 none
reset_period = 86400

[service disk2]
applet = nbd
args = -t -k /run/disk2.sock /srv/disk2.img
start = demand

[service hello]
library = $LIBDIR/toolbox/$ARCH/hello.so
";

    #[test]
    fn the_documented_example_parses() {
        let g = parse_ok(EXAMPLE).unwrap();
        assert_eq!(g.threads, 1);
        assert_eq!(g.stack_size_kb, Some(256));
        assert_eq!(g.user.as_deref(), Some("netadm"));
        assert_eq!(g.capabilities, vec![12, 13]);
        let names: Vec<&str> = g.services.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["disk1", "disk2", "hello"]);
        assert_eq!(
            g.services[0].kind,
            ServiceKind::Applet {
                applet: "nbd".into(),
                args: vec![
                    "-t".into(),
                    "-k".into(),
                    "/run/disk1.sock".into(),
                    "/srv/my disk.img".into()
                ]
            }
        );
        assert_eq!(
            g.services[0].failure_actions,
            vec![
                FailureAction::Restart(Duration::from_millis(1000)),
                FailureAction::Restart(Duration::from_millis(5000)),
                FailureAction::None
            ]
        );
        assert_eq!(g.services[1].start, StartType::Demand);
        assert_eq!(
            g.services[2].kind,
            ServiceKind::Library {
                path: PathBuf::from(format!(
                    "/usr/lib/toolbox/{}/hello.so",
                    std::env::consts::ARCH
                )),
                entry: "ServiceMain".into()
            }
        );
    }

    #[test]
    fn isolate_chooses_a_process_of_its_own_for_plugins_only() {
        let g = parse_ok(
            "[group]\nservices = a b\n[service a]\nlibrary = /x.so\nisolate = process\n\
             [service b]\nlibrary = /x.so\n",
        )
        .unwrap();
        assert_eq!(g.services[0].isolation, Isolation::Process);
        assert_eq!(g.services[1].isolation, Isolation::InProcess);
        let none =
            parse_ok("[group]\nservices = a\n[service a]\nlibrary = /x.so\nisolate = none\n");
        assert_eq!(none.unwrap().services[0].isolation, Isolation::InProcess);
        let e = parse_ok("[group]\nservices = a\n[service a]\nlibrary = /x.so\nisolate = vm\n")
            .unwrap_err();
        assert!(
            e.starts_with("g.conf:5: isolate must be none or process"),
            "{e}"
        );
        let e = parse_ok("[group]\nservices = a\n[service a]\napplet = nbd\nisolate = process\n")
            .unwrap_err();
        assert!(
            e.starts_with("g.conf:3: isolate is for library services"),
            "{e}"
        );
    }

    #[test]
    fn errors_name_file_and_line() {
        let cases = [
            (
                "[group]\nservices = a\nbogus = 1\n[service a]\napplet = nbd\n",
                "g.conf:3: unknown key 'bogus'",
            ),
            (
                "[group]\nservices =\n",
                "g.conf:2: the services list is empty",
            ),
            (
                "[group]\nservices = a\n[service a]\napplet = frob\n",
                "g.conf:3: unknown applet 'frob'",
            ),
            (
                "[group]\nservices = a\nthis is not ini\n",
                "g.conf:3: malformed line",
            ),
            (
                "[group]\nservices = a b\n[service a]\napplet = nbd\n",
                "g.conf:2: service 'b' has no",
            ),
            (
                "[group]\nservices = a\n[service a]\napplet = nbd\n[service c]\napplet = nbd\n",
                "g.conf:5: service 'c' is not in",
            ),
            (
                "[group]\nservices = a\n[service a]\napplet = nbd\nargs = 'open\n",
                "g.conf:5: unterminated",
            ),
            (
                "[group]\nservices = a\n[service a]\nlibrary = $NOPE/x.so\n",
                "g.conf:3: $NOPE is not set",
            ),
            (
                "[group]\nservices = a\n[service a]\napplet = nbd\nfailure_actions = reboot/1\n",
                "g.conf:5: unknown failure action",
            ),
            ("[grp]\n", "g.conf:1: unknown section [grp]"),
            (
                "[group]\nthreads = 0\n",
                "g.conf:2: threads must be 1 to 64",
            ),
            (
                "[group]\nservices = a\n[service a]\n",
                "g.conf:3: service 'a' needs an applet or a library",
            ),
        ];
        for (text, expected) in cases {
            let e = parse_ok(text).unwrap_err();
            assert!(e.starts_with(expected), "{text:?}: {e}");
        }
    }
}
