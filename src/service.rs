//! The service contract: a daemon applet is `async fn run(opts, ctx)`.
//!
//! A service gets everything process-wide through its [`Context`]: the
//! shutdown signal, reload requests, and the readiness notifier. It never
//! exits the process, installs signal handlers or keeps global state, so the
//! same code runs alone (see [`crate::runtime`]) or beside others in one
//! runtime under svchost.

use std::fmt;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;

use tokio::sync::watch;

/// A service failure, turned into one line at the edge (`nbd: cannot open ...`).
#[derive(Debug)]
pub struct ServiceError(pub String);

impl fmt::Display for ServiceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ServiceError {}

impl From<String> for ServiceError {
    fn from(s: String) -> Self {
        ServiceError(s)
    }
}

impl From<&str> for ServiceError {
    fn from(s: &str) -> Self {
        ServiceError(s.to_owned())
    }
}

pub type ServiceResult = Result<(), ServiceError>;
pub type ServiceFuture = Pin<Box<dyn Future<Output = ServiceResult> + Send>>;
pub type ServiceFn = Box<dyn FnOnce(Context) -> ServiceFuture + Send>;

/// Where the host should send a service's logs by default.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogTarget {
    Stderr,
    Syslog,
    None,
}

/// How a standalone run hosts the service.
#[derive(Clone, Debug, Default)]
pub struct HostOptions {
    /// Fork into the background; the parent exits once the service is ready.
    pub daemonize: bool,
    pub pid_file: Option<PathBuf>,
    /// Runtime worker threads; 1 means a current-thread runtime.
    pub threads: usize,
    /// Number of `-v` given; the applet's base level is raised by one per `-v`.
    pub verbosity: u8,
    /// The level with no `-v`.
    pub base_level: Option<tracing::Level>,
    /// Stack size of the runtime's threads, when not the default.
    pub stack_size: Option<usize>,
    /// Become this user, keeping these capabilities, before the runtime
    /// starts (so every thread it makes runs with the reduced set).
    pub run_as: Option<(String, Vec<u32>)>,
}

/// A parsed daemon invocation: the service and how to host it.
pub struct Launch {
    pub run: ServiceFn,
    pub host: HostOptions,
}

impl Launch {
    pub fn new<F, Fut>(host: HostOptions, run: F) -> Launch
    where
        F: FnOnce(Context) -> Fut + Send + 'static,
        Fut: Future<Output = ServiceResult> + Send + 'static,
    {
        Launch {
            run: Box::new(move |ctx| Box::pin(run(ctx))),
            host,
        }
    }
}

/// Receives a service's lifecycle reports. Standalone this is the readiness
/// pipe plus sd_notify; under svchost it is the service's status record.
pub trait Notifier: Send + Sync {
    fn ready(&self);
    fn status(&self, text: &str);
    fn stopping(&self);
}

/// A notifier that drops every report (tests, embedded use).
pub struct NullNotifier;

impl Notifier for NullNotifier {
    fn ready(&self) {}
    fn status(&self, _: &str) {}
    fn stopping(&self) {}
}

/// A cloneable handle on the shutdown request, for tasks a service spawns.
#[derive(Clone)]
pub struct Shutdown(watch::Receiver<bool>);

impl Shutdown {
    pub fn is_requested(&self) -> bool {
        *self.0.borrow()
    }

    /// Resolves once shutdown has been requested (or the host has gone away).
    pub async fn requested(&mut self) {
        let _ = self.0.wait_for(|stop| *stop).await;
    }
}

/// The host's side of a service's controls.
pub struct Controller {
    shutdown: watch::Sender<bool>,
    reload: watch::Sender<u64>,
}

impl Controller {
    pub fn request_shutdown(&self) {
        self.shutdown.send_replace(true);
    }

    pub fn request_reload(&self) {
        self.reload.send_modify(|generation| *generation += 1);
    }
}

/// What a service is given by its host.
pub struct Context {
    name: String,
    shutdown: Shutdown,
    reload: watch::Receiver<u64>,
    notifier: Arc<dyn Notifier>,
    owns_process: bool,
}

