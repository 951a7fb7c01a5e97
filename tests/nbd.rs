//! The nbd applet against real NBD clients: qemu-img, qemu-io, nbdinfo,
//! nbdcopy, fio; and against a hand-rolled hostile client.

mod common;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::nbd::{Chunk, RawClient, CMD_FLAG_PAYLOAD_LEN};
use common::{missing_tools, run_with_timeout, toolbox, Daemon, TempDir};

const T: Duration = Duration::from_secs(60);

fn uri(sock: &Path) -> String {
    format!("nbd+unix:///?socket={}", sock.display())
}

/// A file of `len` bytes with a recognisable, position-dependent pattern.
fn patterned_image(dir: &TempDir, name: &str, len: usize) -> PathBuf {
    let path = dir.path().join(name);
    let data: Vec<u8> = (0..len).map(|i| ((i / 512) as u8) ^ (i as u8)).collect();
    std::fs::write(&path, data).unwrap();
    path
}

/// Starts `toolbox nbd ARGS... -k SOCK` in `dir`.
fn serve(dir: &TempDir, args: &[&str]) -> (Daemon, PathBuf) {
    let sock = dir.path().join("nbd.sock");
    (common::nbd::serve_on(&sock, args), sock)
}

fn ok(cmd: &mut Command) -> String {
    let out = run_with_timeout(cmd, T);
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn checksum(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap()
}

#[test]
fn qemu_img_reads_and_writes_over_unix_and_tcp() {
    if missing_tools(&["qemu-img"]) {
        return;
    }
    let dir = TempDir::new("nbd-qemu-img");
    let img = patterned_image(&dir, "disk.img", 8 << 20);
    let copy = dir.path().join("copy.raw");
    let (_d, sock) = serve(&dir, &["-t", "-e", "2", img.to_str().unwrap()]);
    let info = ok(Command::new("qemu-img").args(["info", &uri(&sock)]));
    assert!(info.contains("8 MiB (8388608 bytes)"), "{info}");
    ok(Command::new("qemu-img")
        .args(["convert", "-O", "raw", &uri(&sock)])
        .arg(&copy));
    ok(Command::new("qemu-img")
        .args(["compare", "-f", "raw"])
        .arg(&img)
        .arg(&copy));
    // Writing through the export lands in the file.
    let other = patterned_image(&dir, "other.img", 8 << 20);
    let mut data = std::fs::read(&other).unwrap();
    data.reverse();
    std::fs::write(&other, &data).unwrap();
    ok(Command::new("qemu-img")
        .args(["convert", "-n", "-f", "raw", "-O", "raw"])
        .arg(&other)
        .arg(uri(&sock)));
    assert_eq!(checksum(&img), data);

    let port = common::free_port();
    let tcp_dir = TempDir::new("nbd-tcp");
    let mut cmd = Command::new(toolbox());
    cmd.args(["nbd", "-t", "-b", "127.0.0.1", "-p", &port.to_string()])
        .arg(&img);
    let _tcp = Daemon::spawn(cmd);
    common::wait_for_tcp_port(port, Duration::from_secs(10));
    let tcp_uri = format!("nbd://127.0.0.1:{port}");
    ok(Command::new("qemu-img")
        .args(["compare", "-f", "raw"])
        .arg(&img)
        .arg(&tcp_uri));
    drop(tcp_dir);
}

#[test]
fn nbdinfo_shows_size_description_and_holes() {
    if missing_tools(&["nbdinfo"]) {
        return;
    }
    let dir = TempDir::new("nbd-nbdinfo");
    let img = dir.path().join("sparse.img");
    let f = std::fs::File::create(&img).unwrap();
    f.set_len(64 << 20).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, &[1u8; 1 << 20], 16 << 20).unwrap();
    drop(f);
    let (_d, sock) = serve(
        &dir,
        &[
            "-t",
            "-e",
            "3",
            "-x",
            "disk0",
            "-D",
            "test disk",
            img.to_str().unwrap(),
        ],
    );
    let with_name = format!("nbd+unix:///disk0?socket={}", sock.display());
    let size = ok(Command::new("nbdinfo").args(["--size", &with_name]));
    assert_eq!(size.trim(), (64u64 << 20).to_string());
    let list = ok(Command::new("nbdinfo").args(["--list", &with_name]));
    assert!(
        list.contains("disk0") && list.contains("test disk"),
        "{list}"
    );
    let map = ok(Command::new("nbdinfo").args(["--map", &with_name]));
    let lines: Vec<Vec<&str>> = map
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(lines.len(), 3, "{map}");
    assert_eq!(&lines[0][..2], &["0", "16777216"]);
    assert!(map.contains("hole,zero"), "{map}");
    assert_eq!(&lines[1][..3], &["16777216", "1048576", "0"]);
    // A wrong export name is refused.
    let wrong = format!("nbd+unix:///nope?socket={}", sock.display());
    let out = run_with_timeout(Command::new("nbdinfo").args(["--size", &wrong]), T);
    assert!(!out.status.success());
}

