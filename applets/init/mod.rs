//! `init`: a tiny, shell-free PID 1 for an initramfs.
//!
//! In order: mount /proc, /sys, /dev (devtmpfs), /run and /tmp; load the
//! modules listed in /etc/modules (dependencies from modules.dep under
//! /lib/modules/$(uname -r)); bring `lo` up; run /etc/rc.toolbox (format in
//! [`rc`]) or, without one, exec /bin/sh if it exists. Then it reaps orphans
//! for ever and powers off, reboots or halts when rc says so or on busybox
//! init's signals (SIGUSR2 poweroff, SIGTERM/SIGINT reboot, SIGUSR1 halt).
//!
//! PID 1 must never die (the kernel panics): every failure is printed to
//! the console and init carries on; a panic is caught and init goes on
//! reaping.
//!
//! Modules: `rc` (the boot commands file), `modules` (module lists and
//! modules.dep), `system` (mounts, processes, signals, power-off).

pub mod modules;
pub mod rc;
pub mod system;

use std::ffi::OsString;
use std::io::Write as _;
use std::path::Path;
use std::time::Duration;

use rc::{Action, Finish};

use crate::service::io_text;

const RC_FILE: &str = "/etc/rc.toolbox";
const MODULE_LIST: &str = "/etc/modules";
const FALLBACK_SHELL: &str = "/bin/sh";
const DEFAULT_PATH: &str = "/bin:/sbin:/usr/bin:/usr/sbin";

/// One line on the console. Never panics (eprintln! would if stderr is gone).
fn say(text: &str) {
    let _ = writeln!(std::io::stderr(), "init: {text}");
}

pub fn main(args: &[OsString]) -> i32 {
    if args.iter().skip(1).any(|a| a == "--help" || a == "-h") {
        println!(
            "Usage: init\n\nPID 1 for an initramfs: mounts /proc /sys /dev /run /tmp, loads \
             {MODULE_LIST},\nbrings lo up, runs {RC_FILE} (or execs {FALLBACK_SHELL}), \
             reaps orphans."
        );
        return 0;
    }
    // SAFETY: getpid has no preconditions.
    if unsafe { libc::getpid() } != 1 {
        say("must run as process 1 (the kernel starts it as /init)");
        return 1;
    }
    system::block_handled_signals();
    // Whatever goes wrong in the boot steps, init must stay alive.
    let finish = match std::panic::catch_unwind(boot) {
        Ok(finish) => finish,
        Err(_) => {
            say("internal error during boot; carrying on as a reaper");
            None
        }
    };
    let mut next = finish;
    loop {
        if let Some(how) = next {
            say(&system::finish(how));
        }
        next = std::panic::catch_unwind(|| system::wait_signal(Duration::from_secs(3600)))
            .unwrap_or(None);
    }
}

/// The boot steps; returns how to finish if rc asked for it.
fn boot() -> Option<Finish> {
    system::ensure_console();
    for failure in system::mount_filesystems() {
        say(&failure);
    }
    // The console may only exist now that devtmpfs is mounted.
    system::ensure_console();
    if std::env::var_os("PATH").is_none() {
        // Single-threaded here, so changing the environment is sound.
        std::env::set_var("PATH", DEFAULT_PATH);
    }
    load_modules();
    if let Err(e) = system::loopback_up() {
        say(&e);
    }
    match std::fs::read_to_string(RC_FILE) {
        Ok(text) => run_rc(&text),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if Path::new(FALLBACK_SHELL).exists() {
                exec_shell();
            } else {
                say(&format!(
                    "no {RC_FILE} and no {FALLBACK_SHELL}: nothing to run"
                ));
            }
            None
        }
        Err(e) => {
            say(&format!("cannot read {RC_FILE}: {}", io_text(&e)));
            None
        }
    }
}

