//! libmodsecurity 3's C API, loaded at run time, with the few safe wrappers the engine needs.
//!
//! The library is opened with `dlopen` rather than linked, so Tenantry builds and runs on a
//! machine without it (routes that need the WAF then follow `waf.on_unavailable`). The
//! functions used are the stable `msc_*` C API of 3.0.x (header `modsecurity/*.h`); 3.0.9 has no
//! `msc_intervention_cleanup`, so the intervention's strings are released with `free`.
//!
//! Everything `unsafe` in Tenantry is in this file.
#![allow(unsafe_code)]

use std::ffi::{CStr, CString, c_char, c_int, c_uchar, c_void};
use std::ptr;

/// `ModSecurity *`, `RulesSet *` and `Transaction *` are opaque to us.
#[repr(C)]
pub(crate) struct Opaque {
    _private: [u8; 0],
}

/// `ModSecurityIntervention` (modsecurity/intervention.h).
#[repr(C)]
struct Intervention {
    status: c_int,
    pause: c_int,
    url: *mut c_char,
    log: *mut c_char,
    disruptive: c_int,
}

/// `ModSecLogCb`: `void (*)(void *data, const void *message)`.
pub(crate) type LogCb = unsafe extern "C" fn(*mut c_void, *const c_void);

unsafe extern "C" {
    /// libc's `free`, for the strings libmodsecurity allocates with `malloc`/`strdup`.
    fn free(p: *mut c_void);
}

/// The resolved entry points. Function pointers stay valid as long as the library stays
/// loaded, which is forever: the `Library` is leaked on purpose (unloading a C++ library
/// with live static objects is not safe).
pub(crate) struct Api {
    init: unsafe extern "C" fn() -> *mut Opaque,
    who_am_i: unsafe extern "C" fn(*mut Opaque) -> *const c_char,
    set_connector_info: unsafe extern "C" fn(*mut Opaque, *const c_char),
    set_log_cb: unsafe extern "C" fn(*mut Opaque, LogCb),
    create_rules_set: unsafe extern "C" fn() -> *mut Opaque,
    rules_add: unsafe extern "C" fn(*mut Opaque, *const c_char, *mut *const c_char) -> c_int,
    rules_cleanup: unsafe extern "C" fn(*mut Opaque) -> c_int,
    rules_merge: unsafe extern "C" fn(*mut Opaque, *mut Opaque, *mut *const c_char) -> c_int,
    new_transaction_with_id:
        unsafe extern "C" fn(*mut Opaque, *mut Opaque, *mut c_char, *mut c_void) -> *mut Opaque,
    process_connection:
        unsafe extern "C" fn(*mut Opaque, *const c_char, c_int, *const c_char, c_int) -> c_int,
    process_uri:
        unsafe extern "C" fn(*mut Opaque, *const c_char, *const c_char, *const c_char) -> c_int,
    add_n_request_header:
        unsafe extern "C" fn(*mut Opaque, *const c_uchar, usize, *const c_uchar, usize) -> c_int,
    process_request_headers: unsafe extern "C" fn(*mut Opaque) -> c_int,
    append_request_body: unsafe extern "C" fn(*mut Opaque, *const c_uchar, usize) -> c_int,
    process_request_body: unsafe extern "C" fn(*mut Opaque) -> c_int,
    intervention: unsafe extern "C" fn(*mut Opaque, *mut Intervention) -> c_int,
    process_logging: unsafe extern "C" fn(*mut Opaque) -> c_int,
    transaction_cleanup: unsafe extern "C" fn(*mut Opaque),
}

macro_rules! sym {
    ($lib:expr, $name:literal) => {{
        // SAFETY: the symbol is declared with the signature of libmodsecurity 3.0.x's C header.
        let s = unsafe { $lib.get(concat!($name, "\0").as_bytes()) };
        *s.map_err(|e| format!("{}: {e}", $name))?
    }};
}

