//! Our own minimal declarations of the HailoRT 4.2x C API (`hailo/hailort.h`, Hailo-8 line):
//! the handful of `#[repr(C)]` types and function-pointer types the vstream path uses, and the
//! table that resolves them from `libhailort.so` at run time.
//!
//! Must not: hold any logic beyond loading symbols, or expose raw handles outside
//! `infer::hailo`. No published crate fits (`hailort-sys` declares functions the header does not
//! have and lacks the inference ones; `libhailort-sys` downloads at build time), so every type
//! here is transcribed from the header; the layouts the code reads are pinned by size asserts,
//! and checked against HailoRT's own header by the test double's build: it includes
//! `hailo/hailort.h` and `_Static_assert`s every size, offset and constant below that it is
//! handed (`double::layout_defines`), so a transcription that drifts from the header fails the
//! tests, naming the struct.
//!
//! Version notes, from the header's history:
//! - `hailo_nms_shape_t` gained `max_bboxes_total` when NMS-by-score arrived (4.20), which grew
//!   the shape union in `hailo_vstream_info_t` from 12 to 16 bytes and moved `quant_info`. The
//!   fields before the union never moved, so we read name, format and shape from
//!   [`VstreamInfo`] and take quantisation from `hailo_get_output_vstream_quant_infos`, whose
//!   element (`hailo_quant_info_t`, 16 bytes) never changed; [`VstreamInfoSlot`] leaves slack
//!   so an older (smaller) or newer (larger) struct never writes past our buffer.
//! - `hailo_configure_params_t` holds per-stream parameter unions whose size changed between
//!   releases (Ethernet/MIPI members were dropped); we never read it, so it is an opaque,
//!   over-sized buffer ([`ConfigureParams`]).

use std::ffi::{c_char, c_void};
use std::path::Path;

/// `hailo_status` (a C enum of non-negative values: 4 bytes).
pub type Status = u32;
/// `HAILO_SUCCESS`.
pub const HAILO_SUCCESS: Status = 0;
/// `HAILO_TIMEOUT`.
pub const HAILO_TIMEOUT: Status = 4;
/// `HAILO_INSUFFICIENT_BUFFER`.
pub const HAILO_INSUFFICIENT_BUFFER: Status = 5;
/// `HAILO_INVALID_ARGUMENT`.
pub const HAILO_INVALID_ARGUMENT: Status = 2;
/// `HAILO_DRIVER_OPERATION_FAILED` (an ioctl failed: what a reset or lost device gives).
pub const HAILO_DRIVER_OPERATION_FAILED: Status = 36;
/// `HAILO_OUT_OF_PHYSICAL_DEVICES`: every device is held by another vdevice (another process,
/// or HailoRT's service).
pub const HAILO_OUT_OF_PHYSICAL_DEVICES: Status = 74;
/// `HAILO_RPC_FAILED`: HailoRT's multi-process service did not answer.
pub const HAILO_RPC_FAILED: Status = 77;

