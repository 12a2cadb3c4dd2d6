/*
 * Test double of libhailort (HailoRT 4.2x C API): the symbols portier's `infer::hailo` loads,
 * with deterministic behaviour and the device behaviour that matters to portier (an exclusive
 * device, HailoRT's multi-process service, frames in flight after a timeout, a device reset,
 * UINT16 outputs), so that the call sequence, formats, dequantisation and error paths are
 * exercised without a Hailo device. Built by the test suite with the system `cc`
 * (src/infer/hailo/double.rs), one copy per test so that each has its own state.
 *
 * Must not: be linked into the product. It imitates HailoRT's contract, not its internals.
 *
 * Checked against HailoRT, not against portier: it includes HailoRT's own header
 * (<hailo/hailort.h>, found by scripts/fetch-hailort-header) and transcribes no type, so the
 * compiler checks every function below against HailoRT's prototype. The test builder passes
 * portier's layouts of the structs it shares with C (size_of/offset_of of the repr(C) types in
 * src/infer/hailo/ffi.rs) as PORTIER_* macros; the _Static_asserts below fail the build, naming
 * the struct, when portier's bindings and the header disagree.
 *
 * Fake HEFs are text files whose content names the model:
 *   "recognizer": input "arcface/input_layer1" 112x112x3 UINT8 NHWC; one output "arcface/fc1"
 *                 1x1x512 (order NC), UINT8 on the device, one qp (zp 128, scale 0.05); device
 *                 value q[j] = input[(j * 37) % input_size].
 *   "recognizer-degenerate": the recognizer's vstreams, but its output is one constant vector
 *                 for every input (a collapsed INT8 HEF): q[j] = 128 +/- 2 for j < 400, 128
 *                 after, so the dequantised vector's norm is 0.05 * sqrt(400 * 4) = 2.0.
 *   "recognizer-a16": an a16_w16 HEF: the recognizer's vstreams, but the output is UINT16 on
 *                 the device, one qp (zp 32768, scale 1/4096); device value
 *                 q[j] = input[(j * 37) % n] * 256 + input[(j * 53 + 1) % n]. Asking for its
 *                 output as UINT8 fails hailo_create_output_vstreams with
 *                 HAILO_INVALID_ARGUMENT, as HailoRT's output transform refuses UINT16 -> UINT8
 *                 (transform.cpp, should_quantize_by_type); AUTO gives UINT16, FLOAT32 the
 *                 dequantised values.
 *   "detector":   input "scrfd/input_layer1" 8x8x3; outputs "scrfd/score_8" 4x4x2 (one qp),
 *                 "scrfd/bbox_8" 4x4x8 and "scrfd/kps_8" 4x4x20 (one qp per channel);
 *                 q[i] = input[(i * 5 + k) % input_size] for output k.
 * FLOAT32 outputs are the same values dequantised, (q - zp) * scale, as HailoRT does.
 *
 * Device behaviour (HailoRT 4.23's, from its sources):
 *   Exclusive device. The one physical Hailo-8 is a lock file, flock()ed by every vdevice that
 *     holds it: $HAILO_DOUBLE_DEVICE, default "<this library's path>.device" (so every process
 *     that loads the same copy shares one device). A second vdevice while one is held, in this
 *     process or another, fails with HAILO_OUT_OF_PHYSICAL_DEVICES (vdevice.cpp,
 *     create_devices: the driver reports the device in use, it is skipped, "not enough free
 *     devices").
 *   Multi-process service. With multi_process_service set, the vdevice is created in
 *     hailort_service: the scheduler is required (HAILO_INVALID_ARGUMENT with
 *     HAILO_SCHEDULING_ALGORITHM_NONE, as VDevice::create checks), and the service must answer
 *     at $HAILORT_SERVICE_ADDRESS (HailoRT's own variable; default unix:///tmp/hailort_uds.sock):
 *     the double connect()s to that Unix socket, and when nothing listens the call fails with
 *     HAILO_RPC_FAILED, as a gRPC call to a stopped service does. The service shares one device
 *     between its clients of the same group_id (VDeviceHandle::create keys its shared vdevice
 *     on group_id): service clients of a group other than HAILO_UNIQUE_VDEVICE_GROUP_ID take a
 *     shared lock, everything else an exclusive one. (Two different shared groups at once are
 *     not modelled: both would share here, while the real service fails the second.)
 *   Frames in flight. A written frame is in flight until a read delivers it to every output
 *     vstream's queue; each read returns the oldest delivered frame. A read that times out
 *     (hailo_double_fail_next("hailo_vstream_read_raw_buffer", HAILO_TIMEOUT), or
 *     $HAILO_DOUBLE_READ_TIMEOUT_AT_FRAME=n for the read after the n-th write of the process)
 *     leaves its frame in flight, so the next write-and-read returns the previous input's
 *     output, until hailo_clear_input_vstreams and hailo_clear_output_vstreams drop what is in
 *     flight and queued (or the vstreams are released). A read with nothing in flight or queued
 *     times out as HailoRT's would.
 *   Device reset. hailo_double_reset(status), or $HAILO_DOUBLE_RESET_AT_FRAME=n at the n-th
 *     write of the process, resets the device: from then on every call on that vdevice or
 *     anything made from it fails with `status` (default HAILO_DRIVER_OPERATION_FAILED, what an
 *     ioctl on a reset device returns) except the release calls, until the vdevice is released
 *     and a new one created.
 *
 * Control (not HailoRT API): hailo_double_fail_next(call, status) makes the next call of that
 * name return status; hailo_double_reset(status) resets the device; hailo_double_set(key,
 * value) overrides an environment variable for this copy ("HAILO_DOUBLE_DEVICE",
 * "HAILORT_SERVICE_ADDRESS"); hailo_double_log(buf, cap) copies the call log (one call per line,
 * with notable arguments); hailo_double_status_count() is the header's HAILO_STATUS_COUNT.
 */
