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
        Group::start_full(name, conf, prepare, &[])
    }

    /// Like `start`, with environment variables for svchost.
    fn start_with_env(name: &str, conf: &str, env: &[(&str, &Path)]) -> Group {
        Group::start_full(name, conf, |_| {}, env)
    }

    fn start_full(
        name: &str,
        conf: &str,
        prepare: impl FnOnce(&Path),
        env: &[(&str, &Path)],
    ) -> Group {
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
            .envs(env.iter().copied())
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
    build_c_plugin(dir, "plugin", PLUGIN_C)
}

/// Builds `source` as `dir/NAME.so` against svchost.h. Without a C
/// compiler: None, and a failure under CI.
fn build_c_plugin(dir: &Path, name: &str, source: &str) -> Option<PathBuf> {
    let src = dir.join(format!("{name}.c"));
    std::fs::write(&src, source).unwrap();
    let lib = dir.join(format!("{name}.so"));
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
    let why = String::from_utf8_lossy(&out.stderr);
    common::require(
        out.status.success(),
        &format!("cannot build the plugin {name}: {why}"),
    )
    .then_some(lib)
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

/// A plugin that keeps using its status handle after reporting STOPPED,
/// and tries the previous instance's handle when started again.
const STALE_HANDLE_C: &str = r#"
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include "svchost.h"
SVCHOST_PLUGIN

static void note(const char *fmt, int a, int b) {
    FILE *f = fopen(getenv("PLUGIN_LOG"), "a");
    if (f) { fprintf(f, fmt, a, b); fputc('\n', f); fclose(f); }
}
static pthread_mutex_t m = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t c = PTHREAD_COND_INITIALIZER;
static int stop;
static void handler(unsigned int control, void *ctx) {
    (void)ctx;
    if (control == SERVICE_CONTROL_STOP) {
        pthread_mutex_lock(&m); stop = 1; pthread_cond_signal(&c); pthread_mutex_unlock(&m);
    }
}
static void *previous;
void ServiceMain(int argc, char **argv) {
    (void)argc;
    stop = 0;
    void *h = register_ctrl_handler(argv[0], handler, 0);
    struct svchost_service_status st = { SERVICE_RUNNING, SERVICE_ACCEPT_STOP };
    if (previous) {
        note("fresh %d %d", h != previous, h != 0);
        errno = 0;
        int r = set_service_status(previous, &st);
        note("stale %d %d", r, errno);
    }
    set_service_status(h, &st);
    note("running %d %d", 0, 0);
    pthread_mutex_lock(&m);
    while (!stop) pthread_cond_wait(&c, &m);
    pthread_mutex_unlock(&m);
    st.current_state = SERVICE_STOPPED; st.controls_accepted = 0;
    set_service_status(h, &st);
    /* A buggy plugin reporting after STOPPED: must fail, must not stick. */
    st.current_state = SERVICE_STOP_PENDING;
    errno = 0;
    int r = set_service_status(h, &st);
    note("late %d %d", r, errno);
    previous = h;
}
"#;

/// Issue 19: a status handle outlived its service: STOP_PENDING reported
/// after STOPPED stuck (sc start then failed with 1056) and a restarted
/// instance could use the old handle.
#[test]
fn a_status_handle_dies_at_stopped_and_each_start_gets_a_new_one() {
    let build = TempDir::new("svc-handle-build");
    let Some(lib) = build_c_plugin(build.path(), "stale", STALE_HANDLE_C) else {
        return;
    };
    let log = build.path().join("stale.log");
    let conf = format!(
        "[group]\nservices = s\n\n[service s]\nlibrary = {}\n",
        lib.display()
    );
    let g = Group::start_with_env("svc-handle", &conf, &[("PLUGIN_LOG", &log)]);
    g.wait_state("s", "RUNNING", T);
    assert!(g.sc(&["stop", "s"]).0);
    let logged = |needle: &str| {
        wait_until(T, || {
            std::fs::read_to_string(&log).is_ok_and(|t| t.contains(needle))
        })
        .is_some()
    };
    assert!(logged("late "), "{:?}", std::fs::read_to_string(&log));
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("late 0 9"), "late status accepted:\n{text}");
    assert_eq!(g.state("s"), "STOPPED");

    let (ok, out) = g.sc(&["start", "s"]);
    assert!(ok, "{out}");
    g.wait_state("s", "RUNNING", T);
    assert!(logged("stale "));
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("fresh 1 1"), "handle reused:\n{text}");
    assert!(text.contains("stale 0 9"), "old handle accepted:\n{text}");
    assert_eq!(g.state("s"), "RUNNING");
}

