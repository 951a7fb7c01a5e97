//! ipmgmtd and ipadm against the kernel. Every test runs its own daemon in
//! a fresh network namespace with veth interfaces and its own --root, and
//! checks the result with `ip -j`, /proc/sys and the exact output bytes.

mod common;

use std::collections::HashSet;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant};

use common::{
    require_peer, require_root, run_with_timeout, toolbox, wait_until, Bridge, Daemon, Netns,
    TempDir, Veth,
};
use toolbox::ipmgmtd::{request::Reply, wire};

const T: Duration = Duration::from_secs(30);
const SHORT: Duration = Duration::from_secs(5);

/// A daemon drops privileges when user `netadm` exists, so tests that
/// create the account take this exclusively; every other test holds it
/// shared for as long as its daemon runs.
static ACCOUNTS: RwLock<()> = RwLock::new(());

enum Accounts {
    Shared(#[allow(dead_code)] RwLockReadGuard<'static, ()>),
    /// The test holds the lock itself, to release it only after it has
    /// removed the accounts it made.
    HeldByTest,
}

fn shared_accounts() -> Accounts {
    Accounts::Shared(ACCOUNTS.read().unwrap_or_else(|p| p.into_inner()))
}

fn exclusive_accounts() -> RwLockWriteGuard<'static, ()> {
    ACCOUNTS.write().unwrap_or_else(|p| p.into_inner())
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A namespace, a root directory and (when started) a foreground daemon.
/// Fields drop in order: the daemon before its namespace and root.
struct Rig {
    daemon: Option<Daemon>,
    ns: Netns,
    root: TempDir,
    _accounts: Accounts,
}

impl Rig {
    fn new(prefix: &str) -> Option<Rig> {
        if !require_root() {
            return None;
        }
        let accounts = shared_accounts();
        Some(Rig::with(prefix, TempDir::new(prefix), accounts))
    }

    /// A rig in a fresh namespace around an existing root. New interfaces
    /// get neither DAD nor a link-local address unless a test asks, so
    /// output does not depend on timing.
    fn with(prefix: &str, root: TempDir, accounts: Accounts) -> Rig {
        let ns = Netns::new(prefix);
        let rig = Rig {
            daemon: None,
            ns,
            root,
            _accounts: accounts,
        };
        rig.write_sysctl("net/ipv6/conf/default/accept_dad", "0");
        rig.write_sysctl("net/ipv6/conf/default/addr_gen_mode", "1");
        rig
    }

    fn root(&self) -> &Path {
        self.root.path()
    }

    fn socket(&self) -> PathBuf {
        self.root().join("run/ipadm/ipmgmtd.sock")
    }

    fn db_path(&self) -> PathBuf {
        self.root().join("etc/ipadm/ipadm.conf")
    }

    fn db(&self) -> String {
        std::fs::read_to_string(self.db_path()).unwrap_or_default()
    }

    fn log_path(&self) -> PathBuf {
        self.root().join("daemon.log")
    }

    /// `name` and `peer`, both in the namespace, MACs 02:00:00:00:00:0N
    /// (so link-local addresses are known); the peer is up.
    fn veth(&self, name: &str, peer: &str, n: u8) {
        let mac = format!("02:00:00:00:00:{:02x}", n);
        let peer_mac = format!("02:00:00:00:01:{:02x}", n);
        self.ns.ip(&[
            "link", "add", name, "address", &mac, "type", "veth", "peer", "name", peer, "address",
            &peer_mac,
        ]);
        self.ns.ip(&["link", "set", peer, "up"]);
    }

    fn daemon_command(&self) -> Command {
        let mut cmd = self.ns.command(toolbox());
        cmd.args(["ipmgmtd", "-f", "--root"]).arg(self.root());
        cmd
    }

    fn spawn(&mut self, mut cmd: Command) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("daemon log");
        cmd.env("LOGGING", "stderr")
            .stdout(Stdio::null())
            .stderr(log);
        let daemon = Daemon::spawn(cmd);
        let socket = self.socket();
        let started = wait_until(SHORT, || {
            UnixStream::connect(&socket).is_ok() || !is_alive(daemon.pid())
        });
        assert!(
            started.is_some() && is_alive(daemon.pid()),
            "ipmgmtd did not start: {}",
            std::fs::read_to_string(self.log_path()).unwrap_or_default()
        );
        self.daemon = Some(daemon);
    }

    fn start(&mut self) {
        let cmd = self.daemon_command();
        self.spawn(cmd);
    }

    fn pid(&self) -> i32 {
        self.daemon.as_ref().map(|d| d.pid()).unwrap_or(0)
    }

    /// SIGTERM, and the daemon's exit status.
    fn stop(&mut self) -> Option<std::process::ExitStatus> {
        let mut daemon = self.daemon.take()?;
        daemon.terminate();
        daemon.wait_timeout(SHORT)
    }

    fn kill9(&mut self) {
        if let Some(mut daemon) = self.daemon.take() {
            daemon.signal(libc::SIGKILL);
            assert!(daemon.wait_timeout(SHORT).is_some(), "SIGKILL ignored");
        }
    }

    fn ipadm_as(&self, user: &[&str], args: &[&str]) -> Output {
        let mut cmd = self
            .ns
            .command(if user.is_empty() { "env" } else { "setpriv" });
        cmd.args(user)
            .arg(toolbox())
            .arg("ipadm")
            .arg("--root")
            .arg(self.root())
            .args(args);
        run_with_timeout(&mut cmd, T)
    }

    fn ipadm(&self, args: &[&str]) -> Output {
        self.ipadm_as(&[], args)
    }

