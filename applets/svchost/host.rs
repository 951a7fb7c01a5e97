//! The service host: one record per configured service, started and
//! supervised as tasks on the shared runtime (built-in applets) or as
//! plugin threads, with Windows status semantics and failure actions.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::Notify;
use tracing::Instrument;

use super::config::{FailureAction, GroupConfig, ServiceConfig, ServiceKind, StartType};
use super::restart::{still_due, FailureCount};
use super::status::*;
use crate::applets::{self, Entry};
use crate::service::{Context, Controller, Notifier};

/// How long a service gets to stop before it is abandoned.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// How to ask a running service to do something.
pub enum Control {
    Applet(Controller, tokio::task::AbortHandle),
    #[cfg(feature = "svchost-plugins")]
    Plugin(Arc<super::plugin::Handler>),
    /// A plugin in a child process of its own (`isolate = process`).
    #[cfg(feature = "svchost-plugins")]
    Process(super::isolate::Remote),
}

pub struct SlotState {
    pub status: Status,
    /// Why it last stopped, for humans (loader error, service error).
    pub message: Option<String>,
    /// The service's own STATUS= text.
    pub status_text: Option<String>,
    pub stop_requested: bool,
    pub failures: FailureCount,
    pub control: Option<Control>,
    /// The status handle the running instance of a plugin got from
    /// `register_ctrl_handler`; cleared when it reports STOPPED or its run
    /// ends, so a stale handle is refused and each start gets a fresh one.
    pub status_handle: Option<usize>,
}

pub struct Slot {
    pub config: ServiceConfig,
    state: Mutex<SlotState>,
    pub changed: Notify,
}

impl Slot {
    fn new(config: ServiceConfig) -> Slot {
        Slot {
            config,
            state: Mutex::new(SlotState {
                status: Status::stopped(),
                message: None,
                status_text: None,
                stop_requested: false,
                failures: FailureCount::default(),
                control: None,
                status_handle: None,
            }),
            changed: Notify::new(),
        }
    }

    pub fn lock(&self) -> MutexGuard<'_, SlotState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn status(&self) -> Status {
        self.lock().status
    }

    pub fn set_status(&self, status: Status) {
        self.lock().status = status;
        self.changed.notify_waiters();
    }

    fn set_state(&self, state: State, accepted: u32) {
        {
            let mut s = self.lock();
            s.status.state = state;
            s.status.controls_accepted = accepted;
            s.status.checkpoint = 0;
            s.status.wait_hint_ms = match state {
                State::StartPending | State::StopPending => STOP_TIMEOUT.as_millis() as u32,
                _ => 0,
            };
        }
        self.changed.notify_waiters();
    }

    /// Waits until `done` holds for the status, or `timeout` passes.
    pub async fn wait_for(&self, timeout: Duration, done: impl Fn(&Status) -> bool) -> bool {
        tokio::time::timeout(timeout, self.wait_until(&done))
            .await
            .is_ok()
            || done(&self.status())
    }

    /// Waits, however long it takes, until `done` holds for the status.
    pub async fn wait_until(&self, done: impl Fn(&Status) -> bool) {
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if done(&self.status()) {
                return;
            }
            notified.await;
        }
    }
}

/// Built-in services report through the shared readiness notifier.
struct SlotNotifier(Arc<Slot>);

impl Notifier for SlotNotifier {
    fn ready(&self) {
        // Every applet's context carries reload requests; one with nothing
        // to reread ignores them, as it ignores SIGHUP when alone.
        self.0.set_state(
            State::Running,
            ACCEPT_STOP | ACCEPT_SHUTDOWN | ACCEPT_PARAMCHANGE,
        );
    }

    fn status(&self, text: &str) {
        self.0.lock().status_text = Some(text.to_owned());
    }

    fn stopping(&self) {
        self.0.set_state(State::StopPending, 0);
    }
}

pub struct Host {
    pub group: String,
    pub slots: Vec<Arc<Slot>>,
    pub stack_size: Option<usize>,
    #[cfg(feature = "svchost-plugins")]
    pub plugins: super::plugin::Loader,
}

/// How one run of a service ended.
pub struct ExitReport {
    win32: u32,
    specific: u32,
    message: Option<String>,
}

impl ExitReport {
    pub fn new(win32: u32, specific: u32, message: Option<String>) -> ExitReport {
        ExitReport {
            win32,
            specific,
            message,
        }
    }

    /// The report as an isolated plugin's process relays it.
    #[cfg(feature = "svchost-plugins")]
    pub fn message_line(&self) -> String {
        super::relay::Message::Exit {
            win32: self.win32,
            specific: self.specific,
            message: self.message.clone().unwrap_or_default(),
        }
        .encode()
    }

    fn clean() -> ExitReport {
        ExitReport {
            win32: 0,
            specific: 0,
            message: None,
        }
    }

    /// The service could not be loaded (the seed's AbortSvchostService).
    pub fn loader(win32: u32, message: String) -> ExitReport {
        ExitReport {
            win32,
            specific: 0,
            message: Some(message),
        }
    }

