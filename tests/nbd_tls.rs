//! The nbd applet with TLS (`--object tls-creds-x509 --tls-creds`) against
//! real clients: qemu-img, nbdinfo, nbdcopy; certificates made here with
//! the openssl CLI (a CA, a server certificate for localhost, a client one).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{missing_tools, run_with_timeout, toolbox, Daemon, TempDir};

const T: Duration = Duration::from_secs(60);

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

/// Fails: the stderr.
fn fails(cmd: &mut Command) -> String {
    let out = run_with_timeout(cmd, T);
    assert!(
        !out.status.success(),
        "{cmd:?} should have failed: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn openssl(dir: &Path, args: &[&str]) {
    ok(Command::new("openssl").current_dir(dir).args(args));
}

/// `pki/` with ca-cert.pem, server-cert.pem/server-key.pem (CN and SAN
/// localhost, 127.0.0.1) and client-cert.pem/client-key.pem (CN=laptop),
/// as both qemu and libnbd want the directory.
fn make_pki(dir: &TempDir) -> PathBuf {
    let pki = dir.path().join("pki");
    std::fs::create_dir_all(&pki).unwrap();
    openssl(
        &pki,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca-key.pem",
            "-out",
            "ca-cert.pem",
            "-days",
            "2",
            "-subj",
            "/CN=Toolbox Test CA",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ],
    );
    for (who, subject, ext) in [
        (
            "server",
            "/O=Toolbox Test/CN=localhost",
            "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
        ),
        (
            "client",
            "/C=GB/O=Example Org/CN=laptop",
            "extendedKeyUsage=clientAuth\n",
        ),
    ] {
        let ext_file = format!("{who}.ext");
        std::fs::write(
            pki.join(&ext_file),
            format!("basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\n{ext}"),
        )
        .unwrap();
        let (key, csr, cert) = (
            format!("{who}-key.pem"),
            format!("{who}.csr"),
            format!("{who}-cert.pem"),
        );
        openssl(
            &pki,
            &[
                "req", "-newkey", "rsa:2048", "-nodes", "-keyout", &key, "-out", &csr, "-subj",
                subject,
            ],
        );
        openssl(
            &pki,
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca-cert.pem",
                "-CAkey",
                "ca-key.pem",
                "-CAcreateserial",
                "-out",
                &cert,
                "-days",
                "2",
                "-extfile",
                &ext_file,
            ],
        );
    }
    pki
}

fn creds(pki: &Path, endpoint: &str, extra: &str) -> String {
    format!(
        "tls-creds-x509,id=tls0,dir={},endpoint={endpoint}{extra}",
        pki.display()
    )
}

fn image(dir: &TempDir, len: usize) -> PathBuf {
    let path = dir.path().join("disk.img");
    let data: Vec<u8> = (0..len).map(|i| ((i / 512) as u8) ^ (i as u8)).collect();
    std::fs::write(&path, data).unwrap();
    path
}

/// `toolbox nbd -t --object ... --tls-creds tls0 ARGS... -k SOCK`.
fn serve_tls(dir: &TempDir, pki: &Path, extra: &str, args: &[&str]) -> (Daemon, PathBuf) {
    let sock = dir.path().join("nbd.sock");
    let obj = creds(pki, "server", extra);
    let mut all = vec!["-t", "--object", &obj, "--tls-creds", "tls0"];
    all.extend_from_slice(args);
    (common::nbd::serve_on(&sock, &all), sock)
}

fn nbds_unix(sock: &Path, certs: &Path) -> String {
    format!(
        "nbds+unix:///?socket={}&tls-certificates={}",
        sock.display(),
        certs.display()
    )
}