#[test]
fn nbdcopy_round_trip_and_fio_verify() {
    if missing_tools(&["nbdcopy", "fio"]) {
        return;
    }
    let dir = TempDir::new("nbd-copy");
    let img = patterned_image(&dir, "disk.img", 32 << 20);
    let back = dir.path().join("back.img");
    std::fs::File::create(&back)
        .unwrap()
        .set_len(32 << 20)
        .unwrap();
    let (_d, sock) = serve(&dir, &["-t", "-e", "8", img.to_str().unwrap()]);
    ok(Command::new("nbdcopy").arg(uri(&sock)).arg(&back));
    assert_eq!(checksum(&img), checksum(&back));
    let out = ok(Command::new("fio").current_dir(dir.path()).args([
        "--name=verify",
        "--ioengine=nbd",
        &format!("--uri={}", uri(&sock)),
        "--rw=randwrite",
        "--bs=4k",
        "--size=16M",
        "--iodepth=16",
        "--verify=crc32c",
        "--do_verify=1",
        "--output-format=terse",
    ]));
    // terse v3: field 5 is the error count
    let fields: Vec<&str> = out.lines().last().unwrap_or("").split(';').collect();
    assert_eq!(fields.get(4), Some(&"0"), "{out}");
}

#[test]
fn read_only_export_rejects_writes_with_eperm() {
    if missing_tools(&["qemu-io"]) {
        return;
    }
    let dir = TempDir::new("nbd-ro");
    let img = patterned_image(&dir, "disk.img", 1 << 20);
    let before = checksum(&img);
    let (_d, sock) = serve(&dir, &["-t", "-r", img.to_str().unwrap()]);
    let out = run_with_timeout(
        Command::new("qemu-io").args(["-f", "raw", &uri(&sock), "-c", "write -P 0x55 0 4k"]),
        T,
    );
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    // qemu-io asks for a writable image and is told no.
    assert!(
        text.contains("Permission denied") || text.contains("Operation not permitted"),
        "{text}"
    );
    assert_eq!(checksum(&img), before);
    // Raw client: a WRITE gets EPERM.
    let mut c = RawClient::connect(&sock);
    c.go("");
    c.request(1, 0, 0, 512, Some(&[0u8; 512]));
    assert_eq!(c.simple_reply(), (0, 1));
}

#[test]
fn offset_exports_the_tail_of_the_image() {
    if missing_tools(&["qemu-img"]) {
        return;
    }
    let dir = TempDir::new("nbd-offset");
    let img = patterned_image(&dir, "disk.img", 4 << 20);
    let (_d, sock) = serve(&dir, &["-t", "-o", "1048576", img.to_str().unwrap()]);
    let out = dir.path().join("tail.raw");
    ok(Command::new("qemu-img")
        .args(["convert", "-O", "raw", &uri(&sock)])
        .arg(&out));
    assert_eq!(checksum(&out), checksum(&img)[1 << 20..].to_vec());
    let bad = run_with_timeout(
        Command::new(toolbox())
            .args(["nbd", "-k", "/tmp/never.sock", "-o", "99999999"])
            .arg(&img),
        T,
    );
    assert_eq!(bad.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("exceeds device size"));
}

#[test]
fn snapshot_never_modifies_the_image() {
    if missing_tools(&["qemu-io"]) {
        return;
    }
    let dir = TempDir::new("nbd-snap");
    let img = patterned_image(&dir, "disk.img", 2 << 20);
    let before = checksum(&img);
    let (_d, sock) = serve(&dir, &["-t", "-s", img.to_str().unwrap()]);
    let out = ok(Command::new("qemu-io").args([
        "-f",
        "raw",
        &uri(&sock),
        "-c",
        "write -P 0x5a 1000 10000",
        "-c",
        "read -P 0x5a 1000 10000",
    ]));
    assert!(!out.contains("Pattern verification failed"), "{out}");
    assert_eq!(checksum(&img), before);
}

#[test]
fn without_persistent_the_server_exits_after_the_last_client() {
    if missing_tools(&["nbdinfo"]) {
        return;
    }
    let dir = TempDir::new("nbd-oneshot");
    let img = patterned_image(&dir, "disk.img", 1 << 20);
    let (mut d, sock) = serve(&dir, &[img.to_str().unwrap()]);
    ok(Command::new("nbdinfo").args(["--size", &uri(&sock)]));
    let status = d
        .wait_timeout(Duration::from_secs(10))
        .expect("server did not exit");
    assert!(status.success());
    assert!(!sock.exists(), "socket left behind");
}

#[test]
fn shared_limits_concurrent_clients() {
    let dir = TempDir::new("nbd-shared");
    let img = patterned_image(&dir, "disk.img", 1 << 20);
    let (_d, sock) = serve(&dir, &["-t", "-e", "2", img.to_str().unwrap()]);
    let mut a = RawClient::connect(&sock);
    a.go("");
    let mut b = RawClient::connect(&sock);
    b.go("");
    // A third client is not served while two are connected...
    let mut c = UnixStream::connect(&sock).unwrap();
    c.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let mut buf = [0u8; 18];
    assert!(c.read_exact(&mut buf).is_err(), "third client was served");
    // ...and is once one leaves.
    a.disconnect();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    c.read_exact(&mut buf).unwrap();
    assert_eq!(&buf[..8], b"NBDMAGIC");
    b.read_check(4096, 4096, &std::fs::read(&img).unwrap()[4096..8192]);
}

