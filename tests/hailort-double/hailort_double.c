/*
 * Test double of libhailort (HailoRT 4.2x C API): the symbols portier's `infer::hailo` loads,
 * with deterministic behaviour, so that the call sequence, formats, dequantisation and error
 * paths are exercised without a Hailo device. Built by the test suite with the system `cc`
 * (src/infer/hailo/mod.rs, `double`), one copy per test so that each has its own state.
 *
 * Must not: be linked into the product. It imitates HailoRT's contract, not its internals.
 *
 * Fake HEFs are text files whose content names the model:
 *   "recognizer": input "arcface/input_layer1" 112x112x3 UINT8 NHWC; one output "arcface/fc1"
 *                 1x1x512 (order NC), one qp (zp 128, scale 0.05); device value
 *                 q[j] = input[(j * 37) % input_size].
 *   "detector":   input "scrfd/input_layer1" 8x8x3; outputs "scrfd/score_8" 4x4x2 (one qp),
 *                 "scrfd/bbox_8" 4x4x8 and "scrfd/kps_8" 4x4x20 (one qp per channel);
 *                 q[i] = input[(i * 5 + k) % input_size] for output k.
 * FLOAT32 outputs are the same values dequantised, (q - zp) * scale, as HailoRT does.
 *
 * Control: hailo_double_fail_next(call, status) makes the next call of that name return
 * status; hailo_double_log(buf, cap) copies the call log (one call per line, with notable
 * arguments). Struct layouts are transcribed from hailort.h (4.2x) and size-checked below.
 */
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef uint32_t hailo_status;
enum {
    HAILO_SUCCESS = 0,
    HAILO_INVALID_ARGUMENT = 2,
    HAILO_INSUFFICIENT_BUFFER = 5,
    HAILO_INVALID_OPERATION = 6,
    HAILO_OPEN_FILE_FAILURE = 13,
    HAILO_INVALID_HEF = 26,
    HAILO_NETWORK_GROUP_NOT_ACTIVATED = 69,
};
enum { FT_AUTO = 0, FT_UINT8 = 1, FT_FLOAT32 = 3 };
enum { ORDER_NHWC = 1, ORDER_NC = 6 };

typedef struct { uint32_t major, minor, revision; } hailo_version_t;
typedef struct { uint32_t type, order, flags; } hailo_format_t;
typedef struct { float qp_zp, qp_scale, limvals_min, limvals_max; } hailo_quant_info_t;
typedef struct { uint32_t height, width, features; } hailo_3d_image_shape_t;
typedef struct {
    uint32_t number_of_classes, max_bboxes_per_class, max_bboxes_total, max_accumulated_mask_size;
} hailo_nms_shape_t;
typedef struct {
    char name[128];
    char network_name[128 + 1 + 128];
    uint32_t direction;
    hailo_format_t format;
    union {
        hailo_3d_image_shape_t shape;
        hailo_nms_shape_t nms_shape;
    };
    hailo_quant_info_t quant_info;
} hailo_vstream_info_t;
typedef struct {
    hailo_format_t user_buffer_format;
    uint32_t timeout_ms;
    uint32_t queue_size;
    uint32_t vstream_stats_flags;
    uint32_t pipeline_elements_stats_flags;
} hailo_vstream_params_t;
typedef struct {
    char name[128];
    hailo_vstream_params_t params;
} hailo_vstream_params_by_name_t;
typedef struct {
    uint32_t device_count;
    void *device_ids;
    uint32_t scheduling_algorithm;
    const char *group_id;
    bool multi_process_service;
} hailo_vdevice_params_t;

_Static_assert(sizeof(hailo_vstream_info_t) == 436, "hailo_vstream_info_t layout");
_Static_assert(offsetof(hailo_vstream_info_t, shape) == 404, "hailo_vstream_info_t.shape");
_Static_assert(sizeof(hailo_vstream_params_by_name_t) == 156, "vstream params layout");
_Static_assert(sizeof(void *) != 8 || sizeof(hailo_vdevice_params_t) == 40, "vdevice params");

