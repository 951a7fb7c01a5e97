//! What PID 1 does to the system: mounts, the console, the loopback
//! interface, running commands, reaping, and the final power-off. Every
//! function reports failure as text; none of them panics.

use std::ffi::CString;
use std::io;
use std::path::Path;
use std::time::{Duration, Instant};

use super::rc::Finish;
use crate::service::io_text;

/// Signals init handles itself (they stay blocked and are taken with
/// sigtimedwait): SIGCHLD to reap, and busybox init's shutdown requests.
const HANDLED: [libc::c_int; 5] = [
    libc::SIGCHLD,
    libc::SIGUSR1, // halt
    libc::SIGUSR2, // poweroff
    libc::SIGTERM, // reboot
    libc::SIGINT,  // ctrl-alt-del: reboot
];
/// How long processes get between SIGTERM and SIGKILL at shutdown.
const TERM_GRACE: Duration = Duration::from_secs(3);

struct Mount {
    source: &'static str,
    target: &'static str,
    fstype: &'static str,
    flags: libc::c_ulong,
    data: &'static str,
}

const MOUNTS: [Mount; 5] = [
    Mount {
        source: "proc",
        target: "/proc",
        fstype: "proc",
        flags: libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
        data: "",
    },
    Mount {
        source: "sysfs",
        target: "/sys",
        fstype: "sysfs",
        flags: libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
        data: "",
    },
    // The kernel mounts devtmpfs itself only on a real root, not on an initramfs.
    Mount {
        source: "devtmpfs",
        target: "/dev",
        fstype: "devtmpfs",
        flags: libc::MS_NOSUID,
        data: "mode=0755",
    },
    Mount {
        source: "tmpfs",
        target: "/run",
        fstype: "tmpfs",
        flags: libc::MS_NOSUID | libc::MS_NODEV,
        data: "mode=0755",
    },
    Mount {
        source: "tmpfs",
        target: "/tmp",
        fstype: "tmpfs",
        flags: libc::MS_NOSUID | libc::MS_NODEV,
        data: "mode=1777",
    },
];

fn c_string(text: &str) -> Result<CString, String> {
    CString::new(text).map_err(|_| format!("'{text}' contains a NUL byte"))
}

/// Mounts /proc, /sys, /dev, /run and /tmp; returns one message per failure.
pub fn mount_filesystems() -> Vec<String> {
    MOUNTS.iter().filter_map(|m| mount_one(m).err()).collect()
}

fn mount_one(m: &Mount) -> Result<(), String> {
    if let Err(e) = std::fs::create_dir_all(m.target) {
        return Err(format!("cannot create {}: {}", m.target, io_text(&e)));
    }
    let (source, target, fstype, data) = (
        c_string(m.source)?,
        c_string(m.target)?,
        c_string(m.fstype)?,
        c_string(m.data)?,
    );
    // SAFETY: all pointers are NUL-terminated strings living across the call.
    let rc = unsafe {
        libc::mount(
            source.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            m.flags,
            data.as_ptr().cast(),
        )
    };
    if rc == 0 {
        return Ok(());
    }
    let e = io::Error::last_os_error();
    // Already mounted (a second init, or a kernel that did it): fine.
    if e.raw_os_error() == Some(libc::EBUSY) {
        return Ok(());
    }
    Err(format!(
        "cannot mount {} on {}: {}",
        m.fstype,
        m.target,
        io_text(&e)
    ))
}

/// Makes sure descriptors 0, 1 and 2 are open, on /dev/console if they are
/// not: without /dev/console in the archive the kernel starts init with none.
pub fn ensure_console() {
    let closed = |fd| {
        // SAFETY: F_GETFD only asks about the descriptor.
        unsafe { libc::fcntl(fd, libc::F_GETFD) < 0 }
    };
    if !(0..=2).any(closed) {
        return;
    }
    for path in [c"/dev/console", c"/dev/null"] {
        // SAFETY: a NUL-terminated path; the result is checked.
        let fd = unsafe { libc::open(path.as_ptr(), libc::O_RDWR | libc::O_NOCTTY) };
        if fd < 0 {
            continue;
        }
        for target in 0..=2 {
            if closed(target) {
                // SAFETY: dup2 onto a closed standard descriptor.
                unsafe { libc::dup2(fd, target) };
            }
        }
        if fd > 2 {
            // SAFETY: our own descriptor, no longer needed.
            unsafe { libc::close(fd) };
        }
        return;
    }
}