/// Names of `hailo_status` codes 0..=97 in the order the header's `HAILO_STATUS_VARIABLES`
/// lists them (4.23 has 0..=93, checked against its header by the test double; codes above
/// 93 arrived in later releases and are harmless to know).
const STATUS_NAMES: [&str; 98] = [
    "HAILO_SUCCESS",
    "HAILO_UNINITIALIZED",
    "HAILO_INVALID_ARGUMENT",
    "HAILO_OUT_OF_HOST_MEMORY",
    "HAILO_TIMEOUT",
    "HAILO_INSUFFICIENT_BUFFER",
    "HAILO_INVALID_OPERATION",
    "HAILO_NOT_IMPLEMENTED",
    "HAILO_INTERNAL_FAILURE",
    "HAILO_DATA_ALIGNMENT_FAILURE",
    "HAILO_CHUNK_TOO_LARGE",
    "HAILO_INVALID_LOGGER_LEVEL",
    "HAILO_CLOSE_FAILURE",
    "HAILO_OPEN_FILE_FAILURE",
    "HAILO_FILE_OPERATION_FAILURE",
    "HAILO_UNSUPPORTED_CONTROL_PROTOCOL_VERSION",
    "HAILO_UNSUPPORTED_FW_VERSION",
    "HAILO_INVALID_CONTROL_RESPONSE",
    "HAILO_FW_CONTROL_FAILURE",
    "HAILO_ETH_FAILURE",
    "HAILO_ETH_INTERFACE_NOT_FOUND",
    "HAILO_ETH_RECV_FAILURE",
    "HAILO_ETH_SEND_FAILURE",
    "HAILO_INVALID_FIRMWARE",
    "HAILO_INVALID_CONTEXT_COUNT",
    "HAILO_INVALID_FRAME",
    "HAILO_INVALID_HEF",
    "HAILO_PCIE_NOT_SUPPORTED_ON_PLATFORM",
    "HAILO_INTERRUPTED_BY_SIGNAL",
    "HAILO_START_VDMA_CHANNEL_FAIL",
    "HAILO_SYNC_VDMA_BUFFER_FAIL",
    "HAILO_STOP_VDMA_CHANNEL_FAIL",
    "HAILO_CLOSE_VDMA_CHANNEL_FAIL",
    "HAILO_ATR_TABLES_CONF_VALIDATION_FAIL",
    "HAILO_EVENT_CREATE_FAIL",
    "HAILO_READ_EVENT_FAIL",
    "HAILO_DRIVER_OPERATION_FAILED",
    "HAILO_INVALID_FIRMWARE_MAGIC",
    "HAILO_INVALID_FIRMWARE_CODE_SIZE",
    "HAILO_INVALID_KEY_CERTIFICATE_SIZE",
    "HAILO_INVALID_CONTENT_CERTIFICATE_SIZE",
    "HAILO_MISMATCHING_FIRMWARE_BUFFER_SIZES",
    "HAILO_INVALID_FIRMWARE_CPU_ID",
    "HAILO_CONTROL_RESPONSE_MD5_MISMATCH",
    "HAILO_GET_CONTROL_RESPONSE_FAIL",
    "HAILO_GET_D2H_EVENT_MESSAGE_FAIL",
    "HAILO_MUTEX_INIT_FAIL",
    "HAILO_OUT_OF_DESCRIPTORS",
    "HAILO_UNSUPPORTED_OPCODE",
    "HAILO_USER_MODE_RATE_LIMITER_NOT_SUPPORTED",
    "HAILO_RATE_LIMIT_MAXIMUM_BANDWIDTH_EXCEEDED",
    "HAILO_ANSI_TO_UTF16_CONVERSION_FAILED",
    "HAILO_UTF16_TO_ANSI_CONVERSION_FAILED",
    "HAILO_UNEXPECTED_INTERFACE_INFO_FAILURE",
    "HAILO_UNEXPECTED_ARP_TABLE_FAILURE",
    "HAILO_MAC_ADDRESS_NOT_FOUND",
    "HAILO_NO_IPV4_INTERFACES_FOUND",
    "HAILO_SHUTDOWN_EVENT_SIGNALED",
    "HAILO_THREAD_ALREADY_ACTIVATED",
    "HAILO_THREAD_NOT_ACTIVATED",
    "HAILO_THREAD_NOT_JOINABLE",
    "HAILO_NOT_FOUND",
    "HAILO_COMMUNICATION_CLOSED",
    "HAILO_STREAM_ABORT",
    "HAILO_DRIVER_NOT_INSTALLED",
    "HAILO_NOT_AVAILABLE",
    "HAILO_TRAFFIC_CONTROL_FAILURE",
    "HAILO_INVALID_SECOND_STAGE",
    "HAILO_INVALID_PIPELINE",
    "HAILO_NETWORK_GROUP_NOT_ACTIVATED",
    "HAILO_VSTREAM_PIPELINE_NOT_ACTIVATED",
    "HAILO_OUT_OF_FW_MEMORY",
    "HAILO_STREAM_NOT_ACTIVATED",
    "HAILO_DEVICE_IN_USE",
    "HAILO_OUT_OF_PHYSICAL_DEVICES",
    "HAILO_INVALID_DEVICE_ARCHITECTURE",
    "HAILO_INVALID_DRIVER_VERSION",
    "HAILO_RPC_FAILED",
    "HAILO_INVALID_SERVICE_VERSION",
    "HAILO_NOT_SUPPORTED",
    "HAILO_NMS_BURST_INVALID_DATA",
    "HAILO_OUT_OF_HOST_CMA_MEMORY",
    "HAILO_QUEUE_IS_FULL",
    "HAILO_DMA_MAPPING_ALREADY_EXISTS",
    "HAILO_CANT_MEET_BUFFER_REQUIREMENTS",
    "HAILO_DRIVER_INVALID_RESPONSE",
    "HAILO_DRIVER_INVALID_IOCTL",
    "HAILO_DRIVER_TIMEOUT",
    "HAILO_DRIVER_INTERRUPTED",
    "HAILO_CONNECTION_REFUSED",
    "HAILO_DRIVER_WAIT_CANCELED",
    "HAILO_HEF_FILE_CORRUPTED",
    "HAILO_HEF_NOT_SUPPORTED",
    "HAILO_HEF_NOT_COMPATIBLE_WITH_DEVICE",
    "HAILO_INVALID_HEF_USE",
    "HAILO_OPERATION_ABORTED",
    "HAILO_DEVICE_NOT_CONNECTED",
    "HAILO_DEVICE_TEMPORARILY_UNAVAILABLE",
];

