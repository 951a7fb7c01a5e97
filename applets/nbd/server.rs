//! The tokio shell: open the image, listen, accept up to `--shared`
//! clients, negotiate under a time limit, serve, and shut down cleanly
//! (stop accepting, finish in-flight requests, flush, remove the socket).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use super::backend::overlay::{self, Overlay};
use super::backend::qcow2::{self, Qcow2};
use super::backend::raw::{self, RawFile};
use super::backend::Backend;
use super::export::{Export, Exports};
use super::negotiate::{self, Negotiated, Phase, Refused};
use super::options::{Config, ExportConfig, ImageFormat, Listen, Mode, Window};
use super::proto::ReplyStyle;
use crate::service::{
    io_text, Context, HostOptions, Launch, ServiceError, ServiceResult, Shutdown,
};

/// How long shutdown waits for connections to finish their in-flight work.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

pub fn launch(config: Config, host: HostOptions) -> Launch {
    Launch::new(host, move |ctx| run(config, ctx))
}

async fn run(config: Config, ctx: Context) -> ServiceResult {
    match &config.mode {
        Mode::List => {
            let cfg = config.clone();
            let text = tokio::task::spawn_blocking(move || super::client::list(&cfg))
                .await
                .map_err(|e| ServiceError(e.to_string()))??;
            print!("{text}");
            Ok(())
        }
        Mode::Disconnect(dev) => {
            super::kernel::disconnect(dev)?;
            println!("{} disconnected", dev.display());
            Ok(())
        }
        Mode::ConnectRemote { device, server } => {
            let (device, server) = (device.clone(), server.clone());
            let (attached_tx, attached_rx) = tokio::sync::oneshot::channel();
            let attach = tokio::task::spawn_blocking(move || {
                super::kernel::attach_remote(&device, &server, move || {
                    let _ = attached_tx.send(());
                })
            });
            // Ready (and a --fork parent released) once the kernel has the
            // connection; the ioctl path then holds the device until `-d`.
            if attached_rx.await.is_ok() {
                ctx.ready();
            }
            attach.await.map_err(|e| ServiceError(e.to_string()))??;
            Ok(())
        }
        Mode::Serve | Mode::Connect(_) => serve(config, ctx).await,
    }
}

/// Opens an export's image (qcow2 when `-f qcow2` or its magic says so,
/// else raw) and applies the offset/partition window, overlay and
/// read-only setting; cache and discard modes are the server's.
pub fn open_export(config: &Config, export: &ExportConfig) -> Result<Export, String> {
    let path = &export.file;
    let writable = !export.read_only && !export.snapshot;
    let file = raw::open_file(path, writable)
        .map_err(|e| format!("cannot open {}: {}", path.display(), io_text(&e)))?;
    let format = match export.format {
        Some(f) => f,
        None if qcow2::is_qcow2(&file) => ImageFormat::Qcow2,
        None => ImageFormat::Raw,
    };
    let image: Arc<dyn Backend> = match format {
        ImageFormat::Qcow2 => {
            drop(file);
            if export.window != Window::Whole {
                return Err(
                    "-o/--offset and -P/--partition are not supported with qcow2 images yet".into(),
                );
            }
            let opts = qcow2::OpenOptions {
                writable,
                cache: config.cache,
                discard: config.discard_unmap,
                snapshot: export.load_snapshot.clone(),
            };
            Arc::new(Qcow2::open(path, &opts)?)
        }
        ImageFormat::Raw => {
            if export.load_snapshot.is_some() {
                return Err(format!(
                    "{}: --load-snapshot needs a qcow2 image",
                    path.display()
                ));
            }
            Arc::new(open_raw(config, export, file, writable)?)
        }
    };
    let backend: Arc<dyn Backend> = if export.snapshot {
        let dir = overlay::temp_dir();
        Arc::new(Overlay::new(image, &dir).map_err(|e| {
            format!(
                "cannot create snapshot overlay in {}: {}",
                dir.display(),
                io_text(&e)
            )
        })?)
    } else {
        image
    };
    Ok(Export {
        name: export.name.clone(),
        description: export.description.clone(),
        rotational: config.rotational.unwrap_or_else(|| backend.rotational()),
        backend,
        read_only: export.read_only,
        multi_conn: config.shared > 1,
        allocation_depth: export.allocation_depth,
    })
}