/* ---- state ---- */

#define MAX_OUTS 3
typedef struct {
    const char *name;
    uint32_t h, w, c, order;
    int per_channel; /* one qp per channel */
} tensor_t;

typedef struct {
    int kind; /* 1 recognizer, 2 detector */
    tensor_t input;
    tensor_t outs[MAX_OUTS];
    size_t n_outs;
} model_t;

static const model_t RECOGNIZER = {
    1, {"arcface/input_layer1", 112, 112, 3, ORDER_NHWC, 0},
    {{"arcface/fc1", 1, 1, 512, ORDER_NC, 0}}, 1,
};
static const model_t DETECTOR = {
    2, {"scrfd/input_layer1", 8, 8, 3, ORDER_NHWC, 0},
    {{"scrfd/score_8", 4, 4, 2, ORDER_NHWC, 0},
     {"scrfd/bbox_8", 4, 4, 8, ORDER_NHWC, 1},
     {"scrfd/kps_8", 4, 4, 20, ORDER_NHWC, 1}}, 3,
};

struct _hailo_configured_network_group;
struct _hailo_vdevice { int sched; struct _hailo_configured_network_group *groups[8]; size_t n_groups; };
struct _hailo_hef { const model_t *model; };
struct _hailo_configured_network_group { const model_t *model; int active; int sched; };
struct _hailo_activated_network_group { struct _hailo_configured_network_group *ng; };
struct _hailo_input_vstream { struct _hailo_configured_network_group *ng; uint32_t type; uint8_t *last; size_t size; };
struct _hailo_output_vstream {
    struct _hailo_configured_network_group *ng;
    struct _hailo_input_vstream *in;
    size_t index;
    uint32_t type;
};

static struct _hailo_input_vstream *g_in;
static char g_log[1 << 16];
static size_t g_log_len;
static char g_fail_call[128];
static hailo_status g_fail_status;

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

void hailo_double_fail_next(const char *call, hailo_status status)
{
    snprintf(g_fail_call, sizeof g_fail_call, "%s", call);
    g_fail_status = status;
}

size_t hailo_double_log(char *buf, size_t cap)
{
    size_t n = g_log_len < cap ? g_log_len : cap;
    memcpy(buf, g_log, n);
    return n;
}

static float zp_of(const tensor_t *t, size_t ch) { return t->per_channel ? (float)(100 + ch) : 128.0f; }
static float scale_of(const tensor_t *t, size_t ch) { return t->per_channel ? 0.01f * (float)(ch + 1) : 0.05f; }
static size_t values_of(const tensor_t *t) { return (size_t)t->h * t->w * t->c; }

/* ---- API ---- */

hailo_status hailo_get_library_version(hailo_version_t *v)
{
    logf_("hailo_get_library_version");
    ENTER("hailo_get_library_version");
    v->major = 4; v->minor = 21; v->revision = 0;
    return HAILO_SUCCESS;
}

hailo_status hailo_init_vdevice_params(hailo_vdevice_params_t *p)
{
    logf_("hailo_init_vdevice_params");
    ENTER("hailo_init_vdevice_params");
    p->device_count = 1;
    p->device_ids = NULL;
    p->scheduling_algorithm = 1; /* round robin, as HailoRT's default */
    p->group_id = "UNIQUE";
    p->multi_process_service = false;
    return HAILO_SUCCESS;
}

hailo_status hailo_create_vdevice(hailo_vdevice_params_t *p, struct _hailo_vdevice **out)
{
    if (p) logf_("hailo_create_vdevice params=set sched=%u", p->scheduling_algorithm);
    else logf_("hailo_create_vdevice params=null");
    ENTER("hailo_create_vdevice");
    struct _hailo_vdevice *d = calloc(1, sizeof *d);
    d->sched = p ? (int)p->scheduling_algorithm : 1;
    *out = d;
    return HAILO_SUCCESS;
}

