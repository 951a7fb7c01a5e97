//! Several exports from one server (`--export NAME=FILE,...` beside qemu-nbd's
//! FILE), and the qemu:allocation-depth context (`-A`), against real peers:
//! nbdinfo, nbdcopy, qemu-img, qemu-io, and qemu-nbd side by side.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use common::{missing_tools, run_with_timeout, toolbox, Daemon, TempDir};

const T: Duration = Duration::from_secs(60);

/// `nbd+unix:///NAME?socket=SOCK`.
fn uri(sock: &Path, name: &str) -> String {
    format!("nbd+unix:///{name}?socket={}", sock.display())
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn ok(cmd: &mut Command) -> String {
    let out = run_with_timeout(cmd, T);
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

/// Runs a command that must fail; its output.
fn fails(cmd: &mut Command) -> Output {
    let out = run_with_timeout(cmd, T);
    assert!(!out.status.success(), "{cmd:?} succeeded");
    out
}

fn qemu_io(target: &str, fmt: &str, cmds: &[&str]) -> String {
    let mut cmd = Command::new("qemu-io");
    cmd.args(["-f", fmt]);
    for c in cmds {
        cmd.args(["-c", c]);
    }
    ok(cmd.arg(target))
}

fn qemu_img(args: &[&str]) -> String {
    ok(Command::new("qemu-img").args(args))
}

/// Starts `toolbox nbd ARGS... -k DIR/NAME.sock`.
fn serve(dir: &Path, name: &str, args: &[&str]) -> (Daemon, PathBuf) {
    let sock = dir.join(format!("{name}.sock"));
    (common::nbd::serve_on(&sock, args), sock)
}

/// A raw image of `len` bytes filled with `byte` (written by qemu-io).
fn raw_image(dir: &Path, name: &str, len: u64, byte: u8) -> PathBuf {
    let path = dir.join(name);
    qemu_img(&["create", "-q", "-f", "raw", s(&path), &len.to_string()]);
    qemu_io(s(&path), "raw", &[&format!("write -P {byte} 0 {len}")]);
    path
}

/// A qcow2 image of `len` bytes filled with `byte`.
fn qcow2_image(dir: &Path, name: &str, len: u64, byte: u8) -> PathBuf {
    let path = dir.join(name);
    qemu_img(&["create", "-q", "-f", "qcow2", s(&path), &len.to_string()]);
    qemu_io(s(&path), "qcow2", &[&format!("write -P {byte} 0 {len}")]);
    path
}

/// Three exports: FILE as "main" (raw, 1 MiB of 0x61), "second" (qcow2,
/// 2 MiB of 0x62, read-only), "third" (raw, 3 MiB of 0x63, a description
/// with a comma).
fn three_exports(dir: &Path) -> (Daemon, PathBuf, [PathBuf; 3]) {
    let a = raw_image(dir, "a.raw", 1 << 20, 0x61);
    let b = qcow2_image(dir, "b.qcow2", 2 << 20, 0x62);
    let c = raw_image(dir, "c.raw", 3 << 20, 0x63);
    let second = format!("second={},description=The second disk,readonly", s(&b));
    let third = format!("third={},description=Scratch,, third", s(&c));
    let (d, sock) = serve(
        dir,
        "nbd",
        &[
            "-t",
            "-e",
            "8",
            "-x",
            "main",
            "-D",
            "Main disk",
            s(&a),
            "--export",
            &second,
            "--export",
            &third,
        ],
    );
    (d, sock, [a, b, c])
}

#[test]
fn nbdinfo_and_our_list_show_every_export_with_its_description() {
    if missing_tools(&["qemu-img", "qemu-io", "nbdinfo"]) {
        return;
    }
    let dir = TempDir::new("nbd-exports-list");
    let (_d, sock, _) = three_exports(dir.path());
    let list = ok(Command::new("nbdinfo").args(["--list", &uri(&sock, "")]));
    for (name, desc, size) in [
        ("main", "Main disk", "1048576"),
        ("second", "The second disk", "2097152"),
        ("third", "Scratch, third", "3145728"),
    ] {
        let at = list
            .find(&format!("export=\"{name}\""))
            .unwrap_or_else(|| panic!("no export {name} in {list}"));
        let section = &list[at..];
        let end = section[1..]
            .find("export=")
            .map_or(section.len(), |e| e + 1);
        let section = &section[..end];
        assert!(
            section.contains(&format!("description: {desc}")),
            "{section}"
        );
        assert!(
            section.contains(&format!("export-size: {size}")),
            "{section}"
        );
    }
    let ours = ok(Command::new(toolbox()).args(["nbd", "-L", "-k", s(&sock)]));
    assert!(ours.starts_with("exports available: 3\n"), "{ours}");
    for line in [
        " export: 'main'\n  description: Main disk\n  size:  1048576\n",
        " export: 'second'\n  description: The second disk\n  size:  2097152\n",
        " export: 'third'\n  description: Scratch, third\n  size:  3145728\n",
    ] {
        assert!(ours.contains(line), "{line:?} not in {ours}");
    }
}

#[test]
fn two_exports_of_one_server_serve_their_own_images() {
    if missing_tools(&["qemu-img", "qemu-io", "nbdinfo", "nbdcopy"]) {
        return;
    }
    let dir = TempDir::new("nbd-exports-content");
    let (_d, sock, [a, b, c]) = three_exports(dir.path());
    let info = qemu_img(&["info", &uri(&sock, "main")]);
    assert!(info.contains("1 MiB (1048576 bytes)"), "{info}");
    let info = qemu_img(&["info", &uri(&sock, "second")]);
    assert!(info.contains("2 MiB (2097152 bytes)"), "{info}");
    // Byte for byte what each image holds, through nbdcopy and qemu-img.
    for (name, image, fmt, byte, len) in [
        ("main", &a, "raw", 0x61u8, 1usize << 20),
        ("second", &b, "qcow2", 0x62, 2 << 20),
        ("third", &c, "raw", 0x63, 3 << 20),
    ] {
        let copy = dir.path().join(format!("{name}.copy"));
        ok(Command::new("nbdcopy").arg(uri(&sock, name)).arg(&copy));
        assert_eq!(std::fs::read(&copy).unwrap(), vec![byte; len], "{name}");
        qemu_img(&[
            "compare",
            "-f",
            "raw",
            "-F",
            fmt,
            &uri(&sock, name),
            s(image),
        ]);
    }
    // A write through one export lands in its image alone.
    qemu_io(&uri(&sock, "third"), "raw", &["write -P 0x7a 4096 4096"]);
    let third = std::fs::read(&c).unwrap();
    assert!(third[4096..8192].iter().all(|&x| x == 0x7a));
    assert!(std::fs::read(&a).unwrap().iter().all(|&x| x == 0x61));
}

#[test]
fn a_readonly_export_refuses_writes_while_its_neighbour_takes_them() {
    if missing_tools(&["qemu-img", "qemu-io", "nbdinfo"]) {
        return;
    }
    let dir = TempDir::new("nbd-exports-ro");
    let (_d, sock, [a, b, _]) = three_exports(dir.path());
    let ro = ok(Command::new("nbdinfo").args(["--json", &uri(&sock, "second")]));
    assert!(ro.contains("\"is_read_only\": true"), "{ro}");
    let rw = ok(Command::new("nbdinfo").args(["--json", &uri(&sock, "main")]));
    assert!(rw.contains("\"is_read_only\": false"), "{rw}");
    let before = std::fs::read(&b).unwrap();
    let out = run_with_timeout(
        Command::new("qemu-io")
            .args(["-f", "raw", "-c", "write -P 0x55 0 4096"])
            .arg(uri(&sock, "second")),
        T,
    );
    let said = text(&out.stdout) + &text(&out.stderr);
    assert!(
        !out.status.success() || said.contains("failed"),
        "write to the read-only export went through: {said}"
    );
    // qemu refuses to open the read-only export for writing at all.
    assert!(said.contains("Permission denied"), "{said}");
    // A client that writes anyway is refused with EPERM, request by request.
    let mut raw = common::nbd::RawClient::connect(&sock);
    raw.go("second");
    raw.request(1, 0, 0, 512, Some(&[0x55; 512]));
    assert_eq!(raw.simple_reply(), (0, 1), "EPERM");
    raw.read_check(0, 512, &[0x62; 512]);
    raw.disconnect();
    assert_eq!(
        std::fs::read(&b).unwrap(),
        before,
        "read-only image changed"
    );
    qemu_io(&uri(&sock, "main"), "raw", &["write -P 0x55 0 4096"]);
    assert!(std::fs::read(&a).unwrap()[..4096]
        .iter()
        .all(|&x| x == 0x55));
}

#[test]
fn unknown_names_fail_clearly_and_the_empty_name_is_the_first_export() {
    if missing_tools(&["qemu-img", "qemu-io", "nbdinfo"]) {
        return;
    }
    let dir = TempDir::new("nbd-exports-names");
    let a = raw_image(dir.path(), "a.raw", 1 << 20, 1);
    let b = raw_image(dir.path(), "b.raw", 2 << 20, 2);
    let (_d, sock) = serve(
        dir.path(),
        "nbd",
        &[
            "-t",
            "-e",
            "4",
            "--export",
            &format!("first={}", s(&a)),
            "--export",
            &format!("other={}", s(&b)),
        ],
    );
    let out = fails(Command::new("nbdinfo").args(["--size", &uri(&sock, "nope")]));
    let err = text(&out.stderr);
    assert!(err.contains("'nope'"), "{err}");
    let out = fails(Command::new("qemu-img").args(["info", &uri(&sock, "nope")]));
    let err = text(&out.stderr);
    assert!(err.contains("nope") || err.contains("export"), "{err}");
    // With --export, "" means the default export: the first one.
    let size = ok(Command::new("nbdinfo").args(["--size", &uri(&sock, "")]));
    assert_eq!(size.trim(), "1048576");
    let size = ok(Command::new("nbdinfo").args(["--size", &uri(&sock, "other")]));
    assert_eq!(size.trim(), "2097152");
}

#[test]
fn duplicate_or_malformed_exports_stop_the_start_in_one_line() {
    let dir = TempDir::new("nbd-exports-dup");
    let sock = dir.path().join("nbd.sock");
    for (args, needle) in [
        (
            vec!["--export", "a=/x.img", "--export", "a=/y.img"],
            "export name 'a' is given twice",
        ),
        (
            vec!["/x.img", "--export", "=/y.img"],
            "export name '' is given twice",
        ),
        (
            vec!["--export", "a=/x.img,writable"],
            "invalid --export 'a=/x.img,writable': unknown key 'writable'",
        ),
        (vec!["--export", "a"], "expected NAME=FILE"),
    ] {
        let out = run_with_timeout(
            Command::new(toolbox())
                .args(["nbd", "-k", s(&sock)])
                .args(&args),
            T,
        );
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let err = text(&out.stderr);
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(err.contains(needle), "{args:?}: {err}");
        assert!(!sock.exists(), "listened despite the error");
    }
}

/// `nbdinfo --map=qemu:allocation-depth` of `name` on a server.
fn depth_map(sock: &Path, name: &str) -> String {
    ok(Command::new("nbdinfo").args(["--map=qemu:allocation-depth", &uri(sock, name)]))
}

/// The same map from `qemu-nbd -A -r ARGS`.
fn qemu_nbd_depth_map(dir: &Path, args: &[&str]) -> String {
    let sock = dir.join("qemu.sock");
    let _ = std::fs::remove_file(&sock);
    let mut cmd = Command::new("qemu-nbd");
    cmd.args(["-A", "-r", "-t", "-k", s(&sock)]).args(args);
    let _qemu = Daemon::spawn(cmd);
    common::wait_until(Duration::from_secs(10), || sock.exists()).expect("qemu-nbd never listened");
    depth_map(&sock, "")
}

/// base.raw <- mid.qcow2 <- top.qcow2, each layer writing (and zeroing)
/// its own ranges, and short.qcow2 (1 MiB) <- long.qcow2 (4 MiB), whose
/// tail lies past the end of its backing file.
fn chains(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let base = dir.join("base.raw");
    qemu_img(&["create", "-q", "-f", "raw", s(&base), "4M"]);
    qemu_io(s(&base), "raw", &["write -P 1 0 1M"]);
    let mid = dir.join("mid.qcow2");
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-b",
        "base.raw",
        "-F",
        "raw",
        s(&mid),
        "4M",
    ]);
    qemu_io(s(&mid), "qcow2", &["write -P 2 1M 512k", "write -z 3M 64k"]);
    let top = dir.join("top.qcow2");
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-b",
        "mid.qcow2",
        "-F",
        "qcow2",
        s(&top),
        "4M",
    ]);
    qemu_io(
        s(&top),
        "qcow2",
        &["write -P 3 512k 256k", "write -z 2M 64k"],
    );
    let short = dir.join("short.qcow2");
    qemu_img(&["create", "-q", "-f", "qcow2", s(&short), "1M"]);
    qemu_io(s(&short), "qcow2", &["write -P 4 0 64k"]);
    let long = dir.join("long.qcow2");
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-b",
        "short.qcow2",
        "-F",
        "qcow2",
        s(&long),
        "4M",
    ]);
    qemu_io(s(&long), "qcow2", &["write -P 5 2M 64k"]);
    (base, top, long)
}

