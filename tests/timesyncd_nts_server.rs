//! timesyncd's server with NTS (RFC 8915) on loopback ports that are not
//! 123 or 4460: NTS-KE over TLS with a CA and certificate this test makes
//! with the openssl CLI, then authenticated NTP, for our own client and
//! for chronyd as the NTS client; a cookie the server never made gets an
//! NTS NAK, a restarted server (new master keys) NAKs the old cookies and
//! the client re-keys, and plain NTP clients are still served. Every
//! daemon runs with --no-adjust, chronyd with -Q: the clock is never
//! changed.

mod common;

use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::timesyncd::{
    daemon, dry_run, make_pki, nts_client_conf, nts_state, parse_line, text,
    wait_for_nak_and_rekey, wait_for_status, T,
};
use common::{
    free_port, require_peer, run_with_timeout, toolbox, wait_for_tcp_port, wait_until, Daemon,
    TempDir,
};

/// Our server: NTP on 127.0.0.1:`ntp_port`, NTS-KE on `ke_port`, its files
/// in `srv/` of the test's directory (the client's go in the directory).
struct NtsServer {
    dir: TempDir,
    ntp_port: u16,
    ke_port: u16,
    conf: PathBuf,
    daemon: Option<Daemon>,
}

impl NtsServer {
    fn start(name: &str, extra: &str) -> NtsServer {
        let dir = TempDir::new(name);
        make_pki(dir.path(), "server");
        let srv = dir.path().join("srv");
        std::fs::create_dir_all(&srv).unwrap();
        let ntp_port = UdpSocket::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let ke_port = free_port();
        let d = dir.path().display();
        let conf = srv.join("timesyncd.conf");
        std::fs::write(
            &conf,
            format!(
                "[Time]\nNTP=\nFallbackNTP=\n[Server]\nListen=127.0.0.1:{ntp_port}\n\
                 Allow=127.0.0.0/8\nLocalStratum=7\nNTSCertificate={d}/server.crt\n\
                 NTSKey={d}/server.key\nNTSPort={ke_port}\n{extra}"
            ),
        )
        .unwrap();
        let mut server = NtsServer {
            dir,
            ntp_port,
            ke_port,
            conf,
            daemon: None,
        };
        server.spawn();
        server
    }

    fn spawn(&mut self) {
        let srv = self.dir.path().join("srv");
        self.daemon = Some(daemon(&srv, &self.conf, &[]));
        wait_for_tcp_port(self.ke_port, Duration::from_secs(20));
    }

    /// Stops the server and starts it again on the same ports: new master
    /// keys, so every cookie a client holds is now worthless.
    fn restart(&mut self) {
        drop(self.daemon.take());
        self.spawn();
    }

    fn ca(&self) -> PathBuf {
        self.dir.path().join("server-ca.crt")
    }

    fn ke(&self) -> String {
        format!("localhost:{}", self.ke_port)
    }

    fn ntp(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.ntp_port))
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("srv/log")).unwrap_or_default()
    }
}

fn need_peers() -> bool {
    require_peer("openssl") && require_peer("chronyd")
}

/// Sends `request` from a socket of its own; the reply, if one comes.
fn exchange(to: SocketAddr, request: &[u8], wait: Duration) -> Option<Vec<u8>> {
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(wait)).unwrap();
    sock.send_to(request, to).unwrap();
    let mut buf = [0u8; 2048];
    let (n, _) = sock.recv_from(&mut buf).ok()?;
    Some(buf[..n].to_vec())
}

/// A client-mode NTPv4 header whose transmit timestamp is `xmt`.
fn header(xmt: u64) -> Vec<u8> {
    let mut h = vec![0u8; 48];
    h[0] = (4 << 3) | 3;
    h[2] = 6;
    h[40..48].copy_from_slice(&xmt.to_be_bytes());
    h
}

fn push_field(out: &mut Vec<u8>, kind: u16, body: &[u8]) {
    out.extend_from_slice(&kind.to_be_bytes());
    out.extend_from_slice(&(4 + body.len() as u16).to_be_bytes());
    out.extend_from_slice(body);
}

