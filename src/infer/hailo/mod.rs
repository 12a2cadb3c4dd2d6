//! The HailoRT seam (feature `hailo`): finds and loads `libhailort.so` at run time (so one
//! binary runs with or without the NPU), opens a virtual device, configures it from a HEF, and
//! runs one UINT8 NHWC frame through the network's virtual streams into caller-visible output
//! buffers that live as long as the network and are reused.
//!
//! Must not: know what a model means (recognizer, detector): like `infer`'s ONNX path, it hands
//! named raw output tensors ([`OutputTensor`]) to the stages above. Must not call into C with a
//! buffer whose size it has not checked.
//!
//! Outputs are requested as FLOAT32 so HailoRT dequantises them (the usual cause of garbage
//! results is reading a UINT8 output as if it were float). [`OutputFormat::Device`] reads the
//! device's own values instead (UINT8, or UINT16 from an a16 HEF: HailoRT refuses to hand a
//! UINT16 output over as UINT8, so the type is never forced) and dequantises them here with the
//! output's quantisation info, `(q - qp_zp) * qp_scale`, per channel when the HEF has one qp
//! per feature.
//!
//! Frames in flight: a write or read that times out leaves its frame somewhere in HailoRT's
//! pipeline (or on the device), and its output would come out of the next read, one face late.
//! [`HailoNetwork::run`] therefore clears the input and output vstreams after a timeout
//! (`hailo_clear_input_vstreams`, then every output together), so the next run's output is its
//! own frame's. A failure that clearing cannot mend (a reset or lost device: every call then
//! fails until the vdevice is released) leaves the network [broken](HailoNetwork::is_broken):
//! its owner drops it and the device, and opens them again (`embed::reopen`).
//!
//! One device, several processes: a vdevice holds the Hailo-8 exclusively (a second one, in
//! any process, gets `HAILO_OUT_OF_PHYSICAL_DEVICES`). [`DeviceOptions::multi_process_service`]
//! creates it in HailoRT's service (`hailort_service`, the `hailort.service` unit) under the
//! group id "SHARED" instead, as HailoRT's own multi-process example does, so that `portier
//! run` and `portier enroll` share the device; the service needs the scheduler.
//!
//! Activation: a vdevice created with default parameters runs HailoRT's round-robin scheduler,
//! which activates network groups itself (explicit activation is then refused with
//! `HAILO_INVALID_OPERATION`). That is the default here ([`DeviceOptions::scheduler`]). With the
//! scheduler off, the network group is activated once after its vstreams exist and deactivated
//! first on drop: fine for one process that owns the device and one network per device.

pub mod ffi;

use std::ffi::CString;
use std::path::{Path, PathBuf};
use std::ptr;
use std::sync::Arc;

use crate::infer::OutputTensor;

/// Sonames tried after the configured path and `HAILORT_LIBRARY`: the 4.2x releases for
/// Hailo-8 (newest first; Raspberry Pi OS and Hailo's packages install versioned names), then
/// the unversioned development link.
pub const LIBRARY_NAMES: [&str; 5] = [
    "libhailort.so.4.23.0",
    "libhailort.so.4.22.0",
    "libhailort.so.4.21.0",
    "libhailort.so.4.20.0",
    "libhailort.so",
];

/// Environment variable naming the library file (after the configured path).
pub const LIBRARY_ENV: &str = "HAILORT_LIBRARY";

/// Most vstreams per direction we accept: far above what a face model has (one input, a few
/// outputs; SCRFD has 9), and bounded so that parameter arrays are fixed-size.
const MAX_VSTREAMS: usize = 16;

/// A `hailo_status` code with its header name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HailoStatus(pub u32);

impl HailoStatus {
    /// The header's name of the code.
    pub fn name(self) -> &'static str {
        ffi::status_name(self.0)
    }
}

impl std::fmt::Display for HailoStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.name(), self.0)
    }
}

/// Errors from loading HailoRT, opening the device or a network, or running it.
#[derive(Debug, thiserror::Error)]
pub enum HailoError {
    /// No candidate library could be loaded.
    #[error(
        "hailort library not found (tried: {tried}); install hailort 4.2x or set \
         HAILORT_LIBRARY or the configured library path to libhailort.so"
    )]
    LibraryNotFound {
        /// Each candidate and why it failed, for the message.
        tried: String,
    },
    /// The library loaded but lacks an entry point: not HailoRT 4.x.
    #[error("hailort library {path}: missing symbol `{symbol}` ({reason}); is this hailort 4.2x?")]
    MissingSymbol {
        /// The library file.
        path: PathBuf,
        /// The symbol.
        symbol: &'static str,
        /// What the loader said.
        reason: String,
    },
    /// The library is not a 4.x release (the layouts here are 4.x's).
    #[error("hailort library {path}: version {version} is not supported (need 4.x)")]
    Version {
        /// The library file.
        path: PathBuf,
        /// major.minor.revision.
        version: String,
    },
    /// The HEF file does not exist or is not readable.
    #[error("hef {path}: cannot read: {reason}")]
    HefMissing {
        /// The HEF file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// A HailoRT call returned an error status.
    #[error("hailort {call} failed ({context}): {status}")]
    Status {
        /// The C function.
        call: &'static str,
        /// Its status.
        status: HailoStatus,
        /// What we were doing (model, vstream).
        context: String,
    },
    /// A write or read on a vstream did not complete within its timeout.
    #[error("hailort {call} timed out after {timeout_ms} ms ({context})")]
    Timeout {
        /// The C function.
        call: &'static str,
        /// The configured vstream timeout.
        timeout_ms: u32,
        /// Which model and vstream.
        context: String,
    },
    /// The device is held by another vdevice (`HAILO_OUT_OF_PHYSICAL_DEVICES`).
    #[error("{}", busy_message(*.service, *.status))]
    DeviceBusy {
        /// Whether this vdevice was asked of HailoRT's multi-process service.
        service: bool,
        /// The status.
        status: HailoStatus,
    },
    /// HailoRT's multi-process service did not answer (`HAILO_RPC_FAILED`).
    #[error(
        "hailort: the multi-process service (hailort_service) did not answer: {status}; start \
         it (systemctl enable --now hailort.service), or set [npu] multi_process_service = \
         false if only one process uses the Hailo"
    )]
    ServiceDown {
        /// The status.
        status: HailoStatus,
    },
    /// Device options HailoRT refuses, refused before calling it.
    #[error("hailort device options: {reason}")]
    Options {
        /// Why.
        reason: String,
    },
    /// An earlier failure left the network unusable (a reset or lost device, or vstreams that
    /// could not be cleared after a timeout): it must be dropped with its device and reopened.
    #[error("hef {path}: unusable since {cause}; the device must be opened again")]
    Broken {
        /// The HEF file.
        path: PathBuf,
        /// The failure that broke it.
        cause: String,
    },
    /// The HEF's network is not one this wrapper runs (network groups, vstreams, formats).
    #[error("hef {path}: {reason}")]
    Model {
        /// The HEF file.
        path: PathBuf,
        /// What does not fit.
        reason: String,
    },
    /// The caller's input frame has the wrong size; refused before calling HailoRT.
    #[error(
        "hef {path}: input frame is {got} bytes, the network takes {expected} (h x w x c uint8)"
    )]
    InputSize {
        /// The HEF file.
        path: PathBuf,
        /// Bytes the input vstream takes.
        expected: usize,
        /// Bytes offered.
        got: usize,
    },
}

fn busy_message(service: bool, status: HailoStatus) -> String {
    if service {
        format!(
            "hailort: the Hailo device is held outside the multi-process service ({status}): \
             another process opened it without multi_process_service, or under another group \
             id; every process that shares it needs [npu] multi_process_service = true"
        )
    } else {
        format!(
            "hailort: the Hailo device is in use by another process ({status}); to share it \
             (`portier enroll` while `portier run` holds it), run hailort_service and set \
             [npu] multi_process_service = true in every process's config"
        )
    }
}