/// The header's name for a status code (`HAILO_UNKNOWN_STATUS` past the known list).
pub fn status_name(code: Status) -> &'static str {
    STATUS_NAMES.get(code as usize).copied().unwrap_or("HAILO_UNKNOWN_STATUS")
}

/// `hailo_format_type_t`: `HAILO_FORMAT_TYPE_AUTO`.
pub const FORMAT_TYPE_AUTO: u32 = 0;
/// `HAILO_FORMAT_TYPE_UINT8`.
pub const FORMAT_TYPE_UINT8: u32 = 1;
/// `HAILO_FORMAT_TYPE_UINT16`.
pub const FORMAT_TYPE_UINT16: u32 = 2;
/// `HAILO_FORMAT_TYPE_FLOAT32`.
pub const FORMAT_TYPE_FLOAT32: u32 = 3;

/// `hailo_format_order_t`: `HAILO_FORMAT_ORDER_AUTO`.
pub const FORMAT_ORDER_AUTO: u32 = 0;
/// `HAILO_FORMAT_ORDER_NHWC`.
pub const FORMAT_ORDER_NHWC: u32 = 1;
/// `HAILO_FORMAT_ORDER_NHW` (argmax outputs).
pub const FORMAT_ORDER_NHW: u32 = 5;
/// `HAILO_FORMAT_ORDER_NC` (fully connected outputs: an embedding).
pub const FORMAT_ORDER_NC: u32 = 6;
/// `HAILO_FORMAT_ORDER_HAILO_NMS` (deprecated name, still reported by older HEFs).
pub const FORMAT_ORDER_HAILO_NMS: u32 = 9;
/// `HAILO_FORMAT_ORDER_HAILO_NMS_WITH_BYTE_MASK`.
pub const FORMAT_ORDER_HAILO_NMS_WITH_BYTE_MASK: u32 = 20;
/// `HAILO_FORMAT_ORDER_HAILO_NMS_ON_CHIP` (4.20+).
pub const FORMAT_ORDER_HAILO_NMS_ON_CHIP: u32 = 21;
/// `HAILO_FORMAT_ORDER_HAILO_NMS_BY_CLASS` (4.20+).
pub const FORMAT_ORDER_HAILO_NMS_BY_CLASS: u32 = 22;
/// `HAILO_FORMAT_ORDER_HAILO_NMS_BY_SCORE` (4.20+).
pub const FORMAT_ORDER_HAILO_NMS_BY_SCORE: u32 = 23;

/// `hailo_format_flags_t`: `HAILO_FORMAT_FLAGS_NONE` (the type alone decides (de)quantisation).
pub const FORMAT_FLAGS_NONE: u32 = 0;

/// `hailo_scheduling_algorithm_t`: `HAILO_SCHEDULING_ALGORITHM_NONE`.
pub const SCHEDULING_ALGORITHM_NONE: u32 = 0;
/// `HAILO_SCHEDULING_ALGORITHM_ROUND_ROBIN` (the vdevice default).
pub const SCHEDULING_ALGORITHM_ROUND_ROBIN: u32 = 1;

/// `HAILO_MAX_STREAM_NAME_SIZE`.
pub const MAX_STREAM_NAME_SIZE: usize = 128;
/// `HAILO_MAX_NETWORK_NAME_SIZE` (group name + '/' + network name).
pub const MAX_NETWORK_NAME_SIZE: usize = 128 + 1 + 128;
/// `HAILO_MAX_NETWORK_GROUPS`.
pub const MAX_NETWORK_GROUPS: usize = 8;