/// A plugin that reports RUNNING, then crashes the way its service name
/// says: abort(), a NULL write, or exit(3).
const CRASHER_C: &str = r#"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "svchost.h"
SVCHOST_PLUGIN

void ServiceMain(int argc, char **argv) {
    (void)argc;
    void *h = register_ctrl_handler(argv[0], 0, 0);
    struct svchost_service_status st = { SERVICE_RUNNING, 0 };
    set_service_status(h, &st);
    FILE *f = fopen(getenv("PLUGIN_LOG"), "a");
    if (f) { fprintf(f, "running %s\n", argv[0]); fclose(f); }
    usleep(300 * 1000);
    if (strstr(argv[0], "abort")) abort();
    if (strstr(argv[0], "segv")) { volatile int *p = 0; *p = 1; }
    exit(3);
}
"#;

/// Issue 19: a crashing C plugin took the whole group down. With
/// `isolate = process` it dies alone, its failure actions restart it, and
/// the other services (an applet, an in-process plugin) keep running.
#[test]
fn an_isolated_plugin_that_crashes_dies_alone_and_is_restarted() {
    let build = TempDir::new("svc-isolate-build");
    let (Some(crasher), Some(steady)) = (
        build_c_plugin(build.path(), "crasher", CRASHER_C),
        build_plugin(build.path()),
    ) else {
        return;
    };
    let log = build.path().join("plugins.log");
    let mut conf =
        String::from("[group]\nservices = disk crash_abort crash_segv crash_exit steady\n\n");
    conf += "[service disk]\napplet = nbd\nargs = -t -k @DIR@/d.sock @DIR@/a.img\n\n";
    for name in ["crash_abort", "crash_segv", "crash_exit"] {
        conf += &format!(
            "[service {name}]\nlibrary = {}\nisolate = process\n\
             failure_actions = restart/100 restart/100 none\n\n",
            crasher.display()
        );
    }
    conf += &format!("[service steady]\nlibrary = {}\n", steady.display());
    let g = Group::start_full(
        "svc-isolate",
        &conf,
        |dir| {
            image(dir, "a.img");
        },
        &[("PLUGIN_LOG", &log)],
    );
    g.wait_state("disk", "RUNNING", T);
    g.wait_state("steady", "RUNNING", T);
    // Each crasher runs three times (start + two restarts), then stays
    // stopped with "the process terminated unexpectedly".
    let runs = |name: &str| {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .filter(|l| *l == format!("running {name}"))
            .count()
    };
    for (name, death) in [
        ("crash_abort", "signal 6 (SIGABRT"),
        ("crash_segv", "signal 11 (SIGSEGV"),
        ("crash_exit", "exited with status 3"),
    ] {
        assert!(
            wait_until(T, || runs(name) == 3 && g.state(name) == "STOPPED").is_some(),
            "{name}: {} runs: {}",
            runs(name),
            g.sc(&["query", name]).1
        );
        let (_, out) = g.sc(&["query", name]);
        assert!(out.contains("WIN32_EXIT_CODE    : 1067"), "{out}");
        assert!(out.contains(death), "{out}");
    }
    assert_eq!(runs("crash_abort"), 3, "restarted past its failure actions");
    assert_eq!(g.state("disk"), "RUNNING");
    assert_eq!(g.state("steady"), "RUNNING");
    assert_eq!(nbd_size(&g.path("d.sock")).as_deref(), Some("1048576"));
    // The survivor still obeys sc, and a crashed service can start again.
    assert!(g.sc(&["stop", "steady"]).0);
    g.wait_state("steady", "STOPPED", T);
    assert!(g.sc(&["start", "crash_exit"]).0);
    assert!(wait_until(T, || runs("crash_exit") == 4).is_some());
}