#[test]
fn hostile_clients_do_not_disturb_a_good_one() {
    let dir = TempDir::new("nbd-hostile");
    let img = patterned_image(&dir, "disk.img", 1 << 20);
    let data = std::fs::read(&img).unwrap();
    let (_d, sock) = serve(&dir, &["-t", "-e", "10", img.to_str().unwrap()]);
    let mut good = RawClient::connect(&sock);
    good.go("");

    // Not fixed newstyle, then an option only fixed newstyle has: dropped.
    let mut s = RawClient::connect_with_flags(&sock, 0);
    s.option(common::nbd::OPT_GO, &[0, 0, 0, 0, 0, 0]);
    assert!(closed(&mut s.sock));
    // Unknown client flags: dropped.
    let mut s = RawClient::connect_with_flags(&sock, 1 << 7);
    assert!(closed(&mut s.sock));

    // Wrong option magic: dropped.
    let mut s = RawClient::connect(&sock);
    s.sock.write_all(b"BADMAGIC\0\0\0\x07\0\0\0\0").unwrap();
    assert!(closed(&mut s.sock));

    // Oversized option: refused and dropped without reading 4 GiB.
    let mut s = RawClient::connect(&sock);
    s.sock
        .write_all(b"IHAVEOPT\0\0\0\x07\xff\xff\xff\xff")
        .unwrap();
    assert!(closed(&mut s.sock));

    good.read_check(0, 4096, &data[..4096]);

    // Requests beyond the end: EINVAL for reads, ENOSPC for writes.
    let mut s = RawClient::connect(&sock);
    s.go("");
    s.request(0, 0, 1 << 20, 512, None);
    assert_eq!(s.simple_reply(), (0, 22));
    s.request(1, 0, (1 << 20) - 100, 512, Some(&[7u8; 512]));
    assert_eq!(s.simple_reply(), (0, 28));
    // Oversized write payload: refused, drained, the connection stays in sync.
    let big = vec![0u8; (32 << 20) + 1];
    s.request(1, 0, 0, big.len() as u64, Some(&big));
    assert_eq!(s.simple_reply(), (0, 75));
    s.read_check(4096, 512, &data[4096..4608]);
    // A payload too large even to drain: dropped.
    let mut s2 = RawClient::connect(&sock);
    s2.go("");
    s2.request(1, 0, 0, 300 << 20, None);
    assert!(closed(&mut s2.sock));
    // Bad request magic: dropped.
    s.sock.write_all(&[0xde; 28]).unwrap();
    assert!(closed(&mut s.sock));

    // Vanishing mid-payload costs only that connection.
    let mut s = RawClient::connect(&sock);
    s.go("");
    s.request(1, 0, 0, 65536, None);
    s.sock.write_all(&[9u8; 1000]).unwrap();
    drop(s);

    good.read_check(8192, 8192, &data[8192..16384]);
    assert_eq!(std::fs::read(&img).unwrap(), data, "image was modified");
}

#[test]
fn handshake_limit_drops_silent_clients() {
    let dir = TempDir::new("nbd-limit");
    let img = patterned_image(&dir, "disk.img", 1 << 20);
    let (_d, sock) = serve(
        &dir,
        &[
            "-t",
            "-e",
            "2",
            "--handshake-limit",
            "1",
            img.to_str().unwrap(),
        ],
    );
    let mut s = UnixStream::connect(&sock).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut greet = [0u8; 18];
    s.read_exact(&mut greet).unwrap();
    let started = std::time::Instant::now();
    assert!(closed(&mut s));
    assert!(started.elapsed() < Duration::from_secs(4));
}

#[test]
fn sigterm_finishes_and_removes_the_socket() {
    let dir = TempDir::new("nbd-term");
    let img = patterned_image(&dir, "disk.img", 1 << 20);
    let (mut d, sock) = serve(&dir, &["-t", img.to_str().unwrap()]);
    let mut c = RawClient::connect(&sock);
    c.go("");
    c.request(1, 0, 0, 4, Some(b"TERM"));
    assert_eq!(c.simple_reply(), (0, 0));
    d.terminate();
    let status = d
        .wait_timeout(Duration::from_secs(15))
        .expect("no exit after SIGTERM");
    assert!(status.success(), "{status:?}");
    assert!(!sock.exists());
    assert_eq!(&std::fs::read(&img).unwrap()[..4], b"TERM");
}

#[test]
fn invalid_command_lines_get_one_clear_line() {
    for (args, needle) in [
        (&["-p", "0", "/x"][..], "Port out of range '0'"),
        (
            &["-k", "relative.sock", "/x"][..],
            "socket path must be absolute",
        ),
        (&["-e", "abc", "/x"][..], "'abc'"),
        (
            &["--cache=sometimes", "/x"][..],
            "Invalid cache mode 'sometimes'",
        ),
        (&["-n", "--cache=none", "/x"][..], "-n and --cache"),
        (
            &["-k", "/tmp/toolbox-never.sock", "/nonexistent/disk.img"][..],
            "/nonexistent/disk.img",
        ),
        (&["-f", "vmdk", "/x"][..], "Unknown file format 'vmdk'"),
        (
            &["--rotational=maybe", "/x"][..],
            "Invalid rotational mode 'maybe'",
        ),
    ] {
        let out = run_with_timeout(Command::new(toolbox()).arg("nbd").args(args), T);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        assert!(err.contains(needle), "{args:?}: {err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{args:?}: {err}");
    }
}

fn closed(s: &mut UnixStream) -> bool {
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut buf = [0u8; 256];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
            Err(_) => return false,
        }
    }
}