impl HailoError {
    /// True for failures of the device or the runtime while running (a status, a timeout, a
    /// broken network), as opposed to set-up or caller errors: the signal to stop using the NPU.
    pub fn is_device_failure(&self) -> bool {
        matches!(self, Self::Status { .. } | Self::Timeout { .. } | Self::Broken { .. })
    }
}

/// The loaded HailoRT library.
pub struct HailoRuntime {
    api: ffi::Api,
    path: PathBuf,
    version: ffi::Version,
}

impl std::fmt::Debug for HailoRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HailoRuntime")
            .field("path", &self.path)
            .field("version", &self.version)
            .finish()
    }
}

/// Where the library is looked for, in order.
fn candidates(explicit: Option<&Path>) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Some(p) = explicit {
        out.push(p.to_path_buf());
    }
    if let Some(p) = std::env::var_os(LIBRARY_ENV).filter(|p| !p.is_empty()) {
        out.push(PathBuf::from(p));
    }
    // Bare sonames: the dynamic loader searches its own paths (ld.so.cache, LD_LIBRARY_PATH).
    out.extend(LIBRARY_NAMES.iter().map(PathBuf::from));
    out
}

impl HailoRuntime {
    /// Loads HailoRT: `explicit` (from the config) first, then `HAILORT_LIBRARY`, then the 4.2x
    /// sonames and `libhailort.so`. A library once loaded stays loaded for the process's life
    /// and is handed out again: unloading libhailort while its own threads (the service
    /// client's keep-alive) may still run would crash the process, and an NPU that is reopened
    /// after a loss must find the library's state where it was.
    pub fn load(explicit: Option<&Path>) -> Result<Arc<Self>, HailoError> {
        static LOADED: std::sync::Mutex<Vec<Arc<HailoRuntime>>> = std::sync::Mutex::new(Vec::new());
        let mut loaded = LOADED.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut tried = Vec::new();
        for path in candidates(explicit) {
            if let Some(runtime) = loaded.iter().find(|r| r.path == path) {
                return Ok(Arc::clone(runtime));
            }
            let is_path = path.components().count() > 1;
            if is_path && !path.is_file() {
                tried.push(format!("{}: no such file", path.display()));
                continue;
            }
            match ffi::Api::load(&path) {
                Ok(api) => {
                    let runtime = Self::check(api, path)?;
                    loaded.push(Arc::clone(&runtime));
                    return Ok(runtime);
                }
                Err(ffi::LoadError::Open(reason)) => {
                    tried.push(format!("{}: {reason}", path.display()));
                }
                Err(ffi::LoadError::Symbol { name, reason }) => {
                    return Err(HailoError::MissingSymbol { path, symbol: name, reason });
                }
            }
        }
        Err(HailoError::LibraryNotFound { tried: tried.join("; ") })
    }

    fn check(api: ffi::Api, path: PathBuf) -> Result<Arc<Self>, HailoError> {
        let mut version = ffi::Version::default();
        // SAFETY: `version` is a valid, writable `hailo_version_t`; the call only fills it.
        let status = unsafe { (api.get_library_version)(&mut version) };
        if status != ffi::HAILO_SUCCESS {
            return Err(HailoError::Status {
                call: "hailo_get_library_version",
                status: HailoStatus(status),
                context: path.display().to_string(),
            });
        }
        if version.major != 4 {
            return Err(HailoError::Version {
                path,
                version: format!("{}.{}.{}", version.major, version.minor, version.revision),
            });
        }
        log::debug!(
            "hailort {}.{}.{} loaded from {}",
            version.major,
            version.minor,
            version.revision,
            path.display()
        );
        Ok(Arc::new(Self { api, path, version }))
    }

    /// The library that was loaded.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The library's version (major, minor, revision).
    pub fn version(&self) -> (u32, u32, u32) {
        (self.version.major, self.version.minor, self.version.revision)
    }
}

/// How the virtual device is created.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceOptions {
    /// Let HailoRT's scheduler activate network groups (the default). Off: each network is
    /// activated explicitly, which suits exactly one network per device.
    pub scheduler: bool,
    /// Create the vdevice in HailoRT's multi-process service (`hailort_service`), under the
    /// group id [`ffi::SHARED_VDEVICE_GROUP_ID`], so that several processes share the one
    /// device. Needs the scheduler and the service running.
    pub multi_process_service: bool,
}

impl Default for DeviceOptions {
    fn default() -> Self {
        Self { scheduler: true, multi_process_service: false }
    }
}

struct DeviceInner {
    runtime: Arc<HailoRuntime>,
    handle: ffi::Vdevice,
    scheduler: bool,
    service: bool,
}

impl Drop for DeviceInner {
    fn drop(&mut self) {
        // SAFETY: `handle` came from `hailo_create_vdevice` and is released exactly once, here;
        // every network holds an `Arc` of this, so none outlives the vdevice.
        let status = unsafe { (self.runtime.api.release_vdevice)(self.handle) };
        if status != ffi::HAILO_SUCCESS {
            log::warn!("hailo_release_vdevice: {}", HailoStatus(status));
        }
    }
}

/// An open virtual device (all Hailo devices HailoRT finds, by default one Hailo-8).
#[derive(Clone)]
pub struct HailoDevice {
    inner: Arc<DeviceInner>,
}

impl std::fmt::Debug for HailoDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HailoDevice")
            .field("scheduler", &self.inner.scheduler)
            .field("multi_process_service", &self.inner.service)
            .finish()
    }
}

// SAFETY: a vdevice handle has no thread affinity in HailoRT (its own examples drive one
// vdevice's streams from several threads); we only release it, once, when the last owner drops.
unsafe impl Send for DeviceInner {}
// SAFETY: as above; shared references only read the handle value.
unsafe impl Sync for DeviceInner {}

fn check(
    call: &'static str,
    status: ffi::Status,
    context: &dyn Fn() -> String,
) -> Result<(), HailoError> {
    if status == ffi::HAILO_SUCCESS {
        Ok(())
    } else {
        Err(HailoError::Status { call, status: HailoStatus(status), context: context() })
    }
}

impl HailoDevice {
    /// Opens a virtual device over the Hailo devices present.
    pub fn open(runtime: &Arc<HailoRuntime>, options: DeviceOptions) -> Result<Self, HailoError> {
        let api = &runtime.api;
        let mut handle: ffi::Vdevice = ptr::null_mut();
        let ctx = || "opening the device".to_string();
        let service = options.multi_process_service;
        if service && !options.scheduler {
            // HailoRT's VDevice::create refuses it with HAILO_INVALID_ARGUMENT.
            return Err(HailoError::Options {
                reason: "the multi-process service works only with HailoRT's scheduler".into(),
            });
        }
        let status = if options.scheduler && !service {
            // SAFETY: NULL params are documented to mean defaults (round-robin scheduler);
            // `handle` is a valid out-pointer.
            unsafe { (api.create_vdevice)(ptr::null_mut(), &mut handle) }
        } else {
            let mut params = ffi::VdeviceParams {
                device_count: 0,
                device_ids: ptr::null_mut(),
                scheduling_algorithm: ffi::SCHEDULING_ALGORITHM_ROUND_ROBIN,
                group_id: ptr::null(),
                multi_process_service: false,
            };
            // SAFETY: `params` is a valid `hailo_vdevice_params_t` that the call fills.
            let status = unsafe { (api.init_vdevice_params)(&mut params) };
            check("hailo_init_vdevice_params", status, &ctx)?;
            if !options.scheduler {
                params.scheduling_algorithm = ffi::SCHEDULING_ALGORITHM_NONE;
            }
            if service {
                params.multi_process_service = true;
                params.group_id = ffi::SHARED_VDEVICE_GROUP_ID.as_ptr();
            }
            // SAFETY: `params` was filled by HailoRT; its `group_id` points at the library's
            // static default string or at our static "SHARED"; `handle` is a valid out-pointer.
            unsafe { (api.create_vdevice)(&mut params, &mut handle) }
        };
        match status {
            ffi::HAILO_OUT_OF_PHYSICAL_DEVICES => {
                return Err(HailoError::DeviceBusy { service, status: HailoStatus(status) })
            }
            ffi::HAILO_RPC_FAILED if service => {
                return Err(HailoError::ServiceDown { status: HailoStatus(status) })
            }
            _ => check("hailo_create_vdevice", status, &ctx)?,
        }
        if handle.is_null() {
            return Err(HailoError::Status {
                call: "hailo_create_vdevice",
                status: HailoStatus(ffi::HAILO_SUCCESS),
                context: "returned success and no device".into(),
            });
        }
        Ok(Self {
            inner: Arc::new(DeviceInner {
                runtime: Arc::clone(runtime),
                handle,
                scheduler: options.scheduler,
                service,
            }),
        })
    }