/// An isolated plugin is stopped through its process like any other.
#[test]
fn an_isolated_plugin_obeys_stop_and_start() {
    let build = TempDir::new("svc-isolate-stop-build");
    let Some(lib) = build_plugin(build.path()) else {
        return;
    };
    let log = build.path().join("plugin.log");
    let conf = format!(
        "[group]\nservices = iso\n\n[service iso]\nlibrary = {}\nisolate = process\n",
        lib.display()
    );
    let mut g = Group::start_with_env("svc-isolate-stop", &conf, &[("PLUGIN_LOG", &log)]);
    g.wait_state("iso", "RUNNING", T);
    let (_, out) = g.sc(&["queryex", "iso"]);
    let pid = out
        .lines()
        .find(|l| l.trim_start().starts_with("PID"))
        .and_then(|l| l.split_whitespace().last())
        .unwrap_or("0")
        .to_string();
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    assert!(
        String::from_utf8_lossy(&cmdline).contains("--plugin-process"),
        "PID {pid} is not the plugin's process:\n{out}"
    );
    assert!(g.sc(&["stop", "iso"]).0);
    g.wait_state("iso", "STOPPED", T);
    let (_, out) = g.sc(&["query", "iso"]);
    assert!(out.contains("WIN32_EXIT_CODE    : 0"), "{out}");
    assert!(std::fs::read_to_string(&log)
        .unwrap()
        .contains("stopped iso"));
    assert!(g.sc(&["start", "iso"]).0);
    g.wait_state("iso", "RUNNING", T);
    let mut daemon = g.daemon.take().unwrap();
    daemon.terminate();
    assert!(daemon
        .wait_timeout(Duration::from_secs(20))
        .expect("svchost did not exit")
        .success());
    let text = std::fs::read_to_string(&log).unwrap();
    assert_eq!(text.matches("stopped iso").count(), 2, "{text}");
}

/// Issue 19: a bare `sc query` lists only active services, with their
/// DISPLAY_NAME, as Windows' does; `state= all` (Windows spelling) and
/// `state= inactive` choose otherwise.
#[test]
fn bare_query_lists_active_services_and_state_all_lists_every_one() {
    let g = Group::start(
        "svc-state",
        "[group]\nservices = on off\n\n[service on]\napplet = nbd\nargs = -t -k @DIR@/on.sock /dev/null\n\n\
         [service off]\napplet = nbd\nargs = -t -k @DIR@/off.sock /dev/null\nstart = demand\n",
    );
    g.wait_state("on", "RUNNING", T);
    let (ok, active) = g.sc(&["query"]);
    assert!(ok, "{active}");
    assert!(
        active.contains("SERVICE_NAME: on\nDISPLAY_NAME: on\n"),
        "{active}"
    );
    assert!(!active.contains("SERVICE_NAME: off"), "{active}");
    let (ok, all) = g.sc(&["query", "state=", "all"]);
    assert!(ok, "{all}");
    assert!(
        all.contains("SERVICE_NAME: on") && all.contains("SERVICE_NAME: off\nDISPLAY_NAME: off\n"),
        "{all}"
    );
    let (ok, inactive) = g.sc(&["query", "state=", "inactive"]);
    assert!(ok && inactive.contains("SERVICE_NAME: off"), "{inactive}");
    assert!(!inactive.contains("SERVICE_NAME: on"), "{inactive}");
    // A named query shows the service whatever its state, without DISPLAY_NAME.
    let (ok, named) = g.sc(&["query", "off"]);
    assert!(ok && named.contains("1  STOPPED"), "{named}");
    assert!(!named.contains("DISPLAY_NAME"), "{named}");
    let (ok, bad) = g.sc(&["query", "state=", "sleepy"]);
    assert!(!ok, "{bad}");
}

/// Resumes a SIGSTOPped process however the test ends, so cleanup is quick.
struct Resume(i32);

impl Drop for Resume {
    fn drop(&mut self) {
        // SAFETY: a signal to the test's own child.
        unsafe { libc::kill(self.0, libc::SIGCONT) };
    }
}

