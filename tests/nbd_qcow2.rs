//! The nbd applet serving qcow2 images, with qemu-img as the referee:
//! images made by qemu-img/qemu-io, read and written through the export
//! by qemu-io, qemu-img, nbdinfo and fio, then checked with `qemu-img check`
//! and compared with raw copies written the same way.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use common::{missing_tools, run_with_timeout, toolbox, Daemon, TempDir};

const T: Duration = Duration::from_secs(60);

fn uri(sock: &Path) -> String {
    format!("nbd+unix:///?socket={}", sock.display())
}

fn text(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

fn ok(cmd: &mut Command) -> String {
    let out = run_with_timeout(cmd, T);
    assert!(out.status.success(), "{cmd:?} failed: {}", text(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn qemu_img(args: &[&str]) -> String {
    ok(Command::new("qemu-img").args(args))
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// Runs qemu-io commands on an image (`fmt` "raw" or "qcow2") or an NBD URI.
fn qemu_io(target: &str, fmt: &str, cmds: &[&str]) -> String {
    let mut cmd = Command::new("qemu-io");
    cmd.args(["-f", fmt]);
    for c in cmds {
        cmd.args(["-c", c]);
    }
    cmd.arg(target);
    let out = ok(&mut cmd);
    assert!(
        !out.contains("Pattern verification failed") && !out.contains("error"),
        "{out}"
    );
    out
}

/// Starts a persistent `toolbox nbd ARGS... -k DIR/NAME.sock`.
fn serve(dir: &Path, name: &str, args: &[&str]) -> (Daemon, PathBuf) {
    let sock = dir.join(format!("{name}.sock"));
    let args: Vec<&str> = std::iter::once("-t").chain(args.iter().copied()).collect();
    (common::nbd::serve_on(&sock, &args), sock)
}

/// Stops a server with SIGTERM (a clean exit: flush, image marked clean).
fn stop(mut daemon: Daemon) {
    daemon.terminate();
    let status = daemon.wait_timeout(Duration::from_secs(15));
    assert!(
        status.is_some_and(|s| s.success()),
        "server exit: {status:?}"
    );
}

/// `qemu-img check` must find no errors and no leaks.
fn check_clean(img: &Path) {
    let out = run_with_timeout(Command::new("qemu-img").args(["check", s(img)]), T);
    let t = text(&out);
    assert!(
        out.status.success() && t.contains("No errors were found"),
        "qemu-img check {}: {t}",
        img.display()
    );
    assert!(!t.contains("leaked"), "{t}");
}

fn compare(a: &str, a_fmt: &str, b: &str, b_fmt: &str) {
    qemu_img(&["compare", "-f", a_fmt, "-F", b_fmt, a, b]);
}

fn sha(path: &Path) -> Vec<u8> {
    std::fs::read(path).expect("read file")
}

/// The same qemu-io write commands on a raw copy and through the export.
const WRITES: &[&str] = &[
    "write -P 0x5a 0 4k",
    "write -P 0x6b 12345 70000",
    "write -P 0x7c 3M 2M",
    "write -z 1M 1M",
    "write -z 5000 3000",
    "write -P 0x8d 15M 1M",
    "discard 6M 128k",
];

/// A qcow2 image made with `options`, with data in several places, and a
/// raw copy of the same content.
fn filled_pair(dir: &Path, name: &str, options: &str) -> (PathBuf, PathBuf) {
    let img = dir.join(format!("{name}.qcow2"));
    let raw = dir.join(format!("{name}.raw"));
    qemu_img(&["create", "-q", "-f", "qcow2", "-o", options, s(&img), "16M"]);
    qemu_img(&["create", "-q", "-f", "raw", s(&raw), "16M"]);
    let fill = [
        "write -P 0x11 0 1M",
        "write -P 0x22 2M 64k",
        "write -P 0x33 6M 3M",
        "write -P 0x44 16773120 4096",
    ];
    qemu_io(s(&img), "qcow2", &fill);
    qemu_io(s(&raw), "raw", &fill);
    (img, raw)
}

#[test]
fn v2_and_v3_images_of_every_cluster_size_read_and_write_like_raw() {
    if missing_tools(&["qemu-img", "qemu-io"]) {
        return;
    }
    let dir = TempDir::new("q2-rw");
    let cases = [
        ("v2-4k", "compat=0.10,cluster_size=4k"),
        ("v3-64k", "compat=1.1,cluster_size=64k"),
        ("v3-2m", "compat=1.1,cluster_size=2M"),
        ("v2-64k", "compat=0.10"),
        ("v3-512-rc1", "compat=1.1,cluster_size=512,refcount_bits=1"),
    ];
    for (name, options) in cases {
        let (img, raw) = filled_pair(dir.path(), name, options);
        let (d, sock) = serve(dir.path(), name, &["--discard=unmap", s(&img)]);
        compare(&uri(&sock), "raw", s(&raw), "raw");
        qemu_io(&uri(&sock), "raw", WRITES);
        // Discard leaves the range undefined on v2: zero it on both sides.
        qemu_io(&uri(&sock), "raw", &["write -z 6M 128k"]);
        stop(d);
        qemu_io(s(&raw), "raw", WRITES);
        qemu_io(s(&raw), "raw", &["write -z 6M 128k"]);
        check_clean(&img);
        compare(s(&img), "qcow2", s(&raw), "raw");
    }
}

#[test]
fn refcount_table_and_blocks_grow_with_small_clusters_and_wide_counts() {
    if missing_tools(&["qemu-img", "qemu-io"]) {
        return;
    }
    let dir = TempDir::new("q2-grow");
    let img = dir.path().join("grow.qcow2");
    let raw = dir.path().join("grow.raw");
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-o",
        "cluster_size=512,refcount_bits=64",
        s(&img),
        "8M",
    ]);
    qemu_img(&["create", "-q", "-f", "raw", s(&raw), "8M"]);
    let (d, sock) = serve(dir.path(), "grow", &[s(&img)]);
    let writes = ["write -P 0x21 0 6M", "write -P 0x43 7M 512k"];
    qemu_io(&uri(&sock), "raw", &writes);
    stop(d);
    qemu_io(s(&raw), "raw", &writes);
    check_clean(&img);
    compare(s(&img), "qcow2", s(&raw), "raw");
}

#[test]
fn backing_chain_of_three_reads_through_and_writes_only_the_top() {
    if missing_tools(&["qemu-img", "qemu-io", "nbdinfo"]) {
        return;
    }
    let dir = TempDir::new("q2-chain");
    let base = dir.path().join("base.raw");
    let mid = dir.path().join("mid.qcow2");
    // The raw base is shorter than the disk: zeroes past its end.
    qemu_img(&["create", "-q", "-f", "raw", s(&base), "6M"]);
    qemu_io(s(&base), "raw", &["write -P 0xb0 0 6M"]);
    // Relative backing names, resolved against the image's directory.
    ok(Command::new("qemu-img").current_dir(dir.path()).args([
        "create",
        "-q",
        "-f",
        "qcow2",
        "-o",
        "compat=0.10",
        "-b",
        "base.raw",
        "-F",
        "raw",
        "mid.qcow2",
        "12M",
    ]));
    qemu_io(
        s(&mid),
        "qcow2",
        &["write -P 0xb1 1M 1M", "write -P 0xb2 8M 64k"],
    );
    // A v3 top (zero clusters) and a v2 top (zeroes written as data).
    for compat in ["1.1", "0.10"] {
        let name = format!("top-{compat}.qcow2");
        ok(Command::new("qemu-img").current_dir(dir.path()).args([
            "create",
            "-q",
            "-f",
            "qcow2",
            "-o",
            &format!("compat={compat}"),
            "-b",
            "mid.qcow2",
            "-F",
            "qcow2",
            &name,
            "16M",
        ]));
        top_of_chain_reads_through_and_takes_the_writes(
            dir.path(),
            &dir.path().join(name),
            &[&base, &mid],
        );
    }
}

fn top_of_chain_reads_through_and_takes_the_writes(dir: &Path, top: &Path, below: &[&Path]) {
    qemu_io(
        s(top),
        "qcow2",
        &["write -P 0xb3 1536k 8k", "write -z 2M 64k"],
    );
    let expected = dir.join("expected.raw");
    qemu_img(&["convert", "-O", "raw", s(top), s(&expected)]);
    let sums: Vec<Vec<u8>> = below.iter().map(|p| sha(p)).collect();

    let (d, sock) = serve(dir, "top", &[s(top)]);
    compare(&uri(&sock), "raw", s(&expected), "raw");
    let map = ok(Command::new("nbdinfo").args(["--map", &uri(&sock)]));
    assert!(map.contains("hole,zero") && map.contains("data"), "{map}");
    let writes = [
        "write -P 0xc1 1000 3000",
        "write -P 0xc2 5M 2M",
        "write -P 0xc3 8M 4k",
        "write -z 1M 4k",
        "write -z 3M 128k",
        "write -P 0xc4 13M 100k",
    ];
    qemu_io(&uri(&sock), "raw", &writes);
    stop(d);
    qemu_io(s(&expected), "raw", &writes);
    for (p, sum) in below.iter().zip(&sums) {
        assert_eq!(&sha(p), sum, "{} was written", p.display());
    }
    check_clean(top);
    compare(s(top), "qcow2", s(&expected), "raw");
}

#[test]
fn compressed_clusters_read_and_are_rewritten_on_write() {
    if missing_tools(&["qemu-img", "qemu-io"]) {
        return;
    }
    let dir = TempDir::new("q2-zip");
    let raw = dir.path().join("src.raw");
    qemu_img(&["create", "-q", "-f", "raw", s(&raw), "8M"]);
    qemu_io(
        s(&raw),
        "raw",
        &[
            "write -P 0x61 0 3M",
            "write -P 0x62 4M 1M",
            "write -P 0x63 7M 64k",
        ],
    );
    for (name, options) in [
        ("c64k", "cluster_size=64k"),
        ("c4k", "cluster_size=4k,compat=0.10"),
    ] {
        let img = dir.path().join(format!("{name}.qcow2"));
        qemu_img(&[
            "convert",
            "-c",
            "-O",
            "qcow2",
            "-o",
            options,
            s(&raw),
            s(&img),
        ]);
        let info = qemu_img(&["check", s(&img)]);
        assert!(info.contains("compressed clusters"), "{info}");
        let expected = dir.path().join(format!("{name}.raw"));
        std::fs::copy(&raw, &expected).expect("copy");
        let (d, sock) = serve(dir.path(), name, &[s(&img)]);
        compare(&uri(&sock), "raw", s(&expected), "raw");
        let writes = [
            "write -P 0x71 100 200",
            "write -P 0x72 4M 4k",
            "write -P 0x73 2M 1M",
        ];
        qemu_io(&uri(&sock), "raw", &writes);
        stop(d);
        qemu_io(s(&expected), "raw", &writes);
        check_clean(&img);
        compare(s(&img), "qcow2", s(&expected), "raw");
    }
}

#[test]
fn internal_snapshots_load_read_only_and_survive_writes() {
    if missing_tools(&["qemu-img", "qemu-io"]) {
        return;
    }
    let dir = TempDir::new("q2-snap");
    let img = dir.path().join("snap.qcow2");
    qemu_img(&["create", "-q", "-f", "qcow2", s(&img), "8M"]);
    let states: [(&str, &[&str]); 2] = [
        ("one", &["write -P 0x01 0 2M", "write -P 0x02 4M 64k"]),
        ("two", &["write -P 0x03 1M 2M", "write -z 4M 64k"]),
    ];
    let mut copies = Vec::new();
    for (name, writes) in states {
        qemu_io(s(&img), "qcow2", writes);
        qemu_img(&["snapshot", "-c", name, s(&img)]);
        let copy = dir.path().join(format!("{name}.raw"));
        qemu_img(&["convert", "-O", "raw", s(&img), s(&copy)]);
        copies.push(copy);
    }
    qemu_io(s(&img), "qcow2", &["write -P 0x04 0 512k"]);
    // Each snapshot by name, by id, and by qemu's option syntax.
    for (i, sel) in [
        ["one", "snapshot.id=1"],
        ["2", "snapshot.id=2,snapshot.name=two"],
    ]
    .iter()
    .enumerate()
    {
        for (j, form) in sel.iter().enumerate() {
            let (d, sock) = serve(dir.path(), &format!("l{i}{j}"), &["-l", form, s(&img)]);
            compare(&uri(&sock), "raw", s(&copies[i]), "raw");
            let out = run_with_timeout(
                Command::new("qemu-io").args(["-f", "raw", &uri(&sock), "-c", "write 0 4k"]),
                T,
            );
            let t = text(&out);
            assert!(
                t.contains("Permission denied")
                    || t.contains("Operation not permitted")
                    || t.contains("read-only"),
                "{t}"
            );
            drop(d);
        }
    }
    // Writing the active image copies shared clusters; snapshots stay intact.
    let (d, sock) = serve(dir.path(), "active", &[s(&img)]);
    qemu_io(
        &uri(&sock),
        "raw",
        &["write -P 0x05 0 6M", "write -z 6M 1M"],
    );
    stop(d);
    check_clean(&img);
    for (i, name) in ["one", "two"].iter().enumerate() {
        let (d, sock) = serve(dir.path(), &format!("after{i}"), &["-l", name, s(&img)]);
        compare(&uri(&sock), "raw", s(&copies[i]), "raw");
        drop(d);
    }
    let bad = run_with_timeout(
        Command::new(toolbox()).args(["nbd", "-k", "/tmp/never-q2.sock", "-l", "three", s(&img)]),
        T,
    );
    assert!(!bad.status.success());
    assert!(text(&bad).contains("three"), "{}", text(&bad));
}

#[test]
fn fio_write_verify_then_image_checks_clean() {
    if missing_tools(&["qemu-img", "fio"]) {
        return;
    }
    let dir = TempDir::new("q2-fio");
    let img = dir.path().join("fio.qcow2");
    qemu_img(&["create", "-q", "-f", "qcow2", s(&img), "32M"]);
    let (d, sock) = serve(dir.path(), "fio", &["-e", "4", s(&img)]);
    let out = ok(Command::new("fio").current_dir(dir.path()).args([
        "--name=verify",
        "--ioengine=nbd",
        &format!("--uri={}", uri(&sock)),
        "--rw=randwrite",
        "--bs=4k",
        "--size=8M",
        "--numjobs=2",
        "--offset_increment=8M",
        "--group_reporting",
        "--iodepth=16",
        "--verify=crc32c",
        "--do_verify=1",
        "--output-format=terse",
    ]));
    let fields: Vec<&str> = out.lines().last().unwrap_or("").split(';').collect();
    assert_eq!(fields.get(4), Some(&"0"), "{out}");
    stop(d);
    check_clean(&img);
}

#[test]
fn killed_server_leaves_an_image_that_checks_or_repairs_clean() {
    if missing_tools(&["qemu-img", "qemu-io"]) {
        return;
    }
    let dir = TempDir::new("q2-kill");
    for (name, compat) in [("v3", "compat=1.1"), ("v2", "compat=0.10")] {
        let (img, raw) = filled_pair(dir.path(), name, compat);
        let (d, sock) = serve(dir.path(), name, &["--discard=unmap", s(&img)]);
        qemu_io(&uri(&sock), "raw", WRITES);
        qemu_io(&uri(&sock), "raw", &["write -z 6M 128k"]);
        d.signal(libc::SIGKILL);
        drop(d);
        qemu_io(s(&raw), "raw", WRITES);
        qemu_io(s(&raw), "raw", &["write -z 6M 128k"]);
        let out = run_with_timeout(Command::new("qemu-img").args(["check", s(&img)]), T);
        assert!(!text(&out).contains("ERROR"), "{}", text(&out));
        // Reopened (and repaired if dirty) by the server, then closed cleanly.
        let (d, sock) = serve(dir.path(), &format!("{name}-again"), &["-e", "2", s(&img)]);
        compare(&uri(&sock), "raw", s(&raw), "raw");
        stop(d);
        check_clean(&img);
        compare(s(&img), "qcow2", s(&raw), "raw");
    }
}

#[test]
fn dirty_image_with_stale_refcounts_is_repaired_at_open() {
    if missing_tools(&["qemu-img", "qemu-io"]) {
        return;
    }
    let dir = TempDir::new("q2-dirty");
    let (img, raw) = filled_pair(dir.path(), "dirty", "compat=1.1");
    // Forget every refcount but the header's and mark the image dirty, as
    // lazy refcounts could leave it.
    let bytes = std::fs::read(&img).expect("read");
    let rt = u64::from_be_bytes(bytes[48..56].try_into().expect("8 bytes"));
    let block = u64::from_be_bytes(bytes[rt as usize..rt as usize + 8].try_into().expect("8"));
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&img)
        .expect("open");
    use std::os::unix::fs::FileExt;
    f.write_all_at(&[0u8; 64], block + 2).expect("zap");
    f.write_all_at(&1u64.to_be_bytes(), 72).expect("dirty");
    drop(f);
    let (d, sock) = serve(dir.path(), "dirty", &[s(&img)]);
    qemu_io(&uri(&sock), "raw", &["write -P 0x99 10M 1M"]);
    stop(d);
    qemu_io(s(&raw), "raw", &["write -P 0x99 10M 1M"]);
    check_clean(&img);
    compare(s(&img), "qcow2", s(&raw), "raw");
}

#[test]
fn snapshot_overlay_and_forced_raw_leave_a_qcow2_image_untouched() {
    if missing_tools(&["qemu-img", "qemu-io"]) {
        return;
    }
    let dir = TempDir::new("q2-s");
    let (img, raw) = filled_pair(dir.path(), "ovl", "compat=1.1");
    let before = sha(&img);
    let (d, sock) = serve(dir.path(), "ovl", &["-s", s(&img)]);
    qemu_io(
        &uri(&sock),
        "raw",
        &[
            "write -P 0xee 1M 3M",
            "read -P 0xee 1M 3M",
            "read -P 0x11 0 1M",
        ],
    );
    drop(d);
    assert_eq!(sha(&img), before);
    // -f raw exports the container's bytes as they are.
    let (d, sock) = serve(dir.path(), "forced", &["-r", "-f", "raw", s(&img)]);
    compare(&uri(&sock), "raw", s(&img), "raw");
    drop(d);
    let _ = raw;
}

/// Writes bytes into a file at an offset.
fn poke(path: &Path, offset: u64, bytes: &[u8]) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .expect("open");
    f.write_all_at(bytes, offset).expect("poke");
}

fn be64_at(bytes: &[u8], at: usize) -> u64 {
    u64::from_be_bytes(bytes[at..at + 8].try_into().expect("8 bytes"))
}

fn refused_at_open(img: &Path, needle: &str) {
    let out = run_with_timeout(
        Command::new(toolbox()).args(["nbd", "-k", "/tmp/never-q2-bad.sock", s(img)]),
        T,
    );
    let t = text(&out);
    assert_eq!(out.status.code(), Some(1), "{t}");
    assert!(
        t.contains(needle) && t.contains(s(img)),
        "want '{needle}': {t}"
    );
    assert!(!t.contains("panicked"), "{t}");
}

#[test]
fn corrupted_images_fail_with_a_clear_error_or_eio() {
    if missing_tools(&["qemu-img", "qemu-io"]) {
        return;
    }
    let dir = TempDir::new("q2-bad");
    let make = |name: &str, options: &str| {
        let img = dir.path().join(name);
        qemu_img(&["create", "-q", "-f", "qcow2", "-o", options, s(&img), "64M"]);
        qemu_io(
            s(&img),
            "qcow2",
            &["write -P 0x11 0 128k", "write -P 0x22 32M 64k"],
        );
        img
    };
    // Unknown incompatible feature bit.
    let img = make("incompat.qcow2", "compat=1.1");
    poke(&img, 72, &(1u64 << 13).to_be_bytes());
    refused_at_open(&img, "bit 13");
    // Truncated L1 table: the header says more entries than the file holds.
    let img = make("l1.qcow2", "compat=1.1");
    poke(&img, 36, &0x0001_0000u32.to_be_bytes());
    refused_at_open(&img, "L1 table");
    // Absurd refcount table size.
    let img = make("rt.qcow2", "compat=1.1");
    poke(&img, 56, &u32::MAX.to_be_bytes());
    refused_at_open(&img, "refcount table");
    // Corrupt bit.
    let img = make("corrupt.qcow2", "compat=1.1");
    poke(&img, 72, &2u64.to_be_bytes());
    refused_at_open(&img, "corrupt");
    // Refcount overflow: two guest clusters share a host cluster in an image
    // with 1-bit refcounts, and the dirty bit asks for a recount.
    let img = make("overflow.qcow2", "compat=1.1,refcount_bits=1");
    let bytes = std::fs::read(&img).expect("read");
    let l1 = be64_at(&bytes, 40) as usize;
    let l2 = (be64_at(&bytes, l1) & 0x00ff_ffff_ffff_fe00) as usize;
    let first = be64_at(&bytes, l2);
    poke(&img, l2 as u64 + 8 * 10, &first.to_be_bytes());
    poke(&img, 72, &1u64.to_be_bytes());
    refused_at_open(&img, "refcount overflow");

    // An L2 entry past the end of the file: EIO for that cluster only.
    let img = make("l2eof.qcow2", "compat=1.1");
    let bytes = std::fs::read(&img).expect("read");
    let l1 = be64_at(&bytes, 40) as usize;
    let l2 = (be64_at(&bytes, l1) & 0x00ff_ffff_ffff_fe00) as usize;
    poke(
        &img,
        l2 as u64 + 8,
        &((1u64 << 63) | (1u64 << 40)).to_be_bytes(),
    );
    let (_d, sock) = serve(dir.path(), "l2eof", &[s(&img)]);
    let out = run_with_timeout(
        Command::new("qemu-io").args(["-f", "raw", "-c", "read 64k 4k", &uri(&sock)]),
        T,
    );
    assert!(text(&out).contains("Input/output error"), "{}", text(&out));
    // The rest of the image still reads, and the server is still there.
    qemu_io(
        &uri(&sock),
        "raw",
        &["read -P 0x11 0 64k", "read -P 0x22 32M 64k"],
    );
    let out = run_with_timeout(
        Command::new("qemu-io").args(["-f", "raw", "-c", "write -P 1 64k 4k", &uri(&sock)]),
        T,
    );
    assert!(text(&out).contains("Input/output error"), "{}", text(&out));

    // A data cluster said to live in the L1 table: a write there is
    // refused rather than clobbering the metadata.
    let img = make("overlap.qcow2", "compat=1.1");
    let bytes = std::fs::read(&img).expect("read");
    let l1 = be64_at(&bytes, 40);
    let l2 = be64_at(&bytes, l1 as usize) & 0x00ff_ffff_ffff_fe00;
    poke(&img, l2 + 8 * 3, &((1u64 << 63) | l1).to_be_bytes());
    let l1_before = bytes[l1 as usize..l1 as usize + 512].to_vec();
    let (d, sock) = serve(dir.path(), "overlap", &[s(&img)]);
    let out = run_with_timeout(
        Command::new("qemu-io").args(["-f", "raw", "-c", "write -P 9 192k 4k", &uri(&sock)]),
        T,
    );
    assert!(text(&out).contains("Input/output error"), "{}", text(&out));
    drop(d);
    let after = std::fs::read(&img).expect("read");
    assert_eq!(&after[l1 as usize..l1 as usize + 512], &l1_before[..]);
}

#[test]
fn backing_loops_are_refused_and_unnamed_formats_probed() {
    if missing_tools(&["qemu-img", "qemu-io"]) {
        return;
    }
    let dir = TempDir::new("q2-probe");
    let a = dir.path().join("a.qcow2");
    let b = dir.path().join("b.qcow2");
    qemu_img(&["create", "-q", "-f", "qcow2", s(&a), "1M"]);
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-b",
        "a.qcow2",
        "-F",
        "qcow2",
        s(&b),
    ]);
    qemu_img(&["rebase", "-u", "-b", "b.qcow2", "-F", "qcow2", s(&a)]);
    refused_at_open(&b, "backing chain");

    // Without a backing format extension the backing file is probed.
    let base = dir.path().join("base.raw");
    let top = dir.path().join("top.qcow2");
    qemu_img(&["create", "-q", "-f", "raw", s(&base), "2M"]);
    qemu_io(s(&base), "raw", &["write -P 0x3c 0 2M"]);
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-b",
        "base.raw",
        "-F",
        "raw",
        s(&top),
    ]);
    qemu_io(s(&top), "qcow2", &["write -P 0x3d 64k 64k"]);
    let expected = dir.path().join("expected.raw");
    qemu_img(&["convert", "-O", "raw", s(&top), s(&expected)]);
    let bytes = std::fs::read(&top).expect("read");
    let ext = bytes
        .windows(4)
        .position(|w| w == [0xe2, 0x79, 0x2a, 0xca])
        .expect("backing format extension");
    poke(&top, ext as u64, &[0x12, 0x34, 0x56, 0x78]);
    let (_d, sock) = serve(dir.path(), "probe", &["-r", s(&top)]);
    compare(&uri(&sock), "raw", s(&expected), "raw");
}

#[test]
fn unsupported_features_are_refused_by_name() {
    if missing_tools(&["qemu-img"]) {
        return;
    }
    let dir = TempDir::new("q2-unsup");
    let cases = [
        ("zstd.qcow2", "compression_type=zstd", "zstd compression"),
        ("extl2.qcow2", "extended_l2=on", "extended L2"),
        (
            "datafile.qcow2",
            "data_file=datafile.raw",
            "external data file",
        ),
    ];
    for (name, options, needle) in cases {
        let img = dir.path().join(name);
        ok(Command::new("qemu-img")
            .current_dir(dir.path())
            .args(["create", "-q", "-f", "qcow2", "-o", options, name, "1M"]));
        refused_at_open(&img, needle);
    }
}