    /// The runtime this device was opened with.
    pub fn runtime(&self) -> &Arc<HailoRuntime> {
        &self.inner.runtime
    }
}

/// The element type outputs are read in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OutputFormat {
    /// FLOAT32, dequantised by HailoRT (the default; any device type).
    #[default]
    Float32,
    /// Each output in the device's own type (HailoRT's AUTO: UINT8, or UINT16 from an a16 HEF),
    /// dequantised here with its quantisation info.
    Device,
}

/// The element type one output is read in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Elem {
    F32,
    U8,
    U16,
}

impl Elem {
    fn bytes(self) -> usize {
        match self {
            Elem::F32 => 4,
            Elem::U8 => 1,
            Elem::U16 => 2,
        }
    }
}

/// How a network is opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NetworkOptions {
    /// Timeout of each vstream write and read, in milliseconds: keep it below the loop's
    /// watchdog period so a hung device surfaces as an error, not a watchdog reset.
    pub timeout_ms: u32,
    /// Element type of the outputs.
    pub output: OutputFormat,
}

impl Default for NetworkOptions {
    fn default() -> Self {
        // A recognizer frame takes a few ms on Hailo-8; 1 s is far below systemd's watchdog.
        Self { timeout_ms: 1000, output: OutputFormat::Float32 }
    }
}

/// Layout of one output vstream as HailoRT reports it.
#[derive(Debug, Clone)]
struct OutputSlot {
    handle: ffi::OutputVstream,
    elem: Elem,
    frame_bytes: usize,
    /// One entry, or one per feature (channel) when the HEF quantises per channel.
    quant: Vec<ffi::QuantInfo>,
    features: usize,
}

/// A configured network group with its vstreams, ready to run frames.
pub struct HailoNetwork {
    device: HailoDevice,
    path: PathBuf,
    options: NetworkOptions,
    hef: ffi::Hef,
    network_group: ffi::ConfiguredNetworkGroup,
    activated: ffi::ActivatedNetworkGroup,
    input: ffi::InputVstream,
    input_name: String,
    input_shape: [u32; 3],
    input_bytes: usize,
    outputs: Vec<OutputSlot>,
    results: Vec<OutputTensor>,
    raw: Vec<u8>,
    /// Why the network can no longer run, once a failure that clearing cannot mend happened.
    broken: Option<String>,
}

impl std::fmt::Debug for HailoNetwork {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HailoNetwork")
            .field("path", &self.path)
            .field("input", &self.input_name)
            .field("input_shape", &self.input_shape)
            .field("outputs", &self.results.iter().map(|o| &o.name).collect::<Vec<_>>())
            .finish()
    }
}

// SAFETY: the handles have no thread affinity in HailoRT; `&mut self` serialises every call
// that uses them, and `Drop` releases them once.
unsafe impl Send for HailoNetwork {}

fn shape_of(info: &ffi::VstreamInfo) -> [u32; 3] {
    // SAFETY: both union members are plain u32s, so any bit pattern is valid; callers use
    // `shape` only after checking the order is not an NMS one.
    let s = unsafe { info.shape.shape };
    [s.height, s.width, s.features]
}

fn is_nms(order: u32) -> bool {
    matches!(
        order,
        ffi::FORMAT_ORDER_HAILO_NMS
            | ffi::FORMAT_ORDER_HAILO_NMS_WITH_BYTE_MASK
            | ffi::FORMAT_ORDER_HAILO_NMS_ON_CHIP
            | ffi::FORMAT_ORDER_HAILO_NMS_BY_CLASS
            | ffi::FORMAT_ORDER_HAILO_NMS_BY_SCORE
    )
}

impl HailoNetwork {
    /// Loads `hef_path`, configures `device` with its one network group, and creates one UINT8
    /// input vstream and the output vstreams in `options.output`'s element type.
    pub fn open(
        device: &HailoDevice,
        hef_path: &Path,
        options: NetworkOptions,
    ) -> Result<Self, HailoError> {
        match std::fs::metadata(hef_path) {
            Ok(m) if m.is_file() => {}
            Ok(_) => {
                return Err(HailoError::HefMissing {
                    path: hef_path.into(),
                    reason: "not a regular file".into(),
                })
            }
            Err(e) => {
                return Err(HailoError::HefMissing { path: hef_path.into(), reason: e.to_string() })
            }
        }
        let c_path = CString::new(hef_path.as_os_str().as_encoded_bytes()).map_err(|_| {
            HailoError::HefMissing { path: hef_path.into(), reason: "path contains NUL".into() }
        })?;
        let api = &device.inner.runtime.api;
        let ctx = || hef_path.display().to_string();
        let mut hef: ffi::Hef = ptr::null_mut();
        // SAFETY: `c_path` is NUL-terminated and outlives the call; `hef` is a valid out-pointer.
        let status = unsafe { (api.create_hef_file)(&mut hef, c_path.as_ptr()) };
        check("hailo_create_hef_file", status, &ctx)?;
        // From here on `net` owns what exists, and its `Drop` releases it on any early return.
        let mut net = Self {
            device: device.clone(),
            path: hef_path.into(),
            options,
            hef,
            network_group: ptr::null_mut(),
            activated: ptr::null_mut(),
            input: ptr::null_mut(),
            input_name: String::new(),
            input_shape: [0; 3],
            input_bytes: 0,
            outputs: Vec::new(),
            results: Vec::new(),
            raw: Vec::new(),
            broken: None,
        };
        net.configure()?;
        net.create_vstreams()?;
        net.describe()?;
        if !device.inner.scheduler {
            let mut activated: ffi::ActivatedNetworkGroup = ptr::null_mut();
            // SAFETY: `network_group` is configured and its vstreams exist; NULL activation
            // params mean defaults; `activated` is a valid out-pointer.
            let status = unsafe {
                (api.activate_network_group)(net.network_group, ptr::null_mut(), &mut activated)
            };
            check("hailo_activate_network_group", status, &ctx)?;
            net.activated = activated;
        }
        Ok(net)
    }

