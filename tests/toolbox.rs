//! The multi-call binary and the shared service plumbing, driven through the
//! built executable (nbd stands in as the daemon).

mod common;

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{run_with_timeout, toolbox, wait_until, Daemon, Netns, TempDir, Veth};

const T: Duration = Duration::from_secs(30);

fn run(args: &[&str]) -> std::process::Output {
    run_with_timeout(Command::new(toolbox()).args(args), T)
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn listed_applets() -> Vec<String> {
    let out = run(&["--list"]);
    assert!(out.status.success());
    text(&out.stdout).lines().map(str::to_owned).collect()
}

fn image(dir: &TempDir) -> std::path::PathBuf {
    let img = dir.path().join("disk.img");
    std::fs::File::create(&img)
        .unwrap()
        .set_len(1 << 20)
        .unwrap();
    img
}

#[test]
fn list_prints_applet_names_one_a_line() {
    let names = listed_applets();
    assert!(names.contains(&"nbd".to_string()), "{names:?}");
    assert!(names.iter().all(|n| !n.is_empty() && !n.contains(' ')));
}

#[test]
fn help_and_bare_invocation_list_applets_with_summaries() {
    for args in [&["--help"][..], &[][..]] {
        let out = run(args);
        assert!(out.status.success());
        let help = text(&out.stdout);
        assert!(help.contains("Usage: toolbox APPLET"), "{help}");
        for name in listed_applets() {
            let line = help
                .lines()
                .find(|l| l.trim_start().starts_with(&format!("{name} ")))
                .unwrap_or_else(|| panic!("{name} missing from help:\n{help}"));
            assert!(line.split_whitespace().count() > 2, "no summary: {line}");
        }
    }
    let out = run(&["--version"]);
    assert!(text(&out.stdout).starts_with("toolbox "));
}

#[test]
fn unknown_applet_is_reported_with_exit_127() {
    let out = run(&["frobnicate"]);
    assert_eq!(out.status.code(), Some(127));
    assert_eq!(text(&out.stderr), "toolbox: applet not found: frobnicate\n");
    let dir = TempDir::new("unknown");
    let link = dir.path().join("frobnicate");
    std::os::unix::fs::symlink(toolbox(), &link).unwrap();
    let out = run_with_timeout(&mut Command::new(&link), T);
    assert_eq!(out.status.code(), Some(127));
    assert_eq!(text(&out.stderr), "toolbox: applet not found: frobnicate\n");
}

#[test]
fn argv0_and_first_argument_both_dispatch() {
    let dir = TempDir::new("dispatch");
    let link = dir.path().join("nbd");
    std::os::unix::fs::symlink(toolbox(), &link).unwrap();
    let via_link = run_with_timeout(Command::new(&link).arg("--help"), T);
    let via_arg = run(&["nbd", "--help"]);
    assert!(via_link.status.success() && via_arg.status.success());
    assert!(text(&via_link.stdout).contains("qemu-nbd compatible"));
    assert_eq!(via_link.stdout, via_arg.stdout);
}

fn same_file(a: &Path, b: &Path) -> bool {
    let (a, b) = (std::fs::metadata(a).unwrap(), std::fs::metadata(b).unwrap());
    a.dev() == b.dev() && a.ino() == b.ino()
}

#[test]
fn install_makes_symlinks_or_hard_links_for_every_applet() {
    let dir = TempDir::new("install");
    // Hard links need the same file system: link from a copy beside them.
    let exe = dir.path().join("toolbox");
    std::fs::copy(toolbox(), &exe).unwrap();
    let sym = dir.path().join("sym");
    let hard = dir.path().join("hard");
    std::fs::create_dir_all(&sym).unwrap();
    std::fs::create_dir_all(&hard).unwrap();
    let install =
        |args: &[&str]| run_with_timeout(Command::new(&exe).arg("--install").args(args), T);
    let out = install(&["-s", sym.to_str().unwrap()]);
    assert!(out.status.success());
    // It says where the man pages go: share/man/man8 beside the directory.
    let said = text(&out.stdout);
    let man8 = dir.path().join("share/man/man8");
    assert!(
        said.contains(man8.to_str().unwrap()) && said.contains("nbd.8"),
        "{said}"
    );
    assert!(install(&[hard.to_str().unwrap()]).status.success());
    for name in listed_applets() {
        let s = sym.join(&name);
        assert!(std::fs::symlink_metadata(&s)
            .unwrap()
            .file_type()
            .is_symlink());
        assert!(same_file(&s, &exe), "{name} symlink");
        let h = hard.join(&name);
        assert!(!std::fs::symlink_metadata(&h)
            .unwrap()
            .file_type()
            .is_symlink());
        assert!(same_file(&h, &exe), "{name} hard link");
    }
    // Re-running over its own links is fine.
    assert!(install(&["-s", sym.to_str().unwrap()]).status.success());
    // Someone else's file of an applet's name is left alone unless --force.
    let other = sym.join("nbd");
    std::fs::remove_file(&other).unwrap();
    std::fs::write(&other, "not toolbox").unwrap();
    let out = install(&["-s", sym.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("left alone"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(std::fs::read_to_string(&other).unwrap(), "not toolbox");
    assert!(install(&["-s", "--force", sym.to_str().unwrap()])
        .status
        .success());
    assert!(same_file(&other, &exe));
}

/// Built by scripts/test.sh before `cargo test` (a cargo build inside a
/// test would contend for the build lock and the cores the tests use).
const NBD_ONLY_BUILD: &str =
    "cargo build --no-default-features --features nbd --target-dir target/feature-nbd-only";

#[test]
fn one_applet_feature_build_lists_only_that_applet() {
    let binary =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("target/feature-nbd-only/debug/toolbox");
    assert!(
        binary.exists(),
        "{} is missing: run `{NBD_ONLY_BUILD}` first (scripts/test.sh does)",
        binary.display()
    );
    let list = run_with_timeout(Command::new(&binary).arg("--list"), T);
    assert_eq!(text(&list.stdout), "nbd\n");
}

#[test]
fn fork_returns_once_ready_with_pid_file_and_sigterm_cleans_up() {
    let dir = TempDir::new("fork");
    let img = image(&dir);
    let pid_file = dir.path().join("nbd.pid");
    let sock = dir.path().join("nbd.sock");
    let out = run_with_timeout(
        Command::new(toolbox())
            .args(["nbd", "--fork", "-t", "--pid-file"])
            .arg(&pid_file)
            .arg("-k")
            .arg(&sock)
            .arg(&img),
        T,
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    // Ready means listening: no waiting needed.
    std::os::unix::net::UnixStream::connect(&sock).expect("listening when the parent exits");
    let pid: i32 = std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(Path::new(&format!("/proc/{pid}")).exists());
    // SAFETY: signalling the daemon we started.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let gone = wait_until(Duration::from_secs(10), || {
        !Path::new(&format!("/proc/{pid}")).exists()
    });
    assert!(gone.is_some(), "daemon survived SIGTERM");
    assert!(!pid_file.exists(), "pid file left behind");
    assert!(!sock.exists(), "socket left behind");
}

fn processes_mentioning(marker: &str) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        if let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) {
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            if cmdline.contains(marker) && cmdline.contains("toolbox") {
                found.push(cmdline);
            }
        }
    }
    found
}