#[test]
fn qemu_img_info_convert_and_compare_over_tls() {
    if missing_tools(&["openssl", "qemu-img"]) {
        return;
    }
    let dir = TempDir::new("nbd-tls-qemu");
    let pki = make_pki(&dir);
    let img = image(&dir, 8 << 20);
    let (_d, sock) = serve_tls(&dir, &pki, "", &["-e", "2", img.to_str().unwrap()]);
    let client = creds(&pki, "client", "");
    let opts = format!(
        "driver=nbd,path={},tls-creds=tls0,tls-hostname=localhost",
        sock.display()
    );
    let info =
        ok(Command::new("qemu-img").args(["info", "--object", &client, "--image-opts", &opts]));
    assert!(info.contains("8 MiB (8388608 bytes)"), "{info}");
    let copy = dir.path().join("copy.raw");
    ok(Command::new("qemu-img")
        .args([
            "convert",
            "--object",
            &client,
            "-O",
            "raw",
            "--image-opts",
            &opts,
        ])
        .arg(&copy));
    assert_eq!(std::fs::read(&copy).unwrap(), std::fs::read(&img).unwrap());
    // Writes over TLS land in the file; compare reads them back (json: form).
    let mut data = std::fs::read(&img).unwrap();
    data.reverse();
    std::fs::write(&copy, &data).unwrap();
    ok(Command::new("qemu-img")
        .args(["convert", "-n", "--object", &client, "-f", "raw"])
        .arg(&copy)
        .args(["--target-image-opts", &opts]));
    assert_eq!(std::fs::read(&img).unwrap(), data);
    let json = format!(
        r#"json:{{"driver":"raw","file":{{"driver":"nbd","path":"{}","tls-creds":"tls0","tls-hostname":"localhost"}}}}"#,
        sock.display()
    );
    ok(Command::new("qemu-img")
        .args(["compare", "--object", &client, "-f", "raw"])
        .arg(&copy)
        .arg(&json));
    // A client without TLS is told so.
    let plain = format!("nbd+unix:///?socket={}", sock.display());
    let err = fails(Command::new("qemu-img").args(["info", &plain]));
    assert!(err.contains("TLS"), "{err}");
}

#[test]
fn nbdinfo_and_nbdcopy_over_tls_on_unix_and_tcp() {
    if missing_tools(&["openssl", "nbdinfo", "nbdcopy"]) {
        return;
    }
    let dir = TempDir::new("nbd-tls-libnbd");
    let pki = make_pki(&dir);
    let img = image(&dir, 4 << 20);
    let (_d, sock) = serve_tls(
        &dir,
        &pki,
        "",
        &["-e", "4", "-x", "disk", img.to_str().unwrap()],
    );
    let uri = nbds_unix(&sock, &pki).replace(":///?", ":///disk?");
    let info = ok(Command::new("nbdinfo").arg(&uri));
    assert!(info.contains("with TLS"), "{info}");
    assert!(info.contains("export-size: 4194304"), "{info}");
    let copy = dir.path().join("copy.raw");
    ok(Command::new("nbdcopy").arg(&uri).arg(&copy));
    assert_eq!(std::fs::read(&copy).unwrap(), std::fs::read(&img).unwrap());
    // Without TLS nothing is served, not even the list.
    let plain = format!("nbd+unix:///disk?socket={}", sock.display());
    let err = fails(Command::new("nbdinfo").arg(&plain));
    assert!(
        err.contains("TLS") || err.contains("not supported"),
        "{err}"
    );
    // (libnbd reports NBD_REP_ERR_TLS_REQD to a list request as ENOTSUP.)
    let err = fails(Command::new("nbdinfo").args(["--list", &plain]));
    assert!(err.contains("list request"), "{err}");

    let port = common::free_port();
    let obj = creds(&pki, "server", "");
    let mut cmd = Command::new(toolbox());
    cmd.args(["nbd", "-t", "-b", "127.0.0.1", "-p", &port.to_string()])
        .args(["--object", &obj, "--tls-creds", "tls0"])
        .arg(&img);
    let _tcp = Daemon::spawn(cmd);
    common::wait_for_tcp_port(port, Duration::from_secs(10));
    let tcp = format!(
        "nbds://localhost:{port}/?tls-certificates={}",
        pki.display()
    );
    assert!(ok(Command::new("nbdinfo").args(["--size", &tcp])).starts_with("4194304"));
}

