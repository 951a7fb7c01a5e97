//! timesyncd helpers shared by its NTS tests (client against chronyd,
//! and our own NTS server): the openssl CLI making a CA and a server
//! certificate, dry runs, --no-adjust daemons and what --status shows.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use super::{run_with_timeout, toolbox, wait_until, Daemon};

pub const T: Duration = Duration::from_secs(40);

pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

pub fn openssl(dir: &Path, args: &[&str]) {
    let out = run_with_timeout(
        Command::new("openssl").current_dir(dir).args(args),
        Duration::from_secs(30),
    );
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        text(&out.stderr)
    );
}

/// A CA (`NAME-ca.crt`) and a server certificate for localhost and
/// 127.0.0.1 it signed (`NAME.crt`, `NAME.key`), in `dir`.
pub fn make_pki(dir: &Path, name: &str) {
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let ca_key = format!("{name}-ca.key");
    let ca_crt = format!("{name}-ca.crt");
    let mut args = vec!["req", "-x509"];
    args.extend(ec);
    args.extend([
        "-keyout",
        &ca_key,
        "-out",
        &ca_crt,
        "-days",
        "2",
        "-subj",
        "/CN=toolbox test CA",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign",
    ]);
    openssl(dir, &args);
    let key = format!("{name}.key");
    let csr = format!("{name}.csr");
    let crt = format!("{name}.crt");
    let mut args = vec!["req"];
    args.extend(ec);
    args.extend(["-keyout", &key, "-out", &csr, "-subj", "/CN=localhost"]);
    openssl(dir, &args);
    let ext = format!("{name}.ext");
    std::fs::write(
        dir.join(&ext),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n\
         extendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            &ca_crt,
            "-CAkey",
            &ca_key,
            "-CAcreateserial",
            "-out",
            &crt,
            "-days",
            "2",
            "-extfile",
            &ext,
        ],
    );
}

pub fn empty_conf(dir: &Path) -> PathBuf {
    let path = dir.join("empty.conf");
    std::fs::write(&path, "[Time]\nFallbackNTP=\n").unwrap();
    path
}

pub fn dry_run(dir: &Path, args: &[&str]) -> Output {
    let conf = empty_conf(dir);
    run_with_timeout(
        Command::new(toolbox())
            .args(["timesyncd", "-Q", "-vv", "-c"])
            .arg(&conf)
            .args(args)
            .env("LOGGING", "stderr"),
        T,
    )
}

/// Parses `server ADDR stratum N offset X delay Y`.
pub fn parse_line(out: &Output) -> (String, u8, f64, f64) {
    let stdout = text(&out.stdout);
    let words: Vec<&str> = stdout.split_whitespace().collect();
    assert!(
        out.status.success() && words.len() == 8 && words[0] == "server",
        "unexpected result: {stdout:?}\nstderr: {}",
        text(&out.stderr)
    );
    (
        words[1].to_owned(),
        words[3].parse().unwrap(),
        words[5].parse().unwrap(),
        words[7].parse().unwrap(),
    )
}

/// A --no-adjust daemon in the foreground with its files in `dir`.
pub fn daemon(dir: &Path, conf: &Path, args: &[&str]) -> Daemon {
    let mut cmd = Command::new(toolbox());
    cmd.args(["timesyncd", "-f", "--no-adjust", "-vv", "-c"])
        .arg(conf)
        .arg("--state-file")
        .arg(dir.join("state"))
        .arg("--clock-file")
        .arg(dir.join("clock"))
        .args(args)
        .env("LOGGING", "stderr")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("log")).unwrap());
    Daemon::spawn(cmd)
}

pub fn status(dir: &Path) -> String {
    let out = run_with_timeout(
        Command::new(toolbox())
            .args(["timesyncd", "--status", "--state-file"])
            .arg(dir.join("state")),
        T,
    );
    text(&out.stdout)
}

pub fn wait_for_status(dir: &Path, needles: &[&str], timeout: Duration) -> String {
    let mut last = String::new();
    let found = wait_until(timeout, || {
        last = status(dir);
        needles.iter().all(|n| last.contains(n))
    });
    assert!(
        found.is_some(),
        "status never showed {needles:?}:\n{last}\nlog:\n{}",
        std::fs::read_to_string(dir.join("log")).unwrap_or_default()
    );
    last
}

/// `nts_of_source=STATE|COOKIES|REJECTED` of the first source.
pub fn nts_state(dir: &Path) -> (String, usize, u64) {
    let state = std::fs::read_to_string(dir.join("state")).unwrap_or_default();
    let value = state
        .lines()
        .find_map(|l| l.strip_prefix("nts_of_source="))
        .unwrap_or_default()
        .to_owned();
    let mut parts = value.split('|');
    (
        parts.next().unwrap_or_default().to_owned(),
        parts.next().and_then(|v| v.parse().ok()).unwrap_or(0),
        parts.next().and_then(|v| v.parse().ok()).unwrap_or(0),
    )
}

/// A client configuration in `dir` using `ke` (HOST:PORT) as its one NTS
/// server, trusting `ca`, with `extra` lines in `[Time]`.
pub fn nts_client_conf(dir: &Path, ke: &str, ca: &Path, extra: &str) -> PathBuf {
    let path = dir.join("client.conf");
    std::fs::write(
        &path,
        format!(
            "[Time]\nFallbackNTP=\n{extra}NTS={ke}\nNTSTrustedCertificates={}\n",
            ca.display()
        ),
    )
    .unwrap();
    path
}

/// Waits until the daemon logging in `dir` has taken an NTS NAK and
/// established keys again (its poll interval is 16 s), then for its source
/// to show authenticated once more; `server_log` goes into the failure.
pub fn wait_for_nak_and_rekey(dir: &Path, server_log: impl Fn() -> String) {
    let log = || std::fs::read_to_string(dir.join("log")).unwrap_or_default();
    let rekeyed = wait_until(Duration::from_secs(40), || {
        let log = log();
        log.contains("NTS NAK") && log.matches("NTS keys established").count() >= 2
    });
    assert!(
        rekeyed.is_some(),
        "no NAK and re-key:\n{}\nserver:\n{}",
        log(),
        server_log()
    );
    wait_for_status(dir, &["NTS authenticated"], Duration::from_secs(20));
}