    /// Runs ipadm, which must succeed; its standard output.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.ipadm(args);
        assert!(
            out.status.success(),
            "ipadm {args:?} failed: {}{}",
            text(&out.stderr),
            text(&out.stdout)
        );
        assert_eq!(text(&out.stderr), "", "ipadm {args:?} warned");
        text(&out.stdout)
    }

    /// Runs ipadm, which must fail with status 1; its standard error.
    fn err(&self, args: &[&str]) -> String {
        let out = self.ipadm(args);
        assert_eq!(
            out.status.code(),
            Some(1),
            "ipadm {args:?} did not fail: {}",
            text(&out.stdout)
        );
        text(&out.stderr)
    }

    fn sysctl(&self, path: &str) -> String {
        let out = self.ns.exec("cat", &[&format!("/proc/sys/{path}")], T);
        assert!(out.status.success(), "reading {path}");
        text(&out.stdout).trim_end().to_owned()
    }

    fn write_sysctl(&self, path: &str, value: &str) {
        let out = self.ns.exec(
            "sh",
            &["-c", &format!("echo {value} > /proc/sys/{path}")],
            T,
        );
        assert!(out.status.success(), "writing {path}");
    }

    fn ip_json(&self, args: &[&str]) -> Json {
        let mut cmd = Command::new("ip");
        cmd.args(["-j", "-n", &self.ns.name]).args(args);
        let out = run_with_timeout(&mut cmd, T);
        assert!(out.status.success(), "ip {args:?}: {}", text(&out.stderr));
        Json::parse(&text(&out.stdout))
    }

    fn link(&self, dev: &str) -> Json {
        self.ip_json(&["link", "show", "dev", dev]).items()[0].clone()
    }

    fn link_flags(&self, dev: &str) -> Vec<String> {
        self.link(dev)
            .get("flags")
            .map(|f| {
                f.items()
                    .iter()
                    .filter_map(|x| x.as_str())
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default()
    }

    fn addrs(&self, dev: &str) -> Vec<Json> {
        let links = self.ip_json(&["addr", "show", "dev", dev]);
        links.items()[0]
            .get("addr_info")
            .map(|a| a.items().to_vec())
            .unwrap_or_default()
    }

    /// Addresses on `dev` as `local/prefixlen`, kernel order.
    fn addr_list(&self, dev: &str) -> Vec<String> {
        self.addrs(dev)
            .iter()
            .map(|a| {
                format!(
                    "{}/{}",
                    a.get("local").and_then(Json::as_str).unwrap_or("?"),
                    a.get("prefixlen").and_then(Json::as_u64).unwrap_or(0)
                )
            })
            .collect()
    }

    fn addr(&self, dev: &str, local: &str) -> Option<Json> {
        self.addrs(dev)
            .into_iter()
            .find(|a| a.get("local").and_then(Json::as_str) == Some(local))
    }

    /// Waits until `dev` has carrier (veth carrier arrives asynchronously).
    fn wait_running(&self, dev: &str) {
        wait_until(SHORT, || {
            self.link_flags(dev).iter().any(|f| f == "LOWER_UP")
        })
        .unwrap_or_else(|| panic!("{dev} never got carrier"));
    }
}

fn is_alive(pid: i32) -> bool {
    // A zombie still answers kill(0); look at its state instead.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| !s.contains(") Z "))
        .unwrap_or(false)
}

/// Just enough JSON to read `ip -j`.
#[derive(Clone, Debug, PartialEq)]
enum Json {
    Null,
    Bool(bool),
    Num(f64),
    Str(String),
    Arr(Vec<Json>),
    Obj(Vec<(String, Json)>),
}

impl Json {
    fn parse(text: &str) -> Json {
        let mut p = JsonParser {
            s: text.as_bytes(),
            i: 0,
        };
        p.value()
    }

    fn get(&self, key: &str) -> Option<&Json> {
        match self {
            Json::Obj(m) => m.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    fn items(&self) -> &[Json] {
        match self {
            Json::Arr(a) => a,
            _ => &[],
        }
    }

    fn as_str(&self) -> Option<&str> {
        match self {
            Json::Str(s) => Some(s),
            _ => None,
        }
    }

    fn as_u64(&self) -> Option<u64> {
        match self {
            Json::Num(n) => Some(*n as u64),
            _ => None,
        }
    }

    fn is_true(&self, key: &str) -> bool {
        self.get(key) == Some(&Json::Bool(true))
    }
}

struct JsonParser<'a> {
    s: &'a [u8],
    i: usize,
}

impl JsonParser<'_> {
    fn ws(&mut self) {
        while self.i < self.s.len() && self.s[self.i].is_ascii_whitespace() {
            self.i += 1;
        }
    }

    fn value(&mut self) -> Json {
        self.ws();
        match self.s[self.i] {
            b'{' => {
                self.i += 1;
                let mut members = Vec::new();
                loop {
                    self.ws();
                    if self.s[self.i] == b'}' {
                        self.i += 1;
                        return Json::Obj(members);
                    }
                    let key = self.string();
                    self.ws();
                    self.i += 1; // ':'
                    members.push((key, self.value()));
                    self.ws();
                    if self.s[self.i] == b',' {
                        self.i += 1;
                    }
                }
            }
            b'[' => {
                self.i += 1;
                let mut items = Vec::new();
                loop {
                    self.ws();
                    if self.s[self.i] == b']' {
                        self.i += 1;
                        return Json::Arr(items);
                    }
                    items.push(self.value());
                    self.ws();
                    if self.s[self.i] == b',' {
                        self.i += 1;
                    }
                }
            }
            b'"' => Json::Str(self.string()),
            b't' => {
                self.i += 4;
                Json::Bool(true)
            }
            b'f' => {
                self.i += 5;
                Json::Bool(false)
            }
            b'n' => {
                self.i += 4;
                Json::Null
            }
            _ => {
                let start = self.i;
                while self.i < self.s.len() && b"+-.eE0123456789".contains(&self.s[self.i]) {
                    self.i += 1;
                }
                Json::Num(text(&self.s[start..self.i]).parse().unwrap_or(f64::NAN))
            }
        }
    }

    fn string(&mut self) -> String {
        self.i += 1; // '"'
        let mut out = Vec::new();
        while self.s[self.i] != b'"' {
            if self.s[self.i] == b'\\' {
                self.i += 1;
                match self.s[self.i] {
                    b'n' => out.push(b'\n'),
                    b't' => out.push(b'\t'),
                    b'u' => {
                        let hex = text(&self.s[self.i + 1..self.i + 5]);
                        let c = u32::from_str_radix(&hex, 16)
                            .ok()
                            .and_then(char::from_u32)
                            .unwrap_or('?');
                        out.extend_from_slice(c.to_string().as_bytes());
                        self.i += 4;
                    }
                    other => out.push(other),
                }
            } else {
                out.push(self.s[self.i]);
            }
            self.i += 1;
        }
        self.i += 1;
        text(&out)
    }
}

const ADDR_HEADER: &str = "ADDROBJ           TYPE     STATE        ADDR\n";
const ADDR_ALL_HEADER: &str = "ADDROBJ           TYPE     STATE        CURRENT PERSISTENT ADDR\n";
const LOOPBACK_ROWS: &str = "lo/?              static   ok           127.0.0.1/8\n\
                             lo/?              static   ok           ::1/128\n";

#[test]
fn fresh_namespace_listings_match_illumos_format_byte_for_byte() {
    let Some(mut rig) = Rig::new("fmt") else {
        return;
    };
    rig.veth("net0", "peer0", 1);
    rig.start();
    let plain = rig.ok(&[]);
    assert_eq!(plain, format!("{ADDR_HEADER}{LOOPBACK_ROWS}"));
    assert_eq!(rig.ok(&["show-addr"]), plain);
    assert_eq!(
        rig.ok(&["show-addr", "-o", "all"]),
        format!(
            "{ADDR_ALL_HEADER}\
             lo/?              static   ok           U----   --         127.0.0.1/8\n\
             lo/?              static   ok           U----   --         ::1/128\n"
        )
    );
    assert_eq!(
        rig.ok(&["show-addr", "-p", "-o", "addrobj,addr"]),
        "lo/?:127.0.0.1/8\nlo/?:\\:\\:1/128\n"
    );
    assert_eq!(
        rig.ok(&["show-addr", "-p", "-o", "addr"]),
        "127.0.0.1/8\n::1/128\n"
    );
    assert_eq!(
        rig.ok(&["show-if"]),
        "IFNAME     STATE    CURRENT      PERSISTENT\n\
         lo         ok       ---v------46 --\n\
         peer0      failed   bm--------46 --\n\
         net0       down     bm--------46 --\n"
    );
    assert_eq!(
        rig.ok(&["show-if", "-p", "-o", "ifname,state,persistent"]),
        "lo:ok:\npeer0:failed:\nnet0:down:\n"
    );
    assert_eq!(
        rig.ok(&["show-prop", "-p", "ttl", "ipv4"]),
        "PROTO PROPERTY              PERM CURRENT      PERSISTENT   DEFAULT      POSSIBLE\n\
         ipv4  ttl                   rw   64           --           64           1-255\n"
    );
    // Lists wrap in the POSSIBLE column, as libofmt's wrap mode does.
    assert_eq!(
        rig.ok(&["show-prop", "-p", "ecn", "tcp"]),
        format!(
            "PROTO PROPERTY              PERM CURRENT      PERSISTENT   DEFAULT      POSSIBLE\n\
             tcp   ecn                   rw   passive      --           passive      never,passive,\n\
             {}active\n",
            " ".repeat(72)
        )
    );
    // Unknown fields: a warning in human mode, an error in parsable mode.
    let out = rig.ipadm(&["show-addr", "-o", "addr,colour"]);
    assert!(out.status.success());
    assert_eq!(
        text(&out.stderr),
        "ipadm: warning: ignoring unknown output field: `colour'\n"
    );
    assert_eq!(text(&out.stdout), "ADDR\n127.0.0.1/8\n::1/128\n");
    assert_eq!(
        rig.err(&["show-addr", "-p", "-o", "all"]),
        "ipadm: output field `all' invalid in parsable mode\n"
    );
    assert_eq!(rig.err(&["show-addr", "-p"]), "ipadm: -p requires -o\n");
}

#[test]
fn static_addresses_v4_v6_point_to_point_and_generated_names() {
    let Some(mut rig) = Rig::new("st") else {
        return;
    };
    rig.veth("net0", "peer0", 1);
    rig.start();
    rig.ok(&[
        "create-addr",
        "-T",
        "static",
        "-a",
        "10.1.0.1/24",
        "net0/v4",
    ]);
    rig.ok(&[
        "create-addr",
        "-T",
        "static",
        "-a",
        "2001:db8::1/64",
        "net0/v6",
    ]);
    rig.ok(&[
        "create-addr",
        "-t",
        "-T",
        "static",
        "-a",
        "local=10.2.0.1,remote=10.2.0.2",
        "net0",
    ]);
    rig.ok(&[
        "create-addr",
        "-t",
        "-T",
        "static",
        "-a",
        "10.3.0.1/16",
        "net0/",
    ]);
    rig.wait_running("net0");
    assert!(rig.link_flags("net0").contains(&"UP".to_string()));
    assert_eq!(
        rig.addr_list("net0"),
        [
            "10.1.0.1/24",
            "10.2.0.1/32",
            "10.3.0.1/16",
            "2001:db8::1/64"
        ]
    );
    let v4 = rig.addr("net0", "10.1.0.1").unwrap();
    assert_eq!(
        v4.get("broadcast").and_then(Json::as_str),
        Some("10.1.0.255")
    );
    let p2p = rig.addr("net0", "10.2.0.1").unwrap();
    assert_eq!(p2p.get("address").and_then(Json::as_str), Some("10.2.0.2"));
    assert_eq!(
        rig.ok(&["show-addr", "-o", "all", "net0/"]),
        format!(
            "{ADDR_ALL_HEADER}\
             net0/v4           static   ok           U----   U--        10.1.0.1/24\n\
             net0/_a           static   ok           U----   --         10.2.0.1->10.2.0.2\n\
             net0/_b           static   ok           U----   --         10.3.0.1/16\n\
             net0/v6           static   ok           U----   U--        2001:db8::1/64\n"
        )
    );
    assert_eq!(
        rig.ok(&["show-addr", "net0/v6"]),
        format!("{ADDR_HEADER}net0/v6           static   ok           2001:db8::1/64\n")
    );
    assert_eq!(
        rig.db(),
        "# ipadm.conf version=2\n\
         _ifname=net0;_family=inet;\n\
         _ifname=net0;_family=inet6;\n\
         _ifname=net0;_aobjname=net0/v4;_ipv4addr=10.1.0.1,;prefixlen=24;up=yes;\n\
         _ifname=net0;_aobjname=net0/v6;_ipv6addr=2001:db8::1,;prefixlen=64;up=yes;\n"
    );
    assert_eq!(
        rig.err(&[
            "create-addr",
            "-T",
            "static",
            "-a",
            "10.9.0.1/24",
            "net0/v4"
        ]),
        "ipadm: Could not create address: Address object already exists\n"
    );
    assert_eq!(
        rig.err(&[
            "create-addr",
            "-T",
            "static",
            "-a",
            "10.1.0.1/24",
            "net0/again"
        ]),
        "ipadm: Could not create address: Already exists (ipv4: Address already assigned)\n"
    );
    rig.ok(&["delete-addr", "net0/_a"]);
    rig.ok(&["delete-addr", "net0/v6"]);
    assert_eq!(rig.addr_list("net0"), ["10.1.0.1/24", "10.3.0.1/16"]);
    assert!(!rig.db().contains("net0/v6"));
    // The freed generated name is the next one handed out.
    rig.ok(&[
        "create-addr",
        "-t",
        "-T",
        "static",
        "-a",
        "10.4.0.1/24",
        "net0",
    ]);
    assert!(rig.ok(&["show-addr", "net0/_a"]).contains("10.4.0.1/24"));
    assert_eq!(
        rig.err(&["show-addr", "net0/zz"]),
        "ipadm: Address object not found\n"
    );
    assert_eq!(
        rig.err(&["delete-addr", "net0/zz"]),
        "ipadm: could not delete address: Object not found\n"
    );
}

#[test]
fn addrconf_makes_the_link_local_address_through_addr_gen_mode() {
    let Some(mut rig) = Rig::new("ac") else {
        return;
    };
    rig.veth("net0", "peer0", 1);
    rig.start();
    assert_eq!(rig.sysctl("net/ipv6/conf/net0/addr_gen_mode"), "1");
    rig.ok(&["create-addr", "-T", "addrconf", "net0/ll"]);
    assert_eq!(rig.sysctl("net/ipv6/conf/net0/addr_gen_mode"), "0");
    wait_until(SHORT, || rig.addr("net0", "fe80::ff:fe00:1").is_some())
        .expect("no link-local address");
    rig.wait_running("net0");
    assert_eq!(
        rig.ok(&["show-addr", "net0/"]),
        format!("{ADDR_HEADER}net0/ll           addrconf ok           fe80::ff:fe00:1/64\n")
    );
    assert_eq!(
        rig.err(&["create-addr", "-T", "addrconf", "net0/ll2"]),
        "ipadm: Could not create address: Addrconf already in progress\n"
    );
    assert!(rig
        .db()
        .contains("_ifname=net0;_aobjname=net0/ll;_intfid=::;\n"));
    rig.ok(&["delete-addr", "net0/ll"]);
    assert_eq!(rig.sysctl("net/ipv6/conf/net0/addr_gen_mode"), "1");
    assert!(rig.addr("net0", "fe80::ff:fe00:1").is_none());
    assert_eq!(rig.ok(&["show-addr", "net0/"]), "");
}

#[test]
fn down_up_disable_enable_and_delete_addresses() {
    let Some(mut rig) = Rig::new("ud") else {
        return;
    };
    rig.veth("net0", "peer0", 1);
    rig.start();
    rig.ok(&[
        "create-addr",
        "-T",
        "static",
        "-a",
        "10.1.0.1/24",
        "net0/v4",
    ]);
    rig.wait_running("net0");
    rig.ok(&["down-addr", "net0/v4"]);
    assert!(rig.addr("net0", "10.1.0.1").is_none());
    assert!(rig.db().contains("prefixlen=24;up=no;"));
    assert_eq!(
        rig.ok(&["show-addr", "-o", "all", "net0/v4"]),
        format!("{ADDR_ALL_HEADER}net0/v4           static   down         -----   ---        10.1.0.1/24\n")
    );
    rig.ok(&["up-addr", "-t", "net0/v4"]);
    assert!(rig.addr("net0", "10.1.0.1").is_some());
    assert!(rig.db().contains("up=no;"), "-t must not persist");
    assert_eq!(
        rig.ok(&["show-addr", "-o", "all", "net0/v4"]),
        format!("{ADDR_ALL_HEADER}net0/v4           static   ok           U----   ---        10.1.0.1/24\n")
    );
    rig.ok(&["up-addr", "net0/v4"]);
    assert!(rig.db().contains("up=yes;"));
    rig.ok(&["disable-addr", "-t", "net0/v4"]);
    assert!(rig.addr("net0", "10.1.0.1").is_none());
    assert_eq!(
        rig.ok(&["show-addr", "-o", "all", "net0/v4"]),
        format!("{ADDR_ALL_HEADER}net0/v4           static   disabled     --      U--        10.1.0.1/24\n")
    );
    assert_eq!(
        rig.err(&["down-addr", "net0/v4"]),
        "ipadm: Could not mark the address down: Operation not supported on disabled object\n"
    );
    rig.ok(&["enable-addr", "-t", "net0/v4"]);
    assert!(rig.addr("net0", "10.1.0.1").is_some());
    assert_eq!(
        rig.err(&["enable-addr", "-t", "net0/v4"]),
        "ipadm: could not enable address: Address object already exists\n"
    );
    assert_eq!(
        rig.err(&["disable-addr", "net0/v4"]),
        "ipadm: persistent operation not supported for disable-addr\n"
    );
    rig.ok(&[
        "create-addr",
        "-t",
        "-T",
        "static",
        "-a",
        "10.2.0.1/24",
        "net0/tmp",
    ]);
    assert_eq!(
        rig.err(&["disable-addr", "-t", "net0/tmp"]),
        "ipadm: could not disable address: Persistent operation on temporary object\n"
    );
    assert_eq!(
        rig.err(&["down-addr", "net0/tmp"]),
        "ipadm: Could not mark the address down: Persistent operation on temporary object\n"
    );
    rig.ok(&["down-addr", "-t", "net0/tmp"]);
    assert!(rig.addr("net0", "10.2.0.1").is_none());
    rig.ok(&["delete-addr", "net0/tmp"]);
    rig.ok(&["delete-addr", "net0/v4"]);
    assert!(rig.addrs("net0").is_empty());
    assert!(!rig.db().contains("aobjname"));
}

#[test]
fn interfaces_are_created_disabled_enabled_and_deleted() {
    let Some(mut rig) = Rig::new("if") else {
        return;
    };
    rig.veth("net0", "peer0", 1);
    rig.start();
    rig.ok(&["create-if", "net0"]);
    rig.wait_running("net0");
    assert!(rig.link_flags("net0").contains(&"UP".to_string()));
    assert_eq!(rig.sysctl("net/ipv6/conf/net0/disable_ipv6"), "0");
    assert_eq!(
        rig.ok(&["show-if", "net0"]),
        "IFNAME     STATE    CURRENT      PERSISTENT\nnet0       ok       bm--------46 -46\n"
    );
    assert_eq!(
        rig.err(&["create-if", "net0"]),
        "ipadm: Could not create net0 : Interface already exists\n"
    );
    rig.ok(&[
        "create-addr",
        "-T",
        "static",
        "-a",
        "10.1.0.1/24",
        "net0/v4",
    ]);
    rig.ok(&["disable-if", "-t", "net0"]);
    assert!(!rig.link_flags("net0").contains(&"UP".to_string()));
    assert!(rig.addrs("net0").is_empty());
    assert_eq!(
        rig.ok(&["show-if", "net0"]),
        "IFNAME     STATE    CURRENT      PERSISTENT\nnet0       disabled --           -46\n"
    );
    assert_eq!(
        rig.ok(&["show-addr", "net0/"]),
        format!("{ADDR_HEADER}net0/v4           static   disabled     10.1.0.1/24\n")
    );
    assert_eq!(
        rig.err(&["create-addr", "-T", "static", "-a", "10.2.0.1/24", "net0/b"]),
        "ipadm: Could not create address: Operation not supported on disabled object\n"
    );
    rig.ok(&["enable-if", "-t", "net0"]);
    assert!(rig.link_flags("net0").contains(&"UP".to_string()));
    assert_eq!(rig.addr_list("net0"), ["10.1.0.1/24"]);
    rig.ok(&["delete-if", "net0"]);
    assert!(!rig.link_flags("net0").contains(&"UP".to_string()));
    assert!(rig.addrs("net0").is_empty());
    assert_eq!(rig.db(), "# ipadm.conf version=2\n");
    assert_eq!(
        rig.err(&["delete-if", "nosuch0"]),
        "ipadm: Could not delete nosuch0: Interface does not exist\n"
    );
    assert_eq!(
        rig.err(&["create-if", "nosuch0"]),
        "ipadm: Could not create nosuch0 : Interface does not exist\n"
    );
    assert_eq!(
        rig.err(&["enable-if", "net0"]),
        "ipadm: persistent operation not supported for enable-if\n"
    );
}

#[test]
fn protocol_properties_map_to_namespaced_sysctls() {
    let Some(mut rig) = Rig::new("pp") else {
        return;
    };
    rig.start();
    rig.ok(&["set-prop", "-p", "ttl=99", "ipv4"]);
    assert_eq!(rig.sysctl("net/ipv4/ip_default_ttl"), "99");
    rig.ok(&["set-prop", "-t", "-p", "forwarding=on", "ip"]);
    assert_eq!(rig.sysctl("net/ipv4/ip_forward"), "1");
    assert_eq!(rig.sysctl("net/ipv6/conf/all/forwarding"), "1");
    rig.ok(&["set-prop", "-p", "hoplimit=32", "ipv6"]);
    assert_eq!(rig.sysctl("net/ipv6/conf/default/hop_limit"), "32");
    rig.ok(&["set-prop", "-p", "ecn=active", "tcp"]);
    assert_eq!(rig.sysctl("net/ipv4/tcp_ecn"), "1");
    rig.ok(&["set-prop", "-p", "sack=never", "tcp"]);
    assert_eq!(rig.sysctl("net/ipv4/tcp_sack"), "0");
    rig.ok(&["set-prop", "-p", "congestion_control=reno", "tcp"]);
    assert_eq!(rig.sysctl("net/ipv4/tcp_congestion_control"), "reno");
    rig.ok(&["set-prop", "-p", "smallest_anon_port=40000", "tcp"]);
    rig.ok(&["set-prop", "-p", "largest_anon_port=50000", "udp"]);
    assert_eq!(rig.sysctl("net/ipv4/ip_local_port_range"), "40000\t50000");
    rig.ok(&["set-prop", "-p", "smallest_nonpriv_port=80", "tcp"]);
    assert_eq!(rig.sysctl("net/ipv4/ip_unprivileged_port_start"), "80");
    rig.ok(&["set-prop", "-p", "send_buf=32768", "tcp"]);
    assert_eq!(
        rig.sysctl("net/ipv4/tcp_wmem").split('\t').nth(1),
        Some("32768")
    );
    rig.ok(&["set-prop", "-p", "recv_buf=262144", "tcp"]);
    assert_eq!(
        rig.sysctl("net/ipv4/tcp_rmem").split('\t').nth(1),
        Some("262144")
    );
    rig.ok(&["set-prop", "-p", "reserved_ports+=8080", "tcp"]);
    rig.ok(&["set-prop", "-p", "reserved_ports+=9000-9010", "tcp"]);
    rig.ok(&["set-prop", "-p", "reserved_ports-=8080", "tcp"]);
    assert_eq!(rig.sysctl("net/ipv4/ip_local_reserved_ports"), "9000-9010");
    assert_eq!(
        rig.ok(&[
            "show-prop",
            "-c",
            "-o",
            "property,current,persistent",
            "-p",
            "ecn,sack",
            "tcp"
        ]),
        "ecn:active:active\nsack:never:never\n"
    );
    assert_eq!(
        rig.ok(&[
            "show-prop",
            "-c",
            "-o",
            "proto,current,persistent",
            "-p",
            "forwarding",
            "ip"
        ]),
        "ipv4:on:\nipv6:on:\n"
    );
    let db = rig.db();
    for line in [
        "_protocol=ipv4;ttl=99;",
        "_protocol=ipv6;hoplimit=32;",
        "_protocol=tcp;ecn=active;",
        "_protocol=tcp;congestion_control=reno;",
        "_protocol=udp;largest_anon_port=50000;",
        "_protocol=tcp;reserved_ports=9000-9010;",
    ] {
        assert!(db.lines().any(|l| l == line), "{line} missing from\n{db}");
    }
    assert!(!db.contains("forwarding"), "-t must not persist:\n{db}");
    rig.ok(&["reset-prop", "-p", "ttl", "ipv4"]);
    assert_eq!(rig.sysctl("net/ipv4/ip_default_ttl"), "64");
    assert!(!rig.db().contains("ttl="));
    rig.ok(&["reset-prop", "-t", "-p", "ecn", "tcp"]);
    assert_eq!(rig.sysctl("net/ipv4/tcp_ecn"), "2");
    assert!(rig.db().contains("ecn=active"));
    assert_eq!(
        rig.err(&["set-prop", "-p", "ttl=300", "ipv4"]),
        "ipadm: set-prop: ttl: Value is outside the allowed range (300 not in 1-255)\n"
    );
    assert_eq!(
        rig.err(&["set-prop", "-p", "nosuch=1", "tcp"]),
        "ipadm: set-prop: nosuch: Unknown property\n"
    );
    assert_eq!(
        rig.err(&["set-prop", "-p", "ecn=maybe", "tcp"]),
        "ipadm: set-prop: ecn: Invalid argument provided ('maybe')\n"
    );
    assert_eq!(
        rig.err(&["set-prop", "-p", "ttl+=1", "ipv4"]),
        "ipadm: set-prop: ttl: Invalid argument provided (ttl is not a list)\n"
    );
    assert_eq!(
        rig.err(&["set-prop", "-p", "reserved_ports-=7", "tcp"]),
        "ipadm: set-prop: reserved_ports: Object not found\n"
    );
    assert_eq!(
        rig.err(&["set-prop", "-p", "ttl=1", "sctp"]),
        "ipadm: invalid protocol 'sctp' specified\n"
    );
    let out = rig.ipadm(&["show-prop", "-p", "nosuch", "tcp"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        text(&out.stdout),
        "PROTO PROPERTY              PERM CURRENT      PERSISTENT   DEFAULT      POSSIBLE\n\
         tcp   nosuch                ?    ?            ?            ?            ?\n"
    );
}

#[test]
fn interface_properties_mtu_arp_forwarding_and_metric() {
    let Some(mut rig) = Rig::new("ifp") else {
        return;
    };
    rig.veth("net0", "peer0", 1);
    rig.start();
    rig.ok(&["create-if", "net0"]);
    rig.ok(&["set-ifprop", "-p", "mtu=1400", "-m", "ipv4", "net0"]);
    assert_eq!(
        rig.link("net0").get("mtu").and_then(Json::as_u64),
        Some(1400)
    );
    rig.ok(&["set-ifprop", "-p", "mtu=1300", "-m", "ipv6", "net0"]);
    assert_eq!(rig.sysctl("net/ipv6/conf/net0/mtu"), "1300");
    rig.ok(&["set-ifprop", "-p", "arp=off", "-m", "ipv4", "net0"]);
    assert!(rig.link_flags("net0").contains(&"NOARP".to_string()));
    rig.ok(&["set-ifprop", "-p", "forwarding=on", "-m", "ipv6", "net0"]);
    assert_eq!(rig.sysctl("net/ipv6/conf/net0/forwarding"), "1");
    rig.ok(&["create-addr", "-T", "static", "-a", "10.1.0.1/24", "net0/a"]);
    rig.ok(&["set-ifprop", "-t", "-p", "metric=77", "-m", "ipv4", "net0"]);
    rig.ok(&["create-addr", "-T", "static", "-a", "10.4.0.1/24", "net0/b"]);
    for local in ["10.1.0.1", "10.4.0.1"] {
        let a = rig.addr("net0", local).unwrap();
        assert_eq!(a.get("metric").and_then(Json::as_u64), Some(77), "{local}");
    }
    assert_eq!(
        rig.ok(&["show-ifprop", "-m", "ipv4", "net0"]),
        "IFNAME      PROPERTY        PROTO PERM CURRENT    PERSISTENT DEFAULT    POSSIBLE\n\
         net0        arp             ipv4  rw   off        off        on         on,off\n\
         net0        forwarding      ipv4  rw   off        --         off        on,off\n\
         net0        metric          ipv4  rw   77         --         0          0-4294967295\n\
         net0        mtu             ipv4  rw   1400       1400       1500       68-65535\n"
    );
    assert_eq!(
        rig.ok(&[
            "show-ifprop",
            "-c",
            "-o",
            "property,proto,current",
            "-p",
            "mtu",
            "net0"
        ]),
        "mtu:ipv4:1400\nmtu:ipv6:1300\n"
    );
    rig.ok(&["reset-ifprop", "-p", "mtu", "-m", "ipv4", "net0"]);
    assert_eq!(
        rig.link("net0").get("mtu").and_then(Json::as_u64),
        Some(1500)
    );
    assert!(!rig.db().contains("_protocol=ipv4;mtu="));
    assert!(rig.db().contains("_ifname=net0;_protocol=ipv6;mtu=1300;\n"));
    assert_eq!(
        rig.err(&["set-ifprop", "-p", "mtu=10", "-m", "ipv4", "net0"]),
        "ipadm: set-ifprop: mtu: Value is outside the allowed range (10 not in 68-65536)\n"
    );
    assert_eq!(
        rig.err(&["set-ifprop", "-p", "mtu=1400", "-m", "ipv4", "nosuch0"]),
        "ipadm: set-ifprop: mtu: Interface does not exist\n"
    );
    assert_eq!(
        rig.err(&["set-ifprop", "-p", "colour=red", "-m", "ipv4", "net0"]),
        "ipadm: set-ifprop: colour: Unknown property\n"
    );
    assert_eq!(
        rig.err(&["show-ifprop", "nosuch0"]),
        "ipadm: no such object 'nosuch0': Interface does not exist\n"
    );
}

#[test]
fn address_properties_prefixlen_and_deprecated() {
    let Some(mut rig) = Rig::new("ap") else {
        return;
    };
    rig.veth("net0", "peer0", 1);
    rig.start();
    rig.ok(&[
        "create-addr",
        "-T",
        "static",
        "-a",
        "10.1.0.1/24",
        "net0/v4",
    ]);
    rig.ok(&[
        "create-addr",
        "-T",
        "static",
        "-a",
        "2001:db8::1/64",
        "net0/v6",
    ]);
    rig.wait_running("net0");
    rig.ok(&["set-addrprop", "-p", "prefixlen=16", "net0/v4"]);
    assert_eq!(rig.addr_list("net0"), ["10.1.0.1/16", "2001:db8::1/64"]);
    assert!(rig.db().contains("_ipv4addr=10.1.0.1,;prefixlen=16;"));
    rig.ok(&["set-addrprop", "-p", "deprecated=on", "net0/v6"]);
    assert!(rig
        .addr("net0", "2001:db8::1")
        .unwrap()
        .is_true("deprecated"));
    rig.ok(&["set-addrprop", "-t", "-p", "deprecated=on", "net0/v4"]);
    assert!(rig.addr("net0", "10.1.0.1").unwrap().is_true("deprecated"));
    assert_eq!(
        rig.ok(&["show-addrprop", "net0/v4"]),
        "ADDROBJ           PROPERTY   PERM CURRENT         PERSISTENT      DEFAULT         POSSIBLE\n\
         net0/v4           deprecated rw   on              off             off             on,off\n\
         net0/v4           prefixlen  rw   16              16              --              1-32\n"
    );
    assert_eq!(
        rig.ok(&["show-addr", "-o", "addrobj,current,persistent", "net0/"]),
        "ADDROBJ           CURRENT PERSISTENT\n\
         net0/v4           U---d   U--\n\
         net0/v6           U---d   U-d\n"
    );
    rig.ok(&["reset-addrprop", "-p", "deprecated", "net0/v6"]);
    assert!(!rig
        .addr("net0", "2001:db8::1")
        .unwrap()
        .is_true("deprecated"));
    assert!(!rig.db().contains("deprecated"));
    assert_eq!(
        rig.err(&["set-addrprop", "-p", "prefixlen=40", "net0/v4"]),
        "ipadm: set-addrprop: prefixlen: Value is outside the allowed range (40 not in 1-32)\n"
    );
    assert_eq!(
        rig.err(&["set-addrprop", "-p", "colour=red", "net0/v4"]),
        "ipadm: set-addrprop: colour: Unknown property\n"
    );
    assert_eq!(
        rig.err(&["show-addrprop", "net0/zz"]),
        "ipadm: addrobj not found: net0/zz\n"
    );
}

#[test]
fn refresh_addr_detects_duplicates_on_the_link_for_v4_and_v6() {
    let Some(mut rig) = Rig::new("dad") else {
        return;
    };
    let other = Netns::new("dadp");
    let veth = Veth::new(&rig.ns, &other);
    let (ours, theirs) = (veth.a.clone(), veth.b.clone());
    rig.write_sysctl(&format!("net/ipv6/conf/{ours}/accept_dad"), "1");
    other.ip(&["addr", "add", "10.9.0.1/24", "dev", &theirs]);
    other.ip(&["addr", "add", "2001:db8:9::1/64", "dev", &theirs, "nodad"]);
    rig.start();
    rig.wait_running(&ours);
    rig.ok(&[
        "create-addr",
        "-T",
        "static",
        "-a",
        "10.9.0.1/24",
        &format!("{ours}/v4"),
    ]);
    rig.ok(&[
        "create-addr",
        "-T",
        "static",
        "-a",
        "2001:db8:9::1/64",
        &format!("{ours}/v6"),
    ]);
    assert_eq!(
        rig.err(&["refresh-addr", &format!("{ours}/v4")]),
        "ipadm: could not refresh address: Duplicate address detected\n"
    );
    assert!(
        rig.addr(&ours, "10.9.0.1").is_none(),
        "a duplicate must leave the kernel"
    );
    assert_eq!(
        rig.err(&["refresh-addr", &format!("{ours}/v6")]),
        "ipadm: could not refresh address: Duplicate address detected\n"
    );
    let rows = rig.ok(&[
        "show-addr",
        "-p",
        "-o",
        "addrobj,state",
        &format!("{ours}/"),
    ]);
    assert_eq!(rows, format!("{ours}/v6:duplicate\n{ours}/v4:duplicate\n"));
    other.ip(&["addr", "flush", "dev", &theirs]);
    rig.ok(&["refresh-addr", &format!("{ours}/v4")]);
    rig.ok(&["refresh-addr", &format!("{ours}/v6")]);
    assert!(rig.addr(&ours, "10.9.0.1").is_some());
    let rows = rig.ok(&[
        "show-addr",
        "-p",
        "-o",
        "addrobj,state",
        &format!("{ours}/"),
    ]);
    assert_eq!(rows, format!("{ours}/v4:ok\n{ours}/v6:ok\n"));
}

/// Twenty clients at once; one adds an IPv6 address whose DAD takes
/// seconds. The daemon waits for DAD on a timer, not under its lock: the
/// nineteen others are answered while that one still waits, and it is
/// answered once the address is no longer tentative.
#[test]
fn twenty_concurrent_create_addr_do_not_wait_for_one_in_dad() {
    let Some(mut rig) = Rig::new("cc") else {
        return;
    };
    rig.veth("slow0", "slow0p", 1);
    rig.veth("fast0", "fast0p", 2);
    rig.write_sysctl("net/ipv6/conf/slow0/accept_dad", "1");
    rig.write_sysctl("net/ipv6/conf/slow0/dad_transmits", "2");
    rig.write_sysctl("net/ipv6/neigh/slow0/retrans_time_ms", "1000");
    rig.start();
    let barrier = std::sync::Barrier::new(20);
    let start = Instant::now();
    // (client, answered after, succeeded, address still tentative then)
    type Finished = (usize, Duration, bool, Option<bool>);
    let done: Mutex<Vec<Finished>> = Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for i in 0..20 {
            let (rig, barrier, done) = (&rig, &barrier, &done);
            scope.spawn(move || {
                let (spec, target) = if i == 0 {
                    ("2001:db8:cc::1/64".to_owned(), "slow0/v6".to_owned())
                } else {
                    (format!("10.77.0.{i}/24"), format!("fast0/a{i}"))
                };
                barrier.wait();
                let out = rig.ipadm(&["create-addr", "-T", "static", "-a", &spec, &target]);
                let took = start.elapsed();
                let tentative = (i == 0).then(|| {
                    rig.addr("slow0", "2001:db8:cc::1")
                        .is_some_and(|a| a.is_true("tentative"))
                });
                done.lock()
                    .unwrap()
                    .push((i, took, out.status.success(), tentative));
            });
        }
    });
    let done = done.into_inner().unwrap();
    assert!(done.iter().all(|d| d.2), "a create-addr failed: {done:?}");
    let slow = done.iter().find(|d| d.0 == 0).unwrap();
    assert_eq!(slow.3, Some(false), "answered while still tentative");
    let slowest_other = done.iter().filter(|d| d.0 != 0).map(|d| d.1).max().unwrap();
    eprintln!(
        "create-addr latencies: DAD one {:?}, the other 19 within {:?}",
        slow.1, slowest_other
    );
    assert!(
        done.iter().filter(|d| d.0 != 0).all(|d| d.1 < slow.1),
        "others waited for the DAD one: {done:?}"
    );
    let rows = rig.ok(&["show-addr", "-p", "-o", "addrobj,state"]);
    let ours: Vec<&str> = rows
        .lines()
        .filter(|l| l.starts_with("slow0/") || l.starts_with("fast0/"))
        .collect();
    assert_eq!(ours.len(), 20, "{rows}");
    assert!(ours.iter().all(|l| l.ends_with(":ok")), "{rows}");
    assert_eq!(rig.addr_list("fast0").len(), 19);
}