/// The vdevice group id the multi-process service shares one device under: HailoRT's own
/// multi-process example and tutorials use "SHARED" (`HAILO_UNIQUE_VDEVICE_GROUP_ID`, the
/// default, would make the service open a second vdevice on the held device and fail).
pub const SHARED_VDEVICE_GROUP_ID: &std::ffi::CStr = c"SHARED";

/// Opaque `struct _hailo_vdevice`.
pub enum VdeviceOpaque {}
/// Opaque `struct _hailo_hef`.
pub enum HefOpaque {}
/// Opaque `struct _hailo_configured_network_group`.
pub enum ConfiguredNetworkGroupOpaque {}
/// Opaque `struct _hailo_activated_network_group`.
pub enum ActivatedNetworkGroupOpaque {}
/// Opaque `struct _hailo_input_vstream`.
pub enum InputVstreamOpaque {}
/// Opaque `struct _hailo_output_vstream`.
pub enum OutputVstreamOpaque {}

/// `hailo_vdevice`.
pub type Vdevice = *mut VdeviceOpaque;
/// `hailo_hef`.
pub type Hef = *mut HefOpaque;
/// `hailo_configured_network_group`.
pub type ConfiguredNetworkGroup = *mut ConfiguredNetworkGroupOpaque;
/// `hailo_activated_network_group`.
pub type ActivatedNetworkGroup = *mut ActivatedNetworkGroupOpaque;
/// `hailo_input_vstream`.
pub type InputVstream = *mut InputVstreamOpaque;
/// `hailo_output_vstream`.
pub type OutputVstream = *mut OutputVstreamOpaque;

/// `hailo_version_t`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Version {
    /// Major.
    pub major: u32,
    /// Minor.
    pub minor: u32,
    /// Revision.
    pub revision: u32,
}

/// `hailo_format_t`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Format {
    /// `hailo_format_type_t`.
    pub format_type: u32,
    /// `hailo_format_order_t`.
    pub order: u32,
    /// `hailo_format_flags_t`.
    pub flags: u32,
}

/// `hailo_quant_info_t`: device value q ↔ real value `(q - qp_zp) * qp_scale`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct QuantInfo {
    /// Zero point.
    pub qp_zp: f32,
    /// Scale.
    pub qp_scale: f32,
    /// Lower limit of the real values.
    pub limvals_min: f32,
    /// Upper limit of the real values.
    pub limvals_max: f32,
}

/// `hailo_3d_image_shape_t`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ImageShape3d {
    /// Rows.
    pub height: u32,
    /// Columns.
    pub width: u32,
    /// Channels.
    pub features: u32,
}

/// `hailo_nms_shape_t` (4.20+ layout, with `max_bboxes_total`).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NmsShape {
    /// Classes.
    pub number_of_classes: u32,
    /// Boxes per class.
    pub max_bboxes_per_class: u32,
    /// Boxes in total.
    pub max_bboxes_total: u32,
    /// Mask bytes (byte-mask NMS only).
    pub max_accumulated_mask_size: u32,
}

/// The anonymous shape union of `hailo_vstream_info_t`.
#[repr(C)]
#[derive(Clone, Copy)]
pub union VstreamShape {
    /// Frame shape (every order except the NMS ones).
    pub shape: ImageShape3d,
    /// NMS shape (NMS orders only).
    pub nms_shape: NmsShape,
}

/// `hailo_vstream_info_t` (4.2x layout). Fields up to `format` and the first 12 bytes of the
/// union sit at the same offsets in every 4.x release; `quant_info` does not (see module docs).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct VstreamInfo {
    /// NUL-terminated vstream name.
    pub name: [c_char; MAX_STREAM_NAME_SIZE],
    /// NUL-terminated network name.
    pub network_name: [c_char; MAX_NETWORK_NAME_SIZE],
    /// `hailo_stream_direction_t` (0 host to device, 1 device to host).
    pub direction: u32,
    /// The host-side format the HEF declares.
    pub format: Format,
    /// Frame or NMS shape.
    pub shape: VstreamShape,
    /// Quantisation of the 4.2x layout; do not rely on it (see module docs).
    pub quant_info: QuantInfo,
}

/// A [`VstreamInfo`] with room to spare, handed to `hailo_get_*_vstream_info` so that a
/// release whose struct is larger than the one transcribed here cannot write past our buffer.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct VstreamInfoSlot {
    /// The info as we read it.
    pub info: VstreamInfo,
    /// Slack for larger layouts; never read.
    pub slack: [u8; 256],
}

