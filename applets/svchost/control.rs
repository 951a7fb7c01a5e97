//! The control socket of one group (`$TOOLBOX_RUNDIR/svchost.GROUP.sock`)
//! and its wire format, shared with `sc`.
//!
//! A request is one line of tab-separated words (`stop\tdisk1`); the reply
//! is `ok` or `error CODE`, then records of `key=value` lines separated by
//! blank lines. Anyone may query; controlling needs uid 0 or group `svcadm`
//! (peer credentials).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

use super::config::{FailureAction, ServiceKind, StartType};
use super::host::{Host, Slot};
use super::status::*;

pub const MAX_REQUEST: usize = 4096;
pub const ADMIN_GROUP: &str = "svcadm";

/// Where sockets live: `$TOOLBOX_RUNDIR`, else /run/toolbox.
pub fn rundir() -> PathBuf {
    std::env::var_os("TOOLBOX_RUNDIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/run/toolbox"))
}

pub fn socket_path(dir: &Path, group: &str) -> PathBuf {
    dir.join(format!("svchost.{group}.sock"))
}

pub fn bind(path: &Path) -> Result<UnixListener, String> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| {
            format!(
                "cannot create {}: {}",
                dir.display(),
                crate::service::io_text(&e)
            )
        })?;
    }
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        use std::os::unix::fs::FileTypeExt;
        if !meta.file_type().is_socket() {
            return Err(format!("{} exists and is not a socket", path.display()));
        }
        // A live svchost of the same group still answers there.
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(format!(
                "group is already running ({} answers)",
                path.display()
            ));
        }
        let _ = std::fs::remove_file(path);
    }
    let listener = UnixListener::bind(path).map_err(|e| {
        format!(
            "cannot listen on {}: {}",
            path.display(),
            crate::service::io_text(&e)
        )
    })?;
    use std::os::unix::fs::PermissionsExt;
    let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666));
    Ok(listener)
}

pub async fn serve(listener: UnixListener, host: Arc<Host>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let host = host.clone();
        tokio::spawn(async move {
            let _ = handle(stream, &host).await;
        });
    }
}

/// Whether the peer may start/stop services.
fn may_control(stream: &UnixStream) -> bool {
    let Ok(cred) = stream.peer_cred() else {
        return false;
    };
    if cred.uid() == 0 {
        return true;
    }
    let Some(admin) = nix::unistd::Group::from_name(ADMIN_GROUP).ok().flatten() else {
        return false;
    };
    let admin = admin.gid.as_raw();
    if cred.gid() == admin {
        return true;
    }
    // Supplementary groups of the peer process.
    let Some(pid) = cred.pid() else {
        return false;
    };
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("Groups:"))
                .map(|groups| {
                    groups
                        .split_whitespace()
                        .any(|g| g.parse::<u32>().ok() == Some(admin))
                })
        })
        .unwrap_or(false)
}

async fn handle(stream: UnixStream, host: &Arc<Host>) -> std::io::Result<()> {
    let allowed = may_control(&stream);
    let (r, mut w) = stream.into_split();
    let mut line = String::new();
    let mut reader = BufReader::new(r.take(MAX_REQUEST as u64));
    reader.read_line(&mut line).await?;
    let words: Vec<&str> = line.trim_end_matches('\n').split('\t').collect();
    let reply = respond(host, &words, allowed).await;
    w.write_all(reply.as_bytes()).await?;
    w.shutdown().await
}

fn error(code: u32) -> String {
    format!("error {code}\n")
}