fn kernel_release() -> Option<String> {
    // SAFETY: utsname is plain data, filled by uname.
    let mut uts: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: uname writes into the struct we own.
    if unsafe { libc::uname(&mut uts) } != 0 {
        return None;
    }
    let bytes: Vec<u8> = uts
        .release
        .iter()
        .take_while(|&&c| c != 0)
        .map(|&c| c as u8)
        .collect();
    String::from_utf8(bytes).ok()
}

fn load_modules() {
    let list = match std::fs::read_to_string(MODULE_LIST) {
        Ok(text) => modules::parse_list(&text),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
        Err(e) => {
            say(&format!("cannot read {MODULE_LIST}: {}", io_text(&e)));
            return;
        }
    };
    if list.is_empty() {
        return;
    }
    let Some(release) = kernel_release() else {
        say("cannot tell the kernel release; no modules loaded");
        return;
    };
    let dir = Path::new("/lib/modules").join(&release);
    let deps = match std::fs::read_to_string(dir.join("modules.dep")) {
        Ok(text) => modules::DepMap::parse(&text),
        Err(e) => {
            say(&format!(
                "cannot read {}/modules.dep: {}; no modules loaded",
                dir.display(),
                io_text(&e)
            ));
            return;
        }
    };
    let builtin = std::fs::read_to_string(dir.join("modules.builtin")).unwrap_or_default();
    for request in list {
        let order = match deps.load_order(&request.name) {
            Ok(order) => order,
            Err(_) if modules::is_builtin(&builtin, &request.name) => continue,
            Err(e) => {
                say(&e);
                continue;
            }
        };
        let count = order.len();
        for (i, file) in order.iter().enumerate() {
            // Parameters belong to the module asked for, not its dependencies.
            let params = if i + 1 == count { &request.params } else { "" };
            if let Err(e) = modules::insert(&modules::module_path(&dir, file), params) {
                say(&e);
                break;
            }
        }
    }
}

fn run_rc(text: &str) -> Option<Finish> {
    let (steps, errors) = rc::parse(text);
    for e in errors {
        say(&format!("{RC_FILE}: {e} (skipped)"));
    }
    if let Some(up) = system::uptime() {
        say(&format!("running {RC_FILE} at {up} s"));
    }
    for step in steps {
        match step.action {
            Action::Finish(how) => return Some(how),
            Action::Run { argv, background } => {
                let pid = match system::spawn(&argv) {
                    Ok(pid) => pid,
                    Err(e) => {
                        say(&format!("{RC_FILE}:{}: {e}", step.line));
                        continue;
                    }
                };
                if background {
                    continue;
                }
                match system::wait_for(pid) {
                    Ok(status) => {
                        if let Some(how) = system::describe_status(status) {
                            say(&format!("{RC_FILE}:{}: {} {how}", step.line, argv[0]));
                        }
                    }
                    Err(e) => say(&format!("{RC_FILE}:{}: {e}", step.line)),
                }
            }
        }
        // A shutdown signal sent while a command ran is honoured between commands.
        if let Some(how) = system::wait_signal(Duration::ZERO) {
            return Some(how);
        }
    }
    None
}

/// Replaces init with the shell (it then is PID 1 and reaps for itself).
fn exec_shell() {
    let (Ok(path), Ok(arg0)) = (
        std::ffi::CString::new(FALLBACK_SHELL),
        std::ffi::CString::new("-sh"),
    ) else {
        return;
    };
    let argv = [arg0.as_ptr(), std::ptr::null()];
    let empty = {
        // SAFETY: sigset_t is plain data, initialised by sigemptyset.
        let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
        // SAFETY: `set` is valid.
        unsafe { libc::sigemptyset(&mut set) };
        set
    };
    // SAFETY: NUL-terminated strings and a NULL-terminated argv that live
    // across the call; the shell gets an ordinary signal mask.
    unsafe {
        libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
        libc::execv(path.as_ptr(), argv.as_ptr());
    }
    say(&format!(
        "cannot exec {FALLBACK_SHELL}: {}",
        io_text(&std::io::Error::last_os_error())
    ));
    system::block_handled_signals();
}