/// Writes `script` with sfdisk onto a fresh sparse image of `size` bytes.
fn sfdisk_image(dir: &TempDir, name: &str, size: u64, script: &str) -> PathBuf {
    let img = dir.path().join(name);
    std::fs::File::create(&img).unwrap().set_len(size).unwrap();
    let mut child = Command::new("sfdisk")
        .arg("--quiet")
        .arg(&img)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(script.as_bytes())
        .unwrap();
    assert!(child.wait().unwrap().success(), "sfdisk failed");
    img
}

/// Serves partition `number` and checks the export is exactly those bytes.
fn check_partition(img: &Path, number: u32, start_sector: u64, sectors: u64) {
    let dir = TempDir::new("nbd-part-serve");
    // Mark the partition's first and last sector so a wrong window shows.
    let f = std::fs::OpenOptions::new().write(true).open(img).unwrap();
    let first = format!("first of {number}");
    let last = format!("last of {number}");
    std::os::unix::fs::FileExt::write_all_at(&f, first.as_bytes(), start_sector * 512).unwrap();
    std::os::unix::fs::FileExt::write_all_at(
        &f,
        last.as_bytes(),
        (start_sector + sectors - 1) * 512,
    )
    .unwrap();
    drop(f);
    let (_d, sock) = serve(
        &dir,
        &["-t", "-r", "-P", &number.to_string(), img.to_str().unwrap()],
    );
    let mut c = RawClient::connect(&sock);
    c.go("");
    c.read_check(0, first.len(), first.as_bytes());
    c.read_check((sectors - 1) * 512, last.len(), last.as_bytes());
    // One byte past the partition is outside the export.
    c.request(0, 0, sectors * 512, 1, None);
    assert_eq!(c.simple_reply(), (0, 22));
}

#[test]
fn partitions_mbr_primary_logical_and_gpt() {
    if missing_tools(&["sfdisk"]) {
        return;
    }
    let dir = TempDir::new("nbd-part");
    let dos = sfdisk_image(
        &dir,
        "dos.img",
        64 << 20,
        "label: dos\nstart=2048, size=8192, type=83\nstart=10240, size=8192, type=83\n\
         start=18432, size=100000, type=5\nstart=20480, size=4096, type=83\nstart=26624, size=8192, type=83\n",
    );
    check_partition(&dos, 1, 2048, 8192);
    check_partition(&dos, 2, 10240, 8192);
    check_partition(&dos, 5, 20480, 4096);
    check_partition(&dos, 6, 26624, 8192);
    let gpt = sfdisk_image(
        &dir,
        "gpt.img",
        64 << 20,
        "label: gpt\nstart=2048, size=4096\nstart=8192, size=16384\nstart=40960, size=2048\n",
    );
    check_partition(&gpt, 2, 8192, 16384);
    check_partition(&gpt, 3, 40960, 2048);
    let out = run_with_timeout(
        Command::new(toolbox())
            .args(["nbd", "-k", "/tmp/toolbox-never.sock", "-P", "7"])
            .arg(&dos),
        T,
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("partition 7"));
}

#[test]
fn list_mode_prints_what_qemu_nbd_prints() {
    if missing_tools(&["qemu-nbd"]) {
        return;
    }
    let dir = TempDir::new("nbd-list");
    let img = patterned_image(&dir, "disk.img", 3 << 20);
    let (_d, sock) = serve(
        &dir,
        &[
            "-t",
            "-e",
            "4",
            "-x",
            "disk0",
            "-D",
            "the test disk",
            img.to_str().unwrap(),
        ],
    );
    let ours = ok(Command::new(toolbox()).args(["nbd", "-L", "-k"]).arg(&sock));
    let qemu = ok(Command::new("qemu-nbd").args(["-L", "-k"]).arg(&sock));
    assert_eq!(ours, qemu);
    assert!(
        ours.contains("export: 'disk0'") && ours.contains("the test disk"),
        "{ours}"
    );
    assert!(ours.contains("size:  3145728"), "{ours}");
}

fn allocated_bytes(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).unwrap().blocks() * 512
}

#[test]
fn trim_punches_holes_only_with_discard_unmap() {
    if missing_tools(&["qemu-io"]) {
        return;
    }
    for (mode, expect_hole) in [("unmap", true), ("ignore", false)] {
        let dir = TempDir::new("nbd-trim");
        let img = patterned_image(&dir, "disk.img", 4 << 20);
        let before = allocated_bytes(&img);
        let (_d, sock) = serve(
            &dir,
            &["-t", &format!("--discard={mode}"), img.to_str().unwrap()],
        );
        ok(Command::new("qemu-io").args(["-f", "raw", &uri(&sock), "-c", "discard 1M 2M"]));
        let after = allocated_bytes(&img);
        if expect_hole {
            assert!(after <= before - (2 << 20), "{mode}: {before} -> {after}");
        } else {
            assert_eq!(after, before, "{mode}");
        }
        // Zeroing reads back as zeroes either way, and may not punch with NO_HOLE semantics.
        ok(Command::new("qemu-io").args([
            "-f",
            "raw",
            &uri(&sock),
            "-c",
            "write -z 0 64k",
            "-c",
            "read -P 0 0 64k",
        ]));
    }
}