/// Sets IFF_UP on `lo`; the kernel then gives it 127.0.0.1/8 and ::1.
pub fn loopback_up() -> Result<(), String> {
    // SAFETY: plain socket(2); checked below and closed on every path.
    let sock = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if sock < 0 {
        return Err(format!(
            "cannot bring lo up: socket: {}",
            io_text(&io::Error::last_os_error())
        ));
    }
    // SAFETY: ifreq is plain data; all zeroes is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (slot, byte) in req.ifr_name.iter_mut().zip(b"lo\0") {
        *slot = *byte as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS/SIOCSIFFLAGS read and write the ifreq we pass.
    let result = unsafe {
        if libc::ioctl(sock, libc::SIOCGIFFLAGS as _, &mut req) < 0 {
            Err(io::Error::last_os_error())
        } else {
            req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
            if libc::ioctl(sock, libc::SIOCSIFFLAGS as _, &req) < 0 {
                Err(io::Error::last_os_error())
            } else {
                Ok(())
            }
        }
    };
    // SAFETY: our own descriptor.
    unsafe { libc::close(sock) };
    result.map_err(|e| format!("cannot bring lo up: {}", io_text(&e)))
}

fn signal_set(signals: &[libc::c_int]) -> libc::sigset_t {
    // SAFETY: sigset_t is plain data, initialised by sigemptyset.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid sigset_t.
    unsafe {
        libc::sigemptyset(&mut set);
        for &signal in signals {
            libc::sigaddset(&mut set, signal);
        }
    }
    set
}

/// Blocks the signals init takes with sigtimedwait. (The kernel drops
/// signals to PID 1 that have no handler, so blocked-and-waited is the one
/// way to see them without a handler.)
pub fn block_handled_signals() {
    let set = signal_set(&HANDLED);
    // SAFETY: a valid set; the old mask is not needed.
    unsafe { libc::sigprocmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
}

/// Starts `argv` (searched in PATH) in a child with default signal
/// handling; returns its pid.
pub fn spawn(argv: &[String]) -> Result<libc::pid_t, String> {
    let args: Vec<CString> = argv.iter().map(|a| c_string(a)).collect::<Result<_, _>>()?;
    let Some(program) = args.first() else {
        return Err("empty command".into());
    };
    let mut pointers: Vec<*const libc::c_char> = args.iter().map(|a| a.as_ptr()).collect();
    pointers.push(std::ptr::null());
    let empty = signal_set(&[]);
    let not_found = format!("init: {}: not found\n", argv[0]).into_bytes();
    let not_run = format!("init: {}: cannot execute\n", argv[0]).into_bytes();
    // Everything the child needs is prepared above: between fork and exec
    // it only calls async-signal-safe functions.
    // SAFETY: fork in a single-threaded process.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(format!(
            "cannot fork: {}",
            io_text(&io::Error::last_os_error())
        ));
    }
    if pid == 0 {
        // SAFETY: async-signal-safe calls only; _exit never returns.
        unsafe {
            libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
            libc::setsid();
            libc::execvp(program.as_ptr(), pointers.as_ptr());
            let (msg, code) = match *libc::__errno_location() {
                libc::ENOENT => (&not_found, 127),
                _ => (&not_run, 126),
            };
            libc::write(2, msg.as_ptr().cast(), msg.len());
            libc::_exit(code);
        }
    }
    Ok(pid)
}