#[test]
fn verify_peer_requires_a_client_certificate_and_authz_checks_its_name() {
    if missing_tools(&["openssl", "nbdinfo"]) {
        return;
    }
    let dir = TempDir::new("nbd-tls-verify");
    let pki = make_pki(&dir);
    let ca_only = dir.path().join("ca-only");
    std::fs::create_dir_all(&ca_only).unwrap();
    std::fs::copy(pki.join("ca-cert.pem"), ca_only.join("ca-cert.pem")).unwrap();
    let img = image(&dir, 1 << 20);
    {
        let (_d, sock) = serve_tls(&dir, &pki, "", &["-e", "2", img.to_str().unwrap()]);
        fails(Command::new("nbdinfo").args(["--size", &nbds_unix(&sock, &ca_only)]));
        ok(Command::new("nbdinfo").args(["--size", &nbds_unix(&sock, &pki)]));
    }
    {
        let sub = TempDir::new("nbd-tls-noverify");
        let (_d, sock) = serve_tls(&sub, &pki, ",verify-peer=off", &[img.to_str().unwrap()]);
        ok(Command::new("nbdinfo").args(["--size", &nbds_unix(&sock, &ca_only)]));
    }
    for (identity, admitted) in [
        ("CN=laptop,,O=Example Org,,C=GB", true),
        ("CN=someone-else", false),
    ] {
        let sub = TempDir::new("nbd-tls-authz");
        let authz = format!("authz-simple,id=auth0,identity={identity}");
        let (_d, sock) = serve_tls(
            &sub,
            &pki,
            "",
            &[
                "--object",
                &authz,
                "--tls-authz",
                "auth0",
                img.to_str().unwrap(),
            ],
        );
        let out = run_with_timeout(
            Command::new("nbdinfo").args(["--size", &nbds_unix(&sock, &pki)]),
            T,
        );
        assert_eq!(out.status.success(), admitted, "{identity}: {out:?}");
    }
}

#[test]
fn a_client_stalled_in_the_tls_handshake_gives_its_slot_back() {
    if missing_tools(&["openssl", "nbdinfo"]) {
        return;
    }
    let dir = TempDir::new("nbd-tls-stall");
    let pki = make_pki(&dir);
    let img = image(&dir, 1 << 20);
    let (_d, sock) = serve_tls(
        &dir,
        &pki,
        "",
        &["-e", "1", "--handshake-limit", "2", img.to_str().unwrap()],
    );
    // STARTTLS acknowledged, then silence where the ClientHello belongs.
    let mut stalled = common::nbd::RawClient::connect(&sock);
    stalled.option(5, &[]);
    assert_eq!(stalled.option_reply().0, common::nbd::REP_ACK);
    let start = Instant::now();
    ok(Command::new("nbdinfo").args(["--size", &nbds_unix(&sock, &pki)]));
    assert!(
        start.elapsed() >= Duration::from_millis(1500),
        "slot was free at once?"
    );
    drop(stalled);
}

#[test]
fn bad_credentials_and_impossible_combinations_fail_at_start_in_one_line() {
    if missing_tools(&["openssl"]) {
        return;
    }
    let dir = TempDir::new("nbd-tls-bad");
    let pki = make_pki(&dir);
    let img = image(&dir, 1 << 20);
    let bad = dir.path().join("bad");
    std::fs::create_dir_all(&bad).unwrap();
    for f in ["ca-cert.pem", "server-cert.pem"] {
        std::fs::copy(pki.join(f), bad.join(f)).unwrap();
    }
    std::fs::copy(pki.join("client-key.pem"), bad.join("server-key.pem")).unwrap();
    let nowhere = dir.path().join("nowhere");
    let sock = dir.path().join("x.sock");
    let run = |obj: String, extra: &[&str]| {
        let out = run_with_timeout(
            Command::new(toolbox())
                .args(["nbd", "--object", &obj, "--tls-creds", "tls0"])
                .args(extra)
                .arg(&img),
            T,
        );
        assert!(!out.status.success(), "{obj} {extra:?} started");
        let err = String::from_utf8_lossy(&out.stderr).trim().to_string();
        assert_eq!(err.lines().count(), 1, "{err}");
        err
    };
    let k = ["-k", sock.to_str().unwrap()];
    assert!(run(creds(&bad, "server", ""), &k).contains("bad/server-key.pem"));
    assert!(run(creds(&nowhere, "server", ""), &k).contains("nowhere"));
    std::fs::write(bad.join("ca-cert.pem"), "junk\n").unwrap();
    assert!(run(creds(&bad, "server", ""), &k).contains("bad/ca-cert.pem"));
    assert!(run(creds(&pki, "client", ""), &k).contains("server endpoint"));
    assert!(run(creds(&pki, "server", ""), &["-c", "/dev/nbd0"]).contains("kernel"));
    let psk = format!(
        "tls-creds-psk,id=tls0,dir={},endpoint=server",
        pki.display()
    );
    assert!(run(psk, &k).contains("TLS-PSK is not supported"));
    assert!(!sock.exists());
}