/// Starts `toolbox nbd -vv ARGS... -k SOCK` with its log in DIR/nbd.log.
fn serve_logged(dir: &TempDir, args: &[&str]) -> (Daemon, PathBuf, PathBuf) {
    let sock = dir.path().join("nbd.sock");
    let log = dir.path().join("nbd.log");
    let mut cmd = Command::new(toolbox());
    cmd.args(["nbd", "-vv", "-k"])
        .arg(&sock)
        .args(args)
        .env("LOGGING", "stderr")
        .stderr(std::fs::File::create(&log).unwrap());
    let daemon = Daemon::spawn(cmd);
    common::wait_until(Duration::from_secs(10), || sock.exists()).expect("nbd never listened");
    (daemon, sock, log)
}

/// The reply style of the latest client, from the server's -vv log.
fn last_negotiated(log: &Path) -> String {
    let mut last = None;
    common::wait_until(Duration::from_secs(5), || {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        last = text.lines().rev().find_map(|l| {
            l.split_once(" negotiated ")
                .map(|(_, what)| what.to_owned())
        });
        last.is_some()
    });
    last.unwrap_or_else(|| panic!("no negotiation in {}", log.display()))
}

/// Runs `nbdsh -c CODE` (libnbd's Python shell) with $URI set; its stdout.
/// The system's python3 comes first: the nbd module is packaged for it,
/// not for whatever other python3 PATH may find.
fn nbdsh(uri: &str, code: &str) -> String {
    let path = format!("/usr/bin:{}", std::env::var("PATH").unwrap_or_default());
    ok(Command::new("nbdsh")
        .env("PATH", path)
        .env("URI", uri)
        .args(["-c", code]))
}

/// libnbd's version as (major, minor), from `nbdinfo --version`.
fn libnbd_version() -> (u32, u32) {
    let out = ok(Command::new("nbdinfo").arg("--version"));
    let line = out
        .lines()
        .find_map(|l| l.strip_prefix("libnbd "))
        .unwrap_or_else(|| panic!("no libnbd version in {out}"));
    let mut parts = line.trim().split('.').map(|p| p.parse().unwrap_or(0));
    (parts.next().unwrap_or(0), parts.next().unwrap_or(0))
}

/// Extended headers arrived in libnbd 1.18.
fn libnbd_has_extended_headers() -> bool {
    libnbd_version() >= (1, 18)
}

fn error_chunk(c: &Chunk, cookie: u64, errno: u32) {
    assert_eq!(c.cookie, cookie, "{c:?}");
    assert_eq!(c.kind, 0x8001, "not an error chunk: {c:?}");
    assert_eq!(c.error, errno, "{c:?}");
    assert_eq!(c.flags & 1, 1, "error chunk without DONE: {c:?}");
}

/// The (length, flags) descriptors of a BLOCK_STATUS(_EXT) chunk.
fn descriptors(c: &Chunk) -> Vec<(u64, u64)> {
    let p = &c.payload;
    let be32 = |i: usize| u32::from_be_bytes(p[i..i + 4].try_into().unwrap()) as u64;
    let be64 = |i: usize| u64::from_be_bytes(p[i..i + 8].try_into().unwrap());
    assert_eq!(be32(0), 1, "context id");
    match c.kind {
        5 => (4..p.len())
            .step_by(8)
            .map(|i| (be32(i), be32(i + 4)))
            .collect(),
        6 => {
            assert_eq!(be32(4) as usize, (p.len() - 8) / 16, "descriptor count");
            (8..p.len())
                .step_by(16)
                .map(|i| (be64(i), be64(i + 8)))
                .collect()
        }
        other => panic!("not a block status chunk: {other} {c:?}"),
    }
}

#[test]
fn block_status_of_length_zero_is_einval() {
    let dir = TempDir::new("nbd-bs0");
    let img = patterned_image(&dir, "disk.img", 1 << 20);
    let (_d, sock) = serve(&dir, &["-t", "-e", "4", img.to_str().unwrap()]);
    // Compact headers.
    let mut c = RawClient::connect(&sock);
    c.go_with_replies("", false);
    c.request(7, 0, 0, 0, None);
    error_chunk(&c.chunk(), c.cookie, 22);
    c.request(7, 0, 0, 4096, None);
    let d = descriptors(&c.chunk());
    assert!(!d.is_empty() && d.iter().all(|&(len, _)| len > 0), "{d:?}");
    // Extended headers.
    let mut c = RawClient::connect(&sock);
    c.go_with_replies("", true);
    let cookie = c.request_ext(7, 0, 0, 0, &[]);
    error_chunk(&c.chunk(), cookie, 22);
    let cookie = c.request_ext(7, 0, 4096, 4096, &[]);
    let chunk = c.chunk();
    assert_eq!(chunk.cookie, cookie);
    let d = descriptors(&chunk);
    assert!(!d.is_empty() && d.iter().all(|&(len, _)| len > 0), "{d:?}");
    // libnbd in strict mode, told to let a zero length through.
    if missing_tools(&["nbdsh"]) {
        return;
    }
    let out = nbdsh(
        &uri(&sock),
        "import os\n\
         h.set_strict_mode(nbd.STRICT_MASK & ~nbd.STRICT_ZERO_SIZE)\n\
         h.add_meta_context('base:allocation')\n\
         h.connect_uri(os.environ['URI'])\n\
         try:\n    h.block_status(0, 0, lambda *a: 0)\n    print('answered')\n\
         except nbd.Error as e:\n    print('errno', e.errnum)\n\
         h.block_status(4096, 0, lambda *a: 0)\n\
         print('still connected')\n",
    );
    assert_eq!(out, "errno 22\nstill connected\n");
}