    fn configure(&mut self) -> Result<(), HailoError> {
        let api = &self.device.inner.runtime.api;
        let path = self.path.clone();
        let ctx = || path.display().to_string();
        // Boxed: the struct is large, and zeroed so unknown fields start from a defined state.
        let mut params: Box<ffi::ConfigureParams> =
            Box::new(ffi::ConfigureParams { bytes: [0; ffi::CONFIGURE_PARAMS_BYTES] });
        // SAFETY: `hef` and the vdevice are live; `params` is a writable buffer larger than any
        // release's `hailo_configure_params_t` (see `ffi::ConfigureParams`).
        let status = unsafe {
            (api.init_configure_params_by_vdevice)(self.hef, self.device.inner.handle, &mut *params)
        };
        check("hailo_init_configure_params_by_vdevice", status, &ctx)?;
        let mut groups = [ptr::null_mut(); ffi::MAX_NETWORK_GROUPS];
        let mut count = groups.len();
        // SAFETY: `params` was filled by HailoRT for this HEF and vdevice; `groups` holds
        // `count` writable handles and `count` is a valid in/out pointer.
        let status = unsafe {
            (api.configure_vdevice)(
                self.device.inner.handle,
                self.hef,
                &mut *params,
                groups.as_mut_ptr(),
                &mut count,
            )
        };
        check("hailo_configure_vdevice", status, &ctx)?;
        if count != 1 || groups[0].is_null() {
            return Err(HailoError::Model {
                path: self.path.clone(),
                reason: format!("has {count} network groups; one is supported"),
            });
        }
        self.network_group = groups[0];
        Ok(())
    }

    fn make_params(
        &self,
        make: ffi::MakeVstreamParamsFn,
        call: &'static str,
        format_type: u32,
    ) -> Result<([ffi::VstreamParamsByName; MAX_VSTREAMS], usize), HailoError> {
        let mut params = [ffi::VstreamParamsByName::default(); MAX_VSTREAMS];
        let mut count = params.len();
        // SAFETY: the network group is configured; `params` holds `count` writable entries.
        let status = unsafe {
            make(self.network_group, false, format_type, params.as_mut_ptr(), &mut count)
        };
        if status == ffi::HAILO_INSUFFICIENT_BUFFER || count > MAX_VSTREAMS {
            return Err(HailoError::Model {
                path: self.path.clone(),
                reason: format!("has more than {MAX_VSTREAMS} vstreams in one direction"),
            });
        }
        check(call, status, &|| self.path.display().to_string())?;
        for p in &mut params[..count] {
            p.params.user_buffer_format.format_type = format_type;
            p.params.user_buffer_format.flags = ffi::FORMAT_FLAGS_NONE;
            p.params.timeout_ms = self.options.timeout_ms;
        }
        Ok((params, count))
    }

    fn create_vstreams(&mut self) -> Result<(), HailoError> {
        let api = &self.device.inner.runtime.api;
        let ctx = || self.path.display().to_string();
        // Input in the HEF's own UINT8 (AUTO order: NHWC for images, checked in `describe`).
        let (in_params, in_count) = self.make_params(
            api.make_input_vstream_params,
            "hailo_make_input_vstream_params",
            ffi::FORMAT_TYPE_UINT8,
        )?;
        if in_count != 1 {
            return Err(HailoError::Model {
                path: self.path.clone(),
                reason: format!("has {in_count} inputs; one is supported"),
            });
        }
        let out_type = match self.options.output {
            OutputFormat::Float32 => ffi::FORMAT_TYPE_FLOAT32,
            OutputFormat::Device => ffi::FORMAT_TYPE_AUTO,
        };
        let (out_params, out_count) = self.make_params(
            api.make_output_vstream_params,
            "hailo_make_output_vstream_params",
            out_type,
        )?;
        if out_count == 0 {
            return Err(HailoError::Model {
                path: self.path.clone(),
                reason: "has no outputs".into(),
            });
        }
        let mut input: ffi::InputVstream = ptr::null_mut();
        // SAFETY: `in_params[..1]` was made by HailoRT for this group; `input` receives one
        // handle.
        let status = unsafe {
            (api.create_input_vstreams)(self.network_group, in_params.as_ptr(), 1, &mut input)
        };
        check("hailo_create_input_vstreams", status, &ctx)?;
        self.input = input;
        let mut outs = [ptr::null_mut(); MAX_VSTREAMS];
        // SAFETY: `out_params[..out_count]` was made by HailoRT for this group; `outs` has room
        // for `out_count` handles. All outputs are created together, as the header requires
        // for vstreams that share a low-level stream.
        let status = unsafe {
            (api.create_output_vstreams)(
                self.network_group,
                out_params.as_ptr(),
                out_count,
                outs.as_mut_ptr(),
            )
        };
        check("hailo_create_output_vstreams", status, &ctx)?;
        self.outputs = outs[..out_count]
            .iter()
            .map(|&handle| OutputSlot {
                handle,
                elem: Elem::F32,
                frame_bytes: 0,
                quant: Vec::new(),
                features: 0,
            })
            .collect();
        Ok(())
    }

    fn describe(&mut self) -> Result<(), HailoError> {
        let api = &self.device.inner.runtime.api;
        let path = self.path.clone();
        let ctx = || path.display().to_string();
        let model = |reason: String| HailoError::Model { path: path.clone(), reason };
        // SAFETY: all-zero is a valid `VstreamInfoSlot` (integers, chars and floats).
        let mut slot: ffi::VstreamInfoSlot = unsafe { std::mem::zeroed() };
        // SAFETY: `input` is a live vstream; `slot` is writable and larger than the C struct.
        let status = unsafe { (api.get_input_vstream_info)(self.input, &mut slot) };
        check("hailo_get_input_vstream_info", status, &ctx)?;
        self.input_name = ffi::name_of(&slot.info.name);
        if slot.info.format.order != ffi::FORMAT_ORDER_NHWC {
            return Err(model(format!(
                "input `{}` has format order {}; an NHWC image input is supported",
                self.input_name, slot.info.format.order
            )));
        }
        self.input_shape = shape_of(&slot.info);
        let mut bytes = 0usize;
        // SAFETY: `input` is live; `bytes` is a valid out-pointer.
        let status = unsafe { (api.get_input_vstream_frame_size)(self.input, &mut bytes) };
        check("hailo_get_input_vstream_frame_size", status, &ctx)?;
        let [h, w, c] = self.input_shape.map(|d| d as usize);
        if bytes != h * w * c {
            return Err(model(format!(
                "input `{}` frame is {bytes} bytes, its shape {h}x{w}x{c} says {}",
                self.input_name,
                h * w * c
            )));
        }
        self.input_bytes = bytes;
        let mut results = Vec::with_capacity(self.outputs.len());
        let mut max_raw = 0;
        for out in &mut self.outputs {
            // SAFETY: as for the input: `out.handle` is live, `slot` writable and large enough.
            let status = unsafe { (api.get_output_vstream_info)(out.handle, &mut slot) };
            check("hailo_get_output_vstream_info", status, &ctx)?;
            let name = ffi::name_of(&slot.info.name);
            if is_nms(slot.info.format.order) {
                return Err(model(format!(
                    "output `{name}` is an on-chip NMS result; compile the HEF without NMS so \
                     the detector decoders get raw tensors"
                )));
            }
            let [h, w, c] = shape_of(&slot.info);
            let values = h as usize * w as usize * c as usize;
            // The info's format is the HEF's: the device's element type.
            out.elem = match (self.options.output, slot.info.format.format_type) {
                (OutputFormat::Float32, _) => Elem::F32,
                (OutputFormat::Device, ffi::FORMAT_TYPE_UINT8) => Elem::U8,
                (OutputFormat::Device, ffi::FORMAT_TYPE_UINT16) => Elem::U16,
                (OutputFormat::Device, other) => {
                    return Err(model(format!(
                        "output `{name}` has element type {other} on the device; only UINT8 \
                         and UINT16 are read raw (read it as FLOAT32)"
                    )))
                }
            };
            let elem = out.elem.bytes();
            // SAFETY: `out.handle` is live; `frame_bytes` is a valid out-pointer.
            let status =
                unsafe { (api.get_output_vstream_frame_size)(out.handle, &mut out.frame_bytes) };
            check("hailo_get_output_vstream_frame_size", status, &ctx)?;
            if out.frame_bytes != values * elem {
                return Err(model(format!(
                    "output `{name}` frame is {} bytes, {h}x{w}x{c} values of {elem} bytes \
                     would be {}",
                    out.frame_bytes,
                    values * elem
                )));
            }
            out.features = c as usize;
            let mut quant = vec![ffi::QuantInfo::default(); out.features.max(1)];
            let mut count = quant.len();
            // SAFETY: `quant` holds `count` writable entries; HailoRT writes one, or one per
            // feature, and reports how many.
            let status = unsafe {
                (api.get_output_vstream_quant_infos)(out.handle, quant.as_mut_ptr(), &mut count)
            };
            check("hailo_get_output_vstream_quant_infos", status, &ctx)?;
            if count != 1 && count != out.features {
                return Err(model(format!(
                    "output `{name}` has {count} quantisation entries for {c} features"
                )));
            }
            quant.truncate(count);
            out.quant = quant;
            if out.elem != Elem::F32 {
                max_raw = max_raw.max(out.frame_bytes);
            }
            results.push(OutputTensor {
                name,
                shape: vec![1, i64::from(h), i64::from(w), i64::from(c)],
                data: vec![0.0; values],
            });
        }
        self.results = results;
        self.raw = vec![0; max_raw];
        Ok(())
    }