#[test]
fn our_client_dry_run_authenticates_our_server() {
    if !need_peers() {
        return;
    }
    let server = NtsServer::start("ntsd-dry", "");
    let ca = server.ca();
    let out = dry_run(
        server.dir.path(),
        &[
            "-s",
            &server.ke(),
            "--nts",
            "--nts-ca",
            ca.to_str().unwrap(),
        ],
    );
    let (addr, stratum, offset, delay) = parse_line(&out);
    // Port negotiation sent the client to our NTP port.
    assert_eq!(addr, server.ntp().to_string());
    assert_eq!(stratum, 7);
    assert!(offset.abs() < 0.001, "offset {offset}");
    assert!(delay < 0.01, "delay {delay}");
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("NTS keys established (8 cookies)"),
        "{stderr}"
    );
}

#[test]
fn our_client_daemon_shows_our_server_nts_authenticated() {
    if !need_peers() {
        return;
    }
    let server = NtsServer::start("ntsd-daemon", "");
    let dir = server.dir.path();
    let conf = nts_client_conf(dir, &server.ke(), &server.ca(), "");
    let _client = daemon(dir, &conf, &[]);
    wait_for_status(
        dir,
        &["Synchronized: yes", "NTS authenticated", "0 rejected"],
        Duration::from_secs(30),
    );
    let (state, cookies, rejected) = nts_state(dir);
    assert_eq!((state.as_str(), rejected), ("authenticated", 0));
    // Each reply brought a fresh cookie for the one spent.
    assert!(cookies >= 7, "{cookies} cookies left");
    assert!(
        server.log().contains("NTS-KE: keys established"),
        "{}",
        server.log()
    );
}

#[test]
fn chronyd_as_nts_client_measures_our_server() {
    if !need_peers() {
        return;
    }
    let server = NtsServer::start("ntsd-chrony", "");
    let dir = server.dir.path();
    let conf = dir.join("chrony-client.conf");
    // chrony's names: `nts` on the server line, `ntsport` for NTS-KE,
    // `ntstrustedcerts` for the CA. No fallback to plain NTP: without
    // NTS, chronyd -Q never gets a sample.
    std::fs::write(
        &conf,
        format!(
            "server 127.0.0.1 port {} nts ntsport {} iburst maxsamples 4 minpoll -4 maxpoll -4\n\
             ntstrustedcerts {}\npidfile {}/chronyd-q.pid\n",
            server.ntp_port,
            server.ke_port,
            server.ca().display(),
            dir.display()
        ),
    )
    .unwrap();
    let out = run_with_timeout(Command::new("chronyd").arg("-Q").arg("-f").arg(&conf), T);
    let all = format!("{}{}", text(&out.stdout), text(&out.stderr));
    let line = all
        .lines()
        .find(|l| l.contains("System clock wrong by"))
        .unwrap_or_else(|| panic!("chronyd -Q did not synchronise:\n{all}\n{}", server.log()));
    let words: Vec<&str> = line.split_whitespace().collect();
    let at = words.iter().position(|w| *w == "by").unwrap();
    let offset: f64 = words[at + 1].parse().unwrap();
    assert!(offset.abs() < 0.001, "chronyd -Q: offset {offset}");
    // The samples were NTS ones: key establishment happened.
    let logged = wait_until(Duration::from_secs(5), || {
        server.log().contains("NTS-KE: keys established")
    });
    assert!(logged.is_some(), "{}", server.log());
}

#[test]
fn a_cookie_we_never_made_gets_an_nts_nak() {
    if !require_peer("openssl") {
        return;
    }
    let server = NtsServer::start("ntsd-nak", "");
    let uid = [0x42u8; 32];
    for cookie_len in [100, 64] {
        let mut req = header(0x1122_3344_5566_7788);
        push_field(&mut req, 0x0104, &uid);
        push_field(&mut req, 0x0204, &vec![0x5a; cookie_len]);
        push_field(&mut req, 0x0304, &vec![0; cookie_len]);
        // Authenticator: 16-byte nonce, 16 bytes that authenticate nothing.
        let mut auth = vec![0, 16, 0, 16];
        auth.extend_from_slice(&[7; 32]);
        push_field(&mut req, 0x0404, &auth);
        let reply = exchange(server.ntp(), &req, Duration::from_secs(5))
            .unwrap_or_else(|| panic!("no NAK; log:\n{}", server.log()));
        assert_eq!(reply.len(), 48 + 36, "the header and the identifier only");
        assert!(reply.len() < req.len(), "no amplification");
        assert_eq!(reply[0] & 7, 4, "server mode");
        assert_eq!(reply[1], 0, "stratum 0: a kiss");
        assert_eq!(&reply[12..16], b"NTSN");
        assert_eq!(&reply[24..32], &req[40..48], "origin: our transmit");
        assert_eq!(&reply[48..52], &[0x01, 0x04, 0, 36]);
        assert_eq!(&reply[52..84], &uid);
    }
    // An NTS-looking request without an identifier cannot be NAKed: silence.
    let mut req = header(1);
    push_field(&mut req, 0x0204, &[0x5a; 100]);
    push_field(&mut req, 0x0404, &[0, 16, 0, 16, 7, 7, 7, 7]);
    assert!(exchange(server.ntp(), &req, Duration::from_millis(700)).is_none());
    // Still serving after all that.
    assert!(exchange(server.ntp(), &header(2), Duration::from_secs(5)).is_some());
}