#[test]
fn declared_payloads_are_consumed_refused_and_the_stream_stays_in_step() {
    let dir = TempDir::new("nbd-payload");
    let img = patterned_image(&dir, "disk.img", 1 << 20);
    let data = std::fs::read(&img).unwrap();
    let (_d, sock) = serve(&dir, &["-t", "-e", "4", img.to_str().unwrap()]);
    let mut c = RawClient::connect(&sock);
    let flags = c.go_with_replies("", true);
    assert_ne!(flags & (1 << 12), 0, "BLOCK_STATUS_PAYLOAD not advertised");
    // TRIM, READ and FLUSH take no payload: it is read, then refused.
    for (kind, len) in [(4u16, 16u64), (0, 4096), (3, 100)] {
        let payload = vec![0x25u8; len as usize];
        let cookie = c.request_ext(kind, CMD_FLAG_PAYLOAD_LEN, 0, len, &payload);
        error_chunk(&c.chunk(), cookie, 22);
    }
    // The next request is parsed where it starts.
    let cookie = c.request_ext(0, 0, 512, 512, &[]);
    let chunk = c.chunk();
    assert_eq!((chunk.cookie, chunk.kind, chunk.flags & 1), (cookie, 1, 1));
    assert_eq!(&chunk.payload[8..], &data[512..1024]);
    // BLOCK_STATUS's payload form: effect length and our context id.
    let mut form = (64u64 << 10).to_be_bytes().to_vec();
    form.extend_from_slice(&1u32.to_be_bytes());
    let cookie = c.request_ext(7, CMD_FLAG_PAYLOAD_LEN, 0, form.len() as u64, &form);
    let chunk = c.chunk();
    assert_eq!((chunk.cookie, chunk.kind), (cookie, 6), "{chunk:?}");
    let d = descriptors(&chunk);
    assert_eq!(d.iter().map(|e| e.0).sum::<u64>(), 64 << 10, "{d:?}");
    // ...naming a context that does not exist: EINVAL, still in step.
    let mut bad = (4096u64).to_be_bytes().to_vec();
    bad.extend_from_slice(&7u32.to_be_bytes());
    let cookie = c.request_ext(7, CMD_FLAG_PAYLOAD_LEN, 0, bad.len() as u64, &bad);
    error_chunk(&c.chunk(), cookie, 22);
    // A payload too long to serve is drained, then refused.
    let big = vec![0u8; (32 << 20) + 8];
    let cookie = c.request_ext(4, CMD_FLAG_PAYLOAD_LEN, 0, big.len() as u64, &big);
    error_chunk(&c.chunk(), cookie, 22);
    let cookie = c.request_ext(3, 0, 0, 0, &[]);
    let chunk = c.chunk();
    assert_eq!((chunk.cookie, chunk.error), (cookie, 0));
    assert_eq!(
        std::fs::read(&img).unwrap(),
        data,
        "a refused command wrote"
    );
    // Without extended headers the flag is invalid and not advertised.
    let mut c = RawClient::connect(&sock);
    assert_eq!(c.go_with_replies("", false) & (1 << 12), 0);
    c.request(3, CMD_FLAG_PAYLOAD_LEN, 0, 0, None);
    error_chunk(&c.chunk(), c.cookie, 22);
}

/// What a server answers to the negotiation corners of a strict client,
/// as lines that can be compared between servers.
fn option_corners(sock: &Path, name: &str, data: &[u8]) -> Vec<String> {
    use common::nbd::*;
    let mut seen = Vec::new();
    let mut replies = |c: &mut RawClient, what: &str, opts: &[u32]| {
        let types: Vec<String> = opts
            .iter()
            .map(|&o| {
                c.option(o, &[]);
                format!("{:#x}", c.option_reply().0)
            })
            .collect();
        seen.push(format!("{what}: {}", types.join(" ")));
    };
    let mut c = RawClient::connect(sock);
    replies(
        &mut c,
        "extended, structured, extended",
        &[
            OPT_EXTENDED_HEADERS,
            OPT_STRUCTURED_REPLY,
            OPT_EXTENDED_HEADERS,
        ],
    );
    let mut c = RawClient::connect(sock);
    replies(
        &mut c,
        "structured twice, then extended",
        &[
            OPT_STRUCTURED_REPLY,
            OPT_STRUCTURED_REPLY,
            OPT_EXTENDED_HEADERS,
        ],
    );
    // An unknown option with 1 MiB of data is read past and refused.
    let mut c = RawClient::connect(sock);
    c.option(0x4242, &vec![0x5a; 1 << 20]);
    let unknown = c.option_reply().0;
    c.option(OPT_STRUCTURED_REPLY, &[]);
    seen.push(format!(
        "1 MiB unknown option: {unknown:#x} then {:#x}",
        c.option_reply().0
    ));
    // The empty name, when the export has another.
    let mut c = RawClient::connect(sock);
    c.option(OPT_GO, &[0, 0, 0, 0, 0, 0]);
    seen.push(format!("GO \"\": {:#x}", c.option_reply().0));
    // Plain newstyle (no fixed bit, no NO_ZEROES): EXPORT_NAME is served.
    let mut c = RawClient::connect_with_flags(sock, 0);
    c.option(OPT_EXPORT_NAME, name.as_bytes());
    let mut answer = [0u8; 134];
    c.sock.read_exact(&mut answer).unwrap();
    let size = u64::from_be_bytes(answer[..8].try_into().unwrap());
    assert!(answer[10..].iter().all(|&b| b == 0), "no zero padding");
    c.read_check(4096, 512, &data[4096..4608]);
    seen.push(format!("plain newstyle EXPORT_NAME: size {size}, served"));
    // ...and an option only fixed newstyle knows ends the connection.
    let mut c = RawClient::connect_with_flags(sock, 0);
    c.option(OPT_GO, &[0, 0, 0, 0, 0, 0]);
    seen.push(format!("plain newstyle GO: closed {}", closed(&mut c.sock)));
    // EXPORT_NAME cannot follow extended headers (its answer has no error).
    let mut c = RawClient::connect(sock);
    c.option(OPT_EXTENDED_HEADERS, &[]);
    assert_eq!(c.option_reply().0, REP_ACK);
    c.option(OPT_EXPORT_NAME, name.as_bytes());
    seen.push(format!(
        "EXPORT_NAME after extended headers: closed {}",
        closed(&mut c.sock)
    ));
    seen
}

