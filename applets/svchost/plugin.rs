//! Plugin services: shared libraries with a `ServiceMain(argc, argv)` entry
//! (the seed's ServiceDll), loaded once per path, each service on a thread
//! of its own, talking back through the functions in `svchost.h`.

use std::collections::HashMap;
use std::ffi::{c_char, c_int, c_uint, c_void, CStr, CString};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use super::host::{Control, Host, Slot};
use super::status::*;

type ServiceMain = unsafe extern "C" fn(c_int, *mut *mut c_char);
type PushGlobals = unsafe extern "C" fn(*const Globals);
type CtrlHandler = unsafe extern "C" fn(c_uint, *mut c_void);

/// `struct svchost_globals` in svchost.h.
#[repr(C)]
pub struct Globals {
    version: c_uint,
    host: *const c_void,
    register_ctrl_handler: unsafe extern "C" fn(
        *const c_void,
        *const c_char,
        Option<CtrlHandler>,
        *mut c_void,
    ) -> *mut c_void,
    set_service_status: unsafe extern "C" fn(*const c_void, *mut c_void, *const StatusC) -> c_int,
}

/// `struct svchost_service_status` in svchost.h.
#[repr(C)]
pub struct StatusC {
    current_state: c_uint,
    controls_accepted: c_uint,
    win32_exit_code: c_uint,
    service_specific_exit_code: c_uint,
    checkpoint: c_uint,
    wait_hint: c_uint,
}

/// A loaded library; never unloaded (its threads may outlive a stop).
struct Library(*mut c_void);

// SAFETY: a dlopen handle is a process-wide token, usable from any thread.
unsafe impl Send for Library {}
unsafe impl Sync for Library {}

#[derive(Default)]
pub struct Loader {
    libraries: Mutex<HashMap<PathBuf, Arc<Library>>>,
    /// How many times dlopen actually ran (tests check "loaded once").
    pub loads: std::sync::atomic::AtomicUsize,
}

fn dlerror_text() -> String {
    // SAFETY: dlerror returns a thread-local C string or NULL.
    let err = unsafe { libc::dlerror() };
    if err.is_null() {
        "unknown loader error".into()
    } else {
        // SAFETY: non-null, NUL-terminated, valid until the next dl call here.
        unsafe { CStr::from_ptr(err) }
            .to_string_lossy()
            .into_owned()
    }
}

impl Loader {
    fn load(&self, host: &Host, path: &Path) -> Result<Arc<Library>, (u32, String)> {
        let mut libs = self.libraries.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(lib) = libs.get(path) {
            return Ok(lib.clone());
        }
        let cpath = CString::new(path.as_os_str().as_encoded_bytes()).map_err(|_| {
            (
                ERROR_FILE_NOT_FOUND,
                "library path contains NUL".to_string(),
            )
        })?;
        // SAFETY: loading a library the administrator configured; its
        // constructors run here, as with any ServiceDll.
        let handle = unsafe { libc::dlopen(cpath.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL) };
        if handle.is_null() {
            return Err((ERROR_MOD_NOT_FOUND, dlerror_text()));
        }
        self.loads
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let lib = Arc::new(Library(handle));
        if let Some(push) = symbol(&lib, "SvchostPushServiceGlobals") {
            // SAFETY: the symbol is the documented `void (const struct svchost_globals *)`.
            let push: PushGlobals = unsafe { std::mem::transmute(push) };
            let globals = Box::leak(Box::new(Globals {
                version: 1,
                host: host as *const Host as *const c_void,
                register_ctrl_handler,
                set_service_status,
            }));
            // SAFETY: globals lives for the rest of the process.
            unsafe { push(globals) };
        }
        libs.insert(path.to_owned(), lib.clone());
        Ok(lib)
    }
}

fn symbol(lib: &Library, name: &str) -> Option<*mut c_void> {
    let cname = CString::new(name).ok()?;
    // SAFETY: lookup in a live handle.
    let sym = unsafe { libc::dlsym(lib.0, cname.as_ptr()) };
    (!sym.is_null()).then_some(sym)
}

/// A plugin's registered control handler.
pub struct Handler {
    func: CtrlHandler,
    context: usize,
    /// Serializes calls into the handler for one service.
    lock: Mutex<()>,
}

impl Handler {
    /// Calls the handler on a thread of ours, never on the runtime.
    pub fn send(self: &Arc<Self>, code: u32) {
        let handler = self.clone();
        std::thread::spawn(move || {
            let _serial = handler.lock.lock().unwrap_or_else(|e| e.into_inner());
            // SAFETY: the plugin registered this function and context for its service.
            unsafe { (handler.func)(code, handler.context as *mut c_void) };
        });
    }
}

/// Status handles are opaque numbers, never addresses: a stale one cannot
/// alias a live service. Spaced like pointers so no plugin mistakes 0 or 1.
static NEXT_STATUS_HANDLE: AtomicUsize = AtomicUsize::new(0x1000);
const STATUS_HANDLE_STEP: usize = 0x10;

/// The handle of the service's running instance, given out on the first
/// registration of each start; None once it has stopped.
fn status_handle(slot: &Slot) -> Option<usize> {
    let mut s = slot.lock();
    if s.status.state == State::Stopped {
        return None;
    }
    Some(
        *s.status_handle.get_or_insert_with(|| {
            NEXT_STATUS_HANDLE.fetch_add(STATUS_HANDLE_STEP, Ordering::Relaxed)
        }),
    )
}