hailo_status hailo_release_vdevice(struct _hailo_vdevice *d)
{
    logf_("hailo_release_vdevice");
    /* Configured network groups belong to the vdevice, as in HailoRT. */
    for (size_t i = 0; i < d->n_groups; i++) free(d->groups[i]);
    free(d);
    return HAILO_SUCCESS;
}

hailo_status hailo_create_hef_file(struct _hailo_hef **out, const char *file)
{
    logf_("hailo_create_hef_file");
    ENTER("hailo_create_hef_file");
    FILE *f = fopen(file, "rb");
    if (!f) return HAILO_OPEN_FILE_FAILURE;
    char kind[32] = {0};
    size_t n = fread(kind, 1, sizeof kind - 1, f);
    fclose(f);
    kind[n] = 0;
    const model_t *m = strcmp(kind, "recognizer") == 0 ? &RECOGNIZER
                     : strcmp(kind, "detector") == 0   ? &DETECTOR
                                                       : NULL;
    if (!m) return HAILO_INVALID_HEF;
    struct _hailo_hef *h = calloc(1, sizeof *h);
    h->model = m;
    *out = h;
    return HAILO_SUCCESS;
}

hailo_status hailo_release_hef(struct _hailo_hef *h)
{
    logf_("hailo_release_hef");
    free(h);
    return HAILO_SUCCESS;
}

hailo_status hailo_init_configure_params_by_vdevice(struct _hailo_hef *h, struct _hailo_vdevice *d, void *params)
{
    logf_("hailo_init_configure_params_by_vdevice");
    ENTER("hailo_init_configure_params_by_vdevice");
    if (!h || !d || !params) return HAILO_INVALID_ARGUMENT;
    /* The real struct starts with network_group_params_count (size_t). */
    *(size_t *)params = 1;
    return HAILO_SUCCESS;
}

hailo_status hailo_configure_vdevice(struct _hailo_vdevice *d, struct _hailo_hef *h, void *params,
    struct _hailo_configured_network_group **groups, size_t *count)
{
    logf_("hailo_configure_vdevice");
    ENTER("hailo_configure_vdevice");
    if (!params || *(size_t *)params != 1) return HAILO_INVALID_ARGUMENT;
    if (*count < 1) return HAILO_INSUFFICIENT_BUFFER;
    /* One group per configure, so two networks of one test do not share state. */
    if (d->n_groups == 8) return HAILO_INVALID_OPERATION;
    struct _hailo_configured_network_group *ng = calloc(1, sizeof *ng);
    d->groups[d->n_groups++] = ng;
    ng->model = h->model;
    ng->sched = d->sched;
    groups[0] = ng;
    *count = 1;
    return HAILO_SUCCESS;
}

static hailo_status make_params(const tensor_t *ts, size_t n, uint32_t type, hailo_vstream_params_by_name_t *p, size_t *count)
{
    if (*count < n) { *count = n; return HAILO_INSUFFICIENT_BUFFER; }
    for (size_t i = 0; i < n; i++) {
        memset(&p[i], 0, sizeof p[i]);
        snprintf(p[i].name, sizeof p[i].name, "%s", ts[i].name);
        p[i].params.user_buffer_format.type = type;
        p[i].params.user_buffer_format.order = 0;
        p[i].params.user_buffer_format.flags = 0;
        p[i].params.timeout_ms = 10000; /* HAILO_DEFAULT_VSTREAM_TIMEOUT_MS */
        p[i].params.queue_size = 2;
    }
    *count = n;
    return HAILO_SUCCESS;
}

hailo_status hailo_make_input_vstream_params(struct _hailo_configured_network_group *ng, bool unused, uint32_t type,
    hailo_vstream_params_by_name_t *p, size_t *count)
{
    (void)unused;
    logf_("hailo_make_input_vstream_params");
    ENTER("hailo_make_input_vstream_params");
    return make_params(&ng->model->input, 1, type, p, count);
}