#[test]
fn negotiation_corners_are_answered_as_qemu_nbd_answers_them() {
    let dir = TempDir::new("nbd-corners");
    let img = patterned_image(&dir, "disk.img", 1 << 20);
    let data = std::fs::read(&img).unwrap();
    let (_d, sock) = serve(
        &dir,
        &["-t", "-e", "8", "-r", "-x", "disk", img.to_str().unwrap()],
    );
    let ours = option_corners(&sock, "disk", &data);
    assert_eq!(
        ours,
        vec![
            "extended, structured, extended: 0x1 0x8000000a 0x80000003",
            "structured twice, then extended: 0x1 0x80000003 0x1",
            "1 MiB unknown option: 0x80000001 then 0x1",
            "GO \"\": 0x80000006",
            "plain newstyle EXPORT_NAME: size 1048576, served",
            "plain newstyle GO: closed true",
            "EXPORT_NAME after extended headers: closed true",
        ]
    );
    // Past the documented limit a known option is too big; an unknown one
    // beyond the drain limit is refused and the connection closed.
    let mut c = RawClient::connect(&sock);
    c.option(common::nbd::OPT_GO, &vec![0; 100 << 10]);
    assert_eq!(c.option_reply().0, 0x8000_0009);
    c.option(common::nbd::OPT_STRUCTURED_REPLY, &[]);
    assert_eq!(c.option_reply().0, 1);
    let mut c = RawClient::connect(&sock);
    c.sock
        .write_all(b"IHAVEOPT\0\0\x42\x42\x02\x10\0\0")
        .unwrap();
    assert_eq!(c.option_reply().0, 0x8000_0009);
    assert!(closed(&mut c.sock));

    if missing_tools(&["qemu-nbd"]) {
        return;
    }
    let qemu_sock = dir.path().join("qemu.sock");
    let mut cmd = Command::new("qemu-nbd");
    cmd.args(["-t", "-e", "8", "-r", "-x", "disk", "-f", "raw", "-k"])
        .arg(&qemu_sock)
        .arg(&img)
        .stderr(std::process::Stdio::null());
    let _qemu = Daemon::spawn(cmd);
    common::wait_until(Duration::from_secs(10), || qemu_sock.exists())
        .expect("qemu-nbd never listened");
    assert_eq!(option_corners(&qemu_sock, "disk", &data), ours);
}

#[test]
fn export_name_given_refuses_the_empty_name_as_qemu_nbd_does() {
    if missing_tools(&["nbdinfo", "qemu-img"]) {
        return;
    }
    let dir = TempDir::new("nbd-name");
    let img = patterned_image(&dir, "disk.img", 1 << 20);
    let (_d, sock) = serve(
        &dir,
        &["-t", "-e", "4", "-x", "disk0", img.to_str().unwrap()],
    );
    for cmd in [
        Command::new("nbdinfo").args(["--size", &uri(&sock)]),
        Command::new("qemu-img").args(["info", &uri(&sock)]),
    ] {
        let out = run_with_timeout(cmd, T);
        assert!(!out.status.success(), "{cmd:?} was served the empty name");
    }
    let named = format!("nbd+unix:///disk0?socket={}", sock.display());
    let size = ok(Command::new("nbdinfo").args(["--size", &named]));
    assert_eq!(size.trim(), "1048576");
    let list = ok(Command::new("nbdinfo").args(["--list", &named]));
    assert!(
        list.contains("export=\"disk0\"") || list.contains("disk0"),
        "{list}"
    );
}

#[test]
fn rotational_is_the_command_lines_to_correct() {
    if missing_tools(&["nbdinfo"]) {
        return;
    }
    for (mode, expect) in [("on", "true"), ("off", "false")] {
        let dir = TempDir::new("nbd-rot");
        let img = patterned_image(&dir, "disk.img", 1 << 20);
        let (_d, sock) = serve(
            &dir,
            &["-t", &format!("--rotational={mode}"), img.to_str().unwrap()],
        );
        let info = ok(Command::new("nbdinfo").arg(uri(&sock)));
        assert!(
            info.contains(&format!("is_rotational: {expect}")),
            "{mode}: {info}"
        );
    }
}