    /// What a plugin reported with its final status.
    pub fn from_status(status: &Status) -> ExitReport {
        ExitReport {
            win32: status.win32_exit_code,
            specific: status.service_exit_code,
            message: None,
        }
    }

    fn failed(&self) -> bool {
        self.win32 != 0
    }
}

impl Host {
    pub fn new(group: &str, config: &GroupConfig) -> Arc<Host> {
        Arc::new(Host {
            group: group.to_owned(),
            slots: config
                .services
                .iter()
                .map(|s| Arc::new(Slot::new(s.clone())))
                .collect(),
            stack_size: config.stack_size_kb.map(|kb| kb * 1024),
            #[cfg(feature = "svchost-plugins")]
            plugins: super::plugin::Loader::default(),
        })
    }

    pub fn find(&self, name: &str) -> Option<&Arc<Slot>> {
        self.slots
            .iter()
            .find(|s| s.config.name.eq_ignore_ascii_case(name))
    }

    /// Starts every auto-start service, in order.
    pub fn start_auto(self: &Arc<Self>) {
        for slot in &self.slots {
            if slot.config.start == StartType::Auto {
                let _ = self.start(slot, Vec::new());
            }
        }
    }

    /// Starts a stopped service (sc start); its supervisor applies failure actions.
    pub fn start(self: &Arc<Self>, slot: &Arc<Slot>, extra_args: Vec<String>) -> Result<(), u32> {
        {
            let mut s = slot.lock();
            if s.status.state != State::Stopped {
                return Err(ERROR_SERVICE_ALREADY_RUNNING);
            }
            s.stop_requested = false;
            s.message = None;
            s.status = Status {
                state: State::StartPending,
                wait_hint_ms: STOP_TIMEOUT.as_millis() as u32,
                ..Status::stopped()
            };
        }
        slot.changed.notify_waiters();
        let host = self.clone();
        let slot = slot.clone();
        tokio::spawn(async move { host.supervise(slot, extra_args).await });
        Ok(())
    }

    async fn supervise(self: Arc<Self>, slot: Arc<Slot>, extra_args: Vec<String>) {
        loop {
            let exit = self.run_once(&slot, &extra_args).await;
            let action = {
                let mut s = slot.lock();
                s.control = None;
                s.status_handle = None;
                s.status = Status {
                    win32_exit_code: exit.win32,
                    service_exit_code: exit.specific,
                    ..Status::stopped()
                };
                s.message = exit.message.clone();
                let stop_requested = s.stop_requested;
                s.failures.after_run(
                    exit.failed(),
                    stop_requested,
                    Instant::now(),
                    &slot.config.failure_actions,
                    slot.config.reset_period,
                )
            };
            slot.changed.notify_waiters();
            if let Some(msg) = &exit.message {
                tracing::warn!("service {} stopped: {msg}", slot.config.name);
            }
            match action {
                Some(FailureAction::Restart(delay)) => {
                    tracing::info!("restarting {} in {delay:?}", slot.config.name);
                    tokio::time::sleep(delay).await;
                    let mut s = slot.lock();
                    if !still_due(s.stop_requested, s.status.state) {
                        return;
                    }
                    s.status.state = State::StartPending;
                    drop(s);
                    slot.changed.notify_waiters();
                }
                _ => return,
            }
        }
    }

    async fn run_once(&self, slot: &Arc<Slot>, extra_args: &[String]) -> ExitReport {
        match &slot.config.kind {
            ServiceKind::Applet { applet, args } => {
                let mut argv: Vec<std::ffi::OsString> = vec![applet.into()];
                argv.extend(args.iter().chain(extra_args).map(Into::into));
                self.run_applet(slot, applet, &argv).await
            }
            #[cfg(feature = "svchost-plugins")]
            ServiceKind::Library { path, entry } => match slot.config.isolation {
                super::config::Isolation::InProcess => {
                    super::plugin::run(self, slot, path, entry, extra_args).await
                }
                super::config::Isolation::Process => {
                    super::isolate::run(self, slot, path, entry, extra_args).await
                }
            },
            #[cfg(not(feature = "svchost-plugins"))]
            ServiceKind::Library { .. } => ExitReport {
                win32: ERROR_MOD_NOT_FOUND,
                specific: 0,
                message: Some("plugin services are not built into this toolbox".into()),
            },
        }
    }