#[test]
fn fork_reports_the_childs_failure_and_leaves_no_process() {
    let dir = TempDir::new("forkfail");
    let missing = dir.path().join("no-such-disk.img");
    let sock = dir.path().join("nbd.sock");
    let out = run_with_timeout(
        Command::new(toolbox())
            .args(["nbd", "--fork", "-k"])
            .arg(&sock)
            .arg(&missing),
        T,
    );
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.contains("no-such-disk.img") && err.contains("No such file"),
        "{err}"
    );
    let marker = missing.to_string_lossy().into_owned();
    let left = wait_until(Duration::from_secs(5), || {
        processes_mentioning(&marker).is_empty()
    });
    assert!(
        left.is_some(),
        "left behind: {:?}",
        processes_mentioning(&marker)
    );
}

#[test]
fn foreground_sigterm_exits_zero_and_removes_pid_file() {
    let dir = TempDir::new("term");
    let img = image(&dir);
    let pid_file = dir.path().join("nbd.pid");
    let sock = dir.path().join("nbd.sock");
    let mut cmd = Command::new(toolbox());
    cmd.args(["nbd", "-t", "--pid-file"])
        .arg(&pid_file)
        .arg("-k")
        .arg(&sock)
        .arg(&img);
    let mut daemon = Daemon::spawn(cmd);
    daemon.wait_for_unix_socket(&sock, Duration::from_secs(10));
    let pid: i32 = std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_eq!(pid, daemon.pid());
    daemon.terminate();
    let status = daemon
        .wait_timeout(Duration::from_secs(10))
        .expect("no exit after SIGTERM");
    assert_eq!(status.code(), Some(0));
    assert!(!pid_file.exists() && !sock.exists());
}