/// `hailo_vstream_params_t`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VstreamParams {
    /// Format of the caller's buffer; HailoRT converts to and from the device's.
    pub user_buffer_format: Format,
    /// Timeout of one write or read, in milliseconds.
    pub timeout_ms: u32,
    /// Frames the pipeline queues.
    pub queue_size: u32,
    /// `hailo_vstream_stats_flags_t`.
    pub vstream_stats_flags: u32,
    /// `hailo_pipeline_elem_stats_flags_t`.
    pub pipeline_elements_stats_flags: u32,
}

/// `hailo_input_vstream_params_by_name_t` and `hailo_output_vstream_params_by_name_t` (the
/// header declares both with this same layout).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct VstreamParamsByName {
    /// NUL-terminated vstream name.
    pub name: [c_char; MAX_STREAM_NAME_SIZE],
    /// Its parameters.
    pub params: VstreamParams,
}

impl Default for VstreamParamsByName {
    fn default() -> Self {
        Self { name: [0; MAX_STREAM_NAME_SIZE], params: VstreamParams::default() }
    }
}

/// `hailo_vdevice_params_t`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct VdeviceParams {
    /// Physical devices to take.
    pub device_count: u32,
    /// `hailo_device_id_t *`: specific devices, or NULL for any.
    pub device_ids: *mut c_void,
    /// `hailo_scheduling_algorithm_t`.
    pub scheduling_algorithm: u32,
    /// Shared-vdevice key (`HAILO_UNIQUE_VDEVICE_GROUP_ID` by default).
    pub group_id: *const c_char,
    /// Create the vdevice in the HailoRT service.
    pub multi_process_service: bool,
}

/// `hailo_configure_params_t`, never read here: an opaque, 8-byte-aligned buffer larger than
/// any release's struct. The largest layout (4.1x, with Ethernet and MIPI stream parameters)
/// is about 8 network groups x (40 streams x ~240 bytes + 8 networks x 260 bytes) ≈ 92 KiB.
#[repr(C, align(8))]
pub struct ConfigureParams {
    /// Storage.
    pub bytes: [u8; CONFIGURE_PARAMS_BYTES],
}

/// Size of [`ConfigureParams`]: 192 KiB, twice the largest layout we know of.
pub const CONFIGURE_PARAMS_BYTES: usize = 192 * 1024;

// Sizes computed from the 4.2x header (x86-64 and aarch64 Linux: LP64).
const _: () = assert!(size_of::<Version>() == 12);
const _: () = assert!(size_of::<Format>() == 12);
const _: () = assert!(size_of::<QuantInfo>() == 16);
const _: () = assert!(size_of::<ImageShape3d>() == 12);
const _: () = assert!(size_of::<NmsShape>() == 16);
// 128 + 257 (+3 padding) + 4 + 12 + 16 + 16.
const _: () = assert!(size_of::<VstreamInfo>() == 436);
const _: () = assert!(std::mem::offset_of!(VstreamInfo, direction) == 388);
const _: () = assert!(std::mem::offset_of!(VstreamInfo, format) == 392);
const _: () = assert!(std::mem::offset_of!(VstreamInfo, shape) == 404);
const _: () = assert!(size_of::<VstreamParams>() == 28);
const _: () = assert!(size_of::<VstreamParamsByName>() == 156);
#[cfg(target_pointer_width = "64")]
const _: () = assert!(size_of::<VdeviceParams>() == 40);

/// `hailo_get_library_version`.
pub type GetLibraryVersionFn = unsafe extern "C" fn(version: *mut Version) -> Status;
/// `hailo_init_vdevice_params`.
pub type InitVdeviceParamsFn = unsafe extern "C" fn(params: *mut VdeviceParams) -> Status;
/// `hailo_create_vdevice` (`params` may be NULL).
pub type CreateVdeviceFn =
    unsafe extern "C" fn(params: *mut VdeviceParams, vdevice: *mut Vdevice) -> Status;
/// `hailo_release_vdevice`.
pub type ReleaseVdeviceFn = unsafe extern "C" fn(vdevice: Vdevice) -> Status;
/// `hailo_create_hef_file`.
pub type CreateHefFileFn = unsafe extern "C" fn(hef: *mut Hef, file_name: *const c_char) -> Status;
/// `hailo_release_hef`.
pub type ReleaseHefFn = unsafe extern "C" fn(hef: Hef) -> Status;
/// `hailo_init_configure_params_by_vdevice`.
pub type InitConfigureParamsByVdeviceFn =
    unsafe extern "C" fn(hef: Hef, vdevice: Vdevice, params: *mut ConfigureParams) -> Status;