/// Opens every export, in command-line order.
pub fn open_exports(config: &Config) -> Result<Exports, String> {
    let list = config
        .exports
        .iter()
        .map(|e| open_export(config, e).map(Arc::new))
        .collect::<Result<Vec<_>, _>>()?;
    if list.is_empty() {
        return Err("nothing to export".into());
    }
    Ok(Exports::new(list, config.empty_name_is_default))
}

/// A raw image, or the offset/partition window of one.
fn open_raw(
    config: &Config,
    export: &ExportConfig,
    file: std::fs::File,
    writable: bool,
) -> Result<RawFile, String> {
    let path = &export.file;
    let disk_size = raw::file_size(&file)
        .map_err(|e| format!("cannot size {}: {}", path.display(), io_text(&e)))?;
    let (start, size) = match export.window {
        Window::Whole => (0, disk_size),
        Window::Offset(offset) => {
            if offset > disk_size {
                return Err(format!("Offset {offset} exceeds device size {disk_size}"));
            }
            (offset, disk_size - offset)
        }
        Window::Partition(number) => {
            let fd = file_fd(&file);
            let mut read_at = |off: u64, buf: &mut [u8]| raw::read_full(fd, buf, off);
            let part = super::partition::find(&mut read_at, disk_size, number)?;
            (part.offset, part.length)
        }
    };
    RawFile::new(
        file,
        path,
        start,
        size,
        config.cache,
        config.discard_unmap,
        writable,
    )
    .map_err(|e| format!("cannot open {}: {}", path.display(), io_text(&e)))
}

fn file_fd(file: &std::fs::File) -> i32 {
    use std::os::fd::AsRawFd;
    file.as_raw_fd()
}

enum Listener {
    Tcp(Vec<TcpListener>),
    Unix(UnixListener),
}

fn bind(listen: &Listen) -> Result<Listener, String> {
    match listen {
        Listen::Unix(path) => {
            remove_stale_socket(path);
            UnixListener::bind(path)
                .map(Listener::Unix)
                .map_err(|e| format!("cannot listen on {}: {}", path.display(), io_text(&e)))
        }
        Listen::Tcp(addrs) => {
            let mut listeners = Vec::new();
            for addr in addrs {
                let sock = socket2::Socket::new(
                    socket2::Domain::for_address(*addr),
                    socket2::Type::STREAM,
                    None,
                )
                .map_err(|e| format!("cannot listen on {addr}: {}", io_text(&e)))?;
                let _ = sock.set_reuse_address(true);
                if addr.is_ipv6() {
                    let _ = sock.set_only_v6(true);
                }
                sock.bind(&(*addr).into())
                    .and_then(|()| sock.listen(128))
                    .and_then(|()| sock.set_nonblocking(true))
                    .map_err(|e| format!("cannot listen on {addr}: {}", io_text(&e)))?;
                let std_listener: std::net::TcpListener = sock.into();
                listeners.push(
                    TcpListener::from_std(std_listener)
                        .map_err(|e| format!("cannot listen on {addr}: {}", io_text(&e)))?,
                );
            }
            Ok(Listener::Tcp(listeners))
        }
    }
}

/// A socket file left by a dead server is replaced, anything else is not.
fn remove_stale_socket(path: &Path) {
    use std::os::unix::fs::FileTypeExt;
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if meta.file_type().is_socket() {
            let _ = std::fs::remove_file(path);
        }
    }
}

enum Accepted {
    Tcp(tokio::net::TcpStream),
    Unix(tokio::net::UnixStream),
}