async fn respond(host: &Arc<Host>, words: &[&str], allowed: bool) -> String {
    let verb = words.first().copied().unwrap_or("");
    let name = words.get(1).copied();
    let slot = name.and_then(|n| host.find(n)).cloned();
    let needs_service = !matches!(verb, "list" | "query" | "queryex");
    if needs_service && slot.is_none() {
        return error(ERROR_SERVICE_DOES_NOT_EXIST);
    }
    if name.is_some() && slot.is_none() {
        return error(ERROR_SERVICE_DOES_NOT_EXIST);
    }
    let controls = matches!(verb, "start" | "stop" | "pause" | "continue" | "control");
    if controls && !allowed {
        return error(ERROR_ACCESS_DENIED);
    }
    let one = |slot: &Arc<Slot>| format!("ok\n{}", record(host, slot));
    match (verb, slot) {
        ("list" | "query" | "queryex", None) => {
            let records: Vec<String> = host.slots.iter().map(|s| record(host, s)).collect();
            format!("ok\n{}", records.join("\n"))
        }
        ("query" | "queryex" | "qc" | "qfailure" | "interrogate", Some(slot)) => one(&slot),
        ("start", Some(slot)) => {
            let args = words[2..].iter().map(|s| s.to_string()).collect();
            match host.start(&slot, args) {
                Ok(()) => one(&slot),
                Err(code) => error(code),
            }
        }
        ("stop" | "pause" | "continue", Some(slot)) => {
            let code = match verb {
                "stop" => CONTROL_STOP,
                "pause" => CONTROL_PAUSE,
                _ => CONTROL_CONTINUE,
            };
            match host.control(&slot, code) {
                Ok(()) => one(&slot),
                Err(code) => error(code),
            }
        }
        ("control", Some(slot)) => {
            let Some(code) = words.get(2).and_then(|w| control_code(w)) else {
                return error(ERROR_INVALID_PARAMETER);
            };
            match host.control(&slot, code) {
                Ok(()) => one(&slot),
                Err(code) => error(code),
            }
        }
        _ => error(ERROR_INVALID_PARAMETER),
    }
}

/// The control `sc control NAME CONTROL` names: Windows sc's words, or a
/// number.
pub fn control_code(word: &str) -> Option<u32> {
    Some(match word.to_ascii_lowercase().as_str() {
        "stop" => CONTROL_STOP,
        "pause" => CONTROL_PAUSE,
        "continue" => CONTROL_CONTINUE,
        "interrogate" => CONTROL_INTERROGATE,
        "paramchange" => CONTROL_PARAMCHANGE,
        number => number.parse().ok()?,
    })
}

/// The process a running service lives in: the group's, or its own.
fn host_pid(s: &super::host::SlotState) -> u32 {
    match &s.control {
        #[cfg(feature = "svchost-plugins")]
        Some(super::host::Control::Process(remote)) => remote.pid(),
        _ => std::process::id(),
    }
}

/// One service as `key=value` lines.
fn record(host: &Host, slot: &Slot) -> String {
    let s = slot.lock();
    let st = s.status;
    let cfg = &slot.config;
    let (binary, kind) = match &cfg.kind {
        ServiceKind::Applet { applet, args } => (
            format!("toolbox {applet} {}", args.join(" "))
                .trim_end()
                .to_string(),
            "applet",
        ),
        ServiceKind::Library { path, entry } => (format!("{}!{entry}", path.display()), "library"),
    };
    let actions: Vec<String> = cfg
        .failure_actions
        .iter()
        .map(|a| match a {
            FailureAction::None => "none".to_string(),
            FailureAction::Restart(d) => format!("restart/{}", d.as_millis()),
        })
        .collect();
    let clean = |t: &str| t.replace(['\n', '\r'], " ");
    format!(
        "service={}\ngroup={}\nkind={kind}\ntype={SERVICE_WIN32_SHARE_PROCESS}\nstate={}\naccepted={}\n\
         win32={}\nspecific={}\ncheckpoint={}\nwaithint={}\npid={}\nstart={}\nbinary={}\n\
         reset={}\nactions={}\nmessage={}\nstatus={}\n",
        cfg.name,
        host.group,
        st.state as u32,
        st.controls_accepted,
        st.win32_exit_code,
        st.service_exit_code,
        st.checkpoint,
        st.wait_hint_ms,
        if st.state == State::Stopped {
            0
        } else {
            host_pid(&s)
        },
        match cfg.start {
            StartType::Auto => "auto",
            StartType::Demand => "demand",
        },
        clean(&binary),
        cfg.reset_period.as_secs(),
        actions.join(" "),
        clean(s.message.as_deref().unwrap_or("")),
        clean(s.status_text.as_deref().unwrap_or("")),
    )
}