/// `hailo_configure_vdevice`.
pub type ConfigureVdeviceFn = unsafe extern "C" fn(
    vdevice: Vdevice,
    hef: Hef,
    params: *mut ConfigureParams,
    network_groups: *mut ConfiguredNetworkGroup,
    number_of_network_groups: *mut usize,
) -> Status;
/// `hailo_make_input_vstream_params` and `hailo_make_output_vstream_params`.
pub type MakeVstreamParamsFn = unsafe extern "C" fn(
    network_group: ConfiguredNetworkGroup,
    unused: bool,
    format_type: u32,
    params: *mut VstreamParamsByName,
    params_count: *mut usize,
) -> Status;
/// `hailo_create_input_vstreams`.
pub type CreateInputVstreamsFn = unsafe extern "C" fn(
    network_group: ConfiguredNetworkGroup,
    inputs_params: *const VstreamParamsByName,
    inputs_count: usize,
    input_vstreams: *mut InputVstream,
) -> Status;
/// `hailo_create_output_vstreams`.
pub type CreateOutputVstreamsFn = unsafe extern "C" fn(
    network_group: ConfiguredNetworkGroup,
    outputs_params: *const VstreamParamsByName,
    outputs_count: usize,
    output_vstreams: *mut OutputVstream,
) -> Status;
/// `hailo_get_input_vstream_frame_size`.
pub type GetInputVstreamFrameSizeFn =
    unsafe extern "C" fn(vstream: InputVstream, frame_size: *mut usize) -> Status;
/// `hailo_get_output_vstream_frame_size`.
pub type GetOutputVstreamFrameSizeFn =
    unsafe extern "C" fn(vstream: OutputVstream, frame_size: *mut usize) -> Status;
/// `hailo_get_input_vstream_info`.
pub type GetInputVstreamInfoFn =
    unsafe extern "C" fn(vstream: InputVstream, info: *mut VstreamInfoSlot) -> Status;
/// `hailo_get_output_vstream_info`.
pub type GetOutputVstreamInfoFn =
    unsafe extern "C" fn(vstream: OutputVstream, info: *mut VstreamInfoSlot) -> Status;
/// `hailo_get_output_vstream_quant_infos`.
pub type GetOutputVstreamQuantInfosFn = unsafe extern "C" fn(
    vstream: OutputVstream,
    quant_infos: *mut QuantInfo,
    quant_infos_count: *mut usize,
) -> Status;
/// `hailo_vstream_write_raw_buffer`.
pub type VstreamWriteRawBufferFn =
    unsafe extern "C" fn(vstream: InputVstream, buffer: *const c_void, size: usize) -> Status;
/// `hailo_vstream_read_raw_buffer`.
pub type VstreamReadRawBufferFn =
    unsafe extern "C" fn(vstream: OutputVstream, buffer: *mut c_void, size: usize) -> Status;
/// `hailo_clear_input_vstreams`.
pub type ClearInputVstreamsFn =
    unsafe extern "C" fn(vstreams: *const InputVstream, count: usize) -> Status;
/// `hailo_clear_output_vstreams` (all outputs of a group together, as the header requires).
pub type ClearOutputVstreamsFn =
    unsafe extern "C" fn(vstreams: *const OutputVstream, count: usize) -> Status;
/// `hailo_release_input_vstreams`.
pub type ReleaseInputVstreamsFn =
    unsafe extern "C" fn(vstreams: *const InputVstream, count: usize) -> Status;
/// `hailo_release_output_vstreams`.
pub type ReleaseOutputVstreamsFn =
    unsafe extern "C" fn(vstreams: *const OutputVstream, count: usize) -> Status;
/// `hailo_activate_network_group` (`activation_params` may be NULL).
pub type ActivateNetworkGroupFn = unsafe extern "C" fn(
    network_group: ConfiguredNetworkGroup,
    activation_params: *mut c_void,
    activated: *mut ActivatedNetworkGroup,
) -> Status;
/// `hailo_deactivate_network_group`.
pub type DeactivateNetworkGroupFn =
    unsafe extern "C" fn(activated: ActivatedNetworkGroup) -> Status;

