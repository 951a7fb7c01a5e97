//! The nbd applet against real NBD clients: qemu-img, qemu-io, nbdinfo,
//! nbdcopy, fio; and against a hand-rolled hostile client.

mod common;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::nbd::RawClient;
use common::{run_with_timeout, toolbox, Daemon, TempDir};

const T: Duration = Duration::from_secs(60);

fn have(tool: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool} >/dev/null"))
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// Skips (returns true) when a peer tool is missing, saying so.
fn missing(tools: &[&str]) -> bool {
    for tool in tools {
        if !have(tool) {
            eprintln!("skipping: {tool} is not installed (scripts/test.sh installs it)");
            return true;
        }
    }
    false
}

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
    if missing(&["qemu-img"]) {
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
    if missing(&["nbdinfo"]) {
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
    if missing(&["nbdcopy", "fio"]) {
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
    if missing(&["qemu-io"]) {
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
    if missing(&["qemu-img"]) {
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
    if missing(&["qemu-io"]) {
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
    if missing(&["nbdinfo"]) {
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

    // Not fixed newstyle: dropped.
    let mut s = UnixStream::connect(&sock).unwrap();
    let mut greet = [0u8; 18];
    s.read_exact(&mut greet).unwrap();
    s.write_all(&0u32.to_be_bytes()).unwrap();
    assert!(closed(&mut s));

    // Wrong option magic: dropped.
    let mut s = RawClient::connect(&sock);
    s.sock.write_all(b"BADMAGIC\0\0\0\x07\0\0\0\0").unwrap();
    assert!(closed(&mut s.sock));

    // Oversized option: dropped without reading 4 GiB.
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
    if missing(&["sfdisk"]) {
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
    if missing(&["qemu-nbd"]) {
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
    if missing(&["qemu-io"]) {
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
