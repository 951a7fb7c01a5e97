//! `isolate = process`: a plugin service run in a child process of its own,
//! so that its abort, segfault or exit() ends only that service.
//!
//! The child is this same executable re-executed (never a bare fork of the
//! multi-threaded runtime) as `svchost --plugin-process NAME LIBRARY ENTRY
//! STACK [ARGS...]`, with one end of a socket pair on fd 3. It hosts the one
//! plugin exactly as an in-process group would, and relays over the socket:
//! child → parent `status STATE ACCEPTED WIN32 SPECIFIC CHECKPOINT WAITHINT`
//! lines whenever the status changes and one final `exit WIN32 SPECIFIC
//! MESSAGE`; parent → child a control code per line. The parent mirrors the
//! status in the group and treats the child's death without `exit` as a
//! failure (ERROR_PROCESS_ABORTED), so failure actions apply.

use std::ffi::OsString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::mpsc;

use super::config::{GroupConfig, Isolation, ServiceConfig, ServiceKind, StartType};
use super::host::{Control, ExitReport, Host, Slot};
use super::relay::{Message, MAX_LINE};
use super::status::*;

/// The hidden svchost mode that runs one isolated plugin.
pub const CHILD_FLAG: &str = "--plugin-process";
/// Where the child finds its end of the socket pair.
const CHANNEL_FD: i32 = 3;

/// Words for how a child process ended, for `sc query`'s MESSAGE.
pub fn death_text(status: ExitStatus) -> String {
    if let Some(signal) = status.signal() {
        let name = nix::sys::signal::Signal::try_from(signal)
            .map(|s| s.as_str())
            .unwrap_or("unknown signal");
        let core = if status.core_dumped() {
            ", core dumped"
        } else {
            ""
        };
        format!("plugin process killed by signal {signal} ({name}{core})")
    } else {
        match status.code() {
            Some(code) => format!("plugin process exited with status {code}"),
            None => "plugin process ended".into(),
        }
    }
}

/// How the parent reaches a running isolated service.
pub struct Remote {
    controls: mpsc::UnboundedSender<u32>,
    pid: i32,
    reaped: Arc<AtomicBool>,
}

impl Remote {
    pub fn pid(&self) -> u32 {
        self.pid as u32
    }

    pub fn send(&self, code: u32) {
        let _ = self.controls.send(code);
    }

    /// Kills the child (a stop that timed out); never a reaped pid.
    pub fn kill(&self) {
        if !self.reaped.load(Ordering::SeqCst) {
            // SAFETY: plain kill(2) of our own child.
            unsafe { libc::kill(self.pid, libc::SIGKILL) };
        }
    }
}