/// The resolved entry points, and the library that keeps them valid.
pub struct Api {
    /// `hailo_get_library_version`.
    pub get_library_version: GetLibraryVersionFn,
    /// `hailo_init_vdevice_params`.
    pub init_vdevice_params: InitVdeviceParamsFn,
    /// `hailo_create_vdevice`.
    pub create_vdevice: CreateVdeviceFn,
    /// `hailo_release_vdevice`.
    pub release_vdevice: ReleaseVdeviceFn,
    /// `hailo_create_hef_file`.
    pub create_hef_file: CreateHefFileFn,
    /// `hailo_release_hef`.
    pub release_hef: ReleaseHefFn,
    /// `hailo_init_configure_params_by_vdevice`.
    pub init_configure_params_by_vdevice: InitConfigureParamsByVdeviceFn,
    /// `hailo_configure_vdevice`.
    pub configure_vdevice: ConfigureVdeviceFn,
    /// `hailo_make_input_vstream_params`.
    pub make_input_vstream_params: MakeVstreamParamsFn,
    /// `hailo_make_output_vstream_params`.
    pub make_output_vstream_params: MakeVstreamParamsFn,
    /// `hailo_create_input_vstreams`.
    pub create_input_vstreams: CreateInputVstreamsFn,
    /// `hailo_create_output_vstreams`.
    pub create_output_vstreams: CreateOutputVstreamsFn,
    /// `hailo_get_input_vstream_frame_size`.
    pub get_input_vstream_frame_size: GetInputVstreamFrameSizeFn,
    /// `hailo_get_output_vstream_frame_size`.
    pub get_output_vstream_frame_size: GetOutputVstreamFrameSizeFn,
    /// `hailo_get_input_vstream_info`.
    pub get_input_vstream_info: GetInputVstreamInfoFn,
    /// `hailo_get_output_vstream_info`.
    pub get_output_vstream_info: GetOutputVstreamInfoFn,
    /// `hailo_get_output_vstream_quant_infos`.
    pub get_output_vstream_quant_infos: GetOutputVstreamQuantInfosFn,
    /// `hailo_vstream_write_raw_buffer`.
    pub vstream_write_raw_buffer: VstreamWriteRawBufferFn,
    /// `hailo_vstream_read_raw_buffer`.
    pub vstream_read_raw_buffer: VstreamReadRawBufferFn,
    /// `hailo_clear_input_vstreams`.
    pub clear_input_vstreams: ClearInputVstreamsFn,
    /// `hailo_clear_output_vstreams`.
    pub clear_output_vstreams: ClearOutputVstreamsFn,
    /// `hailo_release_input_vstreams`.
    pub release_input_vstreams: ReleaseInputVstreamsFn,
    /// `hailo_release_output_vstreams`.
    pub release_output_vstreams: ReleaseOutputVstreamsFn,
    /// `hailo_activate_network_group`.
    pub activate_network_group: ActivateNetworkGroupFn,
    /// `hailo_deactivate_network_group`.
    pub deactivate_network_group: DeactivateNetworkGroupFn,
    // Declared last so that it is dropped last: the pointers above point into it.
    _library: libloading::Library,
}

/// Why [`Api::load`] failed.
#[derive(Debug)]
pub enum LoadError {
    /// `dlopen` refused the file.
    Open(String),
    /// A symbol is missing: not a HailoRT 4.x library.
    Symbol {
        /// The symbol.
        name: &'static str,
        /// What the loader said.
        reason: String,
    },
}