/// How a child ended, in words.
pub fn describe_status(status: libc::c_int) -> Option<String> {
    if libc::WIFEXITED(status) {
        match libc::WEXITSTATUS(status) {
            0 => None,
            code => Some(format!("exited with status {code}")),
        }
    } else if libc::WIFSIGNALED(status) {
        Some(format!("killed by signal {}", libc::WTERMSIG(status)))
    } else {
        Some(format!("ended with wait status {status:#x}"))
    }
}

/// Waits for `pid`, reaping every other child (orphans adopted by init)
/// that ends meanwhile.
pub fn wait_for(pid: libc::pid_t) -> Result<libc::c_int, String> {
    loop {
        let mut status = 0;
        // SAFETY: waitpid writes one int through the pointer.
        let reaped = unsafe { libc::waitpid(-1, &mut status, 0) };
        if reaped == pid {
            return Ok(status);
        }
        if reaped < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(format!("wait: {}", io_text(&e)));
        }
    }
}

/// Reaps every child that has already ended; true if any child is left.
fn reap_ended() -> bool {
    loop {
        let mut status = 0;
        // SAFETY: waitpid writes one int through the pointer.
        let reaped = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
        match reaped {
            0 => return true,
            n if n > 0 => continue,
            _ => {
                let e = io::Error::last_os_error();
                if e.kind() != io::ErrorKind::Interrupted {
                    return false;
                }
            }
        }
    }
}

/// A shutdown asked for by a signal (busybox init's convention), if one is
/// pending; waits up to `timeout` for one, reaping children meanwhile.
pub fn wait_signal(timeout: Duration) -> Option<Finish> {
    let set = signal_set(&HANDLED);
    let deadline = Instant::now() + timeout;
    loop {
        reap_ended();
        let left = deadline.saturating_duration_since(Instant::now());
        let spec = libc::timespec {
            tv_sec: left.as_secs() as _,
            tv_nsec: left.subsec_nanos() as libc::c_long,
        };
        // SAFETY: a valid set and timespec; no siginfo wanted.
        let signal = unsafe { libc::sigtimedwait(&set, std::ptr::null_mut(), &spec) };
        match signal {
            libc::SIGUSR1 => return Some(Finish::Halt),
            libc::SIGUSR2 => return Some(Finish::PowerOff),
            libc::SIGTERM | libc::SIGINT => return Some(Finish::Reboot),
            libc::SIGCHLD => continue,
            _ if left.is_zero() => return None,
            // EAGAIN (timed out) or EINTR: the deadline check above decides.
            _ => continue,
        }
    }
}

/// Stops every process, syncs, and powers off, reboots or halts. Only
/// returns if the kernel refuses.
pub fn finish(how: Finish) -> String {
    // SAFETY: kill(-1) signals every process but init itself.
    unsafe { libc::kill(-1, libc::SIGTERM) };
    let deadline = Instant::now() + TERM_GRACE;
    while reap_ended() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    // SAFETY: as above; whatever ignored SIGTERM is stopped now.
    unsafe { libc::kill(-1, libc::SIGKILL) };
    reap_ended();
    // SAFETY: sync has no arguments and cannot fail.
    unsafe { libc::sync() };
    let cmd = match how {
        Finish::PowerOff => libc::RB_POWER_OFF,
        Finish::Reboot => libc::RB_AUTOBOOT,
        Finish::Halt => libc::RB_HALT_SYSTEM,
    };
    // SAFETY: reboot(2) with one of its documented commands.
    unsafe { libc::reboot(cmd) };
    format!(
        "reboot({how:?}) failed: {}",
        io_text(&io::Error::last_os_error())
    )
}

/// Seconds since the kernel started, as /proc/uptime says it ("5.84").
/// Kept as text: parsing and printing floats would cost PID 1 kilobytes.
pub fn uptime() -> Option<String> {
    let text = std::fs::read_to_string(Path::new("/proc/uptime")).ok()?;
    text.split_whitespace().next().map(str::to_owned)
}
