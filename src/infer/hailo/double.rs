//! Builds the C test double of libhailort (`tests/hailort-double/hailort_double.c`) once per
//! test process with the system `cc` against HailoRT's own header, and gives each test its own
//! copy: `dlopen` loads distinct files separately, so every test has its own call log, fault
//! table and device (see the C file's header for what it imitates and how).
//!
//! The build passes portier's layouts of the structs it shares with C ([`layout_defines`]:
//! `size_of`/`offset_of` of the `repr(C)` types in `ffi`) so that the double's `_Static_assert`s
//! compare them with the header's; [`compile`] is public so a test can build it with one
//! layout deliberately wrong and see the compiler refuse it.
//!
//! Included by the library's unit tests (`infer::hailo::double`) and, by path, by the
//! integration tests (`tests/it/hailo_double.rs`), which drive the real binary against it; both
//! provide `super::ffi`.

use std::mem::offset_of;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;

use super::ffi;

static BUILT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
static NEXT: AtomicUsize = AtomicUsize::new(0);

fn dir() -> PathBuf {
    std::env::temp_dir().join(format!("portier-hailort-double-{}", std::process::id()))
}

/// Where HailoRT's header is: `$HAILORT_INCLUDE_DIR`, else what `scripts/fetch-hailort-header`
/// finds or downloads (the system's, or HailoRT 4.20.0's from crates.io).
pub fn include_dir() -> Result<PathBuf, String> {
    if let Some(dir) = std::env::var_os("HAILORT_INCLUDE_DIR").map(PathBuf::from) {
        if dir.join("hailo/hailort.h").is_file() {
            return Ok(dir);
        }
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/fetch-hailort-header");
    let out = std::process::Command::new("bash")
        .arg(&script)
        .output()
        .map_err(|e| format!("cannot run {}: {e}", script.display()))?;
    if !out.status.success() {
        return Err(format!(
            "{} failed:\n{}",
            script.display(),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
}

/// `-D` definitions of portier's layouts and constants, which the double's `_Static_assert`s
/// compare with HailoRT's header.
pub fn layout_defines() -> Vec<(String, usize)> {
    use ffi::*;
    let mut d: Vec<(&str, usize)> = vec![
        ("SIZEOF_STATUS", size_of::<Status>()),
        ("SIZEOF_VERSION", size_of::<Version>()),
        ("SIZEOF_FORMAT", size_of::<Format>()),
        ("OFFSETOF_FORMAT_TYPE", offset_of!(Format, format_type)),
        ("OFFSETOF_FORMAT_ORDER", offset_of!(Format, order)),
        ("OFFSETOF_FORMAT_FLAGS", offset_of!(Format, flags)),
        ("SIZEOF_QUANT_INFO", size_of::<QuantInfo>()),
        ("OFFSETOF_QUANT_INFO_QP_ZP", offset_of!(QuantInfo, qp_zp)),
        ("OFFSETOF_QUANT_INFO_QP_SCALE", offset_of!(QuantInfo, qp_scale)),
        ("SIZEOF_IMAGE_SHAPE_3D", size_of::<ImageShape3d>()),
        ("SIZEOF_NMS_SHAPE", size_of::<NmsShape>()),
        ("SIZEOF_VSTREAM_INFO", size_of::<VstreamInfo>()),
        ("OFFSETOF_VSTREAM_INFO_NAME", offset_of!(VstreamInfo, name)),
        ("OFFSETOF_VSTREAM_INFO_NETWORK_NAME", offset_of!(VstreamInfo, network_name)),
        ("OFFSETOF_VSTREAM_INFO_DIRECTION", offset_of!(VstreamInfo, direction)),
        ("OFFSETOF_VSTREAM_INFO_FORMAT", offset_of!(VstreamInfo, format)),
        ("OFFSETOF_VSTREAM_INFO_SHAPE", offset_of!(VstreamInfo, shape)),
        ("SIZEOF_VSTREAM_INFO_SLOT", size_of::<VstreamInfoSlot>()),
        ("SIZEOF_VSTREAM_PARAMS", size_of::<VstreamParams>()),
        (
            "OFFSETOF_VSTREAM_PARAMS_USER_BUFFER_FORMAT",
            offset_of!(VstreamParams, user_buffer_format),
        ),
        ("OFFSETOF_VSTREAM_PARAMS_TIMEOUT_MS", offset_of!(VstreamParams, timeout_ms)),
        ("OFFSETOF_VSTREAM_PARAMS_QUEUE_SIZE", offset_of!(VstreamParams, queue_size)),
        ("SIZEOF_VSTREAM_PARAMS_BY_NAME", size_of::<VstreamParamsByName>()),
        ("OFFSETOF_VSTREAM_PARAMS_BY_NAME_PARAMS", offset_of!(VstreamParamsByName, params)),
        ("SIZEOF_VDEVICE_PARAMS", size_of::<VdeviceParams>()),
        ("OFFSETOF_VDEVICE_PARAMS_DEVICE_COUNT", offset_of!(VdeviceParams, device_count)),
        ("OFFSETOF_VDEVICE_PARAMS_DEVICE_IDS", offset_of!(VdeviceParams, device_ids)),
        (
            "OFFSETOF_VDEVICE_PARAMS_SCHEDULING_ALGORITHM",
            offset_of!(VdeviceParams, scheduling_algorithm),
        ),
        ("OFFSETOF_VDEVICE_PARAMS_GROUP_ID", offset_of!(VdeviceParams, group_id)),
        (
            "OFFSETOF_VDEVICE_PARAMS_MULTI_PROCESS_SERVICE",
            offset_of!(VdeviceParams, multi_process_service),
        ),
        ("SIZEOF_CONFIGURE_PARAMS", size_of::<ConfigureParams>()),
        ("MAX_STREAM_NAME_SIZE", MAX_STREAM_NAME_SIZE),
        ("MAX_NETWORK_NAME_SIZE", MAX_NETWORK_NAME_SIZE),
        ("MAX_NETWORK_GROUPS", MAX_NETWORK_GROUPS),
    ];
    let values: [(&str, u32); 17] = [
        ("HAILO_SUCCESS", HAILO_SUCCESS),
        ("HAILO_TIMEOUT", HAILO_TIMEOUT),
        ("HAILO_INSUFFICIENT_BUFFER", HAILO_INSUFFICIENT_BUFFER),
        ("HAILO_OUT_OF_PHYSICAL_DEVICES", HAILO_OUT_OF_PHYSICAL_DEVICES),
        ("HAILO_RPC_FAILED", HAILO_RPC_FAILED),
        ("FORMAT_TYPE_AUTO", FORMAT_TYPE_AUTO),
        ("FORMAT_TYPE_UINT8", FORMAT_TYPE_UINT8),
        ("FORMAT_TYPE_UINT16", FORMAT_TYPE_UINT16),
        ("FORMAT_TYPE_FLOAT32", FORMAT_TYPE_FLOAT32),
        ("FORMAT_ORDER_NHWC", FORMAT_ORDER_NHWC),
        ("FORMAT_ORDER_NC", FORMAT_ORDER_NC),
        ("FORMAT_ORDER_HAILO_NMS", FORMAT_ORDER_HAILO_NMS),
        ("FORMAT_FLAGS_NONE", FORMAT_FLAGS_NONE),
        ("SCHEDULING_ALGORITHM_NONE", SCHEDULING_ALGORITHM_NONE),
        ("SCHEDULING_ALGORITHM_ROUND_ROBIN", SCHEDULING_ALGORITHM_ROUND_ROBIN),
        ("HAILO_INVALID_ARGUMENT", HAILO_INVALID_ARGUMENT),
        ("HAILO_DRIVER_OPERATION_FAILED", HAILO_DRIVER_OPERATION_FAILED),
    ];
    d.extend(values.iter().map(|&(k, v)| (k, v as usize)));
    d.into_iter().map(|(k, v)| (format!("PORTIER_{k}"), v)).collect()
}

/// Compiles the double into `lib` with `defines` (normally [`layout_defines`]); the compiler's
/// message on failure.
pub fn compile(lib: &Path, defines: &[(String, usize)]) -> Result<(), String> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/hailort-double/hailort_double.c");
    let include = include_dir()?;
    let out = std::process::Command::new(std::env::var("CC").unwrap_or_else(|_| "cc".into()))
        .args(["-shared", "-fPIC", "-O1", "-Wall", "-Wextra", "-Werror", "-std=c11"])
        .arg("-I")
        .arg(&include)
        .args(defines.iter().map(|(k, v)| format!("-D{k}={v}")))
        .arg("-o")
        .arg(lib)
        .arg(&src)
        .output()
        .map_err(|e| format!("cannot run cc: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "cc failed (header from {}):\n{}",
            include.display(),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(())
}

fn build() -> Result<PathBuf, String> {
    let dir = dir();
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let lib = dir.join("libhailort_double.so");
    compile(&lib, &layout_defines())?;
    Ok(lib)
}

/// One test's private copy of the double, and its control entry points.
pub struct Double {
    /// The library file, to hand to `HailoRuntime::load` or `[npu] library`.
    pub path: PathBuf,
    lib: libloading::Library,
}

impl Double {
    /// Builds (once) and copies the double.
    pub fn new() -> Self {
        let built = BUILT.get_or_init(build).as_ref().expect("building the hailort double");
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path = dir().join(format!("libhailort_double_{n}.so"));
        std::fs::copy(built, &path).expect("copying the double");
        // SAFETY: our own test library; its initialisers do nothing.
        let lib = unsafe { libloading::Library::new(&path) }.expect("loading the double");
        Self { path, lib }
    }

    /// The lock file that stands for this copy's Hailo-8: every process that loads this copy
    /// shares it (unless `HAILO_DOUBLE_DEVICE` names another).
    pub fn device_file(&self) -> PathBuf {
        let mut p = self.path.clone().into_os_string();
        p.push(".device");
        PathBuf::from(p)
    }

    /// Writes a fake HEF of `kind` into the double's directory: "recognizer", "detector",
    /// "recognizer-a16" (a UINT16 output), or "recognizer-degenerate" (a recognizer whose
    /// output is one constant vector of norm [`DEGENERATE_NORM`] for every face: a collapsed
    /// INT8 HEF).
    pub fn hef(&self, kind: &str) -> PathBuf {
        let p = self.path.with_extension(format!("{kind}.hef"));
        std::fs::write(&p, kind).expect("writing the fake hef");
        p
    }

    fn control<T: Copy>(&self, name: &[u8]) -> libloading::Symbol<'_, T> {
        // SAFETY: each caller names `T` as the prototype of `name` in the double's source.
        unsafe { self.lib.get::<T>(name) }.expect("control symbol")
    }

    /// Makes the next call of `call` (a C function name) return `status`.
    pub fn fail_next(&self, call: &str, status: u32) {
        let c = std::ffi::CString::new(call).expect("call name");
        let f = self.control::<unsafe extern "C" fn(*const std::ffi::c_char, u32)>(
            b"hailo_double_fail_next\0",
        );
        // SAFETY: `c` is NUL-terminated; the double copies it.
        unsafe { f(c.as_ptr(), status) }
    }

    /// Resets the device: every call on a live vdevice fails with `status` (0: the double's
    /// default, `HAILO_DRIVER_OPERATION_FAILED`) until it is released and created again.
    pub fn reset(&self, status: u32) {
        let f = self.control::<unsafe extern "C" fn(u32)>(b"hailo_double_reset\0");
        // SAFETY: plain value argument.
        unsafe { f(status) }
    }

    /// Overrides, for this copy in this process, an environment variable the double reads
    /// (`HAILO_DOUBLE_DEVICE`, `HAILORT_SERVICE_ADDRESS`).
    pub fn set(&self, key: &str, value: &str) {
        let (k, v) = (std::ffi::CString::new(key).unwrap(), std::ffi::CString::new(value).unwrap());
        let f = self.control::<unsafe extern "C" fn(*const std::ffi::c_char, *const std::ffi::c_char) -> i32>(
            b"hailo_double_set\0",
        );
        // SAFETY: both strings are NUL-terminated; the double copies them.
        assert_eq!(unsafe { f(k.as_ptr(), v.as_ptr()) }, 0, "unknown setting {key}");
    }

    /// The header's name of `status` (`hailo_get_status_message`, from `HAILO_STATUS_VARIABLES`),
    /// and the header's `HAILO_STATUS_COUNT`.
    pub fn status_names(&self) -> Vec<String> {
        let count = self.control::<unsafe extern "C" fn() -> u32>(b"hailo_double_status_count\0");
        let name = self.control::<unsafe extern "C" fn(u32) -> *const std::ffi::c_char>(
            b"hailo_get_status_message\0",
        );
        // SAFETY: no arguments; then `name` returns static NUL-terminated strings or NULL.
        (0..unsafe { count() })
            .map(|s| unsafe {
                let p = name(s);
                assert!(!p.is_null(), "status {s} has no name");
                std::ffi::CStr::from_ptr(p).to_string_lossy().into_owned()
            })
            .collect()
    }

    /// The calls made so far, one per line, with their notable arguments.
    pub fn log(&self) -> Vec<String> {
        let mut buf = vec![0u8; 1 << 16];
        let f =
            self.control::<unsafe extern "C" fn(*mut u8, usize) -> usize>(b"hailo_double_log\0");
        // SAFETY: `buf` is writable for its length.
        let n = unsafe { f(buf.as_mut_ptr(), buf.len()) };
        String::from_utf8_lossy(&buf[..n]).lines().map(str::to_string).collect()
    }

    /// The names of the calls made so far, in order.
    pub fn calls(&self) -> Vec<String> {
        self.log()
            .into_iter()
            .map(|l| l.split_whitespace().next().unwrap_or_default().to_string())
            .collect()
    }
}

impl Drop for Double {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
        let _ = std::fs::remove_file(self.device_file());
    }
}

/// The recognizer double's zero point and scale (see the C source).
pub const REC_ZP: f32 = 128.0;
/// See [`REC_ZP`].
pub const REC_SCALE: f32 = 0.05;
/// The recognizer double's embedding dimension.
pub const REC_DIM: usize = 512;

/// What the recognizer double outputs, as UINT8, for `input`: `q[j] = input[(j * 37) % n]`.
pub fn rec_raw(input: &[u8]) -> Vec<u8> {
    (0..REC_DIM).map(|j| input[(j * 37) % input.len()]).collect()
}

/// The "recognizer-a16" double's zero point and scale.
pub const REC16_ZP: f32 = 32768.0;
/// See [`REC16_ZP`]: 1/4096, so every dequantised value is exact in f32.
pub const REC16_SCALE: f32 = 1.0 / 4096.0;

/// What the "recognizer-a16" double outputs, as UINT16, for `input`.
pub fn rec16_raw(input: &[u8]) -> Vec<u16> {
    let n = input.len();
    (0..REC_DIM)
        .map(|j| u16::from(input[(j * 37) % n]) * 256 + u16::from(input[(j * 53 + 1) % n]))
        .collect()
}

/// The norm before normalisation of the "recognizer-degenerate" double's output:
/// `0.05 * sqrt(400 * 2^2)`.
pub const DEGENERATE_NORM: f32 = 2.0;

/// What the "recognizer-degenerate" double outputs, as UINT8, whatever the input.
pub fn degenerate_raw() -> Vec<u8> {
    (0..REC_DIM)
        .map(|j| match j {
            400.. => 128,
            _ if (j * 37) % 5 < 2 => 130,
            _ => 126,
        })
        .collect()
}