impl Context {
    /// A context and the controller that drives it, for a service that
    /// shares its process with others (svchost, tests).
    pub fn new(name: &str, notifier: Arc<dyn Notifier>) -> (Context, Controller) {
        Context::make(name, notifier, false)
    }

    /// As [`Context::new`], for the one service the process exists for
    /// (the standalone runner).
    pub fn owning_process(name: &str, notifier: Arc<dyn Notifier>) -> (Context, Controller) {
        Context::make(name, notifier, true)
    }

    fn make(name: &str, notifier: Arc<dyn Notifier>, owns_process: bool) -> (Context, Controller) {
        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        let (reload_tx, reload_rx) = watch::channel(0u64);
        let ctx = Context {
            name: name.to_owned(),
            shutdown: Shutdown(shutdown_rx),
            reload: reload_rx,
            notifier,
            owns_process,
        };
        (
            ctx,
            Controller {
                shutdown: shutdown_tx,
                reload: reload_tx,
            },
        )
    }

    /// The service's name (the applet name, or its svchost service name).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether the process is this service's alone, so that it may change
    /// what is process-wide (its user, its capabilities). Under svchost the
    /// group decides those.
    pub fn owns_process(&self) -> bool {
        self.owns_process
    }

    pub fn shutdown(&self) -> Shutdown {
        self.shutdown.clone()
    }

    /// Waits for the next reload request (SIGHUP standalone); never resolves
    /// if the host cannot send any.
    pub async fn reload_requested(&mut self) {
        if self.reload.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }

    /// The service has finished initialising and serves requests.
    pub fn ready(&self) {
        self.notifier.ready();
    }

    pub fn status(&self, text: &str) {
        self.notifier.status(text);
    }

    pub fn stopping(&self) {
        self.notifier.stopping();
    }
}

/// Parses an applet's command line with clap. On `--help` or a bad
/// argument clap's text is printed and the exit code returned: 0 for help
/// and version, 1 (as qemu-nbd and busybox exit) for mistakes.
pub fn parse_args<T: clap::Parser>(argv: &[std::ffi::OsString]) -> Result<T, i32> {
    T::try_parse_from(argv).map_err(|e| {
        use clap::error::ErrorKind;
        let _ = e.print();
        match e.kind() {
            ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => 0,
            _ => 1,
        }
    })
}

/// An I/O error as users read it: `No such file or directory`, without
/// Rust's `(os error 2)` suffix. The words are the C library's strerror,
/// as the tools the applets replace print them. The one such helper: use
/// it (or [`errno_text`]) wherever an error reaches a user.
pub fn io_text(e: &std::io::Error) -> String {
    let text = e.to_string();
    match text.find(" (os error ") {
        Some(at) => text[..at].to_owned(),
        None => text,
    }
}

/// A bare errno (a kernel's refusal) as users read it: [`io_text`] of it.
pub fn errno_text(errno: i32) -> String {
    io_text(&std::io::Error::from_raw_os_error(errno))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn controller_drives_shutdown_and_reload() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let (mut ctx, controller) = Context::new("svc", Arc::new(NullNotifier));
            let mut shutdown = ctx.shutdown();
            assert!(!shutdown.is_requested());
            controller.request_reload();
            tokio::time::timeout(std::time::Duration::from_secs(1), ctx.reload_requested())
                .await
                .expect("reload delivered");
            controller.request_shutdown();
            tokio::time::timeout(std::time::Duration::from_secs(1), shutdown.requested())
                .await
                .expect("shutdown delivered");
            assert!(ctx.shutdown().is_requested());
        });
    }

    #[test]
    fn only_the_standalone_context_owns_its_process() {
        let (alone, _) = Context::owning_process("svc", Arc::new(NullNotifier));
        let (hosted, _) = Context::new("svc", Arc::new(NullNotifier));
        assert!(alone.owns_process());
        assert!(!hosted.owns_process());
    }

    #[test]
    fn io_text_drops_the_os_error_suffix() {
        let e = std::io::Error::from_raw_os_error(libc::ENOENT);
        assert_eq!(io_text(&e), "No such file or directory");
        assert_eq!(errno_text(libc::EIO), "Input/output error");
    }
}
