//! Support for the integration tests of every applet: the built binary, temp
//! dirs, process guards, bounded commands, and network-namespace fixtures
//! (veth pairs, bridges) that are removed when dropped, even on failure.
#![allow(dead_code)]

pub mod nbd;
pub mod timesyncd;

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

static UNIQUE: AtomicUsize = AtomicUsize::new(0);

/// A name no other test in this run (or a concurrent run) uses.
pub fn unique(prefix: &str) -> String {
    format!(
        "{prefix}{}x{}",
        std::process::id() % 100_000,
        UNIQUE.fetch_add(1, Ordering::Relaxed)
    )
}

/// The toolbox binary under test.
pub fn toolbox() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_toolbox"))
}

/// A directory removed with everything in it when dropped.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(name: &str) -> TempDir {
        let path = std::env::temp_dir().join(format!("toolbox-test-{}", unique(name)));
        std::fs::create_dir_all(&path).expect("create temp dir");
        TempDir(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A spawned process, terminated (SIGTERM, then SIGKILL) and reaped when dropped.
pub struct Daemon {
    child: Option<Child>,
}

impl Daemon {
    pub fn spawn(mut cmd: Command) -> Daemon {
        let child = cmd
            .stdin(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
        Daemon { child: Some(child) }
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().map(|c| c.id() as i32).unwrap_or(0)
    }

    pub fn signal(&self, sig: i32) {
        if self.child.is_some() {
            // SAFETY: sending a signal to our own child.
            unsafe { libc::kill(self.pid(), sig) };
        }
    }

    pub fn terminate(&self) {
        self.signal(libc::SIGTERM);
    }

    /// Waits until a unix socket accepts connections (this connects once).
    pub fn wait_for_unix_socket(&self, path: &Path, timeout: Duration) {
        wait_until(timeout, || {
            std::os::unix::net::UnixStream::connect(path).is_ok()
        })
        .unwrap_or_else(|| panic!("{} never accepted connections", path.display()));
    }

    /// The exit status, if the process ends within `timeout`.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let child = self.child.as_mut()?;
        let status = wait_until(timeout, || child.try_wait().ok().flatten().is_some())
            .and_then(|()| child.wait().ok());
        if status.is_some() {
            self.child = None;
        }
        status
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: our own child.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let ended = wait_until(Duration::from_secs(5), || {
                child.try_wait().ok().flatten().is_some()
            });
            if ended.is_none() {
                let _ = child.kill();
            }
            let _ = child.wait();
        }
    }
}

/// Polls `ready` every 10 ms until it holds or `timeout` passes.
pub fn wait_until(timeout: Duration, mut ready: impl FnMut() -> bool) -> Option<()> {
    let start = Instant::now();
    loop {
        if ready() {
            return Some(());
        }
        if start.elapsed() > timeout {
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Runs `cmd` to completion with output captured, killing it if it overruns.
pub fn run_with_timeout(cmd: &mut Command, timeout: Duration) -> Output {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    // Drain the pipes on threads so a chatty child cannot block on them.
    let mut stdout = child.stdout.take().expect("stdout");
    let mut stderr = child.stderr.take().expect("stderr");
    let out = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = std::io::Read::read_to_end(&mut stdout, &mut v);
        v
    });
    let err = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = std::io::Read::read_to_end(&mut stderr, &mut v);
        v
    });
    if wait_until(timeout, || child.try_wait().ok().flatten().is_some()).is_none() {
        let _ = child.kill();
        let _ = child.wait();
        panic!("{cmd:?} did not finish within {timeout:?}");
    }
    let status = child.wait().expect("wait");
    Output {
        status,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    }
}

/// A TCP port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

pub fn wait_for_tcp_port(port: u16, timeout: Duration) {
    wait_until(timeout, || TcpStream::connect(("127.0.0.1", port)).is_ok())
        .unwrap_or_else(|| panic!("port {port} never opened"));
}

/// Whether missing peers and privileges fail tests (CI=true, as
/// scripts/test.sh runs them) instead of skipping them.
pub fn under_ci() -> bool {
    std::env::var("CI").as_deref() == Ok("true")
}

/// The one way a test finds out whether it can run here: `available`
/// true, it can. Otherwise under CI=true the test fails naming `missing`;
/// elsewhere it prints "skipped: MISSING" and the caller returns early.
pub fn require(available: bool, missing: &str) -> bool {
    if !available {
        assert!(!under_ci(), "{missing} (CI=true: a test may not skip)");
        eprintln!("skipped: {missing}");
    }
    available
}

