//! timesyncd's NTS (RFC 8915) against chronyd as the NTS server, on
//! loopback ports that are not 123: key establishment over TLS with a CA
//! and certificate this test makes with the openssl CLI, authenticated
//! NTP, a proxy that tampers with replies, and a server the client does
//! not trust. chronyd runs with -x and the client with -Q or --no-adjust:
//! the machine's clock is never changed.

mod common;

use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use common::timesyncd::{
    daemon, dry_run, empty_conf, make_pki, nts_client_conf, nts_state, parse_line, status, text,
    wait_for_nak_and_rekey, wait_for_status, T,
};
use common::{
    free_port, require_peer, run_with_timeout, toolbox, wait_for_tcp_port, wait_until, Daemon,
    TempDir,
};

/// chronyd serving NTS-KE on `ke_port` and NTP on 127.0.0.1:`ntp_port`,
/// telling clients to send NTP to `ntp_host` (a proxy, or itself).
struct NtsServer {
    dir: TempDir,
    ke_port: u16,
    ntp_port: u16,
    chronyd: Option<Daemon>,
}

fn spawn_chronyd(dir: &Path) -> Daemon {
    let mut cmd = Command::new("chronyd");
    cmd.args(["-x", "-d", "-f"]).arg(dir.join("chrony.conf"));
    // As root, chronyd would switch to its own user, who cannot read the
    // test's key.
    // SAFETY: plain getter.
    if unsafe { libc::geteuid() } == 0 {
        cmd.args(["-u", "root"]);
    }
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("chronyd.log"))
        .unwrap();
    cmd.stdout(Stdio::null()).stderr(log);
    Daemon::spawn(cmd)
}

impl NtsServer {
    fn start(name: &str, ntp_host: Option<&str>) -> NtsServer {
        let dir = TempDir::new(name);
        make_pki(dir.path(), "server");
        let ke_port = free_port();
        let ntp_port = UdpSocket::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let d = dir.path().display();
        let mut conf = format!(
            "port {ntp_port}\nbindaddress 127.0.0.1\ncmdport 0\nntsport {ke_port}\n\
             ntsserverkey {d}/server.key\nntsservercert {d}/server.crt\nntsdumpdir {d}\n\
             pidfile {d}/chronyd.pid\ndriftfile {d}/drift\nlocal stratum 8\nallow 127.0.0.1\n"
        );
        if let Some(host) = ntp_host {
            conf.push_str(&format!("ntsntpserver {host}\n"));
        }
        std::fs::write(dir.path().join("chrony.conf"), conf).unwrap();
        let chronyd = spawn_chronyd(dir.path());
        wait_for_tcp_port(ke_port, Duration::from_secs(20));
        NtsServer {
            dir,
            ke_port,
            ntp_port,
            chronyd: Some(chronyd),
        }
    }

    /// Stops chronyd, deletes its saved server keys and starts it again on
    /// the same ports: every cookie a client holds is now worthless.
    fn restart_with_new_keys(&mut self) {
        drop(self.chronyd.take());
        for entry in std::fs::read_dir(self.dir.path()).unwrap().flatten() {
            if entry.file_name().to_string_lossy().starts_with("ntskeys") {
                std::fs::remove_file(entry.path()).unwrap();
            }
        }
        self.chronyd = Some(spawn_chronyd(self.dir.path()));
        wait_for_tcp_port(self.ke_port, Duration::from_secs(20));
    }

    fn ca(&self) -> PathBuf {
        self.dir.path().join("server-ca.crt")
    }

    fn ke(&self) -> String {
        format!("localhost:{}", self.ke_port)
    }
}

