//! The daemon's shell: the start-up sequence of the seed (datastore,
//! protocol properties, privileges, address-object map, then the socket),
//! and the Unix-socket server that hands requests to the engine.
//!
//! Dropping privileges changes the whole process, so the daemon does it
//! only when its host says it owns the process (standalone); under svchost
//! the group's `user =` decides. Capabilities are per thread on Linux (threads
//! made before the drop keep theirs), which is why the drop happens before
//! any helper thread exists. SIGHUP has nothing to reload: only ipmgmtd
//! writes the datastore.

mod auth;
mod dhcp;
mod dhcp_table;
mod engine;
#[cfg(test)]
mod fake_kernel;
mod files;
mod kernel;
mod netlink;
mod probe;
mod snapshot;
mod store;
mod sysctl;

use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinSet;

use self::dhcp::DhcpManager;
use self::dhcp_table::DhcpTable;
use self::engine::{Engine, Next, Outcome};
use self::files::FileLock;
use self::kernel::{KernelOpener, RealOpener};
use self::store::Store;
use super::model::{Error, Status};
use super::options::Config;
use super::paths::Paths;
use super::request::{Reply, Request};
use super::wire;
use crate::service::{Context, ServiceError, ServiceResult};

/// The user the daemon runs as when it exists, and what it keeps.
const SERVICE_USER: &str = "netadm";
const KEEP_CAPS: &[&str] = &["CAP_NET_ADMIN", "CAP_NET_RAW"];
/// Clients served at once; more are turned away.
const MAX_CLIENTS: usize = 64;
/// A client that sends nothing for this long is dropped.
const CLIENT_IDLE: Duration = Duration::from_secs(10);
/// How often changes kept under /run try to reach /etc again.
const WRITEBACK_EVERY: Duration = Duration::from_secs(10);

fn fail(message: String) -> ServiceError {
    ServiceError(message)
}

fn make_dir(path: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))
}

/// Hands the daemon's directories to the service user, then becomes it,
/// keeping only the capabilities it needs. Nothing happens when the user
/// does not exist, we are not root, or other services share the process
/// (`owns_process` false: the host says so).
fn drop_privileges(paths: &Paths, owns_process: bool) -> Result<bool, String> {
    // SAFETY: plain getter.
    if unsafe { libc::geteuid() } != 0 || !owns_process {
        return Ok(false);
    }
    let Ok(Some(user)) = nix::unistd::User::from_name(SERVICE_USER) else {
        return Ok(false);
    };
    let chown = |p: &Path| {
        let _ = nix::unistd::chown(p, Some(user.uid), Some(user.gid));
    };
    for dir in [&paths.run_dir, &paths.etc_dir] {
        chown(dir);
        if let Ok(entries) = std::fs::read_dir(dir) {
            for e in entries.flatten() {
                chown(&e.path());
            }
        }
    }
    let caps = KEEP_CAPS
        .iter()
        .map(|c| crate::privs::capability(c))
        .collect::<Result<Vec<u32>, String>>()?;
    crate::privs::drop_to(SERVICE_USER, &caps)
        .map_err(|e| format!("cannot drop privileges to {SERVICE_USER}: {e}"))?;
    Ok(true)
}

/// This boot and network namespace, to tell our own map cache from one
/// left by another system under the same root.
fn origin() -> String {
    use std::os::unix::fs::MetadataExt;
    let boot = sysctl::read("kernel/random/boot_id").unwrap_or_default();
    let netns = std::fs::metadata("/proc/self/ns/net")
        .map(|m| format!("{}:{}", m.dev(), m.ino()))
        .unwrap_or_default();
    format!("{boot}/{netns}")
}