    /// The HEF file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The input vstream's name.
    pub fn input_name(&self) -> &str {
        &self.input_name
    }

    /// The input's height, width and channels; frames are `h * w * c` UINT8 bytes, NHWC.
    pub fn input_shape(&self) -> [u32; 3] {
        self.input_shape
    }

    /// The outputs, in HailoRT's order, with the values of the last run (zeros before one).
    /// Shapes are NHWC `[1, h, w, c]`.
    pub fn outputs(&self) -> &[OutputTensor] {
        &self.results
    }

    /// The quantisation of output `index` (one entry, or one per channel).
    pub fn output_quant(&self, index: usize) -> Option<&[ffi::QuantInfo]> {
        self.outputs.get(index).map(|o| o.quant.as_slice())
    }

    /// Whether an earlier failure left the network unusable (see the module documentation):
    /// every further [`run`](Self::run) fails with [`HailoError::Broken`] without calling
    /// HailoRT, and the owner should drop the network and its device and open them again.
    pub fn is_broken(&self) -> bool {
        self.broken.is_some()
    }

    /// Runs one frame: `input` is `h * w * c` UINT8 bytes in NHWC order (the HEF's own input
    /// format: normalisation is compiled into the HEF). Returns the dequantised outputs in
    /// buffers owned by this network and reused from run to run (no allocation).
    ///
    /// After a timeout the vstreams are cleared, so the frame that timed out never comes out
    /// of a later run; after any other failure (or a clear that failed) the network is
    /// [broken](Self::is_broken).
    pub fn run(&mut self, input: &[u8]) -> Result<&[OutputTensor], HailoError> {
        if input.len() != self.input_bytes {
            return Err(HailoError::InputSize {
                path: self.path.clone(),
                expected: self.input_bytes,
                got: input.len(),
            });
        }
        if let Some(cause) = &self.broken {
            return Err(HailoError::Broken { path: self.path.clone(), cause: cause.clone() });
        }
        if let Err(e) = self.transfer(input) {
            if matches!(e, HailoError::Timeout { .. }) {
                if let Err(clear) = self.resync() {
                    log::warn!(
                        "{}: clearing the vstreams after a timeout: {clear}",
                        self.path.display()
                    );
                    self.broken = Some(format!("{e}, and then {clear}"));
                }
            } else {
                self.broken = Some(e.to_string());
            }
            return Err(e);
        }
        Ok(&self.results)
    }

    /// Drops every frame in flight or queued in the vstreams: the input, then all outputs
    /// together (the header: outputs of one group must be cleared in one call).
    fn resync(&mut self) -> Result<(), HailoError> {
        let api = &self.device.inner.runtime.api;
        let ctx = || format!("{}, after a timeout", self.path.display());
        // SAFETY: `input` is a live vstream handle; one element.
        let status = unsafe { (api.clear_input_vstreams)(&self.input, 1) };
        check("hailo_clear_input_vstreams", status, &ctx)?;
        // Error path only: the allocation does not touch the per-frame loop.
        let handles: Vec<ffi::OutputVstream> = self.outputs.iter().map(|o| o.handle).collect();
        // SAFETY: `handles` are the live output vstreams, all of the network's.
        let status = unsafe { (api.clear_output_vstreams)(handles.as_ptr(), handles.len()) };
        check("hailo_clear_output_vstreams", status, &ctx)
    }

    /// Writes the frame and reads every output into `results`.
    fn transfer(&mut self, input: &[u8]) -> Result<(), HailoError> {
        let api = &self.device.inner.runtime.api;
        let timeout_ms = self.options.timeout_ms;
        let path = &self.path;
        let fail = |call: &'static str, status: ffi::Status, vstream: &str| {
            let context = format!("{}, vstream `{vstream}`", path.display());
            if status == ffi::HAILO_TIMEOUT {
                HailoError::Timeout { call, timeout_ms, context }
            } else {
                HailoError::Status { call, status: HailoStatus(status), context }
            }
        };
        // SAFETY: `input` is exactly the input vstream's frame size (checked by `run`) and is
        // only read; the vstream is live.
        let status = unsafe {
            (api.vstream_write_raw_buffer)(self.input, input.as_ptr().cast(), input.len())
        };
        if status != ffi::HAILO_SUCCESS {
            return Err(fail("hailo_vstream_write_raw_buffer", status, &self.input_name));
        }
        for (slot, result) in self.outputs.iter().zip(&mut self.results) {
            let status = if slot.elem == Elem::F32 {
                // `describe` checked frame_bytes == data.len() * 4.
                // SAFETY: `result.data` holds exactly `frame_bytes` bytes of f32s, which
                // HailoRT fills with FLOAT32 values (any bit pattern is a valid f32).
                unsafe {
                    (api.vstream_read_raw_buffer)(
                        slot.handle,
                        result.data.as_mut_ptr().cast(),
                        slot.frame_bytes,
                    )
                }
            } else {
                let raw = &mut self.raw[..slot.frame_bytes];
                // SAFETY: `raw` holds exactly `frame_bytes` writable bytes.
                let status = unsafe {
                    (api.vstream_read_raw_buffer)(slot.handle, raw.as_mut_ptr().cast(), raw.len())
                };
                if status == ffi::HAILO_SUCCESS {
                    if slot.elem == Elem::U16 {
                        dequantize16(raw, &slot.quant, slot.features, &mut result.data);
                    } else {
                        dequantize(raw, &slot.quant, slot.features, &mut result.data);
                    }
                }
                status
            };
            if status != ffi::HAILO_SUCCESS {
                return Err(fail("hailo_vstream_read_raw_buffer", status, &result.name));
            }
        }
        Ok(())
    }
}

/// Dequantises UINT8 device values: `(q - qp_zp) * qp_scale`, with `quant` one entry for the
/// whole tensor or one per channel of an NHWC (channels-last) tensor of `features` channels.
pub fn dequantize(raw: &[u8], quant: &[ffi::QuantInfo], features: usize, out: &mut [f32]) {
    dequantize_values(raw.iter().map(|&v| f32::from(v)), quant, features, out);
}

/// As [`dequantize`], for UINT16 device values (an a16 HEF), two native-endian bytes each.
pub fn dequantize16(raw: &[u8], quant: &[ffi::QuantInfo], features: usize, out: &mut [f32]) {
    let values = raw.chunks_exact(2).map(|b| f32::from(u16::from_ne_bytes([b[0], b[1]])));
    dequantize_values(values, quant, features, out);
}

fn dequantize_values(
    values: impl Iterator<Item = f32>,
    quant: &[ffi::QuantInfo],
    features: usize,
    out: &mut [f32],
) {
    match quant {
        [q] => {
            for (o, v) in out.iter_mut().zip(values) {
                *o = (v - q.qp_zp) * q.qp_scale;
            }
        }
        per_channel if features > 0 && per_channel.len() == features => {
            for (i, (o, v)) in out.iter_mut().zip(values).enumerate() {
                let q = &per_channel[i % features];
                *o = (v - q.qp_zp) * q.qp_scale;
            }
        }
        // `describe` admits only the two shapes above.
        _ => out.fill(0.0),
    }
}