#[test]
fn persistent_configuration_comes_back_in_a_fresh_namespace_and_temporary_does_not() {
    let Some(mut rig) = Rig::new("pe") else {
        return;
    };
    rig.veth("net0", "peer0", 1);
    rig.start();
    rig.ok(&[
        "create-addr",
        "-T",
        "static",
        "-a",
        "10.1.0.1/24",
        "net0/v4",
    ]);
    rig.ok(&[
        "create-addr",
        "-T",
        "static",
        "-a",
        "2001:db8::1/64",
        "net0/v6",
    ]);
    rig.ok(&["create-addr", "-T", "addrconf", "net0/ll"]);
    rig.ok(&[
        "create-addr",
        "-d",
        "-T",
        "static",
        "-a",
        "10.5.0.1/24",
        "net0/dn",
    ]);
    rig.ok(&[
        "create-addr",
        "-t",
        "-T",
        "static",
        "-a",
        "10.2.0.1/24",
        "net0/tmp",
    ]);
    rig.ok(&["set-prop", "-p", "ttl=99", "ipv4"]);
    rig.ok(&["set-prop", "-t", "-p", "ecn=never", "tcp"]);
    rig.ok(&["set-ifprop", "-p", "mtu=1400", "-m", "ipv4", "net0"]);
    rig.ok(&["set-ifprop", "-t", "-p", "arp=off", "-m", "ipv4", "net0"]);
    let status = rig.stop().expect("ipmgmtd ignored SIGTERM");
    assert!(status.success(), "{status:?}");
    assert!(!rig.socket().exists(), "SIGTERM must remove the socket");

    let Rig {
        daemon,
        ns,
        root,
        _accounts,
    } = rig;
    drop(daemon);
    drop(ns);
    let mut rig = Rig::with("pe2", root, _accounts);
    rig.veth("net0", "peer0", 1);
    rig.start();
    // Protocol properties come back when the daemon starts.
    assert_eq!(rig.sysctl("net/ipv4/ip_default_ttl"), "99");
    assert_eq!(rig.sysctl("net/ipv4/tcp_ecn"), "2");
    assert_eq!(
        rig.ok(&["show-addr", "net0/"]),
        format!(
            "{ADDR_HEADER}\
             net0/v4           static   disabled     10.1.0.1/24\n\
             net0/v6           static   disabled     2001:db8::1/64\n\
             net0/ll           addrconf disabled     --\n\
             net0/dn           static   disabled     10.5.0.1/24\n"
        )
    );
    // Interfaces and addresses come back with `ipadm init`.
    rig.ok(&["init"]);
    rig.wait_running("net0");
    wait_until(SHORT, || rig.addr("net0", "fe80::ff:fe00:1").is_some())
        .expect("link-local address never came back");
    assert_eq!(
        rig.addr_list("net0"),
        ["10.1.0.1/24", "2001:db8::1/64", "fe80::ff:fe00:1/64"]
    );
    assert_eq!(
        rig.link("net0").get("mtu").and_then(Json::as_u64),
        Some(1400)
    );
    assert!(!rig.link_flags("net0").contains(&"NOARP".to_string()));
    assert_eq!(
        rig.ok(&["show-addr", "net0/"]),
        format!(
            "{ADDR_HEADER}\
             net0/v4           static   ok           10.1.0.1/24\n\
             net0/v6           static   ok           2001:db8::1/64\n\
             net0/ll           addrconf ok           fe80::ff:fe00:1/64\n\
             net0/dn           static   down         10.5.0.1/24\n"
        )
    );
    // A second init changes nothing.
    rig.ok(&["init"]);
    assert_eq!(rig.addrs("net0").len(), 3);
}

