//! 50 clients at once against one server for 30 s, half of them hostile
//! (garbage, slow-loris handshakes, disconnects mid-payload, oversized
//! options): the good half always reads correct data, and the server's
//! memory and descriptors stay bounded.

mod common;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::nbd::RawClient;
use common::{toolbox, Daemon, TempDir};

const CLIENTS: usize = 50;
const RUN_FOR: Duration = Duration::from_secs(30);
const IMAGE: usize = 4 << 20;

fn pattern(i: usize) -> u8 {
    ((i / 512) as u8) ^ (i as u8).rotate_left(3)
}

fn fd_count(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

fn rss_kib(pid: i32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0)
}

/// A cheap xorshift so each client does something different.
fn next(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

fn good_client(sock: &Path, stop: &AtomicBool, seed: u64, verified: &AtomicU64) {
    let mut rng = seed | 1;
    let mut client = RawClient::connect(sock);
    client.go("");
    while !stop.load(Ordering::Relaxed) {
        let len = 512 * (1 + (next(&mut rng) % 16) as usize);
        let offset = (next(&mut rng) as usize % (IMAGE - len)) & !511;
        let expected: Vec<u8> = (offset..offset + len).map(pattern).collect();
        client.read_check(offset as u64, len, &expected);
        verified.fetch_add(1, Ordering::Relaxed);
    }
    client.disconnect();
}

fn hostile_client(sock: &Path, stop: &AtomicBool, seed: u64) {
    let mut rng = seed | 1;
    while !stop.load(Ordering::Relaxed) {
        let Ok(mut s) = UnixStream::connect(sock) else {
            std::thread::sleep(Duration::from_millis(50));
            continue;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
        let _ = s.set_write_timeout(Some(Duration::from_secs(5)));
        let mut greet = [0u8; 18];
        if s.read_exact(&mut greet).is_err() {
            continue;
        }
        match next(&mut rng) % 4 {
            0 => {
                // Garbage instead of a handshake.
                let junk: Vec<u8> = (0..next(&mut rng) % 4096)
                    .map(|_| next(&mut rng) as u8)
                    .collect();
                let _ = s.write_all(&junk);
            }
            1 => {
                // Slow loris: a byte now and then until the handshake limit hits.
                for b in [0u8, 0, 0, 3, b'I', b'H', b'A', b'V'] {
                    if stop.load(Ordering::Relaxed) || s.write_all(&[b]).is_err() {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(400));
                }
            }
            2 => {
                // A write whose payload never fully arrives.
                let mut c = RawClient { sock: s, cookie: 0 };
                let _ = c.sock.write_all(&3u32.to_be_bytes());
                let mut go = b"IHAVEOPT".to_vec();
                go.extend_from_slice(&7u32.to_be_bytes());
                go.extend_from_slice(&6u32.to_be_bytes());
                go.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
                let _ = c.sock.write_all(&go);
                let mut buf = [0u8; 4096];
                let _ = c.sock.read(&mut buf);
                c.request(1, 0, 0, 1 << 20, None);
                let _ = c
                    .sock
                    .write_all(&vec![0x55; (next(&mut rng) % 65536) as usize]);
            }
            _ => {
                // An option claiming 4 GiB of data.
                let _ = s.write_all(&3u32.to_be_bytes());
                let _ = s.write_all(b"IHAVEOPT\0\0\0\x06\xff\xff\xff\xf0");
                let _ = s.write_all(&[0u8; 1024]);
            }
        }
    }
}

#[test]
fn fifty_clients_half_hostile_for_thirty_seconds() {
    let dir = TempDir::new("nbd-stress");
    let img: PathBuf = dir.path().join("disk.img");
    std::fs::write(&img, (0..IMAGE).map(pattern).collect::<Vec<u8>>()).unwrap();
    let sock = dir.path().join("nbd.sock");
    let mut cmd = Command::new(toolbox());
    cmd.args([
        "nbd",
        "-t",
        "-r",
        "-e",
        "100",
        "--handshake-limit",
        "2",
        "-k",
    ])
    .arg(&sock)
    .arg(&img);
    let server = Daemon::spawn(cmd);
    server.wait_for_unix_socket(&sock, Duration::from_secs(10));
    let pid = server.pid();
    std::thread::sleep(Duration::from_millis(200));
    let fds_before = fd_count(pid);

    let stop = Arc::new(AtomicBool::new(false));
    let verified = Arc::new(AtomicU64::new(0));
    let mut threads = Vec::new();
    for i in 0..CLIENTS {
        let (sock, stop, verified) = (sock.clone(), stop.clone(), verified.clone());
        threads.push(std::thread::spawn(move || {
            if i % 2 == 0 {
                good_client(&sock, &stop, 0x9e37_79b9 * (i as u64 + 1), &verified);
            } else {
                hostile_client(&sock, &stop, 0x85eb_ca6b * (i as u64 + 1));
            }
        }));
    }
    let started = Instant::now();
    let mut peak_rss = 0;
    let mut peak_fds = 0;
    while started.elapsed() < RUN_FOR {
        std::thread::sleep(Duration::from_millis(500));
        peak_rss = peak_rss.max(rss_kib(pid));
        peak_fds = peak_fds.max(fd_count(pid));
    }
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().expect("a good client saw wrong data or an error");
    }
    // Everything the hostile half opened is closed again.
    let settled = common::wait_until(Duration::from_secs(10), || fd_count(pid) <= fds_before + 2);
    assert!(
        settled.is_some(),
        "fds: {fds_before} before, {} after, peak {peak_fds}",
        fd_count(pid)
    );
    assert!(peak_fds <= fds_before + 110, "peak fds {peak_fds}");
    assert!(peak_rss < 128 * 1024, "peak RSS {peak_rss} KiB");
    let reads = verified.load(Ordering::Relaxed);
    assert!(reads > 1000, "only {reads} verified reads");
    eprintln!("stress: {reads} verified reads, peak RSS {peak_rss} KiB, peak fds {peak_fds}");
}