/// Relays NTP between `listen` and `upstream`, flipping one bit in the
/// last byte of each reply (inside the NTS authenticator's ciphertext).
struct TamperingProxy {
    replies: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl TamperingProxy {
    fn start(listen: SocketAddr, upstream: SocketAddr) -> TamperingProxy {
        let front = UdpSocket::bind(listen).unwrap();
        let back = UdpSocket::bind("127.0.0.1:0").unwrap();
        front
            .set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        back.set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        let replies = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (r, s) = (replies.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let mut buf = [0u8; 2048];
            while !s.load(Ordering::Relaxed) {
                let Ok((n, client)) = front.recv_from(&mut buf) else {
                    continue;
                };
                if back.send_to(&buf[..n], upstream).is_err() {
                    continue;
                }
                let Ok((m, _)) = back.recv_from(&mut buf) else {
                    continue;
                };
                if m > 48 {
                    buf[m - 1] ^= 0x01;
                }
                let _ = front.send_to(&buf[..m], client);
                r.fetch_add(1, Ordering::Relaxed);
            }
        });
        TamperingProxy {
            replies,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for TamperingProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[test]
fn dry_run_with_nts_against_chronyd() {
    if !require_peer("chronyd") || !require_peer("openssl") {
        return;
    }
    let server = NtsServer::start("nts-dry", None);
    let ca = server.ca();
    let ca = ca.to_str().unwrap();
    let out = dry_run(
        server.dir.path(),
        &["-s", &server.ke(), "--nts", "--nts-ca", ca],
    );
    let (addr, stratum, offset, delay) = parse_line(&out);
    // Key establishment sent the client to chronyd's NTP port.
    assert_eq!(addr, format!("127.0.0.1:{}", server.ntp_port));
    assert_eq!(stratum, 8);
    assert!(offset.abs() < 0.001, "offset {offset}");
    assert!(delay < 0.01, "delay {delay}");
    let stderr = text(&out.stderr);
    assert!(stderr.contains("NTS keys established"), "{stderr}");
}

#[test]
fn daemon_shows_the_nts_source_authenticated() {
    if !require_peer("chronyd") || !require_peer("openssl") {
        return;
    }
    let server = NtsServer::start("nts-daemon", None);
    let dir = server.dir.path();
    let conf = nts_client_conf(dir, &server.ke(), &server.ca(), "");
    let _daemon = daemon(dir, &conf, &[]);
    let shown = wait_for_status(
        dir,
        &["Synchronized: yes", "NTS authenticated", "0 rejected"],
        Duration::from_secs(30),
    );
    assert!(shown.contains(&server.ke()), "{shown}");
    let (state, cookies, rejected) = nts_state(dir);
    assert_eq!((state.as_str(), rejected), ("authenticated", 0));
    // Every reply brought a cookie back for the one spent.
    assert!(cookies >= 7, "{cookies} cookies left");
}

#[test]
fn a_server_that_lost_its_keys_naks_and_the_client_rekeys() {
    if !require_peer("chronyd") || !require_peer("openssl") {
        return;
    }
    let mut server = NtsServer::start("nts-nak", None);
    let dir = server.dir.path().to_path_buf();
    let conf = nts_client_conf(&dir, &server.ke(), &server.ca(), "PollIntervalMinSec=16\n");
    let _daemon = daemon(&dir, &conf, &[]);
    wait_for_status(&dir, &["NTS authenticated"], Duration::from_secs(30));
    server.restart_with_new_keys();
    // The next poll (16 s on) is answered with a NAK; new keys follow.
    let chronyd_log = server.dir.path().join("chronyd.log");
    wait_for_nak_and_rekey(&dir, || {
        std::fs::read_to_string(&chronyd_log).unwrap_or_default()
    });
}

#[test]
fn tampered_replies_are_rejected_and_counted() {
    if !require_peer("chronyd") || !require_peer("openssl") {
        return;
    }
    // chronyd sends clients to 127.0.0.2 (its port), where the proxy listens.
    let server = NtsServer::start("nts-tamper", Some("127.0.0.2"));
    let listen: SocketAddr = format!("127.0.0.2:{}", server.ntp_port).parse().unwrap();
    let upstream: SocketAddr = format!("127.0.0.1:{}", server.ntp_port).parse().unwrap();
    let proxy = TamperingProxy::start(listen, upstream);
    let dir = server.dir.path();
    let conf = empty_conf(dir);
    let ca = server.ca();
    let _daemon = daemon(
        dir,
        &conf,
        &[
            "-s",
            &server.ke(),
            "--nts",
            "--nts-ca",
            ca.to_str().unwrap(),
        ],
    );
    let counted = wait_until(Duration::from_secs(30), || nts_state(dir).2 >= 2);
    let shown = status(dir);
    assert!(
        counted.is_some(),
        "rejections not counted ({} replies relayed):\n{shown}\nlog:\n{}",
        proxy.replies.load(Ordering::Relaxed),
        std::fs::read_to_string(dir.join("log")).unwrap_or_default()
    );
    assert!(shown.contains("NTS not authenticated"), "{shown}");
    assert!(shown.contains("Synchronized: no"), "{shown}");
    let log = std::fs::read_to_string(dir.join("log")).unwrap_or_default();
    assert!(log.contains("NTS authentication failed"), "{log}");
}

#[test]
fn an_untrusted_server_is_refused_with_one_line() {
    if !require_peer("chronyd") || !require_peer("openssl") {
        return;
    }
    let server = NtsServer::start("nts-untrusted", None);
    // Another CA than the one that signed chronyd's certificate.
    make_pki(server.dir.path(), "other");
    let other = server.dir.path().join("other-ca.crt");
    let out = run_with_timeout(
        Command::new(toolbox())
            .args(["timesyncd", "-Q", "-c"])
            .arg(empty_conf(server.dir.path()))
            .args(["-s", &server.ke(), "--nts", "--nts-ca"])
            .arg(&other)
            .env("LOGGING", "stderr"),
        T,
    );
    assert!(!out.status.success());
    assert!(out.stdout.is_empty(), "{}", text(&out.stdout));
    let stderr = text(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    let last = stderr.lines().last().unwrap_or_default();
    assert!(
        last.contains(&format!(
            "NTS-KE with localhost (127.0.0.1:{})",
            server.ke_port
        )) && last.contains("invalid peer certificate"),
        "{stderr}"
    );
}

#[test]
fn a_missing_ca_file_is_one_clear_line() {
    let dir = TempDir::new("nts-noca");
    let out = run_with_timeout(
        Command::new(toolbox())
            .args(["timesyncd", "-Q", "-c"])
            .arg(empty_conf(dir.path()))
            .args([
                "-s",
                "localhost",
                "--nts",
                "--nts-ca",
                "/nonexistent/ca.pem",
            ])
            .env("LOGGING", "stderr"),
        T,
    );
    assert!(!out.status.success());
    let stderr = text(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("/nonexistent/ca.pem"), "{stderr}");
}
