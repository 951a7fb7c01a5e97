//! svchost and sc, driven through the binary: built-in applets as services,
//! failure actions, C plugins built here with cc, the control socket's
//! authorization, SIGTERM ordering, malformed group files.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{run_with_timeout, toolbox, wait_until, Daemon, TempDir};

const T: Duration = Duration::from_secs(30);

struct Group {
    dir: TempDir,
    rundir: PathBuf,
    daemon: Option<Daemon>,
}

impl Group {
    /// Writes `conf` as group `g` and starts svchost in the foreground.
    fn start(name: &str, conf: &str) -> Group {
        Group::start_with(name, conf, |_| {})
    }

    /// Like `start`, with `prepare` run on the directory first.
    fn start_with(name: &str, conf: &str, prepare: impl FnOnce(&Path)) -> Group {
        let dir = TempDir::new(name);
        prepare(dir.path());
        let rundir = dir.path().join("run");
        std::fs::write(
            dir.path().join("g.conf"),
            conf.replace("@DIR@", &dir.path().display().to_string()),
        )
        .unwrap();
        let mut cmd = Command::new(toolbox());
        cmd.env("TOOLBOX_RUNDIR", &rundir)
            .args(["svchost", "-f", "-k", "g", "-c"])
            .arg(dir.path());
        let daemon = Daemon::spawn(cmd);
        let sock = rundir.join("svchost.g.sock");
        assert!(
            wait_until(Duration::from_secs(20), || sock.exists()).is_some(),
            "svchost never listened"
        );
        Group {
            dir,
            rundir,
            daemon: Some(daemon),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn sc(&self, args: &[&str]) -> (bool, String) {
        let out = run_with_timeout(
            Command::new(toolbox())
                .env("TOOLBOX_RUNDIR", &self.rundir)
                .arg("sc")
                .args(args),
            T,
        );
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    }

    /// The STATE line's name for a service.
    fn state(&self, service: &str) -> String {
        let (_, out) = self.sc(&["query", service]);
        out.lines()
            .find(|l| l.trim_start().starts_with("STATE"))
            .and_then(|l| l.split_whitespace().last())
            .unwrap_or("NONE")
            .to_string()
    }

    fn wait_state(&self, service: &str, state: &str, timeout: Duration) {
        let ok = wait_until(timeout, || self.state(service) == state);
        assert!(
            ok.is_some(),
            "{service} never became {state}: {}",
            self.sc(&["query", service]).1
        );
    }
}

fn image(dir: &Path, name: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::File::create(&p).unwrap().set_len(1 << 20).unwrap();
    p
}

fn nbd_size(sock: &Path) -> Option<String> {
    let out = run_with_timeout(
        Command::new("nbdinfo")
            .args(["--size", &format!("nbd+unix:///?socket={}", sock.display())]),
        T,
    );
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

const TWO_DISKS: &str = "\
[group]
services = disk1 disk2

[service disk1]
applet = nbd
args = -t -k @DIR@/d1.sock @DIR@/a.img

[service disk2]
applet = nbd
args = -t -k @DIR@/d2.sock @DIR@/b.img
";

#[test]
fn two_builtin_services_stop_and_start_independently() {
    let g = Group::start_with("svc-two", TWO_DISKS, |dir| {
        image(dir, "a.img");
        image(dir, "b.img");
    });
    g.wait_state("disk1", "RUNNING", T);
    g.wait_state("disk2", "RUNNING", T);
    let (_, all) = g.sc(&["query"]);
    assert_eq!(all.matches("4  RUNNING").count(), 2, "{all}");
    assert_eq!(nbd_size(&g.path("d1.sock")).as_deref(), Some("1048576"));

    let (ok, out) = g.sc(&["stop", "disk1"]);
    assert!(ok, "{out}");
    g.wait_state("disk1", "STOPPED", T);
    assert_eq!(g.state("disk2"), "RUNNING");
    assert_eq!(nbd_size(&g.path("d2.sock")).as_deref(), Some("1048576"));
    assert!(!g.path("d1.sock").exists());

    assert!(g.sc(&["start", "disk1"]).0);
    g.wait_state("disk1", "RUNNING", T);
    assert_eq!(nbd_size(&g.path("d1.sock")).as_deref(), Some("1048576"));
    let (ok, out) = g.sc(&["qc", "disk1"]);
    assert!(
        ok && out.contains("AUTO_START") && out.contains("toolbox nbd -t -k"),
        "{out}"
    );
}

#[test]
fn failing_service_is_restarted_as_configured_then_stays_stopped() {
    let g = Group::start(
        "svc-fail",
        "[group]\nservices = broken good\n\n[service broken]\napplet = nbd\n\
         args = -k @DIR@/x.sock @DIR@/missing.img\nfailure_actions = restart/200 restart/200 none\n\n\
         [service good]\napplet = nbd\nargs = -t -k @DIR@/good.sock /dev/null\n",
    );
    g.wait_state("good", "RUNNING", T);
    // Two restarts, then it stays stopped with the service's exit code.
    std::thread::sleep(Duration::from_millis(1500));
    let (_, out) = g.sc(&["query", "broken"]);
    assert!(out.contains("1  STOPPED"), "{out}");
    assert!(out.contains("WIN32_EXIT_CODE    : 1066"), "{out}");
    assert!(out.contains("missing.img"), "{out}");
    let (_, failure) = g.sc(&["qfailure", "broken"]);
    assert!(
        failure.contains("RESTART -- Delay = 200 milliseconds."),
        "{failure}"
    );
    assert_eq!(g.state("good"), "RUNNING");
}

const PLUGIN_C: &str = r#"
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "svchost.h"
SVCHOST_PLUGIN

static const char *log_path(void) { return getenv("PLUGIN_LOG"); }
static void note(const char *what, const char *name) {
    FILE *f = fopen(log_path(), "a");
    if (f) { fprintf(f, "%s %s\n", what, name); fclose(f); }
}
__attribute__((constructor)) static void loaded(void) { note("loaded", "-"); }

struct svc { pthread_mutex_t m; pthread_cond_t c; int stop; };
static void handler(unsigned int control, void *ctx) {
    struct svc *s = ctx;
    if (control == SERVICE_CONTROL_STOP) {
        pthread_mutex_lock(&s->m); s->stop = 1; pthread_cond_signal(&s->c); pthread_mutex_unlock(&s->m);
    }
}
void ServiceMain(int argc, char **argv) {
    static struct svc slots[8]; static int used;
    struct svc *s = &slots[__sync_fetch_and_add(&used, 1) % 8];
    pthread_mutex_init(&s->m, 0); pthread_cond_init(&s->c, 0); s->stop = 0;
    void *h = register_ctrl_handler(argv[0], handler, s);
    struct svchost_service_status st = { SERVICE_RUNNING, SERVICE_ACCEPT_STOP };
    set_service_status(h, &st);
    note("running", argv[0]);
    pthread_mutex_lock(&s->m);
    while (!s->stop) pthread_cond_wait(&s->c, &s->m);
    pthread_mutex_unlock(&s->m);
    note("stopped", argv[0]);
    st.current_state = SERVICE_STOPPED; st.controls_accepted = 0;
    set_service_status(h, &st);
}
"#;

/// Builds the test plugin with cc; None when no C compiler is around.
fn build_plugin(dir: &Path) -> Option<PathBuf> {
    let src = dir.join("plugin.c");
    std::fs::write(&src, PLUGIN_C).unwrap();
    let lib = dir.join("plugin.so");
    let include = Path::new(env!("CARGO_MANIFEST_DIR")).join("applets/svchost");
    let out = run_with_timeout(
        Command::new("cc")
            .args(["-shared", "-fPIC", "-pthread", "-o"])
            .arg(&lib)
            .arg("-I")
            .arg(&include)
            .arg(&src),
        Duration::from_secs(60),
    );
    if !out.status.success() {
        eprintln!(
            "skipping: cannot build the plugin: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        return None;
    }
    Some(lib)
}

#[test]
fn c_plugins_run_stop_load_once_and_fail_alone() {
    let build = TempDir::new("svc-plugin-build");
    let Some(lib) = build_plugin(build.path()) else {
        return;
    };
    let log = build.path().join("plugin.log");
    std::env::set_var("PLUGIN_LOG", &log);
    let conf = format!(
        "[group]\nservices = p1 p2 nolib noentry\n\n\
         [service p1]\nlibrary = {lib}\n\n[service p2]\nlibrary = {lib}\n\n\
         [service nolib]\nlibrary = @DIR@/no-such-plugin.so\n\n\
         [service noentry]\nlibrary = {lib}\nentry = NoSuchMain\n",
        lib = lib.display()
    );
    let mut g = Group::start("svc-plugin", &conf);
    g.wait_state("p1", "RUNNING", T);
    g.wait_state("p2", "RUNNING", T);
    let (_, nolib) = g.sc(&["query", "nolib"]);
    assert!(
        nolib.contains("1  STOPPED")
            && nolib.contains("126")
            && nolib.contains("no-such-plugin.so"),
        "{nolib}"
    );
    let (_, noentry) = g.sc(&["query", "noentry"]);
    assert!(
        noentry.contains("1  STOPPED") && noentry.contains("127") && noentry.contains("NoSuchMain"),
        "{noentry}"
    );
    let text = std::fs::read_to_string(&log).unwrap();
    assert_eq!(
        text.matches("loaded").count(),
        1,
        "library loaded more than once:\n{text}"
    );

    assert!(g.sc(&["stop", "p1"]).0);
    g.wait_state("p1", "STOPPED", T);
    assert_eq!(g.state("p2"), "RUNNING");
    assert!(std::fs::read_to_string(&log)
        .unwrap()
        .contains("stopped p1"));

    // SIGTERM stops the rest in reverse start order.
    assert!(g.sc(&["start", "p1"]).0);
    g.wait_state("p1", "RUNNING", T);
    let mut daemon = g.daemon.take().unwrap();
    daemon.terminate();
    let status = daemon
        .wait_timeout(Duration::from_secs(20))
        .expect("svchost did not exit");
    assert!(status.success());
    let text = std::fs::read_to_string(&log).unwrap();
    let stops: Vec<&str> = text.lines().filter(|l| l.starts_with("stopped")).collect();
    assert_eq!(stops, ["stopped p1", "stopped p2", "stopped p1"], "{text}");
    assert!(!g.rundir.join("svchost.g.sock").exists());
}

#[test]
fn only_root_or_svcadm_may_control() {
    if !common::require_root() {
        return;
    }
    let g = Group::start(
        "svc-auth",
        "[group]\nservices = d\n\n[service d]\napplet = nbd\nargs = -t -k @DIR@/d.sock /dev/null\n",
    );
    g.wait_state("d", "RUNNING", T);
    let as_nobody = |args: &[&str]| {
        let out = run_with_timeout(
            Command::new("setpriv")
                .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
                .env("TOOLBOX_RUNDIR", &g.rundir)
                .arg(toolbox())
                .arg("sc")
                .args(args),
            T,
        );
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let (ok, out) = as_nobody(&["query", "d"]);
    assert!(ok && out.contains("RUNNING"), "{out}");
    let (ok, out) = as_nobody(&["stop", "d"]);
    assert!(
        !ok && out.contains("FAILED 5:") && out.contains("Access is denied."),
        "{out}"
    );
    assert_eq!(g.state("d"), "RUNNING");
}

#[test]
fn malformed_group_files_name_file_and_line() {
    let dir = TempDir::new("svc-bad");
    for (conf, needle) in [
        (
            "[group]\nservices = a\n[service a]\napplet = frob\n",
            "g.conf:3: unknown applet 'frob'",
        ),
        (
            "[group]\nservices =\n",
            "g.conf:2: the services list is empty",
        ),
        (
            "[group]\nservices = a\n[service a]\napplet = nbd\ncolour = blue\n",
            "g.conf:5: unknown key 'colour'",
        ),
        ("[group]\nservices = a\njunk\n", "g.conf:3: malformed line"),
    ] {
        std::fs::write(dir.path().join("g.conf"), conf).unwrap();
        let out = run_with_timeout(
            Command::new(toolbox())
                .args(["svchost", "-f", "-k", "g", "-c"])
                .arg(dir.path()),
            T,
        );
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{conf}: {err}");
        assert!(err.contains(needle), "{conf}: {err}");
    }
    let out = run_with_timeout(
        Command::new(toolbox())
            .args(["svchost", "-f", "-k", "nosuchgroup", "-c"])
            .arg(dir.path()),
        T,
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown group 'nosuchgroup'"));
}

#[test]
fn sc_reports_unknown_services_with_1060() {
    let dir = TempDir::new("svc-none");
    let out = run_with_timeout(
        Command::new(toolbox())
            .env("TOOLBOX_RUNDIR", dir.path())
            .args(["sc", "query", "ghost"]),
        T,
    );
    assert!(!out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "[SC] EnumQueryServicesStatus:OpenService FAILED 1060:\n\n\
         The specified service does not exist as an installed service.\n\n"
    );
}
