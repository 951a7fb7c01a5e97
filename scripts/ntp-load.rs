//! NTP load generator for scripts/bench-ntp-server.sh (std only; built
//! there with `rustc -O`). Offers client requests to one server at a fixed
//! rate from several threads, each spreading its requests over several
//! sockets (so SO_REUSEPORT servers see many flows), and measures how many
//! replies come back and how long each took: from just before the request
//! is sent to the kernel's receive stamp on the reply (SO_TIMESTAMPNS), so
//! this program's own scheduling does not count.
//!
//! usage: ntp-load ADDR:PORT RATE SECONDS [THREADS] [SOCKETS_PER_THREAD]
//! prints: offered=N sent=N replies=N replies_per_s=X p50_us=X p99_us=X lost_pct=X
//!
//! Bounded: at most RATE*SECONDS requests (and no more than 2 million),
//! for SECONDS plus half a second of draining. Loopback only: the address
//! must be 127.x.x.x or ::1.

use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

const MAX_REQUESTS: u64 = 2_000_000;
const DRAIN: Duration = Duration::from_millis(500);

#[repr(C)]
struct PollFd {
    fd: i32,
    events: i16,
    revents: i16,
}

#[repr(C)]
struct Timespec {
    sec: i64,
    nsec: i64,
}

#[repr(C)]
struct Iovec {
    base: *mut u8,
    len: usize,
}

#[repr(C)]
struct Msghdr {
    name: *mut u8,
    namelen: u32,
    iov: *mut Iovec,
    iovlen: usize,
    control: *mut u8,
    controllen: usize,
    flags: i32,
}

#[repr(C)]
struct Cmsghdr {
    len: usize,
    level: i32,
    kind: i32,
}

extern "C" {
    fn ppoll(fds: *mut PollFd, n: u64, timeout: *const Timespec, sigmask: *const u8) -> i32;
    fn recvmsg(fd: i32, msg: *mut Msghdr, flags: i32) -> isize;
    fn setsockopt(fd: i32, level: i32, name: i32, value: *const i32, len: u32) -> i32;
}

const POLLIN: i16 = 1;
const SOL_SOCKET: i32 = 1;
const SO_TIMESTAMPNS: i32 = 35;
const MSG_DONTWAIT: i32 = 0x40;

/// Nanoseconds since the Unix epoch (CLOCK_REALTIME, as the kernel stamps).
fn realtime_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// One datagram and the kernel's receive time for it: the response time
/// then ends when the reply reached this host, not when this thread got
/// round to it.
fn recv_stamped(fd: i32, buf: &mut [u8]) -> Option<(usize, Option<u64>)> {
    let mut control = [0u64; 8];
    let mut iov = Iovec {
        base: buf.as_mut_ptr(),
        len: buf.len(),
    };
    let mut msg = Msghdr {
        name: std::ptr::null_mut(),
        namelen: 0,
        iov: &mut iov,
        iovlen: 1,
        control: control.as_mut_ptr().cast(),
        controllen: std::mem::size_of_val(&control),
        flags: 0,
    };
    // SAFETY: every pointer refers to a live buffer of the stated length.
    let n = unsafe { recvmsg(fd, &mut msg, MSG_DONTWAIT) };
    if n < 0 {
        return None;
    }
    let mut stamp = None;
    let hdr = std::mem::size_of::<Cmsghdr>();
    if msg.controllen >= hdr + 16 {
        // SAFETY: the kernel wrote at least one cmsghdr and its data.
        let c: Cmsghdr = unsafe { std::ptr::read_unaligned(control.as_ptr().cast()) };
        if c.level == SOL_SOCKET && c.kind == SO_TIMESTAMPNS && c.len >= hdr + 16 {
            let data = control.as_ptr().cast::<u8>().wrapping_add(hdr);
            // SAFETY: a struct timespec follows the header.
            let (sec, nsec): (i64, i64) = unsafe {
                (
                    std::ptr::read_unaligned(data.cast()),
                    std::ptr::read_unaligned(data.wrapping_add(8).cast()),
                )
            };
            stamp = Some(sec as u64 * 1_000_000_000 + nsec as u64);
        }
    }
    Some((n as usize, stamp))
}

struct Report {
    sent: u64,
    latencies_ns: Vec<u32>,
}

fn request(cookie: u64) -> [u8; 48] {
    let mut b = [0u8; 48];
    b[0] = (4 << 3) | 3; // version 4, client
    b[2] = 6;
    b[40..48].copy_from_slice(&cookie.to_be_bytes());
    b
}