#[test]
fn notify_socket_gets_ready_and_stopping() {
    let dir = TempDir::new("notify");
    let img = image(&dir);
    let notify = dir.path().join("notify");
    let listener = std::os::unix::net::UnixDatagram::bind(&notify).unwrap();
    listener
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let sock = dir.path().join("nbd.sock");
    let mut cmd = Command::new(toolbox());
    cmd.env("NOTIFY_SOCKET", &notify)
        .args(["nbd", "-t", "-k"])
        .arg(&sock)
        .arg(&img);
    let mut daemon = Daemon::spawn(cmd);
    let mut seen = Vec::new();
    let mut buf = [0u8; 256];
    while !seen.iter().any(|m: &String| m == "READY=1") {
        let n = listener.recv(&mut buf).expect("no READY=1");
        seen.push(text(&buf[..n]));
    }
    // Ready means serving.
    std::os::unix::net::UnixStream::connect(&sock).unwrap();
    daemon.terminate();
    while !seen.iter().any(|m| m == "STOPPING=1") {
        let n = listener.recv(&mut buf).expect("no STOPPING=1");
        seen.push(text(&buf[..n]));
    }
    assert!(seen.iter().any(|m| m.starts_with("STATUS=")), "{seen:?}");
    assert!(daemon.wait_timeout(Duration::from_secs(10)).is_some());
}

#[test]
fn logging_none_silences_the_log() {
    let dir = TempDir::new("logging");
    let img = image(&dir);
    for (logging, expect_lines) in [("stderr", true), ("none", false)] {
        let sock = dir.path().join(format!("{logging}.sock"));
        let mut cmd = Command::new(toolbox());
        cmd.env("LOGGING", logging)
            .args(["nbd", "-v", "-k"])
            .arg(&sock)
            .arg(&img)
            .stderr(std::process::Stdio::piped());
        let mut child = cmd.spawn().unwrap();
        // One client: the non-persistent server then exits by itself.
        assert!(wait_until(Duration::from_secs(10), || sock.exists()).is_some());
        drop(std::os::unix::net::UnixStream::connect(&sock).unwrap());
        let out = run_with_timeout(&mut Command::new("true"), T);
        assert!(out.status.success());
        let status = child.wait().unwrap();
        assert!(status.success());
        let mut err = String::new();
        std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
        assert_eq!(
            err.contains("nbd: serving"),
            expect_lines,
            "LOGGING={logging}: {err:?}"
        );
    }
}

#[test]
fn netns_fixtures_connect_two_namespaces_and_clean_up() {
    if !common::require_root() {
        return;
    }
    let names;
    {
        let left = Netns::new("l");
        let right = Netns::new("r");
        let veth = Veth::new(&left, &right);
        left.ip(&["addr", "add", "10.250.0.1/24", "dev", &veth.a]);
        right.ip(&["addr", "add", "10.250.0.2/24", "dev", &veth.b]);
        let ping = left.exec(
            "arping",
            &["-c", "1", "-w", "5", "-I", &veth.a, "10.250.0.2"],
            T,
        );
        assert!(ping.status.success(), "{}", text(&ping.stdout));
        names = (left.name.clone(), right.name.clone());
    }
    let list = run_with_timeout(Command::new("ip").args(["netns", "list"]), T);
    let list = text(&list.stdout);
    assert!(
        !list.contains(&names.0) && !list.contains(&names.1),
        "{list}"
    );
}