#[test]
fn kill_9_and_restart_keeps_every_name() {
    let Some(mut rig) = Rig::new("k9") else {
        return;
    };
    rig.veth("net0", "peer0", 1);
    rig.start();
    rig.ok(&[
        "create-addr",
        "-T",
        "static",
        "-a",
        "10.1.0.1/24",
        "net0/v4",
    ]);
    rig.ok(&[
        "create-addr",
        "-t",
        "-T",
        "static",
        "-a",
        "10.2.0.1/24",
        "net0",
    ]);
    rig.ok(&[
        "create-addr",
        "-t",
        "-T",
        "static",
        "-a",
        "2001:db8::5/64",
        "net0/tmp6",
    ]);
    rig.ok(&[
        "create-addr",
        "-t",
        "-d",
        "-T",
        "static",
        "-a",
        "10.3.0.1/24",
        "net0/dn",
    ]);
    rig.ok(&["create-addr", "-t", "-T", "addrconf", "net0/ll"]);
    rig.wait_running("net0");
    wait_until(SHORT, || rig.addr("net0", "fe80::ff:fe00:1").is_some()).expect("link-local");
    let before = rig.ok(&["show-addr", "-o", "all"]);
    assert!(before.contains("net0/_a"), "{before}");
    rig.kill9();
    assert!(rig.socket().exists(), "a killed daemon leaves its socket");
    rig.start();
    assert_eq!(rig.ok(&["show-addr", "-o", "all"]), before);
}

/// The names a datastore holds; panics if a line is not whole.
fn persisted_names(db: &str) -> HashSet<String> {
    let mut lines = db.lines();
    assert_eq!(lines.next(), Some("# ipadm.conf version=2"), "{db}");
    let mut names = HashSet::new();
    for line in lines {
        assert!(
            line.starts_with("_ifname=net0;") && line.ends_with(';'),
            "torn line {line:?}"
        );
        if let Some(rest) = line.split("_aobjname=net0/").nth(1) {
            let name = rest.split(';').next().unwrap_or_default();
            assert!(line.ends_with("prefixlen=32;up=yes;"), "torn line {line:?}");
            names.insert(name.to_owned());
        }
    }
    names
}

#[test]
fn kill_9_during_concurrent_writes_leaves_a_whole_datastore_with_every_acknowledged_write() {
    let Some(mut rig) = Rig::new("cc") else {
        return;
    };
    rig.veth("net0", "peer0", 1);
    rig.start();
    let mut seed = std::process::id() as u64;
    let mut acked_total: HashSet<String> = HashSet::new();
    for round in 0..3u32 {
        let acked = Arc::new(Mutex::new(HashSet::new()));
        let in_flight = Arc::new(Mutex::new(HashSet::new()));
        let rig_ref = &rig;
        std::thread::scope(|scope| {
            for client in 0..3u32 {
                let acked = acked.clone();
                let in_flight = in_flight.clone();
                scope.spawn(move || {
                    for i in 0..200u32 {
                        let name = format!("r{round}c{client}n{i}");
                        let addr = format!("10.{}.{}.{}/32", 100 + round, client, i + 1);
                        in_flight.lock().unwrap().insert(name.clone());
                        let out = rig_ref.ipadm(&[
                            "create-addr",
                            "-T",
                            "static",
                            "-a",
                            &addr,
                            &format!("net0/{name}"),
                        ]);
                        if !out.status.success() {
                            return;
                        }
                        in_flight.lock().unwrap().remove(&name);
                        acked.lock().unwrap().insert(name);
                    }
                });
            }
            // Kill at a pseudo-random moment while the writes go on (once
            // they have begun, however slow the machine).
            wait_until(T, || !acked.lock().unwrap().is_empty()).expect("no write went through");
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let delay = (seed >> 33) % 400;
            std::thread::sleep(Duration::from_millis(delay));
            rig_ref.daemon.as_ref().unwrap().signal(libc::SIGKILL);
        });
        rig.kill9();
        let acked = acked.lock().unwrap().clone();
        let in_flight = in_flight.lock().unwrap().clone();
        assert!(!acked.is_empty(), "round {round}: nothing was acknowledged");
        acked_total.extend(acked.iter().cloned());
        let persisted = persisted_names(&rig.db());
        let lost: Vec<_> = acked_total.difference(&persisted).collect();
        assert!(
            lost.is_empty(),
            "round {round}: acknowledged writes lost: {lost:?}"
        );
        let extra: Vec<_> = persisted
            .difference(&acked_total)
            .filter(|n| !in_flight.contains(*n))
            .collect();
        assert!(
            extra.is_empty(),
            "round {round}: never requested: {extra:?}"
        );
        eprintln!(
            "round {round}: {} acknowledged, {} in flight at the kill, {} persisted in all",
            acked.len(),
            in_flight.len(),
            persisted.len()
        );
        acked_total = persisted;
        rig.start();
    }
    // The restarted daemon knows every persisted name.
    let listed = rig.ok(&["show-addr", "-p", "-o", "addrobj"]);
    for name in &acked_total {
        assert!(listed.contains(&format!("net0/{name}\n")), "{name} missing");
    }
}

const WRITES: &[&[&str]] = &[
    &["create-if", "net0"],
    &["delete-if", "net0"],
    &["enable-if", "-t", "net0"],
    &["disable-if", "-t", "net0"],
    &["create-addr", "-T", "static", "-a", "10.9.9.9/24", "net0/x"],
    &["delete-addr", "net0/v4"],
    &["down-addr", "net0/v4"],
    &["up-addr", "net0/v4"],
    &["disable-addr", "-t", "net0/v4"],
    &["enable-addr", "-t", "net0/v4"],
    &["refresh-addr", "net0/v4"],
    &["set-prop", "-p", "ttl=1", "ipv4"],
    &["reset-prop", "-p", "ttl", "ipv4"],
    &["set-ifprop", "-p", "mtu=1400", "-m", "ipv4", "net0"],
    &["reset-ifprop", "-p", "mtu", "-m", "ipv4", "net0"],
    &["set-addrprop", "-p", "prefixlen=8", "net0/v4"],
    &["reset-addrprop", "-p", "deprecated", "net0/v4"],
    &["init"],
    &["try", "delete-addr", "net0/v4"],
    &["confirm"],
];