fn worker(target: SocketAddr, id: u64, rate: f64, secs: f64, sockets: usize) -> Report {
    let socks: Vec<UdpSocket> = (0..sockets)
        .map(|_| {
            let local = if target.is_ipv4() { "127.0.0.1:0" } else { "[::1]:0" };
            let s = UdpSocket::bind(local).expect("bind");
            s.connect(target).expect("connect");
            s.set_nonblocking(true).expect("nonblocking");
            let on: i32 = 1;
            // SAFETY: an int option on our socket.
            unsafe { setsockopt(s.as_raw_fd(), SOL_SOCKET, SO_TIMESTAMPNS, &on, 4) };
            s
        })
        .collect();
    let total = ((rate * secs) as u64).min(MAX_REQUESTS);
    let mut sent_at = vec![0u64; total as usize];
    let mut latencies = Vec::with_capacity(total as usize);
    let start = Instant::now();
    let mut sent: u64 = 0;
    let mut buf = [0u8; 128];
    let mut fds: Vec<PollFd> = socks
        .iter()
        .map(|s| PollFd {
            fd: s.as_raw_fd(),
            events: POLLIN,
            revents: 0,
        })
        .collect();
    let end = Duration::from_secs_f64(secs);
    loop {
        let elapsed = start.elapsed();
        if elapsed >= end + DRAIN || (sent == total && latencies.len() as u64 == total) {
            break;
        }
        if elapsed < end {
            let due = ((elapsed.as_secs_f64() * rate) as u64 + 1).min(total);
            // Never more than a small burst at once, so a stalled loop
            // does not turn into a flood.
            let mut burst = 0;
            while sent < due && burst < 64 {
                let cookie = (id << 48) | sent;
                sent_at[sent as usize] = realtime_ns().max(1);
                let s = &socks[(sent as usize) % socks.len()];
                let _ = s.send(&request(cookie));
                sent += 1;
                burst += 1;
            }
        }
        // Wait for replies until the next request is due.
        let next = Duration::from_secs_f64((sent as f64 + 1.0) / rate);
        let wait = next
            .saturating_sub(start.elapsed())
            .min(Duration::from_millis(1));
        let ts = Timespec {
            sec: 0,
            nsec: wait.as_nanos() as i64,
        };
        for f in fds.iter_mut() {
            f.revents = 0;
        }
        // SAFETY: valid pollfds and timespec for the duration of the call.
        let n = unsafe {
            ppoll(
                fds.as_mut_ptr(),
                fds.len() as u64,
                &ts,
                std::ptr::null(),
            )
        };
        if n <= 0 {
            continue;
        }
        for (i, f) in fds.iter().enumerate() {
            if f.revents == 0 {
                continue;
            }
            while let Some((len, stamp)) = recv_stamped(fds[i].fd, &mut buf) {
                if len < 48 {
                    continue;
                }
                let now = stamp.unwrap_or_else(realtime_ns);
                let mut origin = [0u8; 8];
                origin.copy_from_slice(&buf[24..32]);
                let cookie = u64::from_be_bytes(origin);
                if cookie >> 48 != id {
                    continue;
                }
                let seq = (cookie & 0xffff_ffff_ffff) as usize;
                if let Some(at) = sent_at.get_mut(seq) {
                    if *at != 0 {
                        latencies.push((now.saturating_sub(*at)).min(u32::MAX as u64) as u32);
                        *at = 0;
                    }
                }
            }
        }
    }
    Report {
        sent,
        latencies_ns: latencies,
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 4 {
        eprintln!("usage: ntp-load ADDR:PORT RATE SECONDS [THREADS] [SOCKETS_PER_THREAD]");
        std::process::exit(2);
    }
    let target: SocketAddr = args[1].parse().expect("ADDR:PORT");
    if !target.ip().is_loopback() {
        eprintln!("ntp-load: loopback addresses only");
        std::process::exit(2);
    }
    let rate: f64 = args[2].parse().expect("RATE");
    let secs: f64 = args[3].parse().expect("SECONDS");
    let threads: u64 = args.get(4).map(|t| t.parse().expect("THREADS")).unwrap_or(2);
    let sockets: usize = args.get(5).map(|t| t.parse().expect("SOCKETS")).unwrap_or(8);
    if !(rate > 0.0 && secs > 0.0 && secs <= 60.0 && threads >= 1 && threads <= 16) {
        eprintln!("ntp-load: RATE > 0, 0 < SECONDS <= 60, 1 <= THREADS <= 16");
        std::process::exit(2);
    }
    let handles: Vec<_> = (0..threads)
        .map(|id| {
            let per = rate / threads as f64;
            std::thread::spawn(move || worker(target, id + 1, per, secs, sockets))
        })
        .collect();
    let mut sent = 0;
    let mut lat: Vec<u32> = Vec::new();
    for h in handles {
        let r = h.join().expect("worker");
        sent += r.sent;
        lat.extend(r.latencies_ns);
    }
    lat.sort_unstable();
    let pct = |p: f64| -> f64 {
        if lat.is_empty() {
            return f64::NAN;
        }
        let i = ((lat.len() as f64 * p).ceil() as usize).clamp(1, lat.len()) - 1;
        lat[i] as f64 / 1000.0
    };
    let replies = lat.len() as u64;
    let lost = if sent == 0 {
        0.0
    } else {
        100.0 * (sent - replies) as f64 / sent as f64
    };
    println!(
        "offered={} sent={} replies={} replies_per_s={:.0} p50_us={:.1} p99_us={:.1} lost_pct={:.2}",
        (rate * secs) as u64,
        sent,
        replies,
        replies as f64 / secs,
        pct(0.50),
        pct(0.99),
        lost
    );
}