impl Api {
    /// Opens `library` (a file name searched like `dlopen` does, or a path) and resolves the
    /// C API.
    pub(crate) fn load(library: &str) -> Result<&'static Api, String> {
        // SAFETY: loading runs the library's initialisers; libmodsecurity's are plain C++
        // static constructors without preconditions.
        let lib = unsafe { libloading::Library::new(library) }.map_err(|e| e.to_string())?;
        let api = Api {
            init: sym!(lib, "msc_init"),
            who_am_i: sym!(lib, "msc_who_am_i"),
            set_connector_info: sym!(lib, "msc_set_connector_info"),
            set_log_cb: sym!(lib, "msc_set_log_cb"),
            create_rules_set: sym!(lib, "msc_create_rules_set"),
            rules_add: sym!(lib, "msc_rules_add"),
            rules_cleanup: sym!(lib, "msc_rules_cleanup"),
            rules_merge: sym!(lib, "msc_rules_merge"),
            new_transaction_with_id: sym!(lib, "msc_new_transaction_with_id"),
            process_connection: sym!(lib, "msc_process_connection"),
            process_uri: sym!(lib, "msc_process_uri"),
            add_n_request_header: sym!(lib, "msc_add_n_request_header"),
            process_request_headers: sym!(lib, "msc_process_request_headers"),
            append_request_body: sym!(lib, "msc_append_request_body"),
            process_request_body: sym!(lib, "msc_process_request_body"),
            intervention: sym!(lib, "msc_intervention"),
            process_logging: sym!(lib, "msc_process_logging"),
            transaction_cleanup: sym!(lib, "msc_transaction_cleanup"),
        };
        std::mem::forget(lib);
        Ok(Box::leak(Box::new(api)))
    }
}

/// One `ModSecurity` instance: the log callback and the persistent collections (IP,
/// GLOBAL). Each inspection thread owns one, so collections are never shared across threads.
pub(crate) struct Engine {
    api: &'static Api,
    ptr: *mut Opaque,
}

impl Engine {
    /// A new instance that reports every rule message to `cb`.
    pub(crate) fn new(api: &'static Api, connector: &str, cb: LogCb) -> Result<Engine, String> {
        // SAFETY: msc_init has no preconditions.
        let ptr = unsafe { (api.init)() };
        if ptr.is_null() {
            return Err("msc_init returned null".into());
        }
        let connector = CString::new(connector).map_err(|e| e.to_string())?;
        // SAFETY: ptr is a live instance; the connector string is copied by the library.
        unsafe {
            (api.set_connector_info)(ptr, connector.as_ptr());
            (api.set_log_cb)(ptr, cb);
        }
        Ok(Engine { api, ptr })
    }

    /// The library's name and version, e.g. `ModSecurity v3.0.9 (Linux)`.
    pub(crate) fn version(&self) -> String {
        // SAFETY: ptr is live; the returned string is owned by the instance.
        let s = unsafe { (self.api.who_am_i)(self.ptr) };
        if s.is_null() {
            return String::new();
        }
        // SAFETY: non-null, NUL-terminated, valid while the instance lives.
        unsafe { CStr::from_ptr(s) }.to_string_lossy().into_owned()
    }
}

// The instance is used by one thread at a time (its owner) but created on another.
// SAFETY: libmodsecurity has no thread affinity; the pointer is only moved, not shared.
unsafe impl Send for Engine {}

/// A compiled rules set, shared read-only by every thread's transactions.
pub(crate) struct Rules {
    api: &'static Api,
    ptr: *mut Opaque,
}

// SAFETY: a RulesSet is immutable once loaded; libmodsecurity evaluates one set from many
// transactions (every connector shares a set between its transactions), and it is freed only
// when the last `Arc` holder, hence the last transaction, is gone.
unsafe impl Send for Rules {}
// SAFETY: as above.
unsafe impl Sync for Rules {}

impl Rules {
    /// Parses `text` (directives, `Include`s with absolute paths) into a new rules set.
    /// Returns the set and the number of rules loaded.
    pub(crate) fn parse(api: &'static Api, text: &str) -> Result<(Rules, usize), String> {
        let rules = Rules::empty(api)?;
        let n = rules.add(text)?;
        Ok((rules, n))
    }

    /// A set made of `head` (directives parsed first, so that the properties they set win,
    /// e.g. `SecRuleEngine DetectionOnly`, and `SecRuleRemoveById` lists, which apply as the
    /// rules run) followed by every rule and property of `base`. The rules themselves are
    /// shared with `base` (libmodsecurity merges sets by copying `shared_ptr`s), so this costs
    /// a few kilobytes where a set parsed again costs ~15 MB. Returns the set and the number
    /// of rules merged.
    pub(crate) fn derive(
        api: &'static Api,
        head: &str,
        base: &Rules,
    ) -> Result<(Rules, usize), String> {
        let rules = Rules::empty(api)?;
        rules.add(head)?;
        let _parsing = PARSER.lock().unwrap_or_else(|p| p.into_inner());
        let mut err: *const c_char = ptr::null();
        // SAFETY: both sets are live. `base` is read (its rules' reference counts are atomic,
        // so transactions may run on it meanwhile), with one exception in 3.0.9's
        // `mergeProperties`: a base holding `SecResponseBodyMimeTypesClear` (only possible
        // through `waf.extra_rules`) has its response MIME-type list cleared again, which it
        // already is. No transaction reads that list: Tenantry never runs the response
        // phases. On error the library stores a strdup'ed message in err, which we free.
        let n = unsafe { (api.rules_merge)(rules.ptr, base.ptr, &mut err) };
        check(n, err, "the rules could not be merged")?;
        Ok((rules, usize::try_from(n).unwrap_or(0)))
    }