const NOBODY: &[&str] = &["--reuid=nobody", "--regid=nogroup", "--clear-groups"];

#[test]
fn unprivileged_users_may_read_but_every_write_is_refused() {
    let Some(mut rig) = Rig::new("au") else {
        return;
    };
    rig.veth("net0", "peer0", 1);
    rig.start();
    rig.ok(&[
        "create-addr",
        "-T",
        "static",
        "-a",
        "10.1.0.1/24",
        "net0/v4",
    ]);
    let db = rig.db();
    let addrs = rig.addr_list("net0");
    for read in [
        &["show-addr"][..],
        &["show-if"],
        &["show-prop", "-p", "ttl", "ipv4"],
        &["show-ifprop", "-p", "mtu", "net0"],
        &["show-addrprop"],
    ] {
        let as_root = rig.ok(read);
        let out = rig.ipadm_as(NOBODY, read);
        assert!(out.status.success(), "{read:?}: {}", text(&out.stderr));
        assert_eq!(text(&out.stdout), as_root, "{read:?}");
    }
    for write in WRITES {
        let out = rig.ipadm_as(NOBODY, write);
        assert_eq!(out.status.code(), Some(1), "{write:?}");
        let stderr = text(&out.stderr);
        assert!(
            stderr.starts_with("ipadm: ") && stderr.ends_with(": permission denied\n"),
            "{write:?}: {stderr}"
        );
    }
    assert_eq!(rig.db(), db);
    assert_eq!(rig.addr_list("net0"), addrs);
    assert_eq!(rig.sysctl("net/ipv4/ip_default_ttl"), "64");
}

/// Removes an account this test made, even if the test fails.
struct AccountGuard(&'static str, Option<&'static str>);

impl Drop for AccountGuard {
    fn drop(&mut self) {
        if let Some(tool) = self.1 {
            let _ = run_with_timeout(Command::new(tool).arg(self.0), T);
        }
    }
}

fn lookup(database: &str, name: &str) -> Option<String> {
    let out = run_with_timeout(Command::new("getent").args([database, name]), T);
    out.status
        .success()
        .then(|| text(&out.stdout).split(':').nth(2).unwrap_or("").to_owned())
}

#[test]
fn members_of_group_netadm_may_write() {
    if !require_root() {
        return;
    }
    // Declared first, dropped last: after the group is gone again.
    let _accounts = exclusive_accounts();
    let created = lookup("group", "netadm").is_none();
    if created {
        let out = run_with_timeout(Command::new("groupadd").arg("netadm"), T);
        assert!(out.status.success(), "groupadd: {}", text(&out.stderr));
    }
    let _guard = AccountGuard("netadm", created.then_some("groupdel"));
    let gid = lookup("group", "netadm").expect("group netadm");
    let mut rig = Rig::with("grp", TempDir::new("grp"), Accounts::HeldByTest);
    rig.veth("net0", "peer0", 1);
    rig.start();
    let member = [
        "--reuid=nobody",
        "--regid=nogroup",
        &format!("--groups={gid}"),
    ];
    let run = |args: &[&str]| {
        let out = rig.ipadm_as(&member, args);
        assert!(out.status.success(), "{args:?}: {}", text(&out.stderr));
    };
    run(&[
        "create-addr",
        "-T",
        "static",
        "-a",
        "10.1.0.1/24",
        "net0/v4",
    ]);
    assert!(rig.addr("net0", "10.1.0.1").is_some());
    run(&["set-prop", "-p", "ttl=42", "ipv4"]);
    assert_eq!(rig.sysctl("net/ipv4/ip_default_ttl"), "42");
    run(&["delete-addr", "net0/v4"]);
    assert!(rig.addr("net0", "10.1.0.1").is_none());
    // Primary group membership counts too.
    let primary = [
        "--reuid=nobody",
        &format!("--regid={gid}"),
        "--clear-groups",
    ];
    let out = rig.ipadm_as(&primary, &["reset-prop", "-p", "ttl", "ipv4"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
}

#[test]
fn daemon_drops_to_user_netadm_keeping_net_admin_and_net_raw() {
    if !require_root() {
        return;
    }
    // Declared first, dropped last: after the user is gone again.
    let _accounts = exclusive_accounts();
    let created = lookup("passwd", "netadm").is_none();
    if created {
        let out = run_with_timeout(
            Command::new("useradd").args([
                "--system",
                "--no-create-home",
                "--user-group",
                "--shell",
                "/usr/sbin/nologin",
                "netadm",
            ]),
            T,
        );
        assert!(out.status.success(), "useradd: {}", text(&out.stderr));
    }
    let _guard = AccountGuard("netadm", created.then_some("userdel"));
    let uid = lookup("passwd", "netadm").expect("user netadm");
    let mut rig = Rig::with("drop", TempDir::new("drop"), Accounts::HeldByTest);
    rig.veth("net0", "peer0", 1);
    rig.start();
    let status = std::fs::read_to_string(format!("/proc/{}/status", rig.pid())).unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .map(|l| l[name.len()..].split_whitespace().collect::<Vec<_>>())
            .unwrap_or_default()
    };
    assert_eq!(field("Uid:"), [uid.as_str(); 4]);
    // CAP_NET_ADMIN (12) and CAP_NET_RAW (13), nothing else.
    assert_eq!(field("CapEff:"), ["0000000000003000"]);
    assert_eq!(field("CapPrm:"), ["0000000000003000"]);
    rig.ok(&[
        "create-addr",
        "-T",
        "static",
        "-a",
        "10.1.0.1/24",
        "net0/v4",
    ]);
    rig.ok(&["set-prop", "-p", "ttl=33", "ipv4"]);
    rig.ok(&["set-ifprop", "-p", "mtu=1400", "-m", "ipv4", "net0"]);
    assert_eq!(rig.sysctl("net/ipv4/ip_default_ttl"), "33");
    assert!(rig.addr("net0", "10.1.0.1").is_some());
    use std::os::unix::fs::MetadataExt;
    let owner = std::fs::metadata(rig.db_path()).unwrap().uid();
    assert_eq!(owner.to_string(), uid);
}

/// Sends raw bytes and returns the daemon's decoded reply, if any.
fn raw_exchange(socket: &Path, bytes: &[u8]) -> Option<Reply> {
    let mut s = UnixStream::connect(socket).ok()?;
    s.set_read_timeout(Some(SHORT)).ok()?;
    s.write_all(bytes).ok()?;
    let mut header = [0u8; 4];
    s.read_exact(&mut header).ok()?;
    let len = wire::frame_length(header, wire::MAX_REPLY).ok()?;
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).ok()?;
    Reply::from_packet(&wire::decode(&body).ok()?).ok()
}

#[test]
fn bad_input_gets_clear_errors_and_the_daemon_keeps_serving() {
    let Some(mut rig) = Rig::new("bad") else {
        return;
    };
    rig.veth("net0", "peer0", 1);
    rig.start();
    let long = format!("net0/a{}", "b".repeat(40));
    let cases: &[(&[&str], &str)] = &[
        (
            &[
                "create-addr",
                "-T",
                "static",
                "-a",
                "10.0.0.300/24",
                "net0/v4",
            ],
            "ipadm: Error in setting address '10.0.0.300/24': Invalid address\n",
        ),
        (
            &[
                "create-addr",
                "-T",
                "static",
                "-a",
                "10.0.0.1/33",
                "net0/v4",
            ],
            "ipadm: Error in setting address '10.0.0.1/33': Invalid prefix length\n",
        ),
        (
            &[
                "create-addr",
                "-T",
                "static",
                "-a",
                "2001:db8::1/129",
                "net0/v6",
            ],
            "ipadm: Error in setting address '2001:db8::1/129': Invalid prefix length\n",
        ),
        (
            &[
                "create-addr",
                "-T",
                "static",
                "-a",
                "10.0.0.1/24",
                "nosuch0/v4",
            ],
            "ipadm: Could not create address: Interface does not exist\n",
        ),
        (
            &[
                "create-addr",
                "-T",
                "static",
                "-a",
                "10.0.0.1,remote=::1",
                "net0/v4",
            ],
            "ipadm: Error in setting remote address: Incorrect protocol family for operation\n",
        ),
        (
            &["set-prop", "-p", "nosuch=1", "tcp"],
            "ipadm: set-prop: nosuch: Unknown property\n",
        ),
        (
            &["show-addr", "-o", "nosuch"],
            "ipadm: no valid output fields\n",
        ),
        (
            &["show-addr", "net0"],
            "ipadm: Invalid address object name provided\n",
        ),
        (
            &["delete-if", "a/b"],
            "ipadm: Invalid interface name 'a/b'\n",
        ),
    ];
    for (args, want) in cases {
        assert_eq!(rig.err(args), *want, "{args:?}");
    }
    for bad in ["net0/1v4", "net0/v-4", &long, "/v4", "net0/v4/x"] {
        let stderr = rig.err(&["create-addr", "-T", "static", "-a", "10.0.0.1/24", bad]);
        assert!(
            stderr.starts_with(&format!(
                "ipadm: invalid address object name: {bad}\nusage:"
            )),
            "{bad}: {stderr}"
        );
    }
    let stderr = rig.err(&["frobnicate"]);
    assert!(stderr.starts_with("ipadm: unknown subcommand 'frobnicate'\nusage:  ipadm"));
    assert!(rig
        .err(&["create-addr", "-T", "static", "-a"])
        .starts_with("ipadm: option '-a' requires a value\nusage: "));

    // Garbage on the socket: an error reply where one can be framed, a
    // hang-up otherwise, and the daemon goes on serving.
    let socket = rig.socket();
    let reply = raw_exchange(&socket, &[0xff; 64]).expect("a reply to garbage");
    assert_eq!(reply.result.unwrap_err().status.code(), 15);
    let reply = raw_exchange(&socket, b"GET / HTTP/1.0\r\n\r\n").expect("a reply");
    assert!(reply.result.is_err());
    let mut frame = 12u32.to_be_bytes().to_vec();
    frame.extend_from_slice(b"IA\x01\x01\x00\x00\x00\x00\x00\x01\x00\x00");
    let reply = raw_exchange(&socket, &frame).expect("a reply to an empty request");
    let err = reply.result.unwrap_err();
    assert_eq!(err.detail.as_deref(), Some("missing 'op'"));
    let mut frame = 22u32.to_be_bytes().to_vec();
    frame.extend_from_slice(b"IA\x01\x01\x00\x00\x00\x00\x00\x01\x00\x01\x00\x02op\x00\x04nope");
    let reply = raw_exchange(&socket, &frame).expect("a reply to an unknown request");
    assert_eq!(
        reply.result.unwrap_err().detail.as_deref(),
        Some("unknown request 'nope'")
    );
    // A frame cut short, then a hang-up.
    let mut s = UnixStream::connect(&socket).unwrap();
    s.write_all(&100u32.to_be_bytes()).unwrap();
    s.write_all(b"IA\x01").unwrap();
    drop(s);
    // Many idle clients at once do not stop the others for long.
    let idle: Vec<UnixStream> = (0..80)
        .filter_map(|_| UnixStream::connect(&socket).ok())
        .collect();
    drop(idle);
    let start = Instant::now();
    wait_until(SHORT, || rig.ipadm(&["show-if", "lo"]).status.success())
        .expect("the daemon stopped serving");
    assert!(start.elapsed() < SHORT);
    assert!(is_alive(rig.pid()));
    rig.ok(&[
        "create-addr",
        "-T",
        "static",
        "-a",
        "10.0.0.1/24",
        "net0/v4",
    ]);
}

#[test]
fn try_rolls_back_unless_confirmed() {
    let Some(mut rig) = Rig::new("try") else {
        return;
    };
    rig.veth("net0", "peer0", 1);
    rig.start();
    rig.ok(&[
        "create-addr",
        "-T",
        "static",
        "-a",
        "10.1.0.1/24",
        "net0/v4",
    ]);
    rig.ok(&["set-prop", "-p", "ttl=50", "ipv4"]);
    let db = rig.db();
    assert_eq!(
        rig.ok(&["try", "-t", "2", "delete-addr", "net0/v4"]),
        "ipadm: change applied; run 'ipadm confirm' within 2 seconds or it is rolled back\n"
    );
    assert!(rig.addr("net0", "10.1.0.1").is_none());
    assert!(!rig.db().contains("net0/v4"));
    assert_eq!(
        rig.err(&["set-prop", "-p", "ttl=1", "ipv4"]),
        "ipadm: set-prop: ttl: A trial change is waiting for 'ipadm confirm'\n"
    );
    wait_until(SHORT, || rig.addr("net0", "10.1.0.1").is_some()).expect("no rollback");
    wait_until(SHORT, || rig.db() == db).expect("datastore not rolled back");
    assert_eq!(
        rig.ok(&["show-addr", "net0/v4"]),
        format!("{ADDR_HEADER}net0/v4           static   ok           10.1.0.1/24\n")
    );
    // Properties and interfaces roll back too.
    rig.ok(&["try", "-t", "1", "set-prop", "-p", "ttl=7", "ipv4"]);
    assert_eq!(rig.sysctl("net/ipv4/ip_default_ttl"), "7");
    wait_until(SHORT, || rig.sysctl("net/ipv4/ip_default_ttl") == "50")
        .expect("ttl not rolled back");
    rig.ok(&["try", "-t", "1", "delete-if", "net0"]);
    assert!(rig.addrs("net0").is_empty());
    wait_until(SHORT, || rig.addr("net0", "10.1.0.1").is_some())
        .expect("interface not rolled back");
    assert!(rig.link_flags("net0").contains(&"UP".to_string()));
    // Confirmed, a change stays.
    rig.ok(&["try", "set-ifprop", "-p", "mtu=1400", "-m", "ipv4", "net0"]);
    assert_eq!(rig.ok(&["confirm"]), "ipadm: change confirmed\n");
    assert_eq!(
        rig.link("net0").get("mtu").and_then(Json::as_u64),
        Some(1400)
    );
    assert_eq!(
        rig.err(&["confirm"]),
        "ipadm: confirm: No change is waiting for confirmation\n"
    );
    assert!(rig.err(&["try", "show-addr"]).contains("cannot be tried"));
}