/// Runs one isolated plugin service until its child process ends.
pub(super) async fn run(
    host: &Host,
    slot: &Arc<Slot>,
    path: &Path,
    entry: &str,
    extra_args: &[String],
) -> ExitReport {
    let spawn_error = |what: &str, e: std::io::Error| {
        ExitReport::loader(
            ERROR_SERVICE_SPECIFIC_ERROR,
            format!("cannot start the plugin process ({what}): {e}"),
        )
    };
    let (ours, theirs) = match std::os::unix::net::UnixStream::pair() {
        Ok(pair) => pair,
        Err(e) => return spawn_error("socketpair", e),
    };
    let mut cmd = Command::new("/proc/self/exe");
    cmd.arg0("svchost")
        .arg(CHILD_FLAG)
        .arg(&slot.config.name)
        .arg(path)
        .arg(entry)
        .arg(host.stack_size.unwrap_or(0).to_string())
        .args(extra_args)
        .stdin(Stdio::null());
    let channel = theirs.as_raw_fd();
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            if channel == CHANNEL_FD {
                if libc::fcntl(channel, libc::F_SETFD, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            } else if libc::dup2(channel, CHANNEL_FD) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The child must not outlive the group (the socket's EOF also
            // tells it, should this thread be gone first).
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    let mut child = match cmd.spawn() {
        Ok(child) => child,
        Err(e) => return spawn_error("exec", e),
    };
    drop(theirs);
    let pid = child.id() as i32;
    let reaped = Arc::new(AtomicBool::new(false));
    let reaped_by_waiter = reaped.clone();
    let waited = tokio::task::spawn_blocking(move || {
        let status = child.wait();
        reaped_by_waiter.store(true, Ordering::SeqCst);
        status
    });
    let stream = match ours
        .set_nonblocking(true)
        .and_then(|()| tokio::net::UnixStream::from_std(ours))
    {
        Ok(stream) => stream,
        Err(e) => {
            // SAFETY: our own child, not yet reaped (the waiter holds it).
            unsafe { libc::kill(pid, libc::SIGKILL) };
            let _ = waited.await;
            return spawn_error("socket", e);
        }
    };
    let (read, mut write) = stream.into_split();
    let (controls, mut pending) = mpsc::unbounded_channel();
    {
        let mut s = slot.lock();
        if s.stop_requested {
            let _ = controls.send(CONTROL_STOP);
        }
        s.control = Some(Control::Process(Remote {
            controls,
            pid,
            reaped: reaped.clone(),
        }));
    }
    tracing::info!("{}: plugin process {pid}", slot.config.name);
    let mut lines = BufReader::new(read).lines();
    let mut exit = None;
    loop {
        tokio::select! {
            line = lines.next_line() => match line {
                Ok(Some(line)) => match Message::decode(&line) {
                    Some(Message::Status(status)) => mirror(slot, status),
                    Some(Message::Exit { win32, specific, message }) => {
                        exit = Some(ExitReport::new(win32, specific, (!message.is_empty()).then_some(message)));
                    }
                    None => tracing::debug!("{}: bad relay line {line:?}", slot.config.name),
                },
                // EOF or a broken channel: the child is gone or going.
                Ok(None) | Err(_) => break,
            },
            Some(code) = pending.recv() => {
                if write.write_all(format!("{code}\n").as_bytes()).await.is_err() {
                    break;
                }
            }
        }
    }
    let status = match waited.await {
        Ok(Ok(status)) => Some(status),
        _ => None,
    };
    match (exit, status) {
        (Some(report), Some(status)) if status.success() => report,
        (_, Some(status)) => ExitReport::new(ERROR_PROCESS_ABORTED, 0, Some(death_text(status))),
        (_, None) => ExitReport::new(ERROR_PROCESS_ABORTED, 0, Some("plugin process lost".into())),
    }
}

/// Applies a relayed status to the group's record of the service. STOPPED
/// is left to the supervisor, which records it with the exit report.
fn mirror(slot: &Slot, status: Status) {
    if status.state == State::Stopped {
        return;
    }
    let mut s = slot.lock();
    if s.stop_requested && status.state == State::Running {
        // A late RUNNING after a stop request doesn't undo the stop.
        return;
    }
    s.status = status;
    drop(s);
    slot.changed.notify_waiters();
}

/// The child's side: `argv` is what follows CHILD_FLAG. Returns the exit code.
pub fn child_main(argv: &[OsString]) -> i32 {
    let text = |i: usize| argv.get(i).map(|a| a.to_string_lossy().into_owned());
    let (Some(name), Some(library), Some(entry), Some(stack)) =
        (text(0), text(1), text(2), text(3))
    else {
        eprintln!("svchost: {CHILD_FLAG} is internal to svchost");
        return 2;
    };
    let extra: Vec<String> = (4..argv.len()).filter_map(text).collect();
    // SAFETY: F_GETFD only asks whether fd 3 is open.
    if unsafe { libc::fcntl(CHANNEL_FD, libc::F_GETFD) } < 0 {
        eprintln!("svchost: {CHILD_FLAG} is internal to svchost (no channel)");
        return 2;
    }
    // SAFETY: fd 3 is the socket svchost handed us; nothing else owns it.
    let channel = unsafe { OwnedFd::from_raw_fd(CHANNEL_FD) };
    // Not for the plugin's own children: a grandchild holding it open would
    // hide this process's death from svchost.
    // SAFETY: F_SETFD on a descriptor we own.
    unsafe { libc::fcntl(channel.as_raw_fd(), libc::F_SETFD, libc::FD_CLOEXEC) };
    let stack: usize = stack.parse().unwrap_or(0);
    let path = PathBuf::from(library);
    let group = GroupConfig {
        services: vec![ServiceConfig {
            name,
            kind: ServiceKind::Library {
                path: path.clone(),
                entry: entry.clone(),
            },
            start: StartType::Demand,
            failure_actions: Vec::new(),
            reset_period: Duration::from_secs(86400),
            isolation: Isolation::InProcess,
        }],
        threads: 1,
        stack_size_kb: (stack >= 16 * 1024).then_some(stack / 1024),
        user: None,
        capabilities: Vec::new(),
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("svchost: plugin process: {e}");
            return 1;
        }
    };
    runtime.block_on(async move {
        let host = Host::new("isolated", &group);
        let slot = host.slots[0].clone();
        slot.set_status(Status {
            state: State::StartPending,
            ..Status::stopped()
        });
        let std_stream = std::os::unix::net::UnixStream::from(channel);
        let stream = match std_stream
            .set_nonblocking(true)
            .and_then(|()| tokio::net::UnixStream::from_std(std_stream))
        {
            Ok(stream) => stream,
            Err(e) => {
                eprintln!("svchost: plugin process: {e}");
                return 1;
            }
        };
        let (read, write) = stream.into_split();
        let write = Arc::new(tokio::sync::Mutex::new(write));
        tokio::spawn(relay_status(slot.clone(), write.clone()));
        tokio::spawn(take_controls(host.clone(), slot.clone(), read));
        let report = super::plugin::run(&host, &slot, &path, &entry, &extra).await;
        let line = report.message_line();
        let mut write = write.lock().await;
        let _ = write.write_all(line.as_bytes()).await;
        let _ = write.shutdown().await;
        0
    })
}

async fn relay_status(
    slot: Arc<Slot>,
    write: Arc<tokio::sync::Mutex<tokio::net::unix::OwnedWriteHalf>>,
) {
    let mut last = None;
    loop {
        let notified = slot.changed.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let status = slot.status();
        if last != Some(status) {
            last = Some(status);
            let line = Message::Status(status).encode();
            if write.lock().await.write_all(line.as_bytes()).await.is_err() {
                std::process::exit(1);
            }
        }
        notified.await;
    }
}

async fn take_controls(host: Arc<Host>, slot: Arc<Slot>, read: tokio::net::unix::OwnedReadHalf) {
    let mut lines = BufReader::new(read).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        if line.len() > MAX_LINE {
            break;
        }
        if let Ok(code) = line.trim().parse() {
            let _ = host.control(&slot, code);
        }
    }
    // The group is gone: nothing is left to report to.
    std::process::exit(1);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deaths_are_described() {
        assert_eq!(
            death_text(ExitStatus::from_raw(libc::SIGABRT)),
            "plugin process killed by signal 6 (SIGABRT)"
        );
        assert_eq!(
            death_text(ExitStatus::from_raw(3 << 8)),
            "plugin process exited with status 3"
        );
    }
}