    fn empty(api: &'static Api) -> Result<Rules, String> {
        // SAFETY: no preconditions.
        let ptr = unsafe { (api.create_rules_set)() };
        if ptr.is_null() {
            return Err("msc_create_rules_set returned null".into());
        }
        Ok(Rules { api, ptr })
    }

    /// Parses `text` into this set; the number of rules it added.
    fn add(&self, text: &str) -> Result<usize, String> {
        let text = CString::new(text).map_err(|e| e.to_string())?;
        let _parsing = PARSER.lock().unwrap_or_else(|p| p.into_inner());
        let mut err: *const c_char = ptr::null();
        // SAFETY: ptr is a live set, text is NUL-terminated; on error the library stores a
        // strdup'ed message in err, which we free.
        let n = unsafe { (self.api.rules_add)(self.ptr, text.as_ptr(), &mut err) };
        check(n, err, "the rules could not be loaded")?;
        Ok(usize::try_from(n).unwrap_or(0))
    }
}

/// libmodsecurity's configuration parser (bison/flex) keeps global state: one parse (or
/// merge) at a time in the process.
static PARSER: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// `Err` with the library's message when a `msc_rules_*` call failed (and frees it).
fn check(n: c_int, err: *const c_char, fallback: &str) -> Result<(), String> {
    if n >= 0 && err.is_null() {
        return Ok(());
    }
    let msg = if err.is_null() {
        fallback.to_owned()
    } else {
        // SAFETY: err is a NUL-terminated string allocated by the library.
        let m = unsafe { CStr::from_ptr(err) }
            .to_string_lossy()
            .into_owned();
        // SAFETY: allocated with malloc by strdup.
        unsafe { free(err as *mut c_void) };
        m
    };
    Err(msg.trim().to_owned())
}

impl Drop for Rules {
    fn drop(&mut self) {
        // SAFETY: the last reference is gone, no transaction uses the set any more.
        unsafe { (self.api.rules_cleanup)(self.ptr) };
    }
}

/// What an intervention check found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Disruption {
    /// The status the rule asked for.
    pub(crate) status: u16,
}

impl Disruption {
    fn new(status: c_int) -> Disruption {
        Disruption {
            status: u16::try_from(status).unwrap_or(403),
        }
    }
}

/// One request's transaction. Dropping it releases it.
pub(crate) struct Transaction<'a> {
    api: &'static Api,
    ptr: *mut Opaque,
    _borrows: std::marker::PhantomData<(&'a Engine, &'a Rules)>,
}