pub async fn run(config: Config, ctx: Context) -> ServiceResult {
    let paths = Paths::new(&config.root);
    make_dir(&paths.run_dir)
        .map_err(|e| fail(format!("cannot create {}: {e}", paths.run_dir.display())))?;
    if let Err(e) = make_dir(&paths.etc_dir) {
        tracing::warn!("cannot create {}: {e}", paths.etc_dir.display());
    }
    let _instance = FileLock::acquire(&paths.instance_lock, false).map_err(|e| {
        if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
            fail(format!(
                "another ipmgmtd is running ({} is locked)",
                paths.instance_lock.display()
            ))
        } else {
            fail(format!(
                "cannot lock {}: {e}",
                paths.instance_lock.display()
            ))
        }
    })?;

    // Start-up runs on this one thread, before any helper thread exists,
    // so that dropping privileges covers every thread made afterwards.
    let mut store = Store::new(&paths);
    let loaded = store.load().map_err(fail)?;
    for note in &loaded.notes {
        tracing::warn!("{note}");
    }
    let mut kernel = RealOpener.open().map_err(|e| fail(e.to_string()))?;
    for problem in engine::apply_module_props(kernel.as_mut(), &loaded.db) {
        tracing::warn!("applying persistent property {problem}");
    }
    if drop_privileges(&paths, ctx.owns_process()).map_err(fail)? {
        tracing::info!("running as {SERVICE_USER}");
    }
    drop(kernel);
    let table = Arc::new(DhcpTable::default());
    let (engine, notes) = Engine::new(
        &paths,
        Box::new(RealOpener),
        table.clone(),
        origin(),
        store,
        loaded.db,
    )
    .map_err(fail)?;
    for note in notes {
        tracing::info!("{note}");
    }
    let engine = Arc::new(engine);
    let dhcp = Arc::new(DhcpManager::new(&paths, table));
    // DHCP clients that ran before a restart take up their leases again.
    for effect in engine.dhcp_resume() {
        dhcp.apply(effect).await;
    }

    match std::fs::remove_file(&paths.socket) {
        Ok(()) => tracing::info!("removed a stale {}", paths.socket.display()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            return Err(fail(format!(
                "cannot remove {}: {e}",
                paths.socket.display()
            )))
        }
    }
    let listener = UnixListener::bind(&paths.socket)
        .map_err(|e| fail(format!("cannot listen on {}: {e}", paths.socket.display())))?;
    // Anyone may connect to read; writes are checked per request.
    std::fs::set_permissions(&paths.socket, std::fs::Permissions::from_mode(0o666))
        .map_err(|e| fail(format!("cannot open up {}: {e}", paths.socket.display())))?;
    ctx.ready();
    ctx.status(&format!("listening on {}", paths.socket.display()));

    serve(listener, engine.clone(), dhcp.clone(), ctx).await;

    let shutdown_engine = engine.clone();
    let effects = tokio::task::spawn_blocking(move || shutdown_engine.shutdown()).await;
    for effect in effects.unwrap_or_default() {
        dhcp.apply(effect).await;
    }
    let _ = std::fs::remove_file(&paths.socket);
    Ok(())
}

/// Accepts clients until shutdown; arms and disarms `try` rollback timers.
async fn serve(listener: UnixListener, engine: Arc<Engine>, dhcp: Arc<DhcpManager>, ctx: Context) {
    let mut shutdown = ctx.shutdown();
    let permits = Arc::new(Semaphore::new(MAX_CLIENTS));
    let (trial_tx, mut trial_rx) = mpsc::unbounded_channel::<(u64, Duration)>();
    let mut clients = JoinSet::new();
    let mut timers = JoinSet::new();
    let mut writeback = tokio::time::interval(WRITEBACK_EVERY);
    writeback.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.requested() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => match permits.clone().try_acquire_owned() {
                    Ok(permit) => {
                        let engine = engine.clone();
                        let dhcp = dhcp.clone();
                        let trial_tx = trial_tx.clone();
                        clients.spawn(async move {
                            serve_client(stream, engine, dhcp, trial_tx).await;
                            drop(permit);
                        });
                    }
                    // Too many at once: hang up rather than queue unboundedly.
                    Err(_) => tracing::warn!("more than {MAX_CLIENTS} clients; one turned away"),
                },
                Err(e) => {
                    tracing::warn!("accept: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            Some((id, after)) = trial_rx.recv() => {
                let engine = engine.clone();
                let dhcp = dhcp.clone();
                timers.spawn(async move {
                    tokio::time::sleep(after).await;
                    let effects = tokio::task::spawn_blocking(move || engine.expire(id)).await;
                    for effect in effects.unwrap_or_default() {
                        dhcp.apply(effect).await;
                    }
                });
            }
            _ = writeback.tick() => {
                let engine = engine.clone();
                let _ = tokio::task::spawn_blocking(move || engine.retry_writeback()).await;
            }
            Some(_) = clients.join_next(), if !clients.is_empty() => {}
            Some(_) = timers.join_next(), if !timers.is_empty() => {}
        }
    }
    clients.abort_all();
    timers.abort_all();
}

async fn send_reply(stream: &mut UnixStream, reply: &Reply) -> bool {
    match wire::encode(&reply.to_packet()) {
        Ok(frame) => stream.write_all(&frame).await.is_ok(),
        Err(e) => {
            tracing::warn!("reply too large to send: {e}");
            let fallback = Reply::error(Error::with(Status::NoMemory, e.to_string()));
            match wire::encode(&fallback.to_packet()) {
                Ok(frame) => stream.write_all(&frame).await.is_ok(),
                Err(_) => false,
            }
        }
    }
}