impl Listener {
    async fn accept(&self) -> std::io::Result<Accepted> {
        match self {
            Listener::Unix(l) => l.accept().await.map(|(s, _)| Accepted::Unix(s)),
            Listener::Tcp(ls) => {
                // The first connection on any of the bound addresses.
                let accepted = std::future::poll_fn(|cx| {
                    for l in ls {
                        if let std::task::Poll::Ready(r) = l.poll_accept(cx) {
                            return std::task::Poll::Ready(r);
                        }
                    }
                    std::task::Poll::Pending
                })
                .await;
                accepted.map(|(s, _)| {
                    let _ = s.set_nodelay(true);
                    Accepted::Tcp(s)
                })
            }
        }
    }
}

/// What a connection needs to run TLS: the acceptor and the allow list.
#[cfg(feature = "tls")]
#[derive(Clone)]
struct ServerTls {
    acceptor: crate::tls::tokio_rustls::TlsAcceptor,
    authz_identity: Option<Arc<str>>,
}

/// Without the tls feature no credentials can be given (options refuse them).
#[cfg(not(feature = "tls"))]
#[derive(Clone)]
enum ServerTls {}

#[cfg(feature = "tls")]
fn server_tls(config: &Config) -> Result<Option<ServerTls>, String> {
    let Some(tls) = &config.tls else {
        return Ok(None);
    };
    let server = super::tls::server_config(&tls.creds)?;
    Ok(Some(ServerTls {
        acceptor: crate::tls::tokio_rustls::TlsAcceptor::from(server),
        authz_identity: tls.authz_identity.as_deref().map(Arc::from),
    }))
}

#[cfg(not(feature = "tls"))]
fn server_tls(config: &Config) -> Result<Option<ServerTls>, String> {
    match config.tls {
        None => Ok(None),
        Some(_) => {
            Err("TLS is not available: this toolbox was built without the tls feature".into())
        }
    }
}