/// Windows fails such calls with ERROR_INVALID_HANDLE; a C caller here
/// gets 0 (or NULL) and errno EBADF.
fn invalid_handle<T>(failure: T) -> T {
    // SAFETY: errno is this thread's own.
    unsafe { *libc::__errno_location() = libc::EBADF };
    failure
}

unsafe extern "C" fn register_ctrl_handler(
    host: *const c_void,
    name: *const c_char,
    func: Option<CtrlHandler>,
    context: *mut c_void,
) -> *mut c_void {
    if host.is_null() || name.is_null() {
        return std::ptr::null_mut();
    }
    // SAFETY: `host` is the Host we put in the globals; it lives as long as the process runs services.
    let host = unsafe { &*(host as *const Host) };
    // SAFETY: the plugin passes a NUL-terminated name.
    let name = unsafe { CStr::from_ptr(name) }.to_string_lossy();
    let Some(slot) = host.find(&name) else {
        return std::ptr::null_mut();
    };
    // A service that is not running (never started, or already reported
    // STOPPED) gets no handle.
    let Some(handle) = status_handle(slot) else {
        return invalid_handle(std::ptr::null_mut());
    };
    if let Some(func) = func {
        slot.lock().control = Some(Control::Plugin(Arc::new(Handler {
            func,
            context: context as usize,
            lock: Mutex::new(()),
        })));
    }
    handle as *mut c_void
}

unsafe extern "C" fn set_service_status(
    host: *const c_void,
    handle: *mut c_void,
    status: *const StatusC,
) -> c_int {
    if host.is_null() || handle.is_null() || status.is_null() {
        return 0;
    }
    // SAFETY: as in register_ctrl_handler.
    let host = unsafe { &*(host as *const Host) };
    // Only the live handle of a running instance is accepted.
    let handle = handle as usize;
    let Some(slot) = host
        .slots
        .iter()
        .find(|s| s.lock().status_handle == Some(handle))
    else {
        return invalid_handle(0);
    };
    // SAFETY: the plugin passes a valid status struct.
    let st = unsafe { &*status };
    let Some(state) = State::from_code(st.current_state) else {
        return 0;
    };
    let mut s = slot.lock();
    if s.status_handle != Some(handle) {
        return invalid_handle(0);
    }
    if state == State::Stopped {
        // The instance is over: its handle dies with it.
        s.status_handle = None;
    }
    if s.stop_requested && state == State::Running {
        // A late RUNNING after a stop request doesn't undo the stop.
        return 1;
    }
    s.status = Status {
        state,
        controls_accepted: st.controls_accepted,
        win32_exit_code: st.win32_exit_code,
        service_exit_code: st.service_specific_exit_code,
        checkpoint: st.checkpoint,
        wait_hint_ms: st.wait_hint,
    };
    drop(s);
    slot.changed.notify_waiters();
    1
}

/// Runs one plugin service until it reports STOPPED (or its thread ends
/// without ever registering a handler).
pub(super) async fn run(
    host: &Host,
    slot: &Arc<Slot>,
    path: &Path,
    entry: &str,
    extra_args: &[String],
) -> super::host::ExitReport {
    let lib = match host.plugins.load(host, path) {
        Ok(lib) => lib,
        Err((code, msg)) => return super::host::ExitReport::loader(code, msg),
    };
    let Some(main) = symbol(&lib, entry) else {
        return super::host::ExitReport::loader(
            ERROR_PROC_NOT_FOUND,
            format!("{}: entry point '{entry}' not found", path.display()),
        );
    };
    // SAFETY: the configured entry has the ServiceMain signature by contract.
    let main: ServiceMain = unsafe { std::mem::transmute(main) };
    let args: Vec<CString> = std::iter::once(slot.config.name.as_str())
        .chain(extra_args.iter().map(String::as_str))
        .filter_map(|a| CString::new(a).ok())
        .collect();
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    let mut builder = std::thread::Builder::new().name(slot.config.name.clone());
    if let Some(size) = host.stack_size {
        builder = builder.stack_size(size);
    }
    let spawned = builder.spawn(move || {
        let mut argv: Vec<*mut c_char> = args.iter().map(|a| a.as_ptr() as *mut c_char).collect();
        argv.push(std::ptr::null_mut());
        // SAFETY: argv is NULL-terminated and outlives the call; `lib` keeps
        // the library loaded.
        unsafe { main(args.len() as c_int, argv.as_mut_ptr()) };
        drop(lib);
        let _ = done_tx.send(());
    });
    if let Err(e) = spawned {
        return super::host::ExitReport::loader(
            ERROR_SERVICE_SPECIFIC_ERROR,
            format!("cannot start thread: {e}"),
        );
    }
    let slot_for_wait = slot.clone();
    let stopped = async move {
        slot_for_wait
            .wait_until(|s| s.state == State::Stopped)
            .await
    };
    tokio::pin!(stopped);
    tokio::select! {
        _ = &mut stopped => {}
        _ = done_rx => {
            // ServiceMain returned. With a handler registered the service
            // lives on until it reports STOPPED; without one it is over.
            let registered = slot.lock().control.is_some();
            if registered {
                stopped.await;
            }
        }
    }
    let status = slot.status();
    super::host::ExitReport::from_status(&status)
}