/// Serves one client: requests in turn until it hangs up, goes idle or
/// sends what is not a request.
async fn serve_client(
    mut stream: UnixStream,
    engine: Arc<Engine>,
    dhcp: Arc<DhcpManager>,
    trial_tx: mpsc::UnboundedSender<(u64, Duration)>,
) {
    let peer = match auth::peer(stream.as_raw_fd()) {
        Ok(peer) => peer,
        Err(e) => {
            tracing::warn!("cannot identify a client: {e}");
            return;
        }
    };
    loop {
        let mut header = [0u8; 4];
        match tokio::time::timeout(CLIENT_IDLE, stream.read_exact(&mut header)).await {
            Ok(Ok(_)) => {}
            _ => return,
        }
        let body = match wire::frame_length(header, wire::MAX_REQUEST) {
            Ok(len) => {
                let mut body = vec![0u8; len];
                match tokio::time::timeout(CLIENT_IDLE, stream.read_exact(&mut body)).await {
                    Ok(Ok(_)) => body,
                    _ => return,
                }
            }
            Err(e) => {
                tracing::debug!("client {}: {e}", peer.pid);
                let reply = Reply::error(Error::with(Status::Ebade, e.to_string()));
                send_reply(&mut stream, &reply).await;
                return;
            }
        };
        let request = match wire::decode(&body) {
            Ok(packet) if packet.kind == wire::KIND_REQUEST && packet.records.len() == 1 => {
                Request::from_record(&packet.records[0])
            }
            Ok(_) => Err(Error::with(Status::Ebade, "not a request")),
            Err(e) => Err(Error::with(Status::Ebade, e.to_string())),
        };
        let request = match request {
            Ok(r) => r,
            Err(e) => {
                let malformed = e.status == Status::Ebade;
                if !send_reply(&mut stream, &Reply::error(e)).await || malformed {
                    return;
                }
                continue;
            }
        };
        if request.is_write() && !peer.may_write(auth::admin_gid()) {
            tracing::info!(
                "refused {} from uid {} (pid {})",
                request.op(),
                peer.uid,
                peer.pid
            );
            if !send_reply(&mut stream, &Reply::error(Status::Perm.into())).await {
                return;
            }
            continue;
        }
        let op = request.op();
        let worker = engine.clone();
        let outcome =
            tokio::task::spawn_blocking(move || worker.handle(request, std::time::Instant::now()))
                .await;
        let reply = follow(&engine, &dhcp, op, outcome, &trial_tx).await;
        if !send_reply(&mut stream, &reply).await {
            return;
        }
    }
}

fn internal_error(op: &str, e: tokio::task::JoinError) -> Outcome {
    tracing::error!("{op} failed: {e}");
    Outcome {
        next: Next::Reply(Reply::error(Error::with(Status::Failure, "internal error"))),
        trial: None,
        effects: Vec::new(),
    }
}

/// Carries out what the engine asks until it gives the reply: timers
/// for duplicate address detection, ARP probes (run with no lock held,
/// so other clients are served meanwhile).
async fn follow(
    engine: &Arc<Engine>,
    dhcp: &DhcpManager,
    op: &'static str,
    outcome: Result<Outcome, tokio::task::JoinError>,
    trial_tx: &mpsc::UnboundedSender<(u64, Duration)>,
) -> Reply {
    let mut outcome = outcome.unwrap_or_else(|e| internal_error(op, e));
    loop {
        if let Some(timer) = outcome.trial.take() {
            let _ = trial_tx.send(timer);
        }
        for effect in std::mem::take(&mut outcome.effects) {
            dhcp.apply(effect).await;
        }
        let worker = engine.clone();
        let step = match outcome.next {
            Next::Reply(reply) => return reply,
            Next::Poll { id, after } => {
                tokio::time::sleep(after).await;
                tokio::task::spawn_blocking(move || worker.poll(id, std::time::Instant::now()))
                    .await
            }
            Next::Probe { id, probe } => {
                tokio::task::spawn_blocking(move || {
                    let result = worker
                        .open_kernel()
                        .and_then(|mut k| k.probe_ipv4(probe.ifindex, &probe.hwaddr, probe.addr));
                    worker.probed(id, result)
                })
                .await
            }
        };
        outcome = step.unwrap_or_else(|e| internal_error(op, e));
    }
}