#[test]
fn list_over_tls_checks_the_server_name() {
    if missing_tools(&["openssl"]) {
        return;
    }
    let dir = TempDir::new("nbd-tls-list");
    let pki = make_pki(&dir);
    let img = image(&dir, 1 << 20);
    let (_d, sock) = serve_tls(
        &dir,
        &pki,
        "",
        &[
            "-e",
            "3",
            "-x",
            "disk",
            "-D",
            "tls disk",
            img.to_str().unwrap(),
        ],
    );
    let client = creds(&pki, "client", "");
    let list = |extra: &[&str]| {
        run_with_timeout(
            Command::new(toolbox())
                .args(["nbd", "-L", "-k"])
                .arg(&sock)
                .args(["--object", &client, "--tls-creds", "tls0"])
                .args(extra),
            T,
        )
    };
    let out = list(&[]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(
        text.contains("export: 'disk'") && text.contains("description: tls disk"),
        "{text}"
    );
    let out = list(&["--tls-hostname", "elsewhere"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("elsewhere"));
    // Without TLS the server says it requires it.
    let out = run_with_timeout(
        Command::new(toolbox()).args(["nbd", "-L", "-k"]).arg(&sock),
        T,
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("requires TLS"));
}

#[test]
fn before_starttls_options_get_tls_reqd_and_export_name_hangs_up() {
    if missing_tools(&["openssl"]) {
        return;
    }
    use std::io::Read;
    const REP_ERR_TLS_REQD: u32 = (1 << 31) + 5;
    let dir = TempDir::new("nbd-tls-raw");
    let pki = make_pki(&dir);
    let img = image(&dir, 1 << 20);
    let (_d, sock) = serve_tls(&dir, &pki, "", &["-e", "2", img.to_str().unwrap()]);
    let mut client = common::nbd::RawClient::connect(&sock);
    // LIST, STRUCTURED_REPLY, INFO, GO: each refused, the connection kept.
    for option in [3u32, 8, 6, 7] {
        let data: &[u8] = if option >= 6 {
            &[0, 0, 0, 0, 0, 0]
        } else {
            &[]
        };
        client.option(option, data);
        assert_eq!(client.option_reply().0, REP_ERR_TLS_REQD, "option {option}");
    }
    client.option(common::nbd::OPT_EXPORT_NAME, b"");
    let mut rest = Vec::new();
    let _ = client.sock.read_to_end(&mut rest);
    assert!(rest.is_empty(), "export data sent before TLS: {rest:?}");
}

#[test]
fn several_exports_are_listed_and_served_over_tls_only() {
    if missing_tools(&["openssl", "nbdinfo", "nbdcopy"]) {
        return;
    }
    let dir = TempDir::new("nbd-tls-exports");
    let pki = make_pki(&dir);
    let img = image(&dir, 1 << 20);
    let other = dir.path().join("other.img");
    std::fs::write(&other, vec![0x5a; 2 << 20]).unwrap();
    let spec = format!("other={},description=The other one", other.display());
    let (_d, sock) = serve_tls(
        &dir,
        &pki,
        "",
        &[
            "-e",
            "4",
            "-x",
            "disk",
            img.to_str().unwrap(),
            "--export",
            &spec,
        ],
    );
    let list = ok(Command::new("nbdinfo").args(["--list", &nbds_unix(&sock, &pki)]));
    assert!(list.contains("with TLS"), "{list}");
    assert!(list.contains("export=\"disk\""), "{list}");
    assert!(list.contains("export=\"other\""), "{list}");
    assert!(list.contains("description: The other one"), "{list}");
    let uri = nbds_unix(&sock, &pki).replace(":///?", ":///other?");
    let copy = dir.path().join("copy.raw");
    ok(Command::new("nbdcopy").arg(&uri).arg(&copy));
    assert_eq!(std::fs::read(&copy).unwrap(), vec![0x5a; 2 << 20]);
    // Without TLS the second export is as closed as the first.
    let plain = format!("nbd+unix:///other?socket={}", sock.display());
    let err = fails(Command::new("nbdinfo").arg(&plain));
    assert!(
        err.contains("TLS") || err.contains("not supported"),
        "{err}"
    );
}