/// Issue 19: sc asked groups one after another with a 30 s read timeout and
/// took any error for "no such service": with one group stopped, a query
/// of a healthy group's service took 32 s, the hung group's services were
/// "1060 does not exist", and a bare query silently left the group out.
#[test]
fn a_hung_group_is_reported_as_not_answering_and_others_answer_at_once() {
    let dir = TempDir::new("svc-hung");
    let rundir = dir.path().join("run");
    std::fs::write(
        dir.path().join("alive.conf"),
        format!(
            "[group]\nservices = healthy\n\n[service healthy]\napplet = nbd\nargs = -t -k {}/h.sock /dev/null\n",
            dir.path().display()
        ),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("frozen.conf"),
        format!(
            "[group]\nservices = stuck\n\n[service stuck]\napplet = nbd\nargs = -t -k {}/s.sock /dev/null\n",
            dir.path().display()
        ),
    )
    .unwrap();
    let spawn = |group: &str| {
        let mut cmd = Command::new(toolbox());
        cmd.env("TOOLBOX_RUNDIR", &rundir)
            .args(["svchost", "-f", "-k", group, "-c"])
            .arg(dir.path());
        Daemon::spawn(cmd)
    };
    let _alive = spawn("alive");
    let frozen = spawn("frozen");
    let sc = |args: &[&str]| {
        let started = std::time::Instant::now();
        let out = run_with_timeout(
            Command::new(toolbox())
                .env("TOOLBOX_RUNDIR", &rundir)
                .arg("sc")
                .args(args),
            Duration::from_secs(60),
        );
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            started.elapsed(),
        )
    };
    for service in ["healthy", "stuck"] {
        assert!(
            wait_until(T, || sc(&["query", service]).1.contains("4  RUNNING")).is_some(),
            "{service} never ran"
        );
    }
    // A group that is gone left its socket behind: that one is skipped.
    drop(std::os::unix::net::UnixListener::bind(rundir.join("svchost.gone.sock")).unwrap());

    frozen.signal(libc::SIGSTOP);
    let _resume = Resume(frozen.pid());
    let (ok, out, took) = sc(&["query", "healthy"]);
    assert!(ok && out.contains("4  RUNNING"), "{out}");
    assert!(took < Duration::from_secs(10), "took {took:?}");
    let (ok, out, took) = sc(&["query", "stuck"]);
    assert!(!ok, "{out}");
    assert!(out.contains("FAILED 1053"), "{out}");
    assert!(!out.contains("1060"), "{out}");
    assert!(took < Duration::from_secs(10), "took {took:?}");
    let (ok, out, _) = sc(&["query"]);
    assert!(!ok, "a group left out silently: {out}");
    assert!(out.contains("SERVICE_NAME: healthy"), "{out}");
    assert!(out.contains("group frozen FAILED 1053"), "{out}");
    assert!(!out.contains("gone"), "{out}");
    let (ok, out, _) = sc(&["stop", "stuck"]);
    assert!(!ok && out.contains("1053"), "{out}");

    frozen.signal(libc::SIGCONT);
    let (ok, out, _) = sc(&["query", "stuck"]);
    assert!(ok && out.contains("4  RUNNING"), "{out}");
    let (ok, out, _) = sc(&["query"]);
    assert!(ok && out.contains("SERVICE_NAME: stuck"), "{out}");
    let (ok, out, _) = sc(&["query", "ghost"]);
    assert!(!ok && out.contains("FAILED 1060"), "{out}");
}

/// `--status` of the hosted timesyncd, through its state file.
fn timesyncd_status(state: &Path) -> String {
    let out = run_with_timeout(
        Command::new(toolbox())
            .args(["timesyncd", "--status", "--state-file"])
            .arg(state),
        T,
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Issue 16: SIGHUP to svchost reached nobody, so a hosted timesyncd kept
/// its old servers until restarted. Now the group's SIGHUP is each hosted
/// service's reload, and `sc control NAME paramchange` asks one service.
/// timesyncd runs --no-adjust: the clock is never touched.
#[test]
fn sighup_to_svchost_makes_a_hosted_timesyncd_reread_its_configuration() {
    // Silent NTP servers: bound, never answering, so nothing leaves loopback.
    let silent: Vec<std::net::UdpSocket> = (0..3)
        .map(|_| std::net::UdpSocket::bind("127.0.0.1:0").unwrap())
        .collect();
    let server = |i: usize| format!("127.0.0.1:{}", silent[i].local_addr().unwrap().port());
    let dir = TempDir::new("svc-hup");
    let conf = dir.path().join("timesyncd.conf");
    let state = dir.path().join("state");
    let write = |i: usize| {
        std::fs::write(&conf, format!("[Time]\nNTP={}\nFallbackNTP=\n", server(i))).unwrap()
    };
    write(0);
    let group = format!(
        "[group]\nservices = time\n\n[service time]\napplet = timesyncd\n\
         args = -f --no-adjust -c {} --state-file {} --clock-file {}/clock\n",
        conf.display(),
        state.display(),
        dir.path().display()
    );
    let g = Group::start("svc-hup-group", &group);
    g.wait_state("time", "RUNNING", T);
    let wait_for_source = |i: usize| {
        let mut last = String::new();
        let shown = wait_until(T, || {
            last = timesyncd_status(&state);
            last.contains(&server(i))
        });
        assert!(shown.is_some(), "status never named {}:\n{last}", server(i));
        last
    };
    wait_for_source(0);

    write(1);
    g.daemon.as_ref().unwrap().signal(libc::SIGHUP);
    let status = wait_for_source(1);
    assert!(!status.contains(&server(0)), "old server kept:\n{status}");
    assert_eq!(g.state("time"), "RUNNING", "a reload is not a restart");

    write(2);
    let (ok, out) = g.sc(&["control", "time", "paramchange"]);
    assert!(ok && out.contains("4  RUNNING"), "{out}");
    let status = wait_for_source(2);
    assert!(!status.contains(&server(1)), "old server kept:\n{status}");
    let (ok, out) = g.sc(&["control", "time", "sleepy"]);
    assert!(!ok, "{out}");
}