/// Whether `tool` is on PATH.
pub fn have(tool: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool} >/dev/null"))
        .status()
        .is_ok_and(|s| s.success())
}

/// A peer program the test needs, through [`require`].
pub fn require_peer(tool: &str) -> bool {
    require(
        have(tool),
        &format!("{tool} is not installed (scripts/test.sh installs it)"),
    )
}

/// Whether namespace tests can run here (root and iproute2), through
/// [`require`].
pub fn require_root() -> bool {
    // SAFETY: plain getter.
    let root = unsafe { libc::geteuid() } == 0;
    require(root, "needs root for network namespaces")
        && require(
            Command::new("ip").arg("-V").output().is_ok(),
            "iproute2 'ip' is not installed",
        )
}

/// Whether a test must return early (true) because one of `tools` is
/// missing, through [`require_peer`].
pub fn missing_tools(tools: &[&str]) -> bool {
    !tools.iter().all(|tool| require_peer(tool))
}

fn ip(args: &[&str]) -> Output {
    run_with_timeout(Command::new("ip").args(args), Duration::from_secs(20))
}

fn ip_ok(args: &[&str]) {
    let out = ip(args);
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A network namespace, deleted (with its interfaces) when dropped.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(prefix: &str) -> Netns {
        let name = unique(&format!("tb{prefix}"));
        ip_ok(&["netns", "add", &name]);
        let ns = Netns { name };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    /// `ip -n NS ARGS`, asserting success.
    pub fn ip(&self, args: &[&str]) {
        let mut full = vec!["-n", &self.name];
        full.extend_from_slice(args);
        ip_ok(&full);
    }

    /// A command that runs inside the namespace (`ip netns exec NS PROG`).
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name]).arg(program);
        cmd
    }

    /// Runs a command inside the namespace, bounded in time.
    pub fn exec(&self, program: &str, args: &[&str], timeout: Duration) -> Output {
        run_with_timeout(self.command(program).args(args), timeout)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // A daemon left running inside would keep its interfaces alive.
        let pids = ip(&["netns", "pids", &self.name]);
        for pid in String::from_utf8_lossy(&pids.stdout).split_whitespace() {
            if let Ok(pid) = pid.parse::<i32>() {
                // SAFETY: killing a process inside the namespace this test made.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
        let _ = ip(&["netns", "delete", &self.name]);
    }
}

/// A veth pair with one end in each of two namespaces (removed with them,
/// and explicitly when dropped).
pub struct Veth {
    pub a: String,
    pub b: String,
    ns_a: String,
}

impl Veth {
    /// Creates `a` in `ns_a` and `b` in `ns_b`, both up.
    pub fn new(ns_a: &Netns, ns_b: &Netns) -> Veth {
        let a = unique("va");
        let b = unique("vb");
        ip_ok(&[
            "link", "add", &a, "netns", &ns_a.name, "type", "veth", "peer", "name", &b, "netns",
            &ns_b.name,
        ]);
        ns_a.ip(&["link", "set", &a, "up"]);
        ns_b.ip(&["link", "set", &b, "up"]);
        Veth {
            a,
            b,
            ns_a: ns_a.name.clone(),
        }
    }
}

impl Drop for Veth {
    fn drop(&mut self) {
        let _ = ip(&["-n", &self.ns_a, "link", "delete", &self.a]);
    }
}

/// A bridge inside a namespace; `attach` adds ports.
pub struct Bridge {
    pub name: String,
    ns: String,
}

impl Bridge {
    pub fn new(ns: &Netns) -> Bridge {
        let name = unique("br");
        ns.ip(&["link", "add", &name, "type", "bridge"]);
        ns.ip(&["link", "set", &name, "up"]);
        Bridge {
            name,
            ns: ns.name.clone(),
        }
    }

    /// Enslaves interface `port` (already in the bridge's namespace).
    pub fn attach(&self, port: &str) {
        ip_ok(&["-n", &self.ns, "link", "set", port, "master", &self.name]);
        ip_ok(&["-n", &self.ns, "link", "set", port, "up"]);
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        let _ = ip(&["-n", &self.ns, "link", "delete", &self.name]);
    }
}