impl Drop for HailoNetwork {
    fn drop(&mut self) {
        let api = &self.device.inner.runtime.api;
        let warn = |call: &str, status: ffi::Status| {
            if status != ffi::HAILO_SUCCESS {
                log::warn!("{call} ({}): {}", self.path.display(), HailoStatus(status));
            }
        };
        // Reverse order of creation: deactivate, outputs, inputs, HEF; the configured network
        // group belongs to the vdevice, released when its last owner drops (after this).
        if !self.activated.is_null() {
            // SAFETY: `activated` came from `hailo_activate_network_group` and is released once.
            warn("hailo_deactivate_network_group", unsafe {
                (api.deactivate_network_group)(self.activated)
            });
        }
        if !self.outputs.is_empty() {
            let handles: Vec<ffi::OutputVstream> = self.outputs.iter().map(|o| o.handle).collect();
            // SAFETY: the handles came from one `hailo_create_output_vstreams` call and are
            // released together, once.
            warn("hailo_release_output_vstreams", unsafe {
                (api.release_output_vstreams)(handles.as_ptr(), handles.len())
            });
        }
        if !self.input.is_null() {
            // SAFETY: `input` came from `hailo_create_input_vstreams` and is released once.
            warn("hailo_release_input_vstreams", unsafe {
                (api.release_input_vstreams)(&self.input, 1)
            });
        }
        if !self.hef.is_null() {
            // SAFETY: `hef` came from `hailo_create_hef_file` and is released once, after every
            // vstream made from it.
            warn("hailo_release_hef", unsafe { (api.release_hef)(self.hef) });
        }
    }
}

#[cfg(test)]
pub(crate) mod double;

#[cfg(test)]
mod tests {
    use super::double::{
        compile, layout_defines, rec16_raw, rec_raw, Double, REC16_SCALE, REC16_ZP, REC_DIM,
        REC_SCALE, REC_ZP,
    };
    use super::*;

    fn face_input(seed: u8) -> Vec<u8> {
        (0..112 * 112 * 3).map(|i| (i as u8).wrapping_mul(7).wrapping_add(seed)).collect()
    }

    fn open(d: &Double, kind: &str, options: NetworkOptions, scheduler: bool) -> HailoNetwork {
        let rt = HailoRuntime::load(Some(&d.path)).unwrap();
        let options_dev = DeviceOptions { scheduler, ..Default::default() };
        let dev = HailoDevice::open(&rt, options_dev).unwrap();
        HailoNetwork::open(&dev, &d.hef(kind), options).unwrap()
    }

    fn device(d: &Double, options: DeviceOptions) -> Result<HailoDevice, HailoError> {
        HailoDevice::open(&HailoRuntime::load(Some(&d.path)).unwrap(), options)
    }