#define _GNU_SOURCE /* dladdr */
#include <hailo/hailort.h>

#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

/* ---- portier's layouts against the header's ---- */

#ifndef PORTIER_SIZEOF_VSTREAM_INFO
#error "build through portier's test helper (src/infer/hailo/double.rs): it passes portier's layouts"
#endif

#define SAME_SIZE(type, portier) \
    _Static_assert(sizeof(type) == (portier), "sizeof(" #type ") differs from the portier bindings (src/infer/hailo/ffi.rs)")
#define SAME_OFFSET(type, field, portier)                       \
    _Static_assert(offsetof(type, field) == (portier),           \
        "offsetof(" #type ", " #field ") differs from the portier bindings (src/infer/hailo/ffi.rs)")
#define SAME_VALUE(name, portier) \
    _Static_assert((name) == (portier), #name " differs from the portier bindings (src/infer/hailo/ffi.rs)")

SAME_SIZE(hailo_status, PORTIER_SIZEOF_STATUS);
SAME_SIZE(hailo_version_t, PORTIER_SIZEOF_VERSION);
SAME_SIZE(hailo_format_t, PORTIER_SIZEOF_FORMAT);
SAME_OFFSET(hailo_format_t, type, PORTIER_OFFSETOF_FORMAT_TYPE);
SAME_OFFSET(hailo_format_t, order, PORTIER_OFFSETOF_FORMAT_ORDER);
SAME_OFFSET(hailo_format_t, flags, PORTIER_OFFSETOF_FORMAT_FLAGS);
SAME_SIZE(hailo_quant_info_t, PORTIER_SIZEOF_QUANT_INFO);
SAME_OFFSET(hailo_quant_info_t, qp_zp, PORTIER_OFFSETOF_QUANT_INFO_QP_ZP);
SAME_OFFSET(hailo_quant_info_t, qp_scale, PORTIER_OFFSETOF_QUANT_INFO_QP_SCALE);
SAME_SIZE(hailo_3d_image_shape_t, PORTIER_SIZEOF_IMAGE_SHAPE_3D);
SAME_SIZE(hailo_nms_shape_t, PORTIER_SIZEOF_NMS_SHAPE);
/* hailo_vstream_info_t: 4.20 to 4.23 agree with portier's struct; the fields portier reads
 * (name, format, the frame shape) must sit where it reads them, and the struct must fit in the
 * slot portier hands over (VstreamInfoSlot keeps slack for other releases' layouts). */
SAME_SIZE(hailo_vstream_info_t, PORTIER_SIZEOF_VSTREAM_INFO);
SAME_OFFSET(hailo_vstream_info_t, name, PORTIER_OFFSETOF_VSTREAM_INFO_NAME);
SAME_OFFSET(hailo_vstream_info_t, network_name, PORTIER_OFFSETOF_VSTREAM_INFO_NETWORK_NAME);
SAME_OFFSET(hailo_vstream_info_t, direction, PORTIER_OFFSETOF_VSTREAM_INFO_DIRECTION);
SAME_OFFSET(hailo_vstream_info_t, format, PORTIER_OFFSETOF_VSTREAM_INFO_FORMAT);
SAME_OFFSET(hailo_vstream_info_t, shape, PORTIER_OFFSETOF_VSTREAM_INFO_SHAPE);
_Static_assert(sizeof(hailo_vstream_info_t) <= PORTIER_SIZEOF_VSTREAM_INFO_SLOT,
    "sizeof(hailo_vstream_info_t) exceeds the portier VstreamInfoSlot (src/infer/hailo/ffi.rs)");
SAME_SIZE(hailo_vstream_params_t, PORTIER_SIZEOF_VSTREAM_PARAMS);
SAME_OFFSET(hailo_vstream_params_t, user_buffer_format, PORTIER_OFFSETOF_VSTREAM_PARAMS_USER_BUFFER_FORMAT);
SAME_OFFSET(hailo_vstream_params_t, timeout_ms, PORTIER_OFFSETOF_VSTREAM_PARAMS_TIMEOUT_MS);
SAME_OFFSET(hailo_vstream_params_t, queue_size, PORTIER_OFFSETOF_VSTREAM_PARAMS_QUEUE_SIZE);
SAME_SIZE(hailo_input_vstream_params_by_name_t, PORTIER_SIZEOF_VSTREAM_PARAMS_BY_NAME);
SAME_SIZE(hailo_output_vstream_params_by_name_t, PORTIER_SIZEOF_VSTREAM_PARAMS_BY_NAME);
SAME_OFFSET(hailo_input_vstream_params_by_name_t, params, PORTIER_OFFSETOF_VSTREAM_PARAMS_BY_NAME_PARAMS);
SAME_OFFSET(hailo_output_vstream_params_by_name_t, params, PORTIER_OFFSETOF_VSTREAM_PARAMS_BY_NAME_PARAMS);
SAME_SIZE(hailo_vdevice_params_t, PORTIER_SIZEOF_VDEVICE_PARAMS);
SAME_OFFSET(hailo_vdevice_params_t, device_count, PORTIER_OFFSETOF_VDEVICE_PARAMS_DEVICE_COUNT);
SAME_OFFSET(hailo_vdevice_params_t, device_ids, PORTIER_OFFSETOF_VDEVICE_PARAMS_DEVICE_IDS);
SAME_OFFSET(hailo_vdevice_params_t, scheduling_algorithm, PORTIER_OFFSETOF_VDEVICE_PARAMS_SCHEDULING_ALGORITHM);
SAME_OFFSET(hailo_vdevice_params_t, group_id, PORTIER_OFFSETOF_VDEVICE_PARAMS_GROUP_ID);
SAME_OFFSET(hailo_vdevice_params_t, multi_process_service, PORTIER_OFFSETOF_VDEVICE_PARAMS_MULTI_PROCESS_SERVICE);
/* hailo_configure_params_t is opaque to portier: its buffer must only be large enough. */
_Static_assert(sizeof(hailo_configure_params_t) <= PORTIER_SIZEOF_CONFIGURE_PARAMS,
    "sizeof(hailo_configure_params_t) exceeds the portier ConfigureParams (src/infer/hailo/ffi.rs)");
SAME_VALUE(HAILO_SUCCESS, PORTIER_HAILO_SUCCESS);
SAME_VALUE(HAILO_TIMEOUT, PORTIER_HAILO_TIMEOUT);
SAME_VALUE(HAILO_INSUFFICIENT_BUFFER, PORTIER_HAILO_INSUFFICIENT_BUFFER);
SAME_VALUE(HAILO_OUT_OF_PHYSICAL_DEVICES, PORTIER_HAILO_OUT_OF_PHYSICAL_DEVICES);
SAME_VALUE(HAILO_RPC_FAILED, PORTIER_HAILO_RPC_FAILED);
SAME_VALUE(HAILO_FORMAT_TYPE_AUTO, PORTIER_FORMAT_TYPE_AUTO);
SAME_VALUE(HAILO_FORMAT_TYPE_UINT8, PORTIER_FORMAT_TYPE_UINT8);
SAME_VALUE(HAILO_FORMAT_TYPE_UINT16, PORTIER_FORMAT_TYPE_UINT16);
SAME_VALUE(HAILO_FORMAT_TYPE_FLOAT32, PORTIER_FORMAT_TYPE_FLOAT32);
SAME_VALUE(HAILO_FORMAT_ORDER_NHWC, PORTIER_FORMAT_ORDER_NHWC);
SAME_VALUE(HAILO_FORMAT_ORDER_NC, PORTIER_FORMAT_ORDER_NC);
SAME_VALUE(HAILO_FORMAT_ORDER_HAILO_NMS, PORTIER_FORMAT_ORDER_HAILO_NMS);
SAME_VALUE(HAILO_FORMAT_FLAGS_NONE, PORTIER_FORMAT_FLAGS_NONE);
SAME_VALUE(HAILO_SCHEDULING_ALGORITHM_NONE, PORTIER_SCHEDULING_ALGORITHM_NONE);
SAME_VALUE(HAILO_SCHEDULING_ALGORITHM_ROUND_ROBIN, PORTIER_SCHEDULING_ALGORITHM_ROUND_ROBIN);
SAME_VALUE(HAILO_MAX_STREAM_NAME_SIZE, PORTIER_MAX_STREAM_NAME_SIZE);
SAME_VALUE(HAILO_MAX_NETWORK_NAME_SIZE, PORTIER_MAX_NETWORK_NAME_SIZE);
SAME_VALUE(HAILO_MAX_NETWORK_GROUPS, PORTIER_MAX_NETWORK_GROUPS);

/* ---- models ---- */

#define MAX_OUTS 3
typedef struct {
    const char *name;
    uint32_t h, w, c, order;
    int per_channel;          /* one qp per channel */
    hailo_format_type_t type; /* on the device */
} tensor_t;

typedef enum { RECOGNIZER, DETECTOR, DEGENERATE, A16 } kind_t;

typedef struct {
    kind_t kind;
    tensor_t input;
    tensor_t outs[MAX_OUTS];
    size_t n_outs;
} model_t;

#define REC_INPUT {"arcface/input_layer1", 112, 112, 3, HAILO_FORMAT_ORDER_NHWC, 0, HAILO_FORMAT_TYPE_UINT8}
#define REC_OUTPUT(type) {{"arcface/fc1", 1, 1, 512, HAILO_FORMAT_ORDER_NC, 0, (type)}}
static const model_t RECOGNIZER_MODEL = {RECOGNIZER, REC_INPUT, REC_OUTPUT(HAILO_FORMAT_TYPE_UINT8), 1};
static const model_t DEGENERATE_MODEL = {DEGENERATE, REC_INPUT, REC_OUTPUT(HAILO_FORMAT_TYPE_UINT8), 1};
static const model_t A16_MODEL = {A16, REC_INPUT, REC_OUTPUT(HAILO_FORMAT_TYPE_UINT16), 1};
static const model_t DETECTOR_MODEL = {
    DETECTOR, {"scrfd/input_layer1", 8, 8, 3, HAILO_FORMAT_ORDER_NHWC, 0, HAILO_FORMAT_TYPE_UINT8},
    {{"scrfd/score_8", 4, 4, 2, HAILO_FORMAT_ORDER_NHWC, 0, HAILO_FORMAT_TYPE_UINT8},
     {"scrfd/bbox_8", 4, 4, 8, HAILO_FORMAT_ORDER_NHWC, 1, HAILO_FORMAT_TYPE_UINT8},
     {"scrfd/kps_8", 4, 4, 20, HAILO_FORMAT_ORDER_NHWC, 1, HAILO_FORMAT_TYPE_UINT8}}, 3,
};

static float zp_of(const tensor_t *t, size_t ch)
{
    if (t->type == HAILO_FORMAT_TYPE_UINT16) return 32768.0f;
    return t->per_channel ? (float)(100 + ch) : 128.0f;
}
static float scale_of(const tensor_t *t, size_t ch)
{
    if (t->type == HAILO_FORMAT_TYPE_UINT16) return 1.0f / 4096.0f;
    return t->per_channel ? 0.01f * (float)(ch + 1) : 0.05f;
}
static size_t values_of(const tensor_t *t) { return (size_t)t->h * t->w * t->c; }
static size_t elem_of(hailo_format_type_t type)
{
    return type == HAILO_FORMAT_TYPE_FLOAT32 ? 4 : type == HAILO_FORMAT_TYPE_UINT16 ? 2 : 1;
}

/* The degenerate recognizer's constant output (see the header comment). */
static uint8_t degenerate_q(size_t j) { return j >= 400 ? 128 : (j * 37) % 5 < 2 ? 130 : 126; }

/* The device value of element i of output k for one input frame. */
static uint32_t device_value(const model_t *m, size_t k, const uint8_t *in, size_t n, size_t i)
{
    switch (m->kind) {
    case RECOGNIZER: return in[(i * 37) % n];
    case DEGENERATE: return degenerate_q(i);
    case A16: return (uint32_t)in[(i * 37) % n] * 256u + in[(i * 53 + 1) % n];
    case DETECTOR: return in[(i * 5 + k) % n];
    }
    return 0;
}

/* ---- state ---- */

#define QUEUE_CAP 4 /* frames in flight or queued per vstream, like a small queue_size */

typedef struct {
    uint8_t *frames[QUEUE_CAP];
    size_t len;
} queue_t;

static void queue_drop(queue_t *q)
{
    for (size_t i = 0; i < q->len; i++) free(q->frames[i]);
    q->len = 0;
}

static uint8_t *queue_pop(queue_t *q)
{
    uint8_t *f = q->frames[0];
    memmove(q->frames, q->frames + 1, (q->len - 1) * sizeof q->frames[0]);
    q->len--;
    return f;
}

struct _hailo_vdevice {
    int sched;
    int service;
    int lock_fd;
    hailo_status dead; /* HAILO_SUCCESS while the device works */
    struct _hailo_configured_network_group *groups[HAILO_MAX_NETWORK_GROUPS];
    size_t n_groups;
    struct _hailo_vdevice *next;
};
struct _hailo_hef { const model_t *model; };
struct _hailo_configured_network_group {
    struct _hailo_vdevice *dev;
    const model_t *model;
    int active;
    struct _hailo_input_vstream *in;
    struct _hailo_output_vstream *outs[MAX_OUTS];
    size_t n_outs;
};
struct _hailo_activated_network_group { struct _hailo_configured_network_group *ng; };
struct _hailo_input_vstream {
    struct _hailo_configured_network_group *ng;
    size_t size;
    queue_t in_flight; /* written, not yet delivered */
};
struct _hailo_output_vstream {
    struct _hailo_configured_network_group *ng;
    size_t index;
    hailo_format_type_t type; /* the caller's, AUTO expanded */
    queue_t delivered;
};

static struct _hailo_vdevice *g_devices; /* live vdevices of this copy */
static unsigned long g_frames;            /* writes in this process */
static int g_timeout_frame_done;
static char g_log[1 << 16];
static size_t g_log_len;
static char g_fail_call[128];
static hailo_status g_fail_status;
static char g_device_path[4096];
static char g_service_address[4096];

static void logf_(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void logf_(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(g_log + g_log_len, sizeof g_log - g_log_len, fmt, ap);
    va_end(ap);
    if (n > 0 && g_log_len + (size_t)n + 1 < sizeof g_log) {
        g_log_len += (size_t)n;
        g_log[g_log_len++] = '\n';
        g_log[g_log_len] = 0;
    }
}

/* Returns a non-zero status when a failure was injected for `call`. */
static hailo_status injected(const char *call)
{
    if (g_fail_call[0] && strcmp(g_fail_call, call) == 0) {
        g_fail_call[0] = 0;
        return g_fail_status;
    }
    return HAILO_SUCCESS;
}

#define ENTER(call)                                  \
    do {                                             \
        hailo_status s_ = injected(call);            \
        if (s_ != HAILO_SUCCESS) return s_;          \
    } while (0)

/* Every call on a reset device fails until the vdevice is released. */
#define ALIVE(dev)                                             \
    do {                                                       \
        if ((dev)->dead != HAILO_SUCCESS) return (dev)->dead;  \
    } while (0)

/* $name as a number, or 0. */
static unsigned long env_number(const char *name)
{
    const char *v = getenv(name);
    return v ? strtoul(v, NULL, 10) : 0;
}

static const char *setting(const char *name, const char *override, const char *fallback)
{
    if (override[0]) return override;
    const char *v = getenv(name);
    return v && v[0] ? v : fallback;
}

/* The lock file that stands for the physical device. */
static const char *device_path(void)
{
    static char derived[4096];
    if (!derived[0]) {
        Dl_info info;
        if (dladdr((void *)&device_path, &info) && info.dli_fname)
            snprintf(derived, sizeof derived, "%s.device", info.dli_fname);
        else
            snprintf(derived, sizeof derived, "/tmp/hailort_double.device");
    }
    return setting("HAILO_DOUBLE_DEVICE", g_device_path, derived);
}

/* Whether hailort_service answers: something listens on its Unix socket. */
static int service_up(void)
{
    const char *addr = setting("HAILORT_SERVICE_ADDRESS", g_service_address, "unix:///tmp/hailort_uds.sock");
    const char *prefix = "unix://";
    if (strncmp(addr, prefix, strlen(prefix)) != 0) return 0;
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    snprintf(sa.sun_path, sizeof sa.sun_path, "%s", addr + strlen(prefix));
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return 0;
    int ok = connect(fd, (struct sockaddr *)&sa, sizeof sa) == 0;
    close(fd);
    return ok;
}

static void reset_all(hailo_status status)
{
    for (struct _hailo_vdevice *d = g_devices; d; d = d->next) d->dead = status;
}

void hailo_double_fail_next(const char *call, hailo_status status);
void hailo_double_fail_next(const char *call, hailo_status status)
{
    snprintf(g_fail_call, sizeof g_fail_call, "%s", call);
    g_fail_status = status;
}

void hailo_double_reset(hailo_status status);
void hailo_double_reset(hailo_status status)
{
    logf_("hailo_double_reset");
    reset_all(status != HAILO_SUCCESS ? status : HAILO_DRIVER_OPERATION_FAILED);
}

int hailo_double_set(const char *key, const char *value);
int hailo_double_set(const char *key, const char *value)
{
    char *slot = strcmp(key, "HAILO_DOUBLE_DEVICE") == 0       ? g_device_path
               : strcmp(key, "HAILORT_SERVICE_ADDRESS") == 0 ? g_service_address
                                                               : NULL;
    if (!slot) return -1;
    snprintf(slot, 4096, "%s", value);
    return 0;
}

size_t hailo_double_log(char *buf, size_t cap);
size_t hailo_double_log(char *buf, size_t cap)
{
    size_t n = g_log_len < cap ? g_log_len : cap;
    memcpy(buf, g_log, n);
    return n;
}

uint32_t hailo_double_status_count(void);
uint32_t hailo_double_status_count(void) { return HAILO_STATUS_COUNT; }

/* ---- API ---- */

const char *hailo_get_status_message(hailo_status status)
{
    static const char *names[] = {
#define HAILO_STATUS__X(value, name) [value] = #name,
        HAILO_STATUS_VARIABLES
#undef HAILO_STATUS__X
    };
    return status < HAILO_STATUS_COUNT && names[status] ? names[status] : NULL;
}

hailo_status hailo_get_library_version(hailo_version_t *v)
{
    logf_("hailo_get_library_version");
    ENTER("hailo_get_library_version");
    v->major = 4; v->minor = 23; v->revision = 0;
    return HAILO_SUCCESS;
}

/* HailoRTDefaults::get_vdevice_params. */
static void vdevice_defaults(hailo_vdevice_params_t *p)
{
    p->device_count = 1;
    p->device_ids = NULL;
    p->scheduling_algorithm = HAILO_SCHEDULING_ALGORITHM_ROUND_ROBIN;
    p->group_id = HAILO_DEFAULT_VDEVICE_GROUP_ID;
    p->multi_process_service = false;
}

hailo_status hailo_init_vdevice_params(hailo_vdevice_params_t *p)
{
    logf_("hailo_init_vdevice_params");
    ENTER("hailo_init_vdevice_params");
    vdevice_defaults(p);
    return HAILO_SUCCESS;
}

hailo_status hailo_create_vdevice(hailo_vdevice_params_t *p, hailo_vdevice *out)
{
    hailo_vdevice_params_t defaults;
    if (p) {
        logf_("hailo_create_vdevice params=set sched=%u service=%d group=%s", p->scheduling_algorithm,
            p->multi_process_service, p->group_id ? p->group_id : "(null)");
    } else {
        logf_("hailo_create_vdevice params=null");
    }
    ENTER("hailo_create_vdevice");
    if (!out) return HAILO_INVALID_ARGUMENT;
    if (!p) {
        vdevice_defaults(&defaults);
        p = &defaults;
    }
    if (p->device_count == 0) return HAILO_INVALID_ARGUMENT;
    if (p->multi_process_service) {
        if (p->scheduling_algorithm == HAILO_SCHEDULING_ALGORITHM_NONE) {
            logf_("error: Multi-process service is supported only with HailoRT scheduler, please choose scheduling algorithm");
            return HAILO_INVALID_ARGUMENT;
        }
        if (!service_up()) {
            logf_("error: CHECK_GRPC_STATUS failed. Make sure HailoRT service is enabled and active!");
            return HAILO_RPC_FAILED;
        }
    }
    int fd = open(device_path(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (fd < 0) return HAILO_OPEN_FILE_FAILURE;
    const char *group = p->group_id ? p->group_id : "";
    int shared = p->multi_process_service && strcmp(group, HAILO_UNIQUE_VDEVICE_GROUP_ID) != 0;
    if (flock(fd, (shared ? LOCK_SH : LOCK_EX) | LOCK_NB) != 0) {
        int e = errno;
        close(fd);
        if (e != EWOULDBLOCK) return HAILO_DRIVER_OPERATION_FAILED;
        logf_("error: Failed to create vdevice. there are not enough free devices. requested: %u, found: 0",
            p->device_count);
        return HAILO_OUT_OF_PHYSICAL_DEVICES;
    }
    struct _hailo_vdevice *d = calloc(1, sizeof *d);
    d->sched = (int)p->scheduling_algorithm;
    d->service = p->multi_process_service;
    d->lock_fd = fd;
    d->dead = HAILO_SUCCESS;
    d->next = g_devices;
    g_devices = d;
    *out = d;
    return HAILO_SUCCESS;
}

static void release_output(struct _hailo_output_vstream *v)
{
    queue_drop(&v->delivered);
    v->ng->outs[v->index] = NULL;
    free(v);
}

static void release_input(struct _hailo_input_vstream *v)
{
    queue_drop(&v->in_flight);
    v->ng->in = NULL;
    free(v);
}

hailo_status hailo_release_vdevice(hailo_vdevice d)
{
    logf_("hailo_release_vdevice");
    if (!d) return HAILO_INVALID_ARGUMENT;
    for (struct _hailo_vdevice **p = &g_devices; *p; p = &(*p)->next) {
        if (*p == d) {
            *p = d->next;
            break;
        }
    }
    /* Configured network groups belong to the vdevice, as in HailoRT. */
    for (size_t i = 0; i < d->n_groups; i++) free(d->groups[i]);
    close(d->lock_fd); /* gives the device back */
    free(d);
    return HAILO_SUCCESS;
}

hailo_status hailo_create_hef_file(hailo_hef *out, const char *file)
{
    logf_("hailo_create_hef_file");
    ENTER("hailo_create_hef_file");
    FILE *f = fopen(file, "rb");
    if (!f) return HAILO_OPEN_FILE_FAILURE;
    char kind[32] = {0};
    size_t n = fread(kind, 1, sizeof kind - 1, f);
    fclose(f);
    kind[n] = 0;
    const model_t *m = strcmp(kind, "recognizer") == 0              ? &RECOGNIZER_MODEL
                     : strcmp(kind, "recognizer-degenerate") == 0 ? &DEGENERATE_MODEL
                     : strcmp(kind, "recognizer-a16") == 0        ? &A16_MODEL
                     : strcmp(kind, "detector") == 0              ? &DETECTOR_MODEL
                                                                  : NULL;
    if (!m) return HAILO_INVALID_HEF;
    struct _hailo_hef *h = calloc(1, sizeof *h);
    h->model = m;
    *out = h;
    return HAILO_SUCCESS;
}

hailo_status hailo_release_hef(hailo_hef h)
{
    logf_("hailo_release_hef");
    free(h);
    return HAILO_SUCCESS;
}

hailo_status hailo_init_configure_params_by_vdevice(hailo_hef h, hailo_vdevice d, hailo_configure_params_t *params)
{
    logf_("hailo_init_configure_params_by_vdevice");
    ENTER("hailo_init_configure_params_by_vdevice");
    if (!h || !d || !params) return HAILO_INVALID_ARGUMENT;
    ALIVE(d);
    params->network_group_params_count = 1;
    snprintf(params->network_group_params[0].name, sizeof params->network_group_params[0].name, "double");
    return HAILO_SUCCESS;
}

hailo_status hailo_configure_vdevice(hailo_vdevice d, hailo_hef h, hailo_configure_params_t *params,
    hailo_configured_network_group *groups, size_t *count)
{
    logf_("hailo_configure_vdevice");
    ENTER("hailo_configure_vdevice");
    ALIVE(d);
    if (!params || params->network_group_params_count != 1) return HAILO_INVALID_ARGUMENT;
    if (*count < 1) return HAILO_INSUFFICIENT_BUFFER;
    /* One group per configure, so two networks of one test do not share state. */
    if (d->n_groups == HAILO_MAX_NETWORK_GROUPS) return HAILO_INVALID_OPERATION;
    struct _hailo_configured_network_group *ng = calloc(1, sizeof *ng);
    d->groups[d->n_groups++] = ng;
    ng->dev = d;
    ng->model = h->model;
    groups[0] = ng;
    *count = 1;
    return HAILO_SUCCESS;
}

static void fill_params(hailo_vstream_params_t *p, char *name, const tensor_t *t, hailo_format_type_t type)
{
    snprintf(name, HAILO_MAX_STREAM_NAME_SIZE, "%s", t->name);
    memset(p, 0, sizeof *p);
    p->user_buffer_format.type = type;
    p->user_buffer_format.order = HAILO_FORMAT_ORDER_AUTO;
    p->user_buffer_format.flags = HAILO_FORMAT_FLAGS_NONE;
    p->timeout_ms = HAILO_DEFAULT_VSTREAM_TIMEOUT_MS;
    p->queue_size = HAILO_DEFAULT_VSTREAM_QUEUE_SIZE;
}

hailo_status hailo_make_input_vstream_params(hailo_configured_network_group ng, bool unused,
    hailo_format_type_t type, hailo_input_vstream_params_by_name_t *p, size_t *count)
{
    (void)unused;
    logf_("hailo_make_input_vstream_params");
    ENTER("hailo_make_input_vstream_params");
    ALIVE(ng->dev);
    if (*count < 1) { *count = 1; return HAILO_INSUFFICIENT_BUFFER; }
    fill_params(&p[0].params, p[0].name, &ng->model->input, type);
    *count = 1;
    return HAILO_SUCCESS;
}

hailo_status hailo_make_output_vstream_params(hailo_configured_network_group ng, bool unused,
    hailo_format_type_t type, hailo_output_vstream_params_by_name_t *p, size_t *count)
{
    (void)unused;
    logf_("hailo_make_output_vstream_params");
    ENTER("hailo_make_output_vstream_params");
    ALIVE(ng->dev);
    size_t n = ng->model->n_outs;
    if (*count < n) { *count = n; return HAILO_INSUFFICIENT_BUFFER; }
    for (size_t i = 0; i < n; i++) fill_params(&p[i].params, p[i].name, &ng->model->outs[i], type);
    *count = n;
    return HAILO_SUCCESS;
}

hailo_status hailo_create_input_vstreams(hailo_configured_network_group ng, const hailo_input_vstream_params_by_name_t *p,
    size_t n, hailo_input_vstream *out)
{
    logf_("hailo_create_input_vstreams n=%zu type=%u timeout=%u", n, p[0].params.user_buffer_format.type,
        p[0].params.timeout_ms);
    ENTER("hailo_create_input_vstreams");
    ALIVE(ng->dev);
    if (n != 1 || strcmp(p[0].name, ng->model->input.name) != 0) return HAILO_INVALID_ARGUMENT;
    hailo_format_type_t t = p[0].params.user_buffer_format.type;
    if (t != HAILO_FORMAT_TYPE_UINT8 && t != HAILO_FORMAT_TYPE_AUTO) return HAILO_INVALID_ARGUMENT;
    struct _hailo_input_vstream *v = calloc(1, sizeof *v);
    v->ng = ng;
    v->size = values_of(&ng->model->input);
    ng->in = v;
    out[0] = v;
    return HAILO_SUCCESS;
}

hailo_status hailo_create_output_vstreams(hailo_configured_network_group ng, const hailo_output_vstream_params_by_name_t *p,
    size_t n, hailo_output_vstream *out)
{
    logf_("hailo_create_output_vstreams n=%zu type=%u timeout=%u", n, p[0].params.user_buffer_format.type,
        p[0].params.timeout_ms);
    ENTER("hailo_create_output_vstreams");
    ALIVE(ng->dev);
    if (n != ng->model->n_outs) return HAILO_INVALID_ARGUMENT;
    for (size_t i = 0; i < n; i++) {
        hailo_format_type_t t = p[i].params.user_buffer_format.type;
        hailo_format_type_t device = ng->model->outs[i].type;
        if (strcmp(p[i].name, ng->model->outs[i].name) != 0) return HAILO_INVALID_ARGUMENT;
        if (t == HAILO_FORMAT_TYPE_UINT8 && device == HAILO_FORMAT_TYPE_UINT16) {
            logf_("error: The model compiled for type UINT16, while the dst type is UINT8. Output de-quantization is impossible to this dst type");
            return HAILO_INVALID_ARGUMENT;
        }
        if (t != HAILO_FORMAT_TYPE_AUTO && t != HAILO_FORMAT_TYPE_UINT8 && t != HAILO_FORMAT_TYPE_UINT16 &&
            t != HAILO_FORMAT_TYPE_FLOAT32)
            return HAILO_INVALID_ARGUMENT;
    }
    for (size_t i = 0; i < n; i++) {
        struct _hailo_output_vstream *v = calloc(1, sizeof *v);
        hailo_format_type_t t = p[i].params.user_buffer_format.type;
        v->ng = ng;
        v->index = i;
        v->type = t == HAILO_FORMAT_TYPE_AUTO ? ng->model->outs[i].type : t;
        ng->outs[i] = v;
        out[i] = v;
    }
    ng->n_outs = n;
    return HAILO_SUCCESS;
}

static void fill_info(const tensor_t *t, hailo_stream_direction_t direction, hailo_vstream_info_t *info)
{
    memset(info, 0, sizeof *info);
    snprintf(info->name, sizeof info->name, "%s", t->name);
    snprintf(info->network_name, sizeof info->network_name, "double/double");
    info->direction = direction;
    /* The HEF's format: the device's type, the host's order. */
    info->format.type = t->type;
    info->format.order = t->order;
    info->format.flags = HAILO_FORMAT_FLAGS_NONE;
    info->shape.height = t->h;
    info->shape.width = t->w;
    info->shape.features = t->c;
    info->quant_info.qp_zp = zp_of(t, 0);
    info->quant_info.qp_scale = scale_of(t, 0);
}

hailo_status hailo_get_input_vstream_info(hailo_input_vstream v, hailo_vstream_info_t *info)
{
    logf_("hailo_get_input_vstream_info");
    ENTER("hailo_get_input_vstream_info");
    ALIVE(v->ng->dev);
    fill_info(&v->ng->model->input, HAILO_H2D_STREAM, info);
    return HAILO_SUCCESS;
}

hailo_status hailo_get_output_vstream_info(hailo_output_vstream v, hailo_vstream_info_t *info)
{
    logf_("hailo_get_output_vstream_info");
    ENTER("hailo_get_output_vstream_info");
    ALIVE(v->ng->dev);
    fill_info(&v->ng->model->outs[v->index], HAILO_D2H_STREAM, info);
    return HAILO_SUCCESS;
}

hailo_status hailo_get_input_vstream_frame_size(hailo_input_vstream v, size_t *size)
{
    logf_("hailo_get_input_vstream_frame_size");
    ENTER("hailo_get_input_vstream_frame_size");
    ALIVE(v->ng->dev);
    *size = v->size;
    return HAILO_SUCCESS;
}

hailo_status hailo_get_output_vstream_frame_size(hailo_output_vstream v, size_t *size)
{
    logf_("hailo_get_output_vstream_frame_size");
    ENTER("hailo_get_output_vstream_frame_size");
    ALIVE(v->ng->dev);
    *size = values_of(&v->ng->model->outs[v->index]) * elem_of(v->type);
    return HAILO_SUCCESS;
}

hailo_status hailo_get_output_vstream_quant_infos(hailo_output_vstream v, hailo_quant_info_t *q, size_t *count)
{
    logf_("hailo_get_output_vstream_quant_infos");
    ENTER("hailo_get_output_vstream_quant_infos");
    ALIVE(v->ng->dev);
    const tensor_t *t = &v->ng->model->outs[v->index];
    size_t n = t->per_channel ? t->c : 1;
    if (*count < n) { *count = n; return HAILO_INSUFFICIENT_BUFFER; }
    for (size_t i = 0; i < n; i++) {
        q[i].qp_zp = zp_of(t, i);
        q[i].qp_scale = scale_of(t, i);
        q[i].limvals_min = -1e9f;
        q[i].limvals_max = 1e9f;
    }
    *count = n;
    return HAILO_SUCCESS;
}

hailo_status hailo_activate_network_group(hailo_configured_network_group ng,
    hailo_activate_network_group_params_t *params, hailo_activated_network_group *out)
{
    (void)params;
    logf_("hailo_activate_network_group");
    ENTER("hailo_activate_network_group");
    ALIVE(ng->dev);
    /* HailoRT refuses manual activation when its scheduler owns the network group. */
    if (ng->dev->sched != HAILO_SCHEDULING_ALGORITHM_NONE) return HAILO_INVALID_OPERATION;
    struct _hailo_activated_network_group *a = calloc(1, sizeof *a);
    a->ng = ng;
    ng->active = 1;
    *out = a;
    return HAILO_SUCCESS;
}

hailo_status hailo_deactivate_network_group(hailo_activated_network_group a)
{
    logf_("hailo_deactivate_network_group");
    a->ng->active = 0;
    free(a);
    return HAILO_SUCCESS;
}

hailo_status hailo_vstream_write_raw_buffer(hailo_input_vstream v, const void *buf, size_t size)
{
    logf_("hailo_vstream_write_raw_buffer size=%zu", size);
    ENTER("hailo_vstream_write_raw_buffer");
    struct _hailo_configured_network_group *ng = v->ng;
    ALIVE(ng->dev);
    g_frames++;
    if (g_frames == env_number("HAILO_DOUBLE_RESET_AT_FRAME")) {
        logf_("hailo_double_reset at frame %lu", g_frames);
        reset_all(HAILO_DRIVER_OPERATION_FAILED);
        return HAILO_DRIVER_OPERATION_FAILED;
    }
    if (ng->dev->sched == HAILO_SCHEDULING_ALGORITHM_NONE && !ng->active) return HAILO_NETWORK_GROUP_NOT_ACTIVATED;
    if (size != v->size) return HAILO_INVALID_ARGUMENT;
    if (v->in_flight.len == QUEUE_CAP) return HAILO_TIMEOUT; /* the pipeline is full */
    uint8_t *frame = malloc(size);
    memcpy(frame, buf, size);
    v->in_flight.frames[v->in_flight.len++] = frame;
    return HAILO_SUCCESS;
}

/* The device finishes every frame in flight: each output vstream queues its copy. */
static void deliver(struct _hailo_configured_network_group *ng)
{
    struct _hailo_input_vstream *in = ng->in;
    if (!in) return;
    while (in->in_flight.len > 0) {
        uint8_t *frame = queue_pop(&in->in_flight);
        for (size_t k = 0; k < ng->n_outs; k++) {
            queue_t *q = ng->outs[k] ? &ng->outs[k]->delivered : NULL;
            if (!q || q->len == QUEUE_CAP) continue; /* a full queue drops the frame */
            uint8_t *copy = malloc(in->size);
            memcpy(copy, frame, in->size);
            q->frames[q->len++] = copy;
        }
        free(frame);
    }
}

hailo_status hailo_vstream_read_raw_buffer(hailo_output_vstream v, void *buf, size_t size)
{
    logf_("hailo_vstream_read_raw_buffer size=%zu", size);
    ENTER("hailo_vstream_read_raw_buffer");
    struct _hailo_configured_network_group *ng = v->ng;
    ALIVE(ng->dev);
    const model_t *m = ng->model;
    const tensor_t *t = &m->outs[v->index];
    size_t n = values_of(t);
    if (size != n * elem_of(v->type)) return HAILO_INVALID_ARGUMENT;
    unsigned long late = env_number("HAILO_DOUBLE_READ_TIMEOUT_AT_FRAME");
    if (late != 0 && g_frames == late && !g_timeout_frame_done) {
        g_timeout_frame_done = 1;
        logf_("hailo_double read timeout at frame %lu", g_frames);
        return HAILO_TIMEOUT; /* the frame stays in flight */
    }
    deliver(ng);
    if (v->delivered.len == 0) return HAILO_TIMEOUT; /* nothing was written */
    uint8_t *in = queue_pop(&v->delivered);
    size_t in_n = ng->in ? ng->in->size : values_of(&m->input);
    for (size_t i = 0; i < n; i++) {
        uint32_t q = device_value(m, v->index, in, in_n, i);
        size_t ch = i % t->c;
        switch (v->type) {
        case HAILO_FORMAT_TYPE_FLOAT32:
            ((float *)buf)[i] = ((float)q - zp_of(t, ch)) * scale_of(t, ch);
            break;
        case HAILO_FORMAT_TYPE_UINT16:
            ((uint16_t *)buf)[i] = (uint16_t)q; /* UINT8 device values are type-cast */
            break;
        default:
            ((uint8_t *)buf)[i] = (uint8_t)q;
        }
    }
    free(in);
    return HAILO_SUCCESS;
}

/* Drops what each of the n vstreams in v holds in `queue` (in_flight or delivered). */
#define CLEAR_VSTREAMS(call, v, n, queue)         \
    do {                                          \
        logf_(call " n=%zu", n);                  \
        ENTER(call);                              \
        if (!(v)) return HAILO_INVALID_ARGUMENT;  \
        for (size_t i = 0; i < (n); i++) {        \
            ALIVE((v)[i]->ng->dev);               \
            queue_drop(&(v)[i]->queue);           \
        }                                         \
        return HAILO_SUCCESS;                     \
    } while (0)

hailo_status hailo_clear_input_vstreams(const hailo_input_vstream *v, size_t n)
{
    CLEAR_VSTREAMS("hailo_clear_input_vstreams", v, n, in_flight);
}

hailo_status hailo_clear_output_vstreams(const hailo_output_vstream *v, size_t n)
{
    CLEAR_VSTREAMS("hailo_clear_output_vstreams", v, n, delivered);
}

hailo_status hailo_release_input_vstreams(const hailo_input_vstream *v, size_t n)
{
    logf_("hailo_release_input_vstreams n=%zu", n);
    for (size_t i = 0; i < n; i++) release_input(v[i]);
    return HAILO_SUCCESS;
}

hailo_status hailo_release_output_vstreams(const hailo_output_vstream *v, size_t n)
{
    logf_("hailo_release_output_vstreams n=%zu", n);
    for (size_t i = 0; i < n; i++) release_output(v[i]);
    return HAILO_SUCCESS;
}