impl<'a> Transaction<'a> {
    /// Starts a transaction on `rules`, identified by `id` (logged as `unique_id`), whose rule
    /// messages reach the log callback with `log_data`.
    ///
    /// `log_data` must stay valid until the transaction is dropped.
    pub(crate) fn new(
        engine: &'a Engine,
        rules: &'a Rules,
        id: &CStr,
        log_data: *mut c_void,
    ) -> Option<Transaction<'a>> {
        // SAFETY: engine and rules outlive the transaction (borrowed for 'a); the id is copied
        // by the library (it takes a non-const pointer but does not write through it).
        let ptr = unsafe {
            (engine.api.new_transaction_with_id)(
                engine.ptr,
                rules.ptr,
                id.as_ptr() as *mut c_char,
                log_data,
            )
        };
        (!ptr.is_null()).then_some(Transaction {
            api: engine.api,
            ptr,
            _borrows: std::marker::PhantomData,
        })
    }

    /// Phase 0: the connection's addresses.
    pub(crate) fn connection(&mut self, client: &CStr, cport: u16, server: &CStr, sport: u16) {
        // SAFETY: live transaction; strings are NUL-terminated and copied.
        unsafe {
            (self.api.process_connection)(
                self.ptr,
                client.as_ptr(),
                c_int::from(cport),
                server.as_ptr(),
                c_int::from(sport),
            )
        };
    }

    /// The request line.
    pub(crate) fn uri(&mut self, uri: &CStr, method: &CStr, version: &CStr) {
        // SAFETY: live transaction; strings are NUL-terminated and copied.
        unsafe {
            (self.api.process_uri)(self.ptr, uri.as_ptr(), method.as_ptr(), version.as_ptr())
        };
    }

    /// One request header.
    pub(crate) fn header(&mut self, name: &[u8], value: &[u8]) {
        // SAFETY: live transaction; the library copies `len` bytes of each.
        unsafe {
            (self.api.add_n_request_header)(
                self.ptr,
                name.as_ptr(),
                name.len(),
                value.as_ptr(),
                value.len(),
            )
        };
    }

    /// Phase 1 (request headers).
    pub(crate) fn process_headers(&mut self) {
        // SAFETY: live transaction.
        unsafe { (self.api.process_request_headers)(self.ptr) };
    }

    /// Appends request body bytes.
    pub(crate) fn append_body(&mut self, body: &[u8]) {
        if body.is_empty() {
            return;
        }
        // SAFETY: live transaction; the library copies the bytes.
        unsafe { (self.api.append_request_body)(self.ptr, body.as_ptr(), body.len()) };
    }

    /// Phase 2 (request body, even an empty one: the CRS's blocking evaluation runs here).
    pub(crate) fn process_body(&mut self) {
        // SAFETY: live transaction.
        unsafe { (self.api.process_request_body)(self.ptr) };
    }

    /// Phase 5 (logging): runs the correlation rules and writes audit logs.
    pub(crate) fn process_logging(&mut self) {
        // SAFETY: live transaction.
        unsafe { (self.api.process_logging)(self.ptr) };
    }

    /// Whether a disruptive action (deny, drop, redirect) fired so far; the deciding rule's
    /// message (which does not go through the log callback) is handed to `log`.
    pub(crate) fn intervention(&mut self, log: impl FnOnce(&[u8])) -> Option<Disruption> {
        let mut it = Intervention {
            status: 200,
            pause: 0,
            url: ptr::null_mut(),
            log: ptr::null_mut(),
            disruptive: 0,
        };
        // SAFETY: live transaction; `it` is a valid, initialised struct. The library may set
        // `url` and `log` to malloc'ed strings, which we own and free.
        let disruptive = unsafe { (self.api.intervention)(self.ptr, &mut it) };
        if !it.log.is_null() {
            // SAFETY: a NUL-terminated string allocated by the library.
            log(unsafe { CStr::from_ptr(it.log) }.to_bytes());
        }
        // SAFETY: null or malloc'ed by the library (3.0.9 has no msc_intervention_cleanup).
        unsafe {
            if !it.url.is_null() {
                free(it.url as *mut c_void);
            }
            if !it.log.is_null() {
                free(it.log as *mut c_void);
            }
        }
        (disruptive != 0 || it.disruptive != 0).then(|| Disruption::new(it.status))
    }
}

impl Drop for Transaction<'_> {
    fn drop(&mut self) {
        // SAFETY: the transaction is live and dropped once.
        unsafe { (self.api.transaction_cleanup)(self.ptr) };
    }
}

/// The log callback given to every engine: `data` is the `Collector` of the transaction
/// that produced the message (see [`Transaction::new`]), `msg` the message text.
pub(crate) unsafe extern "C" fn log_callback(data: *mut c_void, msg: *const c_void) {
    if data.is_null() || msg.is_null() {
        return;
    }
    // SAFETY: libmodsecurity passes a NUL-terminated string valid for the call.
    let text = unsafe { CStr::from_ptr(msg as *const c_char) }.to_bytes();
    // SAFETY: `data` is the `&mut Collector` the inspecting thread passed to
    // `Transaction::new`; it outlives the transaction and nothing else touches it meanwhile
    // (the callback runs on that thread, inside a libmodsecurity call).
    let collector = unsafe { &mut *(data as *mut crate::log::Collector) };
    // A panic must not unwind into C++.
    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| collector.push(text)));
}

/// Puts the calling (inspection) thread under `SCHED_BATCH`: a CPU-bound thread whose
/// wake-ups do not preempt the running one. Handing it a request then does not interrupt the
/// proxy worker that queued it (nor one serving another tenant on the same core); the
/// inspection runs when the worker waits for I/O, and the verdict's wake-up of the worker
/// still preempts it. Without it, every inspection costs two extra context switches on a
/// shared core. A failure (not Linux, a seccomp profile) only loses that.
pub(crate) fn batch_policy() {
    #[cfg(target_os = "linux")]
    {
        let param = libc::sched_param { sched_priority: 0 };
        // SAFETY: `sched_setscheduler` with pid 0 changes the calling thread's own policy; the
        // parameter is a valid, initialised struct that outlives the call.
        let rc = unsafe { libc::sched_setscheduler(0, libc::SCHED_BATCH, &param) };
        if rc != 0 {
            tracing::debug!(
                error = %std::io::Error::last_os_error(),
                "WAF inspection thread stays under the default scheduling policy"
            );
        }
    }
}