impl Api {
    /// Opens `path` (a file path, or a bare soname for the dynamic loader's search) and resolves
    /// every entry point.
    pub fn load(path: &Path) -> Result<Self, LoadError> {
        // SAFETY: loading runs the library's initialisers. libhailort's only set up its logger
        // and globals; the caller chose this file as HailoRT (config, env or soname), and a
        // wrong library is caught below by its missing symbols before anything is called.
        let library = unsafe { libloading::Library::new(path.as_os_str()) }
            .map_err(|e| LoadError::Open(e.to_string()))?;
        macro_rules! sym {
            ($name:literal, $ty:ty) => {{
                // SAFETY: `$ty` is transcribed from the prototype of `$name` in hailort.h
                // (4.2x); the pointer is copied out and used only while `_library` lives,
                // which `Api` guarantees by owning it.
                let s = unsafe { library.get::<$ty>(concat!($name, "\0").as_bytes()) };
                *s.map_err(|e| LoadError::Symbol { name: $name, reason: e.to_string() })?
            }};
        }
        Ok(Self {
            get_library_version: sym!("hailo_get_library_version", GetLibraryVersionFn),
            init_vdevice_params: sym!("hailo_init_vdevice_params", InitVdeviceParamsFn),
            create_vdevice: sym!("hailo_create_vdevice", CreateVdeviceFn),
            release_vdevice: sym!("hailo_release_vdevice", ReleaseVdeviceFn),
            create_hef_file: sym!("hailo_create_hef_file", CreateHefFileFn),
            release_hef: sym!("hailo_release_hef", ReleaseHefFn),
            init_configure_params_by_vdevice: sym!(
                "hailo_init_configure_params_by_vdevice",
                InitConfigureParamsByVdeviceFn
            ),
            configure_vdevice: sym!("hailo_configure_vdevice", ConfigureVdeviceFn),
            make_input_vstream_params: sym!("hailo_make_input_vstream_params", MakeVstreamParamsFn),
            make_output_vstream_params: sym!(
                "hailo_make_output_vstream_params",
                MakeVstreamParamsFn
            ),
            create_input_vstreams: sym!("hailo_create_input_vstreams", CreateInputVstreamsFn),
            create_output_vstreams: sym!("hailo_create_output_vstreams", CreateOutputVstreamsFn),
            get_input_vstream_frame_size: sym!(
                "hailo_get_input_vstream_frame_size",
                GetInputVstreamFrameSizeFn
            ),
            get_output_vstream_frame_size: sym!(
                "hailo_get_output_vstream_frame_size",
                GetOutputVstreamFrameSizeFn
            ),
            get_input_vstream_info: sym!("hailo_get_input_vstream_info", GetInputVstreamInfoFn),
            get_output_vstream_info: sym!("hailo_get_output_vstream_info", GetOutputVstreamInfoFn),
            get_output_vstream_quant_infos: sym!(
                "hailo_get_output_vstream_quant_infos",
                GetOutputVstreamQuantInfosFn
            ),
            vstream_write_raw_buffer: sym!(
                "hailo_vstream_write_raw_buffer",
                VstreamWriteRawBufferFn
            ),
            vstream_read_raw_buffer: sym!("hailo_vstream_read_raw_buffer", VstreamReadRawBufferFn),
            clear_input_vstreams: sym!("hailo_clear_input_vstreams", ClearInputVstreamsFn),
            clear_output_vstreams: sym!("hailo_clear_output_vstreams", ClearOutputVstreamsFn),
            release_input_vstreams: sym!("hailo_release_input_vstreams", ReleaseInputVstreamsFn),
            release_output_vstreams: sym!("hailo_release_output_vstreams", ReleaseOutputVstreamsFn),
            activate_network_group: sym!("hailo_activate_network_group", ActivateNetworkGroupFn),
            deactivate_network_group: sym!(
                "hailo_deactivate_network_group",
                DeactivateNetworkGroupFn
            ),
            _library: library,
        })
    }
}

/// Reads a NUL-terminated C name out of a fixed array (lossy: HEF names are ASCII).
// `c_char` is i8 on x86-64 and u8 on aarch64: the cast is needed on one, a no-op on the other.
#[allow(clippy::unnecessary_cast)]
pub fn name_of(raw: &[c_char]) -> String {
    let bytes: Vec<u8> = raw.iter().take_while(|&&c| c != 0).map(|&c| c as u8).collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_names_follow_the_header() {
        assert_eq!(status_name(0), "HAILO_SUCCESS");
        assert_eq!(status_name(HAILO_TIMEOUT), "HAILO_TIMEOUT");
        assert_eq!(status_name(26), "HAILO_INVALID_HEF");
        assert_eq!(status_name(63), "HAILO_STREAM_ABORT");
        assert_eq!(status_name(84), "HAILO_CANT_MEET_BUFFER_REQUIREMENTS");
        assert_eq!(status_name(97), "HAILO_DEVICE_TEMPORARILY_UNAVAILABLE");
        assert_eq!(status_name(1000), "HAILO_UNKNOWN_STATUS");
    }

    #[test]
    fn names_stop_at_nul() {
        let mut raw = [0 as c_char; MAX_STREAM_NAME_SIZE];
        for (d, s) in raw.iter_mut().zip(b"net/fc1") {
            *d = *s as c_char;
        }
        assert_eq!(name_of(&raw), "net/fc1");
    }
}
