//! Hosting one service alone in its own process: logging, daemonizing with
//! readiness, pid file, the tokio runtime, and signals wired to the service's
//! controls (SIGTERM/SIGINT: shutdown; SIGHUP: reload).

use std::sync::{Arc, Mutex};

use tokio::signal::unix::{signal, SignalKind};
use tracing::Level;

use crate::daemon::{self, PidFile, ReadinessPipe};
use crate::notify::SdNotify;
use crate::service::{Context, Controller, Launch, LogTarget, Notifier};

/// Reports readiness to whoever started us: the parent waiting on the
/// readiness pipe, and systemd.
struct StandaloneNotifier {
    pipe: Mutex<Option<ReadinessPipe>>,
    sd: Option<SdNotify>,
    /// STOPPING=1 goes out once, whether the signal or the service says it first.
    stopping_sent: std::sync::atomic::AtomicBool,
    /// Tells the start-up memory trim (`crate::trim`) that we are ready.
    ready_seen: tokio::sync::watch::Sender<bool>,
}

impl StandaloneNotifier {
    /// Tells a waiting parent why start-up failed; false if nobody waits.
    fn report_failure(&self, message: &str) -> bool {
        match self.pipe.lock().ok().and_then(|mut p| p.take()) {
            Some(mut pipe) => {
                pipe.failed(message);
                true
            }
            None => false,
        }
    }
}

impl Notifier for StandaloneNotifier {
    fn ready(&self) {
        if let Some(mut pipe) = self.pipe.lock().ok().and_then(|mut p| p.take()) {
            pipe.ready();
        }
        if let Some(sd) = &self.sd {
            sd.send("READY=1");
        }
        self.ready_seen.send_replace(true);
    }

    fn status(&self, text: &str) {
        if let Some(sd) = &self.sd {
            sd.send(&format!("STATUS={text}"));
        }
    }

    fn stopping(&self) {
        if self
            .stopping_sent
            .swap(true, std::sync::atomic::Ordering::Relaxed)
        {
            return;
        }
        if let Some(sd) = &self.sd {
            sd.send("STOPPING=1");
        }
    }
}

/// Runs one applet's service as the whole process; returns the exit code.
pub fn run_standalone(name: &str, launch: Launch) -> i32 {
    let host = launch.host;
    let default_target = if host.daemonize {
        LogTarget::Syslog
    } else {
        LogTarget::Stderr
    };
    let target = crate::log::target_from_env().unwrap_or(default_target);
    let level = crate::log::level_for(host.base_level.unwrap_or(Level::WARN), host.verbosity);

    // Fork before logging threads or the runtime exist.
    let pipe = if host.daemonize {
        match daemon::daemonize(name) {
            Ok(pipe) => Some(pipe),
            Err(e) => {
                eprintln!("{name}: cannot daemonize: {e}");
                return 1;
            }
        }
    } else {
        None
    };
    crate::log::init(name, level, target);

    let notifier = Arc::new(StandaloneNotifier {
        pipe: Mutex::new(pipe),
        sd: SdNotify::from_env(),
        stopping_sent: std::sync::atomic::AtomicBool::new(false),
        ready_seen: tokio::sync::watch::channel(false).0,
    });
    let fail = |message: String| -> i32 {
        if !notifier.report_failure(&message) {
            // Nobody waits on a pipe: stderr (still the terminal in the
            // foreground), and the log for a daemon past its readiness.
            if host.daemonize {
                tracing::error!("{message}");
            } else {
                eprintln!("{name}: {message}");
            }
        }
        1
    };

    let _pid_file = match &host.pid_file {
        Some(path) => match PidFile::create(path) {
            Ok(pid) => Some(pid),
            Err(e) => return fail(e),
        },
        None => None,
    };

    if let Some((user, caps)) = &host.run_as {
        if let Err(e) = crate::privs::drop_to(user, caps) {
            return fail(e);
        }
    }
    // Only svchost asks for more than one thread; the multi-thread scheduler
    // rides with its feature (tokio/rt-multi-thread), not with every build.
    #[cfg(feature = "svchost")]
    let mut builder = if host.threads > 1 {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(host.threads);
        b
    } else {
        tokio::runtime::Builder::new_current_thread()
    };
    #[cfg(not(feature = "svchost"))]
    let mut builder = tokio::runtime::Builder::new_current_thread();
    if let Some(size) = host.stack_size {
        builder.thread_stack_size(size);
    }
    let runtime = builder.enable_all().build();
    let runtime = match runtime {
        Ok(rt) => rt,
        Err(e) => return fail(format!("cannot start runtime: {e}")),
    };

    let (ctx, controller) = Context::owning_process(name, notifier.clone());
    let signal_notifier = notifier.clone();
    let ready_seen = notifier.ready_seen.subscribe();
    let result = runtime.block_on(async move {
        let signals = match watch_signals(controller, signal_notifier) {
            Ok(task) => task,
            Err(e) => return Err(format!("cannot install signal handlers: {e}").into()),
        };
        let trim = tokio::spawn(crate::trim::after_ready(ready_seen));
        let result = (launch.run)(ctx).await;
        signals.abort();
        trim.abort();
        result
    });
    // Blocking I/O still queued on the pool must not hold up exit.
    runtime.shutdown_timeout(std::time::Duration::from_secs(5));
    match result {
        Ok(()) => 0,
        Err(e) => fail(e.0),
    }
}

fn watch_signals(
    controller: Controller,
    notifier: Arc<StandaloneNotifier>,
) -> std::io::Result<tokio::task::JoinHandle<()>> {
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    Ok(tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
                _ = hup.recv() => {
                    tracing::info!("reload requested");
                    controller.request_reload();
                    continue;
                }
            }
            tracing::info!("shutdown requested");
            notifier.stopping();
            controller.request_shutdown();
        }
    }))
}