#[test]
fn allocation_depth_map_equals_qemu_nbds_on_backing_chains_and_raw() {
    if missing_tools(&["qemu-img", "qemu-io", "qemu-nbd", "nbdinfo"]) {
        return;
    }
    let dir = TempDir::new("nbd-depth");
    let (base, top, long) = chains(dir.path());
    for (image, fmt, depths) in [
        (&top, "qcow2", &["1", "2", "3"][..]),
        (&long, "qcow2", &["0", "1", "2"][..]),
        (&base, "raw", &["1"][..]),
    ] {
        let (d, sock) = serve(dir.path(), "ours", &["-A", "-r", "-t", "-f", fmt, s(image)]);
        let ours = depth_map(&sock, "");
        drop(d);
        let theirs = qemu_nbd_depth_map(dir.path(), &["-f", fmt, s(image)]);
        assert_eq!(ours, theirs, "{}", image.display());
        // Not a trivial map: each depth the chain has shows up.
        let seen: Vec<&str> = ours
            .lines()
            .filter_map(|l| l.split_whitespace().nth(2))
            .collect();
        for depth in depths {
            assert!(seen.contains(depth), "no depth {depth} in\n{ours}");
        }
    }
}

#[test]
fn allocation_depth_is_offered_per_export_and_base_allocation_is_unchanged() {
    if missing_tools(&["qemu-img", "qemu-io", "qemu-nbd", "nbdinfo"]) {
        return;
    }
    let dir = TempDir::new("nbd-depth-exports");
    let (base, top, _) = chains(dir.path());
    let (_d, sock) = serve(
        dir.path(),
        "ours",
        &[
            "-t",
            "-e",
            "4",
            "-r",
            "--export",
            &format!("top={},allocation-depth", s(&top)),
            "--export",
            &format!("plain={}", s(&base)),
        ],
    );
    let list = ok(Command::new("nbdinfo").args(["--list", "--json", &uri(&sock, "")]));
    let at = list
        .find("\"export-name\": \"plain\"")
        .expect("plain listed");
    let (top_part, plain_part) = list.split_at(at);
    assert!(top_part.contains("qemu:allocation-depth"), "{list}");
    assert!(!plain_part.contains("qemu:allocation-depth"), "{list}");
    let ours = depth_map(&sock, "top");
    let theirs = qemu_nbd_depth_map(dir.path(), &["-f", "qcow2", s(&top)]);
    assert_eq!(ours, theirs);
    // An export without -A has no such context to map.
    fails(Command::new("nbdinfo").args(["--map=qemu:allocation-depth", &uri(&sock, "plain")]));
    // base:allocation is what it was, beside the new context.
    let base_map = ok(Command::new("nbdinfo").args(["--map", &uri(&sock, "top")]));
    let qemu_sock = dir.path().join("qemu-base.sock");
    let mut cmd = Command::new("qemu-nbd");
    cmd.args([
        "-A",
        "-r",
        "-t",
        "-f",
        "qcow2",
        "-k",
        s(&qemu_sock),
        s(&top),
    ]);
    let _qemu = Daemon::spawn(cmd);
    common::wait_until(Duration::from_secs(10), || qemu_sock.exists()).expect("qemu-nbd");
    let qemu_map = ok(Command::new("nbdinfo").args(["--map", &uri(&qemu_sock, "")]));
    assert_eq!(base_map, qemu_map);
}