#[test]
fn daemonized_start_reports_readiness_and_sigterm_removes_the_socket() {
    if !require_root() {
        return;
    }
    let _accounts = shared_accounts();
    let ns = Netns::new("dmz");
    let root = TempDir::new("dmz");
    let pid_file = root.path().join("ipmgmtd.pid");
    let start = |pid_file: &Path| {
        let mut cmd = ns.command(toolbox());
        cmd.args(["ipmgmtd", "--root"])
            .arg(root.path())
            .arg("--pid-file")
            .arg(pid_file)
            .env("LOGGING", "none");
        run_with_timeout(&mut cmd, T)
    };
    let out = start(&pid_file);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let socket = root.path().join("run/ipadm/ipmgmtd.sock");
    // Ready means ready: the socket answers the moment the parent exits.
    assert!(UnixStream::connect(&socket).is_ok());
    let pid: i32 = std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    struct Kill(i32);
    impl Drop for Kill {
        fn drop(&mut self) {
            // SAFETY: signalling the daemon this test started.
            unsafe { libc::kill(self.0, libc::SIGKILL) };
        }
    }
    let _kill = Kill(pid);
    // A second daemon on the same root (its own pid file) is refused.
    let second = start(&root.path().join("second.pid"));
    assert_eq!(second.status.code(), Some(1));
    assert_eq!(
        text(&second.stderr),
        format!(
            "ipmgmtd: another ipmgmtd is running ({}/run/ipadm/ipmgmtd.lock is locked)\n",
            root.path().display()
        )
    );
    assert!(
        is_alive(pid),
        "the first daemon must survive the second's attempt"
    );
    // SAFETY: signalling the daemon this test started.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    wait_until(SHORT, || !is_alive(pid)).expect("SIGTERM ignored");
    assert!(!socket.exists());
    assert!(!pid_file.exists());
}

#[test]
fn read_only_etc_keeps_changes_under_run_and_writes_them_back() {
    let Some(mut rig) = Rig::new("ro") else {
        return;
    };
    rig.veth("net0", "peer0", 1);
    let etc = rig.root().join("etc/ipadm");
    std::fs::create_dir_all(&etc).unwrap();
    let start_read_only = |rig: &mut Rig| {
        let mut cmd = rig.ns.command("unshare");
        cmd.args(["--mount", "sh", "-c"]).arg(format!(
            "mount --bind -o ro '{etc}' '{etc}' && exec '{tb}' ipmgmtd -f --root '{root}'",
            etc = etc.display(),
            tb = toolbox().display(),
            root = rig.root().display()
        ));
        rig.spawn(cmd);
    };
    start_read_only(&mut rig);
    let out = rig.ipadm(&[
        "create-addr",
        "-T",
        "static",
        "-a",
        "10.1.0.1/24",
        "net0/v4",
    ]);
    assert!(out.status.success());
    let volatile = rig.root().join("run/ipadm/ipadm.conf");
    assert_eq!(
        text(&out.stderr),
        format!(
            "ipadm: warning: cannot write {}: Read-only file system; changes kept in {} until it can be written\n",
            rig.db_path().display(),
            volatile.display()
        )
    );
    assert!(!rig.db_path().exists());
    assert!(std::fs::read_to_string(&volatile)
        .unwrap()
        .contains("net0/v4"));
    // A restart while /etc is still read-only works from the /run copy.
    rig.stop();
    start_read_only(&mut rig);
    assert!(rig
        .ok(&["show-addr", "-o", "all", "net0/v4"])
        .contains("U--"));
    // Once /etc takes writes, the next change goes there and the copy goes.
    let out = rig.ns.exec(
        "nsenter",
        &[
            "-t",
            &rig.pid().to_string(),
            "-m",
            "mount",
            "-o",
            "remount,bind,rw",
            &etc.display().to_string(),
        ],
        T,
    );
    assert!(out.status.success(), "remount: {}", text(&out.stderr));
    rig.ok(&["create-addr", "-T", "static", "-a", "10.2.0.1/24", "net0/b"]);
    let db = rig.db();
    assert!(db.contains("net0/v4") && db.contains("net0/b"), "{db}");
    assert!(!volatile.exists());
}

#[test]
fn older_datastores_are_upgraded_and_unparsable_lines_kept() {
    let Some(mut rig) = Rig::new("up") else {
        return;
    };
    rig.veth("net0", "peer0", 1);
    std::fs::create_dir_all(rig.root().join("etc/ipadm")).unwrap();
    std::fs::write(
        rig.db_path(),
        "_ifname=net0;_family=2;\n\
         _ifname=net0;_family=26;\n\
         _ifname=net0;_aobjname=net0/v4;_ipv4addr=10.1.0.1,;prefixlen=24;up=yes;\n\
         this line is garbage\n\
         _protocol=ipv4;ttl=77;\n",
    )
    .unwrap();
    rig.start();
    let upgraded = "# ipadm.conf version=2\n\
                    _ifname=net0;_family=inet;\n\
                    _ifname=net0;_family=inet6;\n\
                    _ifname=net0;_aobjname=net0/v4;_ipv4addr=10.1.0.1,;prefixlen=24;up=yes;\n\
                    this line is garbage\n\
                    _protocol=ipv4;ttl=77;\n";
    assert_eq!(rig.db(), upgraded);
    assert_eq!(rig.sysctl("net/ipv4/ip_default_ttl"), "77");
    let log = std::fs::read_to_string(rig.log_path()).unwrap();
    assert!(
        log.contains("ipadm.conf line 4: ") && log.contains("kept as it is: this line is garbage"),
        "{log}"
    );
    assert!(log.contains("upgrading from version 1 to 2"), "{log}");
    rig.ok(&["init"]);
    assert_eq!(rig.addr_list("net0"), ["10.1.0.1/24"]);
    rig.ok(&["set-prop", "-p", "ecn=active", "tcp"]);
    assert!(rig.db().contains("\nthis line is garbage\n"));
}

/// A DHCP server namespace behind a bridge: `dnsmasq` or ISC `dhcpd` on
/// it, its leases and log in the rig's root.
struct DhcpServer {
    ns: Netns,
    bridge: Bridge,
    _links: Vec<Veth>,
    /// Other hosts on the link (after `_links`: a veth goes before its
    /// namespace).
    _hosts: Vec<Netns>,
    daemon: Option<Daemon>,
    dir: PathBuf,
    /// The running server's log, in `dir`.
    log_name: &'static str,
}

impl DhcpServer {
    fn new(rig: &Rig, prefix: &str) -> (DhcpServer, String) {
        let ns = Netns::new(prefix);
        let bridge = Bridge::new(&ns);
        let veth = Veth::new(&rig.ns, &ns);
        bridge.attach(&veth.b);
        ns.ip(&["addr", "add", "10.98.0.1/24", "dev", &bridge.name]);
        let ours = veth.a.clone();
        let dir = rig.root().join(format!("server-{prefix}"));
        std::fs::create_dir_all(&dir).unwrap();
        (
            DhcpServer {
                ns,
                bridge,
                _links: vec![veth],
                _hosts: Vec::new(),
                daemon: None,
                dir,
                log_name: "dnsmasq.log",
            },
            ours,
        )
    }

    /// Another host on the link, holding `addr`.
    fn add_host(&mut self, addr: &str) {
        let host = Netns::new("dhh");
        let veth = Veth::new(&host, &self.ns);
        self.bridge.attach(&veth.b);
        host.ip(&["addr", "add", addr, "dev", &veth.a]);
        self._links.push(veth);
        self._hosts.push(host);
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join(self.log_name)).unwrap_or_default()
    }

    fn leases(&self) -> String {
        std::fs::read_to_string(self.dir.join("leases")).unwrap_or_default()
    }

    /// dnsmasq with a 2-minute lease (its minimum), T1 6 s and T2 9 s so
    /// that renewing and rebinding happen within the test.
    fn start_dnsmasq(&mut self, range: &str, extra: &[&str]) {
        let mut cmd = self.ns.command("dnsmasq");
        cmd.args([
            "--no-daemon",
            "--conf-file=/dev/null",
            "--port=0",
            "--user=root",
            "--bind-interfaces",
            "--dhcp-authoritative",
            "--log-dhcp",
            "--dhcp-option=option:T1,6",
            "--dhcp-option=option:T2,9",
            "--dhcp-option=option:dns-server,10.98.0.2",
            "--dhcp-option=option:domain-name,test.lan",
        ])
        .arg(format!("--interface={}", self.bridge.name))
        .arg(format!("--dhcp-range={range},255.255.255.0,2m"))
        .arg(format!(
            "--dhcp-leasefile={}",
            self.dir.join("leases").display()
        ))
        .arg(format!("--pid-file={}", self.dir.join("pid").display()))
        .arg(format!(
            "--log-facility={}",
            self.dir.join("dnsmasq.log").display()
        ))
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
        self.log_name = "dnsmasq.log";
        self.daemon = Some(Daemon::spawn(cmd));
        let log = self.dir.join("dnsmasq.log");
        wait_until(SHORT, || {
            std::fs::read_to_string(&log).is_ok_and(|l| l.contains("DHCP, IP range"))
        })
        .expect("dnsmasq did not start");
    }

    /// The bridge's address moves to `net`.1/24 (`net`: three octets).
    fn renumber(&self, net: &str) {
        self.ns.ip(&["addr", "flush", "dev", &self.bridge.name]);
        self.ns.ip(&[
            "addr",
            "add",
            &format!("{net}.1/24"),
            "dev",
            &self.bridge.name,
        ]);
    }

    /// ISC dhcpd, authoritative for `net`.0/24 (the bridge's network),
    /// handing out .50 to .60 for 30 s with T1 6 s and T2 9 s. Each renewal
    /// extends the lease (no dhcp-cache-threshold reuse of a young lease).
    /// Its log (-d) goes to dhcpd.log, appended across restarts.
    fn start_dhcpd(&mut self, net: &str) {
        let conf = self.dir.join("dhcpd.conf");
        std::fs::write(
            &conf,
            format!(
                "authoritative;\n\
                 default-lease-time 30;\n\
                 max-lease-time 30;\n\
                 min-lease-time 30;\n\
                 dhcp-cache-threshold 0;\n\
                 option dhcp-renewal-time 6;\n\
                 option dhcp-rebinding-time 9;\n\
                 subnet {net}.0 netmask 255.255.255.0 {{\n\
                 \x20 range {net}.50 {net}.60;\n\
                 \x20 option routers {net}.1;\n\
                 \x20 option domain-name-servers {net}.2;\n\
                 \x20 option domain-name \"test.lan\";\n\
                 }}\n"
            ),
        )
        .unwrap();
        let leases = self.dir.join("leases");
        if !leases.exists() {
            std::fs::write(&leases, "").unwrap();
        }
        let log_path = self.dir.join("dhcpd.log");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .unwrap();
        self.log_name = "dhcpd.log";
        let started = count(&self.log(), "Server starting service.");
        let mut cmd = self.ns.command("dhcpd");
        cmd.args(["-f", "-d", "-4", "-cf"])
            .arg(&conf)
            .arg("-lf")
            .arg(&leases)
            .arg("-pf")
            .arg(self.dir.join("dhcpd.pid"))
            .arg(&self.bridge.name)
            .stdout(Stdio::null())
            .stderr(log);
        self.daemon = Some(Daemon::spawn(cmd));
        let ready = wait_until(SHORT, || {
            count(&self.log(), "Server starting service.") > started
                || count(&self.log(), "exiting.") > 0
        });
        assert!(
            ready.is_some() && count(&self.log(), "exiting.") == 0,
            "dhcpd did not start: {}",
            self.log()
        );
    }

    /// When dhcpd's lease of `addr` ends (its latest record), as
    /// `YYYY/MM/DD HH:MM:SS`, which sorts as time does.
    fn dhcpd_lease_end(&self, addr: &str) -> Option<String> {
        let leases = self.leases();
        let block = leases.rsplit(&format!("lease {addr} {{")).next()?;
        let block = block.split('}').next()?;
        let ends = block.lines().find_map(|l| l.trim().strip_prefix("ends "))?;
        // "4 2026/12/03 17:26:58;": weekday, date, time.
        Some(ends.trim_end_matches(';').split_once(' ')?.1.to_owned())
    }

    /// The binding state of dhcpd's latest record of `addr`.
    fn dhcpd_binding(&self, addr: &str) -> Option<String> {
        let leases = self.leases();
        if !leases.contains(&format!("lease {addr} {{")) {
            return None;
        }
        let block = leases.rsplit(&format!("lease {addr} {{")).next()?;
        let block = block.split('}').next()?;
        block.lines().find_map(|l| {
            l.trim()
                .strip_prefix("binding state ")
                .map(|s| s.trim_end_matches(';').to_owned())
        })
    }

    fn stop(&mut self) {
        if let Some(mut d) = self.daemon.take() {
            d.terminate();
            d.wait_timeout(SHORT);
        }
        // dhcpd refuses to start while its pid file names a live process.
        let _ = std::fs::remove_file(self.dir.join("dhcpd.pid"));
    }
}