hailo_status hailo_make_output_vstream_params(struct _hailo_configured_network_group *ng, bool unused, uint32_t type,
    hailo_vstream_params_by_name_t *p, size_t *count)
{
    (void)unused;
    logf_("hailo_make_output_vstream_params");
    ENTER("hailo_make_output_vstream_params");
    return make_params(ng->model->outs, ng->model->n_outs, type, p, count);
}

hailo_status hailo_create_input_vstreams(struct _hailo_configured_network_group *ng, const hailo_vstream_params_by_name_t *p,
    size_t n, struct _hailo_input_vstream **out)
{
    logf_("hailo_create_input_vstreams n=%zu type=%u timeout=%u", n, p[0].params.user_buffer_format.type,
        p[0].params.timeout_ms);
    ENTER("hailo_create_input_vstreams");
    if (n != 1 || strcmp(p[0].name, ng->model->input.name) != 0) return HAILO_INVALID_ARGUMENT;
    if (p[0].params.user_buffer_format.type != FT_UINT8) return HAILO_INVALID_ARGUMENT;
    struct _hailo_input_vstream *v = calloc(1, sizeof *v);
    v->ng = ng;
    v->type = FT_UINT8;
    v->size = values_of(&ng->model->input);
    v->last = calloc(1, v->size);
    out[0] = v;
    g_in = v;
    return HAILO_SUCCESS;
}

hailo_status hailo_create_output_vstreams(struct _hailo_configured_network_group *ng, const hailo_vstream_params_by_name_t *p,
    size_t n, struct _hailo_output_vstream **out)
{
    logf_("hailo_create_output_vstreams n=%zu type=%u timeout=%u", n, p[0].params.user_buffer_format.type,
        p[0].params.timeout_ms);
    ENTER("hailo_create_output_vstreams");
    if (n != ng->model->n_outs) return HAILO_INVALID_ARGUMENT;
    for (size_t i = 0; i < n; i++) {
        uint32_t t = p[i].params.user_buffer_format.type;
        if (strcmp(p[i].name, ng->model->outs[i].name) != 0) return HAILO_INVALID_ARGUMENT;
        if (t != FT_UINT8 && t != FT_FLOAT32) return HAILO_INVALID_ARGUMENT;
    }
    for (size_t i = 0; i < n; i++) {
        struct _hailo_output_vstream *v = calloc(1, sizeof *v);
        v->ng = ng;
        v->in = g_in;
        v->index = i;
        v->type = p[i].params.user_buffer_format.type;
        out[i] = v;
    }
    return HAILO_SUCCESS;
}

static void fill_info(const tensor_t *t, uint32_t direction, hailo_vstream_info_t *info)
{
    memset(info, 0, sizeof *info);
    snprintf(info->name, sizeof info->name, "%s", t->name);
    snprintf(info->network_name, sizeof info->network_name, "double/double");
    info->direction = direction;
    info->format.type = FT_UINT8;
    info->format.order = t->order;
    info->shape.height = t->h;
    info->shape.width = t->w;
    info->shape.features = t->c;
    info->quant_info.qp_zp = zp_of(t, 0);
    info->quant_info.qp_scale = scale_of(t, 0);
}

hailo_status hailo_get_input_vstream_info(struct _hailo_input_vstream *v, hailo_vstream_info_t *info)
{
    logf_("hailo_get_input_vstream_info");
    ENTER("hailo_get_input_vstream_info");
    fill_info(&v->ng->model->input, 0, info);
    return HAILO_SUCCESS;
}

hailo_status hailo_get_output_vstream_info(struct _hailo_output_vstream *v, hailo_vstream_info_t *info)
{
    logf_("hailo_get_output_vstream_info");
    ENTER("hailo_get_output_vstream_info");
    fill_info(&v->ng->model->outs[v->index], 1, info);
    return HAILO_SUCCESS;
}