    async fn run_applet(
        &self,
        slot: &Arc<Slot>,
        applet: &str,
        argv: &[std::ffi::OsString],
    ) -> ExitReport {
        let Some(Entry::Service(parse)) = applets::find(applet).map(|a| &a.entry) else {
            return ExitReport {
                win32: ERROR_FILE_NOT_FOUND,
                specific: 0,
                message: Some(format!("'{applet}' is not a daemon applet")),
            };
        };
        let launch = match parse(argv) {
            Ok(launch) => launch,
            Err(code) => {
                return ExitReport {
                    win32: ERROR_SERVICE_SPECIFIC_ERROR,
                    specific: code as u32,
                    message: Some(format!(
                        "{applet} rejected its arguments (exit code {code})"
                    )),
                }
            }
        };
        let name = slot.config.name.clone();
        let (ctx, controller) = Context::new(&name, Arc::new(SlotNotifier(slot.clone())));
        let span = tracing::info_span!("service", name = %name);
        let task = tokio::spawn((launch.run)(ctx).instrument(span));
        {
            let mut s = slot.lock();
            let stop_now = s.stop_requested;
            if stop_now {
                controller.request_shutdown();
            }
            s.control = Some(Control::Applet(controller, task.abort_handle()));
        }
        match task.await {
            Ok(Ok(())) => ExitReport::clean(),
            Ok(Err(e)) => ExitReport {
                win32: ERROR_SERVICE_SPECIFIC_ERROR,
                specific: 1,
                message: Some(e.0),
            },
            Err(e) if e.is_panic() => ExitReport {
                win32: ERROR_PROCESS_ABORTED,
                specific: 0,
                message: Some(panic_text(e.into_panic())),
            },
            Err(_) => ExitReport {
                win32: ERROR_SERVICE_REQUEST_TIMEOUT,
                specific: 0,
                message: Some("did not stop in time; abandoned".into()),
            },
        }
    }

    /// Sends a control (sc stop/pause/continue/interrogate).
    pub fn control(&self, slot: &Arc<Slot>, code: u32) -> Result<(), u32> {
        let mut s = slot.lock();
        let state = s.status.state;
        if state == State::Stopped {
            return Err(ERROR_SERVICE_NOT_ACTIVE);
        }
        let accepted = s.status.controls_accepted;
        let needed = match code {
            CONTROL_STOP | CONTROL_SHUTDOWN => ACCEPT_STOP,
            CONTROL_PAUSE | CONTROL_CONTINUE => ACCEPT_PAUSE_CONTINUE,
            CONTROL_PARAMCHANGE => ACCEPT_PARAMCHANGE,
            CONTROL_INTERROGATE => 0,
            _ => return Err(ERROR_INVALID_SERVICE_CONTROL),
        };
        if code == CONTROL_INTERROGATE {
            return Ok(());
        }
        if accepted & needed == 0 {
            // A service still starting may be stopped: its context sees it.
            if !(code == CONTROL_STOP && state == State::StartPending) {
                return Err(ERROR_SERVICE_CANNOT_ACCEPT_CTRL);
            }
        }
        if code == CONTROL_STOP || code == CONTROL_SHUTDOWN {
            s.stop_requested = true;
            s.status.state = State::StopPending;
            s.status.wait_hint_ms = STOP_TIMEOUT.as_millis() as u32;
        }
        match &s.control {
            Some(Control::Applet(controller, _))
                if code == CONTROL_STOP || code == CONTROL_SHUTDOWN =>
            {
                controller.request_shutdown();
            }
            Some(Control::Applet(controller, _)) if code == CONTROL_PARAMCHANGE => {
                controller.request_reload();
            }
            Some(Control::Applet(..)) => {}
            #[cfg(feature = "svchost-plugins")]
            Some(Control::Plugin(handler)) => handler.send(code),
            #[cfg(feature = "svchost-plugins")]
            Some(Control::Process(remote)) => remote.send(code),
            None => {}
        }
        drop(s);
        slot.changed.notify_waiters();
        Ok(())
    }

    /// Asks every running service that rereads its configuration to do so
    /// (svchost got SIGHUP); returns how many were asked.
    pub fn reload_all(&self) -> usize {
        self.slots
            .iter()
            .filter(|slot| slot.status().controls_accepted & ACCEPT_PARAMCHANGE != 0)
            .filter(|slot| self.control(slot, CONTROL_PARAMCHANGE).is_ok())
            .count()
    }

    /// Stops a service and waits for it, abandoning it after the timeout.
    pub async fn stop_and_wait(&self, slot: &Arc<Slot>, timeout: Duration) {
        if self.control(slot, CONTROL_STOP).is_err() && slot.status().state == State::Stopped {
            return;
        }
        if !slot.wait_for(timeout, |s| s.state == State::Stopped).await {
            tracing::warn!("{} did not stop within {timeout:?}", slot.config.name);
            match &slot.lock().control {
                Some(Control::Applet(_, abort)) => abort.abort(),
                #[cfg(feature = "svchost-plugins")]
                Some(Control::Process(remote)) => remote.kill(),
                _ => {}
            }
            slot.wait_for(Duration::from_secs(1), |s| s.state == State::Stopped)
                .await;
        }
    }

    /// Every auto-start service is running or has failed at least once.
    pub async fn wait_auto_settled(&self) {
        for slot in &self.slots {
            if slot.config.start == StartType::Auto {
                slot.wait_until(|s| {
                    matches!(s.state, State::Running | State::Stopped | State::Paused)
                })
                .await;
            }
        }
    }
}

fn panic_text(payload: Box<dyn std::any::Any + Send>) -> String {
    let text = payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "panic".into());
    format!("panicked: {text}")
}