/// tcpdump -v of DHCP traffic on one interface, not in promiscuous mode
/// (-p): what that interface takes in or sends, as a host there sees it.
struct Capture {
    _daemon: Daemon,
    out: PathBuf,
}

impl Capture {
    fn start(ns: &Netns, dev: &str, out: PathBuf) -> Capture {
        let err = out.with_extension("err");
        let mut cmd = ns.command("tcpdump");
        cmd.args(["-p", "-n", "-e", "-l", "-v", "-i", dev])
            .args(["udp", "port", "67", "or", "udp", "port", "68"])
            .stdout(std::fs::File::create(&out).unwrap())
            .stderr(std::fs::File::create(&err).unwrap());
        let daemon = Daemon::spawn(cmd);
        wait_until(SHORT, || {
            std::fs::read_to_string(&err).is_ok_and(|e| e.contains("listening on"))
        })
        .unwrap_or_else(|| {
            panic!(
                "tcpdump did not start: {}",
                std::fs::read_to_string(&err).unwrap_or_default()
            )
        });
        Capture {
            _daemon: daemon,
            out,
        }
    }

    /// Every packet so far: its headline with the decoded lines under it.
    fn packets(&self) -> Vec<String> {
        let text = std::fs::read_to_string(&self.out).unwrap_or_default();
        let mut packets: Vec<String> = Vec::new();
        for line in text.lines() {
            match packets.last_mut() {
                Some(p) if line.starts_with([' ', '\t']) => {
                    p.push('\n');
                    p.push_str(line);
                }
                _ => packets.push(line.to_owned()),
            }
        }
        packets
    }
}

/// Whether a captured packet is a DHCP message of type `kind`, as
/// tcpdump names it (Discover, Request, ACK, ...).
fn dhcp_kind(packet: &str, kind: &str) -> bool {
    let line = format!("DHCP-Message (53), length 1: {kind}");
    packet.lines().any(|l| l.trim() == line)
}

fn count(text: &str, needle: &str) -> usize {
    text.matches(needle).count()
}

impl Rig {
    /// A hook that logs what it hears, one line a call.
    fn install_hook(&self) -> PathBuf {
        let log = self.root().join("hook.log");
        let hook = self.root().join("etc/ipadm/dhcp-hook");
        std::fs::create_dir_all(hook.parent().unwrap()).unwrap();
        std::fs::write(
            &hook,
            format!(
                "#!/bin/sh\necho \"$1 $interface ip=$ip subnet=$subnet router=$router dns=$dns domain=$domain lease=$lease\" >> {}\n",
                log.display()
            ),
        )
        .unwrap();
        std::fs::set_permissions(&hook, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        log
    }

    /// `show-addr -p -o FIELDS OBJ`, once it satisfies `ready` (bounded).
    fn wait_addr(&self, obj: &str, fields: &str, ready: impl Fn(&str) -> bool) -> String {
        let mut last = String::new();
        let found = wait_until(T, || {
            last = text(&self.ipadm(&["show-addr", "-p", "-o", fields, obj]).stdout);
            ready(&last) || {
                std::thread::sleep(Duration::from_millis(200));
                false
            }
        });
        assert!(found.is_some(), "{obj} never became ready: {last}");
        last
    }
}

/// The leased address of `line` (`OBJ:dhcp:ok:ADDR/PLEN`).
fn leased(line: &str) -> String {
    line.trim().rsplit(':').next().unwrap_or("").to_owned()
}

#[test]
fn dhcp_lease_from_dnsmasq_renewed_nak_kept_across_kill_9_and_released() {
    if !require_peer("dnsmasq") {
        return;
    }
    let Some(mut rig) = Rig::new("dh") else {
        return;
    };
    let (mut server, ours) = DhcpServer::new(&rig, "dhs");
    server.start_dnsmasq("10.98.0.50,10.98.0.60", &[]);
    let hook_log = rig.install_hook();
    rig.start();
    let obj = format!("{ours}/v4");
    rig.ok(&[
        "create-addr",
        "-T",
        "dhcp",
        "-w",
        "30",
        "-h",
        "tbhost",
        &obj,
    ]);
    let row = rig.ok(&["show-addr", "-p", "-o", "addrobj,type,state,addr", &obj]);
    let addr = leased(&row);
    assert!(
        addr.starts_with("10.98.0.") && addr.ends_with("/24"),
        "{row}"
    );
    assert_eq!(row, format!("{obj}:dhcp:ok:{addr}\n"));
    let local = addr.trim_end_matches("/24");
    let k = rig.addr(&ours, local).expect("the lease in the kernel");
    assert!(k
        .get("valid_life_time")
        .and_then(Json::as_u64)
        .is_some_and(|v| v <= 120));
    assert!(server.leases().contains(&format!("{local} * ")) || server.leases().contains("tbhost"));
    assert!(server.leases().contains("tbhost"), "{}", server.leases());
    assert!(rig
        .db()
        .contains(&format!("_aobjname={obj};_dhcp=30,no;_reqhost=tbhost;")));
    let hook = std::fs::read_to_string(&hook_log).unwrap_or_default();
    assert!(
        hook.contains(&format!(
            "bound {ours} ip={local} subnet=255.255.255.0 router=10.98.0.1 dns=10.98.0.2 domain=test.lan lease=120"
        )),
        "{hook}"
    );
    let lease_cols = rig.ok(&["show-addr", "-p", "-o", "lease,server,dhcpstate", &obj]);
    assert!(lease_cols.starts_with("120:10.98.0.1:"), "{lease_cols}");

    // T1 (6 s): renewed by unicast.
    let acks = count(
        &server.log(),
        &format!("DHCPACK({}) {local}", server.bridge.name),
    );
    wait_until(T, || {
        count(
            &server.log(),
            &format!("DHCPACK({}) {local}", server.bridge.name),
        ) > acks
    })
    .expect("no renewal");
    wait_until(SHORT, || {
        std::fs::read_to_string(&hook_log)
            .is_ok_and(|h| h.contains(&format!("renew {ours} ip={local}")))
    })
    .expect("the hook heard no renew");

    // The server restarts with another range: the next renewal is NAKed
    // and the client starts over in the new range.
    let old_local = local.to_owned();
    server.stop();
    server.start_dnsmasq("10.98.0.100,10.98.0.110", &[]);
    let row = rig.wait_addr(&obj, "addrobj,state,addr", |r| r.contains(":ok:10.98.0.1"));
    let addr = leased(&row);
    let local = addr.trim_end_matches("/24").to_owned();
    assert!(server.log().contains("DHCPNAK"), "{}", server.log());
    assert!(rig.addr(&ours, &old_local).is_none());
    let hook = std::fs::read_to_string(&hook_log).unwrap_or_default();
    assert!(hook.contains(&format!("nak {ours}")), "{hook}");

    // kill -9 with the lease held: the address stays in the kernel and a
    // new daemon asks for it again (INIT-REBOOT: a REQUEST, no DISCOVER).
    let discovers = count(&server.log(), "DHCPDISCOVER");
    let requests = count(&server.log(), "DHCPREQUEST");
    rig.kill9();
    assert!(rig.addr(&ours, &local).is_some());
    rig.start();
    wait_until(T, || count(&server.log(), "DHCPREQUEST") > requests).expect("no REQUEST");
    let row = rig.wait_addr(&obj, "addrobj,state,addr", |r| r.contains(":ok:"));
    assert_eq!(leased(&row), addr, "a new address after restart");
    assert_eq!(
        count(&server.log(), "DHCPDISCOVER"),
        discovers,
        "{}",
        server.log()
    );

    // delete-addr -r gives the lease back.
    rig.ok(&["delete-addr", "-r", &obj]);
    assert!(rig.addr(&ours, &local).is_none());
    wait_until(SHORT, || {
        server
            .log()
            .contains(&format!("DHCPRELEASE({}) {local}", server.bridge.name))
    })
    .expect("no RELEASE");
    wait_until(SHORT, || !server.leases().contains(&local)).expect("lease still on the server");
    assert!(!rig.db().contains(&obj));
    let log = server.log();
    assert!(
        !log.to_lowercase().contains("warning"),
        "dnsmasq warned: {log}"
    );
}

#[test]
fn dhcp_declines_an_address_another_host_answers_arp_for() {
    if !require_peer("dnsmasq") {
        return;
    }
    let Some(mut rig) = Rig::new("dd") else {
        return;
    };
    let (mut server, ours) = DhcpServer::new(&rig, "dds");
    server.add_host("10.98.0.50/24");
    // Without its ping check, dnsmasq offers the address in use (its only one).
    server.start_dnsmasq("10.98.0.50,10.98.0.50", &["--no-ping"]);
    rig.start();
    let obj = format!("{ours}/v4");
    assert_eq!(
        rig.err(&["create-addr", "-T", "dhcp", "-w", "8", &obj]),
        "ipadm: Could not create address: Communication with dhcpagent timed out\n"
    );
    let row = rig.ok(&["show-addr", "-p", "-o", "addrobj,type,state", &obj]);
    assert_eq!(row, format!("{obj}:dhcp:tentative\n"));
    assert!(
        server
            .log()
            .contains(&format!("DHCPDECLINE({}) 10.98.0.50", server.bridge.name)),
        "{}",
        server.log()
    );
    assert!(rig.addr(&ours, "10.98.0.50").is_none());
}

/// busybox udhcpc on the same link and server: the same lease, and the
/// hook hears what udhcpc's script hears.
#[test]
fn dhcp_gets_the_lease_udhcpc_gets_and_the_hook_hears_the_same() {
    if !require_peer("dnsmasq") || !require_peer("busybox") {
        return;
    }
    let Some(mut rig) = Rig::new("du") else {
        return;
    };
    let (mut server, ours) = DhcpServer::new(&rig, "dus");
    server.start_dnsmasq("10.98.0.50,10.98.0.60", &[]);
    let hook_log = rig.install_hook();
    rig.start();
    let obj = format!("{ours}/v4");
    rig.ok(&["create-addr", "-T", "dhcp", "-w", "30", &obj]);
    let addr = leased(&rig.ok(&["show-addr", "-p", "-o", "addrobj,type,state,addr", &obj]));
    // Stop without releasing: the server keeps the lease for the client.
    rig.ok(&["delete-addr", &obj]);
    assert!(!server.log().contains("DHCPRELEASE"));
    let ours_bound: String = std::fs::read_to_string(&hook_log)
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("bound "))
        .expect("the hook heard bound")
        .to_owned();

    let script = rig.root().join("udhcpc.script");
    let udhcpc_log = rig.root().join("udhcpc.log");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\necho \"$1 $interface ip=$ip subnet=$subnet router=$router dns=$dns domain=$domain lease=$lease\" >> {}\n",
            udhcpc_log.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let out = rig.ns.exec(
        "busybox",
        &[
            "udhcpc",
            "-f",
            "-q",
            "-n",
            "-t",
            "5",
            "-i",
            &ours,
            "-s",
            &script.to_string_lossy(),
        ],
        T,
    );
    assert!(out.status.success(), "udhcpc: {}", text(&out.stderr));
    let theirs_bound = std::fs::read_to_string(&udhcpc_log)
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("bound "))
        .map(str::to_owned)
        .unwrap_or_default();
    assert_eq!(ours_bound, theirs_bound);
    assert!(ours_bound.contains(&format!("ip={}", addr.trim_end_matches("/24"))));
    let log = server.log();
    assert!(
        !log.to_lowercase().contains("warning"),
        "dnsmasq warned: {log}"
    );
}

/// The MAC address of `dev` in the rig's namespace.
fn mac_of(rig: &Rig, dev: &str) -> String {
    rig.link(dev)
        .get("address")
        .and_then(Json::as_str)
        .expect("a MAC address")
        .to_owned()
}