#[test]
fn oversized_write_is_answered_only_after_its_payload() {
    let dir = TempDir::new("nbd-bigwrite");
    let img = patterned_image(&dir, "disk.img", 1 << 20);
    let data = std::fs::read(&img).unwrap();
    let (_d, sock) = serve(&dir, &["-t", "-e", "4", img.to_str().unwrap()]);
    let mut c = RawClient::connect(&sock);
    c.go("");
    let len = (32 << 20) + 4096;
    c.request(1, 0, 0, len as u64, Some(&vec![1u8; len / 2]));
    c.sock
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let mut byte = [0u8; 1];
    let early = c.sock.read(&mut byte);
    assert!(early.is_err(), "a reply before the payload was sent");
    c.sock.set_read_timeout(Some(T)).unwrap();
    c.sock.write_all(&vec![1u8; len - len / 2]).unwrap();
    assert_eq!(c.simple_reply(), (0, 75));
    c.read_check(0, 512, &data[..512]);
    // libnbd, which checks that every reply answers a request it sent.
    if missing_tools(&["nbdsh"]) {
        return;
    }
    let out = nbdsh(
        &uri(&sock),
        "import os\n\
         h.set_strict_mode(nbd.STRICT_MASK & ~nbd.STRICT_BOUNDS)\n\
         h.connect_uri(os.environ['URI'])\n\
         try:\n    h.pwrite(b'\\1' * ((32 << 20) + 4096), 0)\n    print('written')\n\
         except nbd.Error as e:\n    print('errno', e.errnum)\n\
         print(len(h.pread(4096, 0)))\n",
    );
    assert_eq!(out, "errno 75\n4096\n");
    assert_eq!(std::fs::read(&img).unwrap(), data);
}

#[test]
fn extended_headers_with_qemu_io_nbdinfo_and_nbdcopy() {
    if missing_tools(&["qemu-io", "qemu-img", "nbdinfo", "nbdcopy"]) {
        return;
    }
    let dir = TempDir::new("nbd-ext");
    let img = dir.path().join("disk.img");
    std::fs::File::create(&img)
        .unwrap()
        .set_len(16 << 20)
        .unwrap();
    let (_d, sock, log) = serve_logged(
        &dir,
        &["-t", "-e", "4", "--discard=unmap", img.to_str().unwrap()],
    );
    // qemu (8.2 and later) asks for extended headers by itself.
    let out = ok(Command::new("qemu-io").args([
        "-f",
        "raw",
        &uri(&sock),
        "-c",
        "write -P 0x6b 1M 2M",
        "-c",
        "write -z 1536k 256k",
        "-c",
        "discard 2560k 512k",
        "-c",
        "read -P 0x6b 1M 512k",
        "-c",
        "read -P 0 1536k 256k",
        "-c",
        "read -P 0x6b 1792k 768k",
    ]));
    assert!(!out.contains("failed"), "{out}");
    assert_eq!(
        last_negotiated(&log),
        "extended headers and base:allocation"
    );
    // Block status over extended headers: the holes the writes left.
    let map = ok(Command::new("qemu-img").args(["map", "-f", "raw", "--output=json", &uri(&sock)]));
    assert_eq!(
        last_negotiated(&log),
        "extended headers and base:allocation"
    );
    let extents: Vec<(u64, u64, bool)> = map
        .lines()
        .map(|l| {
            let field = |name: &str| {
                let at = l.find(&format!("\"{name}\": ")).unwrap() + name.len() + 4;
                l[at..].split([',', '}']).next().unwrap().trim().to_owned()
            };
            (
                field("start").parse().unwrap(),
                field("length").parse().unwrap(),
                field("data") == "true",
            )
        })
        .collect();
    assert_eq!(
        extents,
        vec![
            (0, 1 << 20, false),
            (1 << 20, 512 << 10, true),
            (1536 << 10, 256 << 10, false),
            (1792 << 10, 768 << 10, true),
            (2560 << 10, (16 << 20) - (2560 << 10), false),
        ],
        "{map}"
    );
    // libnbd negotiates them from 1.18 on; older ones get structured replies.
    let libnbd_style = if libnbd_has_extended_headers() {
        "extended headers and base:allocation"
    } else {
        "structured replies and base:allocation"
    };
    let map = ok(Command::new("nbdinfo").args(["--map", &uri(&sock)]));
    assert_eq!(last_negotiated(&log), libnbd_style, "nbdinfo");
    let status: Vec<Vec<&str>> = map
        .lines()
        .map(|l| l.split_whitespace().take(3).collect())
        .collect();
    assert_eq!(
        status,
        [
            ["0", "1048576", "3"],
            ["1048576", "524288", "0"],
            ["1572864", "262144", "3"],
            ["1835008", "786432", "0"],
            ["2621440", "14155776", "3"],
        ],
        "{map}"
    );
    let info = ok(Command::new("nbdinfo").arg(uri(&sock)));
    if libnbd_has_extended_headers() {
        assert!(info.contains("extended"), "{info}");
    }
    let copy = dir.path().join("copy.img");
    ok(Command::new("nbdcopy").arg(uri(&sock)).arg(&copy));
    assert_eq!(last_negotiated(&log), libnbd_style, "nbdcopy");
    assert_eq!(std::fs::read(&copy).unwrap(), std::fs::read(&img).unwrap());
    let mut expected = vec![0u8; 16 << 20];
    expected[1 << 20..3 << 20].fill(0x6b);
    expected[1536 << 10..1792 << 10].fill(0);
    expected[2560 << 10..3 << 20].fill(0);
    assert_eq!(std::fs::read(&img).unwrap(), expected);
}