#[test]
fn a_restarted_server_naks_old_cookies_and_the_client_rekeys() {
    if !need_peers() {
        return;
    }
    let mut server = NtsServer::start("ntsd-rekey", "");
    let dir = server.dir.path().to_path_buf();
    let conf = nts_client_conf(&dir, &server.ke(), &server.ca(), "PollIntervalMinSec=16\n");
    let _client = daemon(&dir, &conf, &[]);
    wait_for_status(&dir, &["NTS authenticated"], Duration::from_secs(30));
    server.restart();
    // The next poll (16 s on) gets a NAK; new keys follow.
    wait_for_nak_and_rekey(&dir, || server.log());
}

#[test]
fn plain_ntp_clients_are_still_served_plainly() {
    if !require_peer("openssl") {
        return;
    }
    let server = NtsServer::start("ntsd-plain", "");
    let reply = exchange(server.ntp(), &header(0xabcd), Duration::from_secs(5))
        .unwrap_or_else(|| panic!("no reply; log:\n{}", server.log()));
    assert_eq!(reply.len(), 48);
    assert_eq!((reply[0] & 7, reply[1]), (4, 7));
    // A legacy MAC (key id and digest) after the header: the header is
    // answered, as ever.
    let mut mac = header(0xabce);
    mac.extend_from_slice(&[0, 0, 0, 1]);
    mac.extend_from_slice(&[0xee; 16]);
    let reply = exchange(server.ntp(), &mac, Duration::from_secs(5)).expect("reply");
    assert_eq!(reply.len(), 48);
    // And our client without NTS.
    let out = dry_run(server.dir.path(), &["-s", &server.ntp().to_string()]);
    let (_, stratum, offset, _) = parse_line(&out);
    assert_eq!(stratum, 7);
    assert!(offset.abs() < 0.001, "offset {offset}");
}

#[test]
fn a_missing_key_or_certificate_is_one_clear_line() {
    if !require_peer("openssl") {
        return;
    }
    let dir = TempDir::new("ntsd-nokey");
    make_pki(dir.path(), "server");
    let port = UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let run = |args: &[&str]| {
        let out = run_with_timeout(
            Command::new(toolbox())
                .args(["timesyncd", "-f", "--no-adjust", "-l", "-c"])
                .arg(server_conf(dir.path(), port))
                .args(args)
                .env("LOGGING", "stderr"),
            T,
        );
        assert!(!out.status.success(), "{}", text(&out.stderr));
        let stderr = text(&out.stderr);
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        stderr
    };
    let cert = dir.path().join("server.crt");
    let cert = cert.to_str().unwrap();
    let e = run(&["--nts-cert", cert, "--nts-key", "/nonexistent/server.key"]);
    assert!(e.contains("/nonexistent/server.key"), "{e}");
    let e = run(&["--nts-cert", cert]);
    assert!(e.contains("NTSKey="), "{e}");
    // The CA's key does not fit the server's certificate.
    let other = dir.path().join("server-ca.key");
    let e = run(&["--nts-cert", cert, "--nts-key", other.to_str().unwrap()]);
    assert!(e.contains("does not fit"), "{e}");
}

fn server_conf(dir: &Path, port: u16) -> PathBuf {
    let path = dir.join("server.conf");
    std::fs::write(
        &path,
        format!("[Time]\nNTP=\nFallbackNTP=\n[Server]\nListen=127.0.0.1:{port}\nLocalStratum=7\n"),
    )
    .unwrap();
    path
}