async fn serve(config: Config, ctx: Context) -> ServiceResult {
    // Credentials first: a bad file stops the start with one line naming it.
    let tls = server_tls(&config)?;
    let exports = Arc::new(open_exports(&config)?);
    // With -c the kernel is the one client, over a socket pair: nothing listens.
    let listener = match config.mode {
        Mode::Connect(_) => None,
        _ => Some(bind(&config.listen)?),
    };
    let where_ = match (&config.mode, &config.listen) {
        (Mode::Connect(dev), _) => dev.display().to_string(),
        (_, Listen::Unix(p)) => p.display().to_string(),
        (_, Listen::Tcp(a)) => a
            .iter()
            .map(|a| a.to_string())
            .collect::<Vec<_>>()
            .join(", "),
    };
    for (export, opened) in config.exports.iter().zip(exports.all()) {
        tracing::info!(
            "serving {} ({} bytes) as '{}' on {where_}",
            export.file.display(),
            opened.size(),
            export.name
        );
    }

    let mut shutdown = ctx.shutdown();
    let slots = Arc::new(Semaphore::new(config.shared));
    let mut connections = JoinSet::new();

    if let Mode::Connect(device) = &config.mode {
        let (server_end, client_end) = tokio::net::UnixStream::pair()
            .map_err(|e| format!("cannot create socket pair: {e}"))?;
        let client_end = client_end
            .into_std()
            .and_then(|s| s.set_nonblocking(false).map(|()| s))
            .map_err(|e| format!("socket pair: {e}"))?;
        let permit = slots.clone().try_acquire_owned().ok();
        let (exp, limit, sd) = (exports.clone(), config.handshake_limit, ctx.shutdown());
        connections.spawn(async move {
            let _permit = permit;
            handle_connection(server_end, exp, limit, sd, None, "kernel".into()).await;
        });
        let device = device.clone();
        // The kernel asks for the default export.
        let name = exports.get(0).map(|e| e.name.clone()).unwrap_or_default();
        // On the ioctl path the kernel's thread lives on while we serve.
        tokio::task::spawn_blocking(move || {
            super::kernel::attach(&device, client_end, &name).map(drop)
        })
        .await
        .map_err(|e| ServiceError(e.to_string()))??;
    }

    ctx.ready();
    ctx.status(&format!("Serving on {where_}"));
    let mut served_any = matches!(config.mode, Mode::Connect(_));
    loop {
        if served_any && !config.persistent && connections.is_empty() {
            break;
        }
        tokio::select! {
            _ = shutdown.requested() => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
            permit = slots.clone().acquire_owned(), if listener.is_some() => {
                let (Ok(permit), Some(listener)) = (permit, &listener) else { break };
                let accepted = tokio::select! {
                    a = listener.accept() => a,
                    _ = shutdown.requested() => break,
                    Some(_) = connections.join_next(), if !connections.is_empty() => continue,
                };
                let stream = match accepted {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::warn!("accept: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                served_any = true;
                let (exp, limit, sd) = (exports.clone(), config.handshake_limit, ctx.shutdown());
                let tls = tls.clone();
                connections.spawn(async move {
                    let _permit = permit;
                    match stream {
                        Accepted::Tcp(s) => {
                            let peer = s.peer_addr().map(|a| a.to_string()).unwrap_or_default();
                            handle_connection(s, exp, limit, sd, tls, peer).await
                        }
                        Accepted::Unix(s) => {
                            handle_connection(s, exp, limit, sd, tls, "unix".into()).await
                        }
                    }
                });
            }
        }
    }

    ctx.stopping();
    drop(listener);
    if tokio::time::timeout(DRAIN_TIMEOUT, async {
        while connections.join_next().await.is_some() {}
    })
    .await
    .is_err()
    {
        tracing::warn!("connections still busy after {DRAIN_TIMEOUT:?}; closing them");
        connections.shutdown().await;
    }
    let flushing = exports.clone();
    let flushed = tokio::task::spawn_blocking(move || {
        // Every export is flushed, the first failure reported.
        let mut result = Ok(());
        for export in flushing.all() {
            if let Err(e) = export.backend.flush() {
                if result.is_ok() {
                    result = Err(format!("flush at exit ('{}'): {e}", export.name));
                }
            }
        }
        result
    })
    .await;
    if let Listen::Unix(path) = &config.listen {
        let _ = std::fs::remove_file(path);
    }
    match flushed {
        Ok(Err(e)) => Err(e.into()),
        _ => Ok(()),
    }
}

/// Streams the server can split into independently owned halves.
trait SplitStream: AsyncRead + AsyncWrite + Unpin + Send + 'static {
    type Read: AsyncRead + Unpin + Send + 'static;
    type Write: AsyncWrite + Unpin + Send + 'static;
    fn split_owned(self) -> (Self::Read, Self::Write);
}

impl SplitStream for tokio::net::TcpStream {
    type Read = tokio::net::tcp::OwnedReadHalf;
    type Write = tokio::net::tcp::OwnedWriteHalf;
    fn split_owned(self) -> (Self::Read, Self::Write) {
        self.into_split()
    }
}

impl SplitStream for tokio::net::UnixStream {
    type Read = tokio::net::unix::OwnedReadHalf;
    type Write = tokio::net::unix::OwnedWriteHalf;
    fn split_owned(self) -> (Self::Read, Self::Write) {
        self.into_split()
    }
}

/// A connection at the end of negotiation, over TLS or not.
enum Negotiation<S> {
    Plain(S, Negotiated),
    #[cfg(feature = "tls")]
    Tls(
        Box<crate::tls::tokio_rustls::server::TlsStream<S>>,
        Negotiated,
    ),
}

/// Greeting, options, and (when credentials are given) STARTTLS and the TLS
/// handshake: everything the handshake limit covers.
async fn negotiate_connection<S: SplitStream>(
    mut stream: S,
    exports: &Exports,
    tls: Option<ServerTls>,
) -> Result<Negotiation<S>, Refused> {
    let mut phase = negotiate::greet(&mut stream, tls.is_some()).await?;
    match negotiate::options(&mut stream, exports, &mut phase).await? {
        Phase::Transmit(n) => Ok(Negotiation::Plain(stream, n)),
        Phase::StartTls => start_tls(stream, exports, tls, phase).await,
    }
}

#[cfg(feature = "tls")]
async fn start_tls<S: SplitStream>(
    stream: S,
    exports: &Exports,
    tls: Option<ServerTls>,
    mut phase: negotiate::OptionPhase,
) -> Result<Negotiation<S>, Refused> {
    let tls = tls.ok_or_else(|| Refused::Failed("STARTTLS without credentials".into()))?;
    let mut stream = tls
        .acceptor
        .accept(stream)
        .await
        .map_err(|e| Refused::Failed(format!("TLS handshake failed: {e}")))?;
    if let Some(allowed) = &tls.authz_identity {
        let (_, session) = stream.get_ref();
        let name = session
            .peer_certificates()
            .and_then(|chain| chain.first())
            .and_then(|leaf| super::x509_name::subject(leaf.as_ref()));
        match name {
            Some(name) if name == **allowed => {}
            Some(name) => {
                return Err(Refused::Failed(format!(
                    "client certificate '{name}' is not allowed by --tls-authz"
                )))
            }
            None => {
                return Err(Refused::Failed(
                    "client certificate has no readable name".into(),
                ))
            }
        }
    }
    phase.tls_established();
    match negotiate::options(&mut stream, exports, &mut phase).await? {
        Phase::Transmit(n) => Ok(Negotiation::Tls(Box::new(stream), n)),
        Phase::StartTls => Err(Refused::Failed("STARTTLS over TLS".into())),
    }
}

#[cfg(not(feature = "tls"))]
async fn start_tls<S: SplitStream>(
    _stream: S,
    _exports: &Exports,
    tls: Option<ServerTls>,
    _phase: negotiate::OptionPhase,
) -> Result<Negotiation<S>, Refused> {
    match tls {
        Some(never) => match never {},
        None => Err(Refused::Failed("STARTTLS without credentials".into())),
    }
}

async fn handle_connection<S: SplitStream>(
    stream: S,
    exports: Arc<Exports>,
    limit: Option<Duration>,
    shutdown: Shutdown,
    tls: Option<ServerTls>,
    peer: String,
) {
    tracing::debug!("client {peer} connected");
    let negotiating = negotiate_connection(stream, &exports, tls);
    let negotiated = match limit {
        Some(limit) => match tokio::time::timeout(limit, negotiating).await {
            Ok(result) => result,
            Err(_) => Err(Refused::Failed(format!(
                "handshake not finished within {}s",
                limit.as_secs()
            ))),
        },
        None => negotiating.await,
    };
    let negotiated = match negotiated {
        Ok(n) => n,
        Err(Refused::Aborted) => {
            tracing::debug!("client {peer} left during negotiation");
            return;
        }
        Err(Refused::Failed(why)) => {
            tracing::info!("client {peer} dropped: {why}");
            return;
        }
    };
    let (tls_text, n) = match &negotiated {
        Negotiation::Plain(_, n) => ("", *n),
        #[cfg(feature = "tls")]
        Negotiation::Tls(_, n) => (" over TLS", *n),
    };
    let Some(export) = exports.get(n.export).cloned() else {
        tracing::warn!("client {peer} negotiated an export that does not exist");
        return;
    };
    tracing::debug!(
        "client {peer} (export '{}') negotiated {}{}{}{tls_text}",
        export.name,
        match n.style {
            ReplyStyle::Simple => "simple replies",
            ReplyStyle::Structured => "structured replies",
            ReplyStyle::Extended => "extended headers",
        },
        if n.contexts.base_allocation {
            " and base:allocation"
        } else {
            ""
        },
        if n.contexts.allocation_depth {
            " and qemu:allocation-depth"
        } else {
            ""
        }
    );
    let served = match negotiated {
        Negotiation::Plain(stream, n) => {
            let (r, w) = stream.split_owned();
            super::transmission::serve(r, w, n, export, shutdown).await
        }
        #[cfg(feature = "tls")]
        Negotiation::Tls(stream, n) => {
            let (r, w) = tokio::io::split(*stream);
            super::transmission::serve(r, w, n, export, shutdown).await
        }
    };
    match served {
        Ok(()) => tracing::debug!("client {peer} disconnected"),
        Err(e) => tracing::info!("client {peer} dropped: {e}"),
    }
}