#[test]
fn dhcp_lease_from_isc_dhcpd_renewed_at_t1_and_released() {
    if !require_peer("dhcpd") {
        return;
    }
    let Some(mut rig) = Rig::new("di") else {
        return;
    };
    let (mut server, ours) = DhcpServer::new(&rig, "dis");
    server.start_dhcpd("10.98.0");
    let hook_log = rig.install_hook();
    rig.start();
    let obj = format!("{ours}/v4");
    let mac = mac_of(&rig, &ours);
    let br = server.bridge.name.clone();
    rig.ok(&[
        "create-addr",
        "-T",
        "dhcp",
        "-w",
        "30",
        "-h",
        "tbhost",
        &obj,
    ]);
    let row = rig.ok(&["show-addr", "-p", "-o", "addrobj,type,state,addr", &obj]);
    let addr = leased(&row);
    let local = addr.trim_end_matches("/24").to_owned();
    let host: u8 = local
        .strip_prefix("10.98.0.")
        .and_then(|h| h.parse().ok())
        .unwrap_or(0);
    assert!((50..=60).contains(&host) && addr.ends_with("/24"), "{row}");
    assert_eq!(row, format!("{obj}:dhcp:ok:{addr}\n"));
    let k = rig.addr(&ours, &local).expect("the lease in the kernel");
    assert!(k
        .get("valid_life_time")
        .and_then(Json::as_u64)
        .is_some_and(|v| v <= 30));
    let lease_cols = rig.ok(&["show-addr", "-p", "-o", "lease,server,dhcpstate", &obj]);
    assert!(lease_cols.starts_with("30:10.98.0.1:"), "{lease_cols}");
    let hook = std::fs::read_to_string(&hook_log).unwrap_or_default();
    assert!(
        hook.contains(&format!(
            "bound {ours} ip={local} subnet=255.255.255.0 router=10.98.0.1 dns=10.98.0.2 domain=test.lan lease=30"
        )),
        "{hook}"
    );
    let log = server.log();
    assert!(
        log.contains(&format!("DHCPDISCOVER from {mac} via {br}"))
            && log.contains(&format!("DHCPACK on {local} to {mac} (tbhost) via {br}")),
        "{log}"
    );
    assert_eq!(server.dhcpd_binding(&local).as_deref(), Some("active"));
    assert!(
        server.leases().contains("client-hostname \"tbhost\";"),
        "{}",
        server.leases()
    );
    let ends = server.dhcpd_lease_end(&local).expect("dhcpd's lease");

    // T1 (6 s): a REQUEST with our address, ACKed; dhcpd moves the end on.
    let renewal = format!("DHCPREQUEST for {local} from {mac} (tbhost) via {br}");
    let acked = format!("DHCPACK on {local} to {mac} (tbhost) via {br}");
    wait_until(T, || {
        let log = server.log();
        count(&log, &renewal) >= 1 && count(&log, &acked) >= 2
    })
    .unwrap_or_else(|| panic!("no renewal: {}", server.log()));
    wait_until(SHORT, || {
        server.dhcpd_lease_end(&local).is_some_and(|e| e > ends)
    })
    .unwrap_or_else(|| panic!("lease not extended past {ends}: {}", server.leases()));
    wait_until(SHORT, || {
        std::fs::read_to_string(&hook_log)
            .is_ok_and(|h| h.contains(&format!("renew {ours} ip={local}")))
    })
    .expect("the hook heard no renew");
    assert_eq!(
        rig.ok(&["show-addr", "-p", "-o", "state,addr", &obj]),
        format!("ok:{addr}\n")
    );

    // delete-addr -r gives the lease back: dhcpd frees it.
    rig.ok(&["delete-addr", "-r", &obj]);
    assert!(rig.addr(&ours, &local).is_none());
    wait_until(SHORT, || {
        server.log().contains(&format!(
            "DHCPRELEASE of {local} from {mac} (tbhost) via {br} (found)"
        ))
    })
    .unwrap_or_else(|| panic!("no RELEASE: {}", server.log()));
    wait_until(SHORT, || {
        server.dhcpd_binding(&local).as_deref() == Some("free")
    })
    .unwrap_or_else(|| panic!("lease not freed: {}", server.leases()));
    assert!(!rig.db().contains(&obj));
}

/// ISC dhcpd stays silent on a unicast renewal of a lease it does not
/// know, so its NAK is tested where it gives one: at INIT-REBOOT, for an
/// address on a network it no longer serves.
#[test]
fn dhcp_init_reboot_nak_from_isc_dhcpd_takes_the_old_address_off_and_starts_over() {
    if !require_peer("dhcpd") {
        return;
    }
    let Some(mut rig) = Rig::new("dn") else {
        return;
    };
    let (mut server, ours) = DhcpServer::new(&rig, "dns");
    server.start_dhcpd("10.98.0");
    let hook_log = rig.install_hook();
    rig.start();
    let obj = format!("{ours}/v4");
    let mac = mac_of(&rig, &ours);
    let br = server.bridge.name.clone();
    rig.ok(&["create-addr", "-T", "dhcp", "-w", "30", &obj]);
    let old = leased(&rig.ok(&["show-addr", "-p", "-o", "addr", &obj]));
    let old_local = old.trim_end_matches("/24").to_owned();
    assert!(old_local.starts_with("10.98.0."), "{old}");

    // The daemon stops with the lease held: the address stays (with its
    // lifetime) and so does the lease file.
    assert!(rig.stop().is_some_and(|s| s.success()));
    assert!(rig.addr(&ours, &old_local).is_some());
    assert!(rig
        .root()
        .join(format!("etc/ipadm/dhcp/{ours}.v4.lease"))
        .exists());

    // The server now serves another network, authoritatively.
    server.stop();
    server.renumber("10.97.0");
    server.start_dhcpd("10.97.0");
    rig.start();
    let row = rig.wait_addr(&obj, "addrobj,state,addr", |r| r.contains(":ok:10.97.0."));
    let new = leased(&row);
    let log = server.log();
    let after_restart = log
        .rsplit("Server starting service.")
        .next()
        .unwrap_or_default();
    let nak = after_restart
        .find(&format!(
            "DHCPREQUEST for {old_local} from {mac} via {br}: wrong network."
        ))
        .and_then(|at| {
            after_restart[at..]
                .find(&format!("DHCPNAK on {old_local} to {mac} via {br}"))
                .map(|n| at + n)
        })
        .unwrap_or_else(|| panic!("no INIT-REBOOT NAK: {log}"));
    assert!(
        after_restart[nak..].contains(&format!("DHCPDISCOVER from {mac} via {br}")),
        "no DISCOVER after the NAK: {log}"
    );
    // The address from before the restart came off at the NAK, long
    // before its lifetime would have run out.
    assert!(
        rig.addr(&ours, &old_local).is_none(),
        "{old} still there: {:?}",
        rig.addr_list(&ours)
    );
    assert_eq!(rig.addr_list(&ours).first(), Some(&new));
    let hook = std::fs::read_to_string(&hook_log).unwrap_or_default();
    // After the old address's last `bound`: the hook heard the NAK and a
    // deconfig (before the NAK when the INIT-REBOOT retries ran out first
    // on a loaded machine, after it otherwise), then `bound` with the new one.
    let tail = hook
        .rsplit_once(&format!("bound {ours} ip={old_local} "))
        .map(|(_, t)| t)
        .unwrap_or_else(|| panic!("the hook never heard the old lease: {hook}"));
    assert!(
        tail.contains(&format!("nak {ours}"))
            && tail.contains(&format!("deconfig {ours}"))
            && tail.contains(&format!(
                "bound {ours} ip={} subnet=255.255.255.0 router=10.97.0.1",
                new.trim_end_matches("/24")
            )),
        "{hook}"
    );
}

/// The unicast renewals at T1 are lost (the server's address resolves to
/// a MAC nobody has); at T2 the client broadcasts its REQUEST and the
/// server's ACK extends the lease.
#[test]
fn dhcp_rebinds_by_broadcast_at_t2_when_isc_dhcpd_cannot_be_reached_by_unicast() {
    if !require_peer("dhcpd") || !require_peer("tcpdump") {
        return;
    }
    let Some(mut rig) = Rig::new("dr") else {
        return;
    };
    let (mut server, ours) = DhcpServer::new(&rig, "drs");
    server.start_dhcpd("10.98.0");
    let at_server = Capture::start(
        &server.ns,
        &server.bridge.name,
        rig.root().join("server.pcap.txt"),
    );
    let at_client = Capture::start(&rig.ns, &ours, rig.root().join("client.pcap.txt"));
    rig.start();
    let obj = format!("{ours}/v4");
    rig.ok(&["create-addr", "-T", "dhcp", "-w", "30", &obj]);
    let addr = leased(&rig.ok(&["show-addr", "-p", "-o", "addr", &obj]));
    let local = addr.trim_end_matches("/24").to_owned();
    rig.ns.ip(&[
        "neigh",
        "replace",
        "10.98.0.1",
        "lladdr",
        "02:00:00:00:00:01",
        "nud",
        "permanent",
        "dev",
        &ours,
    ]);
    let ends = server.dhcpd_lease_end(&local).expect("dhcpd's lease");
    let seen = at_server.packets().len();

    let rebind = |p: &String| {
        p.contains(&format!("{local}.68 > 255.255.255.255.67:"))
            && p.contains(&format!("Client-IP {local}"))
            && dhcp_kind(p, "Request")
    };
    wait_until(T, || at_server.packets()[seen..].iter().any(rebind))
        .unwrap_or_else(|| panic!("no broadcast REQUEST: {:#?}", at_server.packets()));
    let packets = at_server.packets();
    let at = seen + packets[seen..].iter().position(rebind).unwrap_or(0);
    let xid = packets[at]
        .split_once("xid ")
        .and_then(|(_, x)| x.split(',').next())
        .unwrap_or_default()
        .to_owned();
    // Before it, the renewals went out by unicast, to the bogus MAC, and
    // never reached the server.
    let lost: Vec<_> = at_client
        .packets()
        .into_iter()
        .filter(|p| {
            p.contains("> 02:00:00:00:00:01,")
                && p.contains(&format!("{local}.68 > 10.98.0.1.67:"))
                && dhcp_kind(p, "Request")
        })
        .collect();
    assert!(
        !lost.is_empty(),
        "no unicast renewal: {:#?}",
        at_client.packets()
    );
    assert!(
        !packets[seen..at]
            .iter()
            .any(|p| p.contains(&format!("{local}.68 > 10.98.0.1.67:"))),
        "a unicast renewal reached the server: {packets:#?}"
    );
    // The server's ACK to it, and the lease runs on.
    wait_until(SHORT, || {
        at_server.packets()[at..].iter().any(|p| {
            p.contains(&format!("10.98.0.1.67 > {local}.68:"))
                && p.contains(&format!("xid {xid},"))
                && dhcp_kind(p, "ACK")
        })
    })
    .unwrap_or_else(|| panic!("no ACK to xid {xid}: {:#?}", at_server.packets()));
    wait_until(SHORT, || {
        server.dhcpd_lease_end(&local).is_some_and(|e| e > ends)
    })
    .unwrap_or_else(|| panic!("lease not extended past {ends}: {}", server.leases()));
    let row = rig.wait_addr(&obj, "state,addr,dhcpstate", |r| r.ends_with(":BOUND\n"));
    assert_eq!(row, format!("ok:{addr}:BOUND\n"));
    let k = rig.addr(&ours, &local).expect("the lease in the kernel");
    assert!(k
        .get("valid_life_time")
        .and_then(Json::as_u64)
        .is_some_and(|v| v > 20));
}

/// `ipadm try` of DHCP objects, rolled back: a tried create-addr leaves
/// no client renewing behind it, a tried delete-addr -r gets its client
/// (and a lease) back.
#[test]
fn try_rolls_dhcp_objects_back_with_their_clients() {
    if !require_peer("dhcpd") {
        return;
    }
    let Some(mut rig) = Rig::new("dt") else {
        return;
    };
    let (mut server, ours) = DhcpServer::new(&rig, "dts");
    server.start_dhcpd("10.98.0");
    rig.start();
    let obj = format!("{ours}/v4");
    let mac = mac_of(&rig, &ours);
    assert_eq!(
        rig.ok(&[
            "try",
            "-t",
            "3",
            "create-addr",
            "-T",
            "dhcp",
            "-w",
            "30",
            &obj
        ]),
        "ipadm: change applied; run 'ipadm confirm' within 3 seconds or it is rolled back\n"
    );
    let addr = leased(&rig.ok(&["show-addr", "-p", "-o", "addr", &obj]));
    let local = addr.trim_end_matches("/24").to_owned();
    wait_until(T, || rig.addr(&ours, &local).is_none())
        .unwrap_or_else(|| panic!("no rollback: {:?}", rig.addr_list(&ours)));
    assert!(!rig.ipadm(&["show-addr", &obj]).status.success());
    assert!(!rig.db().contains(&obj));
    // Past T1 (6 s): nothing renews the lease, nothing puts it back.
    let requests = count(
        &server.log(),
        &format!("DHCPREQUEST for {local} from {mac}"),
    );
    std::thread::sleep(Duration::from_secs(8));
    assert_eq!(
        count(
            &server.log(),
            &format!("DHCPREQUEST for {local} from {mac}")
        ),
        requests,
        "a client still runs: {}",
        server.log()
    );
    assert!(rig.addr(&ours, &local).is_none());

    rig.ok(&["create-addr", "-T", "dhcp", "-w", "30", &obj]);
    let addr = leased(&rig.ok(&["show-addr", "-p", "-o", "addr", &obj]));
    let local = addr.trim_end_matches("/24").to_owned();
    rig.ok(&["try", "-t", "2", "delete-addr", "-r", &obj]);
    assert!(rig.addr(&ours, &local).is_none());
    wait_until(SHORT, || {
        server
            .log()
            .contains(&format!("DHCPRELEASE of {local} from {mac}"))
    })
    .unwrap_or_else(|| panic!("no RELEASE: {}", server.log()));
    // Rolled back: the client runs again and leases an address anew.
    let row = rig.wait_addr(&obj, "state,addr", |r| r.starts_with("ok:10.98.0."));
    let local = leased(&row).trim_end_matches("/24").to_owned();
    assert!(rig.addr(&ours, &local).is_some());
    assert!(rig.db().contains(&format!("_aobjname={obj};_dhcp=30,no;")));
    let renewals = count(
        &server.log(),
        &format!("DHCPREQUEST for {local} from {mac}"),
    );
    wait_until(T, || {
        count(
            &server.log(),
            &format!("DHCPREQUEST for {local} from {mac}"),
        ) > renewals
    })
    .unwrap_or_else(|| panic!("no renewal after the rollback: {}", server.log()));
}