hailo_status hailo_get_input_vstream_frame_size(struct _hailo_input_vstream *v, size_t *size)
{
    logf_("hailo_get_input_vstream_frame_size");
    ENTER("hailo_get_input_vstream_frame_size");
    *size = v->size;
    return HAILO_SUCCESS;
}

hailo_status hailo_get_output_vstream_frame_size(struct _hailo_output_vstream *v, size_t *size)
{
    logf_("hailo_get_output_vstream_frame_size");
    ENTER("hailo_get_output_vstream_frame_size");
    *size = values_of(&v->ng->model->outs[v->index]) * (v->type == FT_FLOAT32 ? 4 : 1);
    return HAILO_SUCCESS;
}

hailo_status hailo_get_output_vstream_quant_infos(struct _hailo_output_vstream *v, hailo_quant_info_t *q, size_t *count)
{
    logf_("hailo_get_output_vstream_quant_infos");
    ENTER("hailo_get_output_vstream_quant_infos");
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

hailo_status hailo_activate_network_group(struct _hailo_configured_network_group *ng, void *params,
    struct _hailo_activated_network_group **out)
{
    (void)params;
    logf_("hailo_activate_network_group");
    ENTER("hailo_activate_network_group");
    /* HailoRT refuses manual activation when its scheduler owns the network group. */
    if (ng->sched != 0) return HAILO_INVALID_OPERATION;
    struct _hailo_activated_network_group *a = calloc(1, sizeof *a);
    a->ng = ng;
    ng->active = 1;
    *out = a;
    return HAILO_SUCCESS;
}

hailo_status hailo_deactivate_network_group(struct _hailo_activated_network_group *a)
{
    logf_("hailo_deactivate_network_group");
    a->ng->active = 0;
    free(a);
    return HAILO_SUCCESS;
}

hailo_status hailo_vstream_write_raw_buffer(struct _hailo_input_vstream *v, const void *buf, size_t size)
{
    logf_("hailo_vstream_write_raw_buffer size=%zu", size);
    ENTER("hailo_vstream_write_raw_buffer");
    if (v->ng->sched == 0 && !v->ng->active) return HAILO_NETWORK_GROUP_NOT_ACTIVATED;
    if (size != v->size) return HAILO_INVALID_ARGUMENT;
    memcpy(v->last, buf, size);
    return HAILO_SUCCESS;
}

hailo_status hailo_vstream_read_raw_buffer(struct _hailo_output_vstream *v, void *buf, size_t size)
{
    logf_("hailo_vstream_read_raw_buffer size=%zu", size);
    ENTER("hailo_vstream_read_raw_buffer");
    const model_t *m = v->ng->model;
    const tensor_t *t = &m->outs[v->index];
    size_t n = values_of(t);
    if (size != n * (v->type == FT_FLOAT32 ? 4 : 1)) return HAILO_INVALID_ARGUMENT;
    const uint8_t *in = v->in->last;
    size_t in_n = v->in->size;
    for (size_t i = 0; i < n; i++) {
        uint8_t q = m->kind == 1 ? in[(i * 37) % in_n] : in[(i * 5 + v->index) % in_n];
        if (v->type == FT_FLOAT32) {
            size_t ch = i % t->c;
            ((float *)buf)[i] = ((float)q - zp_of(t, ch)) * scale_of(t, ch);
        } else {
            ((uint8_t *)buf)[i] = q;
        }
    }
    return HAILO_SUCCESS;
}

hailo_status hailo_release_input_vstreams(struct _hailo_input_vstream *const *v, size_t n)
{
    logf_("hailo_release_input_vstreams n=%zu", n);
    for (size_t i = 0; i < n; i++) {
        free(v[i]->last);
        free(v[i]);
    }
    return HAILO_SUCCESS;
}

hailo_status hailo_release_output_vstreams(struct _hailo_output_vstream *const *v, size_t n)
{
    logf_("hailo_release_output_vstreams n=%zu", n);
    for (size_t i = 0; i < n; i++) free(v[i]);
    return HAILO_SUCCESS;
}