    /// `device`, once the devices this test released are free again. The double's device is a
    /// `flock`ed file, and a lock belongs to the open file description: a child that another
    /// test forks (to run `cc`, a kill test, ...) while this test holds the device keeps a copy
    /// of the descriptor until its `exec` closes it (`O_CLOEXEC`). Under qemu-user that window
    /// lasts long enough to be hit; the same holds for the real driver's file descriptor.
    fn device_after_release(d: &Double, options: DeviceOptions) -> HailoDevice {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            match device(d, options) {
                Err(HailoError::DeviceBusy { .. }) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(20))
                }
                other => return other.unwrap(),
            }
        }
    }

    /// The recognizer's FLOAT32 output for `input`, as the double computes it.
    fn rec_f32(input: &[u8]) -> Vec<f32> {
        rec_raw(input).iter().map(|&q| (f32::from(q) - REC_ZP) * REC_SCALE).collect()
    }

    #[test]
    fn call_sequence_and_release_order_with_scheduler() {
        let d = Double::new();
        let mut net = open(&d, "recognizer", NetworkOptions::default(), true);
        net.run(&face_input(1)).unwrap();
        drop(net);
        assert_eq!(
            d.calls(),
            [
                "hailo_get_library_version",
                "hailo_create_vdevice",
                "hailo_create_hef_file",
                "hailo_init_configure_params_by_vdevice",
                "hailo_configure_vdevice",
                "hailo_make_input_vstream_params",
                "hailo_make_output_vstream_params",
                "hailo_create_input_vstreams",
                "hailo_create_output_vstreams",
                "hailo_get_input_vstream_info",
                "hailo_get_input_vstream_frame_size",
                "hailo_get_output_vstream_info",
                "hailo_get_output_vstream_frame_size",
                "hailo_get_output_vstream_quant_infos",
                "hailo_vstream_write_raw_buffer",
                "hailo_vstream_read_raw_buffer",
                "hailo_release_output_vstreams",
                "hailo_release_input_vstreams",
                "hailo_release_hef",
                "hailo_release_vdevice",
            ]
        );
        let log = d.log();
        // Default params (NULL: scheduler on), our timeout and formats reached the C side.
        assert!(log.contains(&"hailo_create_vdevice params=null".to_string()), "{log:?}");
        assert!(log.iter().any(|l| l == "hailo_create_input_vstreams n=1 type=1 timeout=1000"));
        assert!(log.iter().any(|l| l == "hailo_create_output_vstreams n=1 type=3 timeout=1000"));
    }

    #[test]
    fn without_scheduler_the_group_is_activated_and_deactivated_first() {
        let d = Double::new();
        let mut net = open(&d, "recognizer", NetworkOptions::default(), false);
        net.run(&face_input(2)).unwrap();
        drop(net);
        let calls = d.calls();
        let pos = |c: &str| calls.iter().position(|x| x == c).unwrap();
        let log = d.log();
        assert!(
            log.contains(&"hailo_create_vdevice params=set sched=0 service=0 group=UNIQUE".into()),
            "{log:?}"
        );
        assert!(pos("hailo_init_vdevice_params") < pos("hailo_create_vdevice"));
        assert!(pos("hailo_create_output_vstreams") < pos("hailo_activate_network_group"));
        assert!(pos("hailo_activate_network_group") < pos("hailo_vstream_write_raw_buffer"));
        assert_eq!(
            calls[calls.len() - 5..],
            [
                "hailo_deactivate_network_group",
                "hailo_release_output_vstreams",
                "hailo_release_input_vstreams",
                "hailo_release_hef",
                "hailo_release_vdevice",
            ]
        );
    }

    #[test]
    fn float32_outputs_are_dequantised_by_hailort() {
        let d = Double::new();
        let mut net = open(&d, "recognizer", NetworkOptions::default(), true);
        assert_eq!(net.input_shape(), [112, 112, 3]);
        let input = face_input(3);
        let outs = net.run(&input).unwrap();
        assert_eq!(outs.len(), 1);
        assert_eq!(outs[0].name, "arcface/fc1");
        assert_eq!(outs[0].shape, [1, 1, 1, REC_DIM as i64]);
        let want: Vec<f32> =
            rec_raw(&input).iter().map(|&q| (f32::from(q) - REC_ZP) * REC_SCALE).collect();
        assert_eq!(outs[0].data, want);
    }

    #[test]
    fn our_dequantisation_matches_hailorts() {
        for kind in ["recognizer", "detector", "recognizer-a16"] {
            let d = Double::new();
            // Two networks on one vdevice: the scheduler shares the device between them.
            let dev = device(&d, DeviceOptions::default()).unwrap();
            let mut f32_net =
                HailoNetwork::open(&dev, &d.hef(kind), NetworkOptions::default()).unwrap();
            let opts = NetworkOptions { output: OutputFormat::Device, ..Default::default() };
            let mut u8_net = HailoNetwork::open(&dev, &d.hef(kind), opts).unwrap();
            let [h, w, c] = f32_net.input_shape().map(|x| x as usize);
            let input: Vec<u8> = (0..h * w * c).map(|i| (i * 13 % 251) as u8).collect();
            let a = f32_net.run(&input).unwrap().to_vec();
            let b = u8_net.run(&input).unwrap();
            assert_eq!(a.len(), b.len());
            for (x, y) in a.iter().zip(b) {
                assert_eq!((&x.name, &x.shape), (&y.name, &y.shape));
                assert_eq!(x.data, y.data, "{kind} output {}", x.name);
            }
            // The device's own type was asked for (AUTO), never a forced UINT8.
            let log = d.log();
            assert!(log
                .iter()
                .any(|l| l.starts_with("hailo_create_output_vstreams") && l.contains("type=0")));
        }
    }

    #[test]
    fn detector_outputs_are_all_named_with_nhwc_shapes_and_per_channel_quant() {
        let d = Double::new();
        let net = open(&d, "detector", NetworkOptions::default(), true);
        let names: Vec<(&str, &[i64])> =
            net.outputs().iter().map(|o| (o.name.as_str(), o.shape.as_slice())).collect();
        assert_eq!(
            names,
            [
                ("scrfd/score_8", &[1, 4, 4, 2][..]),
                ("scrfd/bbox_8", &[1, 4, 4, 8][..]),
                ("scrfd/kps_8", &[1, 4, 4, 20][..]),
            ]
        );
        assert_eq!(net.output_quant(0).unwrap().len(), 1);
        assert_eq!(net.output_quant(1).unwrap().len(), 8);
    }

    #[test]
    fn per_channel_dequantisation() {
        let q = |zp: f32, scale: f32| ffi::QuantInfo {
            qp_zp: zp,
            qp_scale: scale,
            ..Default::default()
        };
        let mut out = [0.0; 4];
        dequantize(&[10, 20, 30, 40], &[q(0.0, 1.0), q(10.0, 0.5)], 2, &mut out);
        assert_eq!(out, [10.0, 5.0, 30.0, 15.0]);
        dequantize(&[10, 20, 30, 40], &[q(10.0, 2.0)], 2, &mut out);
        assert_eq!(out, [0.0, 20.0, 40.0, 60.0]);
    }

    #[test]
    fn read_timeout_and_write_failure_are_typed() {
        let d = Double::new();
        let mut net =
            open(&d, "recognizer", NetworkOptions { timeout_ms: 250, ..Default::default() }, true);
        d.fail_next("hailo_vstream_read_raw_buffer", ffi::HAILO_TIMEOUT);
        let e = net.run(&face_input(4)).unwrap_err();
        assert!(e.is_device_failure());
        match &e {
            HailoError::Timeout { call, timeout_ms, context } => {
                assert_eq!((*call, *timeout_ms), ("hailo_vstream_read_raw_buffer", 250));
                assert!(context.contains("arcface/fc1"), "{context}");
            }
            other => panic!("{other:?}"),
        }
        // A timeout is mended by clearing: the network keeps working.
        assert!(!net.is_broken());
        net.run(&face_input(4)).unwrap();
        d.fail_next("hailo_vstream_write_raw_buffer", ffi::HAILO_DRIVER_OPERATION_FAILED);
        let e = net.run(&face_input(4)).unwrap_err();
        assert!(e.is_device_failure());
        match &e {
            HailoError::Status { call, status, .. } => {
                assert_eq!(*call, "hailo_vstream_write_raw_buffer");
                assert_eq!(status.name(), "HAILO_DRIVER_OPERATION_FAILED");
            }
            other => panic!("{other:?}"),
        }
        assert!(e.to_string().contains("HAILO_DRIVER_OPERATION_FAILED (36)"), "{e}");
        // Any other failure breaks the network: it refuses to run without calling HailoRT.
        assert!(net.is_broken());
        let calls = d.calls().len();
        let e = net.run(&face_input(4)).unwrap_err();
        assert!(matches!(e, HailoError::Broken { .. }) && e.is_device_failure(), "{e:?}");
        assert!(e.to_string().contains("HAILO_DRIVER_OPERATION_FAILED"), "{e}");
        assert_eq!(d.calls().len(), calls);
    }

    #[test]
    fn the_double_is_checked_against_hailorts_header_with_portiers_layouts() {
        // The double built for every test compiled with portier's layouts (`Double::new`);
        // one size or offset changed in portier's bindings fails the compile, naming it.
        let dir = tempfile::tempdir().unwrap();
        let lib = dir.path().join("wrong.so");
        for (key, wrong, named) in [
            ("PORTIER_SIZEOF_VSTREAM_PARAMS", 32, "sizeof(hailo_vstream_params_t)"),
            (
                "PORTIER_OFFSETOF_VDEVICE_PARAMS_GROUP_ID",
                28,
                "offsetof(hailo_vdevice_params_t, group_id)",
            ),
            ("PORTIER_FORMAT_TYPE_UINT16", 3, "HAILO_FORMAT_TYPE_UINT16"),
        ] {
            let mut defines = layout_defines();
            defines.iter_mut().find(|(k, _)| k == key).unwrap().1 = wrong;
            let err = compile(&lib, &defines).unwrap_err();
            assert!(err.contains(named) && err.contains("portier bindings"), "{key}: {err}");
        }
        compile(&lib, &layout_defines()).unwrap();
    }

    #[test]
    fn status_names_are_the_headers() {
        let d = Double::new();
        let names = d.status_names();
        assert!(names.len() >= 91, "{}", names.len());
        for (code, name) in names.iter().enumerate() {
            assert_eq!(ffi::status_name(code as u32), name, "status {code}");
        }
    }

    #[test]
    fn a_timed_out_frame_comes_out_of_the_next_read_unless_the_vstreams_are_cleared() {
        // The hazard, shown on the double without portier's clearing (`transfer` is one
        // write and the reads): the frame that timed out stays in flight.
        let d = Double::new();
        let mut net = open(&d, "recognizer", NetworkOptions::default(), true);
        let (a, b, c) = (face_input(10), face_input(20), face_input(30));
        d.fail_next("hailo_vstream_read_raw_buffer", ffi::HAILO_TIMEOUT);
        assert!(matches!(net.transfer(&a), Err(HailoError::Timeout { .. })));
        net.transfer(&b).unwrap();
        assert_eq!(net.outputs()[0].data, rec_f32(&a), "b's read returned a's frame");
        net.resync().unwrap();
        net.transfer(&c).unwrap();
        assert_eq!(net.outputs()[0].data, rec_f32(&c));
    }

    #[test]
    fn after_a_timeout_the_next_run_returns_its_own_frame() {
        for output in [OutputFormat::Float32, OutputFormat::Device] {
            let d = Double::new();
            let mut net =
                open(&d, "recognizer", NetworkOptions { output, ..Default::default() }, true);
            let (a, b, c) = (face_input(1), face_input(2), face_input(3));
            assert_eq!(net.run(&a).unwrap()[0].data, rec_f32(&a));
            d.fail_next("hailo_vstream_read_raw_buffer", ffi::HAILO_TIMEOUT);
            assert!(matches!(net.run(&b), Err(HailoError::Timeout { .. })));
            assert_eq!(net.run(&c).unwrap()[0].data, rec_f32(&c), "{output:?}");
            let calls = d.calls();
            let timeout = calls.iter().rposition(|c| c == "hailo_vstream_read_raw_buffer");
            assert!(calls.contains(&"hailo_clear_input_vstreams".into()), "{calls:?}");
            assert!(calls.contains(&"hailo_clear_output_vstreams".into()), "{calls:?}");
            assert!(timeout.is_some());
        }
    }

    #[test]
    fn a_reset_device_fails_until_released_and_opened_again() {
        let d = Double::new();
        let dev = device(&d, DeviceOptions::default()).unwrap();
        let mut net =
            HailoNetwork::open(&dev, &d.hef("recognizer"), NetworkOptions::default()).unwrap();
        net.run(&face_input(1)).unwrap();
        d.reset(0);
        let e = net.run(&face_input(2)).unwrap_err();
        assert!(
            matches!(&e, HailoError::Status { status, .. } if status.0 == ffi::HAILO_DRIVER_OPERATION_FAILED),
            "{e:?}"
        );
        assert!(net.is_broken());
        // A new network on the reset vdevice fails too, and so does a second vdevice while the
        // reset one is held.
        assert!(HailoNetwork::open(&dev, &d.hef("recognizer"), NetworkOptions::default()).is_err());
        assert!(matches!(device(&d, DeviceOptions::default()), Err(HailoError::DeviceBusy { .. })));
        drop(net);
        drop(dev);
        let dev = device_after_release(&d, DeviceOptions::default());
        let mut net =
            HailoNetwork::open(&dev, &d.hef("recognizer"), NetworkOptions::default()).unwrap();
        let input = face_input(3);
        assert_eq!(net.run(&input).unwrap()[0].data, rec_f32(&input));
    }

    #[test]
    fn uint16_outputs_are_dequantised_and_never_read_as_uint8() {
        let d = Double::new();
        let dev = device(&d, DeviceOptions::default()).unwrap();
        let input = face_input(9);
        let want: Vec<f32> =
            rec16_raw(&input).iter().map(|&q| (f32::from(q) - REC16_ZP) * REC16_SCALE).collect();
        for output in [OutputFormat::Float32, OutputFormat::Device] {
            let opts = NetworkOptions { output, ..Default::default() };
            let mut net = HailoNetwork::open(&dev, &d.hef("recognizer-a16"), opts).unwrap();
            assert_eq!(net.run(&input).unwrap()[0].data, want, "{output:?}");
            assert_eq!(net.output_quant(0).unwrap()[0].qp_zp, REC16_ZP);
        }
        // What HailoRT does with UINT8 asked of a UINT16 output (the double, as its
        // transform.cpp): HAILO_INVALID_ARGUMENT at hailo_create_output_vstreams.
        let net =
            HailoNetwork::open(&dev, &d.hef("recognizer-a16"), NetworkOptions::default()).unwrap();
        let api = &dev.inner.runtime.api;
        let (params, count) = net
            .make_params(
                api.make_output_vstream_params,
                "hailo_make_output_vstream_params",
                ffi::FORMAT_TYPE_UINT8,
            )
            .unwrap();
        let mut out = [ptr::null_mut(); MAX_VSTREAMS];
        // SAFETY: params made by the double for this group; `out` has room for `count`.
        let status = unsafe {
            (api.create_output_vstreams)(
                net.network_group,
                params.as_ptr(),
                count,
                out.as_mut_ptr(),
            )
        };
        assert_eq!(status, ffi::HAILO_INVALID_ARGUMENT);
    }

    #[test]
    fn the_device_is_exclusive_without_the_multi_process_service() {
        let d = Double::new();
        let first = device(&d, DeviceOptions::default()).unwrap();
        let e = device(&d, DeviceOptions::default()).unwrap_err();
        assert!(matches!(e, HailoError::DeviceBusy { service: false, .. }), "{e:?}");
        let msg = e.to_string();
        assert!(msg.contains("HAILO_OUT_OF_PHYSICAL_DEVICES (74)"), "{msg}");
        assert!(msg.contains("multi_process_service = true") && msg.contains("hailort_service"));
        drop(first);
        device_after_release(&d, DeviceOptions::default());
    }

    #[test]
    fn the_multi_process_service_shares_the_device_when_it_runs() {
        let d = Double::new();
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("hailort_uds.sock");
        d.set("HAILORT_SERVICE_ADDRESS", &format!("unix://{}", socket.display()));
        let service = DeviceOptions { multi_process_service: true, ..Default::default() };
        // Not running: HAILO_RPC_FAILED, said plainly.
        let e = device(&d, service).unwrap_err();
        assert!(matches!(e, HailoError::ServiceDown { .. }), "{e:?}");
        assert!(e.to_string().contains("hailort.service"), "{e}");
        // The service needs the scheduler: refused before HailoRT is asked.
        let e = device(&d, DeviceOptions { scheduler: false, ..service }).unwrap_err();
        assert!(matches!(e, HailoError::Options { .. }), "{e:?}");
        let _listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
        let a = device(&d, service).unwrap();
        let b = device(&d, service).unwrap();
        let log = d.log();
        assert!(log
            .iter()
            .any(|l| l == "hailo_create_vdevice params=set sched=1 service=1 group=SHARED"));
        // A process that opens the device without the service is refused while it holds it.
        let e = device(&d, DeviceOptions::default()).unwrap_err();
        assert!(matches!(e, HailoError::DeviceBusy { service: false, .. }), "{e:?}");
        let input = face_input(5);
        for dev in [&a, &b] {
            let mut net =
                HailoNetwork::open(dev, &d.hef("recognizer"), NetworkOptions::default()).unwrap();
            assert_eq!(net.run(&input).unwrap()[0].data, rec_f32(&input));
        }
        drop((a, b));
        device_after_release(&d, DeviceOptions::default());
    }

    #[test]
    fn wrong_input_size_is_refused_before_calling_c() {
        let d = Double::new();
        let mut net = open(&d, "recognizer", NetworkOptions::default(), true);
        let before = d.calls().len();
        let e = net.run(&[0u8; 100]).unwrap_err();
        assert!(matches!(e, HailoError::InputSize { expected: 37632, got: 100, .. }), "{e:?}");
        assert!(!e.is_device_failure());
        assert_eq!(d.calls().len(), before);
    }

    #[test]
    fn missing_library_gives_a_clear_error() {
        let e = HailoRuntime::load(Some(Path::new("/nonexistent/libhailort.so.4.21.0")));
        // On a machine with HailoRT installed the search goes on to the system library.
        if let Err(e) = e {
            let msg = e.to_string();
            assert!(matches!(e, HailoError::LibraryNotFound { .. }), "{e:?}");
            assert!(msg.contains("/nonexistent/libhailort.so.4.21.0: no such file"), "{msg}");
            assert!(msg.contains("HAILORT_LIBRARY"), "{msg}");
        }
    }

    #[test]
    fn a_library_without_the_symbols_is_refused() {
        // libc is a shared library that is certainly present and certainly not HailoRT.
        let e = HailoRuntime::load(Some(Path::new("libc.so.6"))).unwrap_err();
        assert!(
            matches!(e, HailoError::MissingSymbol { symbol: "hailo_get_library_version", .. }),
            "{e:?}"
        );
    }

    #[test]
    fn set_up_failures_release_what_was_acquired() {
        let d = Double::new();
        let rt = HailoRuntime::load(Some(&d.path)).unwrap();
        let dev = HailoDevice::open(&rt, DeviceOptions::default()).unwrap();
        d.fail_next("hailo_create_output_vstreams", 8);
        let e =
            HailoNetwork::open(&dev, &d.hef("recognizer"), NetworkOptions::default()).unwrap_err();
        assert!(
            matches!(e, HailoError::Status { call: "hailo_create_output_vstreams", .. }),
            "{e:?}"
        );
        let calls = d.calls();
        assert_eq!(calls[calls.len() - 2..], ["hailo_release_input_vstreams", "hailo_release_hef"]);
        let e = HailoNetwork::open(&dev, Path::new("/nonexistent.hef"), NetworkOptions::default())
            .unwrap_err();
        assert!(matches!(e, HailoError::HefMissing { .. }), "{e:?}");
        drop(dev);
        assert_eq!(d.calls().last().map(String::as_str), Some("hailo_release_vdevice"));
    }
}
