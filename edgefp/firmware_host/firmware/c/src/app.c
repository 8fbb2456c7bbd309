#include "app.h"

#include <math.h>
#include <string.h>

#include "board.h"
#include "bundle.h"
#include "config.h"
#include "efp.h"
#include "engine.h"
#include "framing.h"
#include "samplelog.h"
#include "sha256.h"
#include "signature.h"
#include "storage.h"
#include "text.h"

#define MAX_BODY   (EFP_MAX_FRAME - EFP_FRAME_OVERHEAD)
#define CHUNK      ((MAX_BODY - 4) / 16 * 16) /* upload data per frame: keeps flash writes 16-byte aligned */
#define OOD_HEAD   13                         /* GET_OOD response before the input */
#define BENCH_HEAD 44                         /* BENCH response before its latency count */
#define ROUND16(n) (((n) + 15u) & ~(size_t)15u)

static uint8_t arena[EFP_ARENA_BYTES] __attribute__((aligned(16)));
static efp_engine engine;

/* The active bundle. The engine uses the start of the arena, the sample log what the engine leaves, and
 * the score tables, OOD inputs, the input's standardisation and the sensor window sit at the end (extras
 * bytes from the end: everything but the engine's part). */
static struct {
    int slot; /* -1 when none */
    efp_bundle_info info;
    int32_t *tables;
    uint8_t *ood_inputs;
    float *mean, *std, *window, scale;
    int32_t zero_point;
    efp_sample_log log;
    size_t extras;
} active;

static struct {
    int on, slot;
    uint32_t total, received;
    uint8_t sha256[32];
    efp_sha256_ctx hash;
} upload;

static struct {
    uint32_t inputs, ood;
    uint8_t window[EFP_WINDOW];
    uint32_t window_next, window_inputs, window_ood;
    struct {
        uint32_t input, timestamp_ms;
        uint8_t pred;
        float score;
    } recent[EFP_OOD_CAPACITY];
    uint32_t recent_next, buffered;
    uint32_t session; /* changes whenever input numbers start over */
} seen;

static int events_on;
static efp_frame_reader reader;
static uint8_t tx[EFP_MAX_FRAME]; /* the answer being built, kept for duplicates of its request */
static size_t tx_len;
static int kept;
static uint16_t kept_seq;
static uint32_t kept_crc;
static char message[EFP_ERROR_LEN + 32];
static efp_text msg;

/* ---------------------------------------------------------------- little-endian fields */
static uint8_t *put(uint8_t *w, uint64_t v, int bytes)
{
    for (int i = 0; i < bytes; ++i) {
        *w++ = (uint8_t)(v >> (8 * i));
    }
    return w;
}

static uint8_t *put_f32(uint8_t *w, float f)
{
    uint32_t bits;
    memcpy(&bits, &f, 4);
    return put(w, bits, 4);
}

static uint8_t *put_str8(uint8_t *w, const char *s)
{
    size_t n = strlen(s);
    n = n > EFP_NAME_MAX ? EFP_NAME_MAX : n;
    *w++ = (uint8_t)n;
    memcpy(w, s, n);
    return w + n;
}

/* ---------------------------------------------------------------- refusals */
static int error_code;

static long refuse(int code, const char *text1)
{
    error_code = code;
    efp_text_init(&msg, message, sizeof message);
    efp_text_str(&msg, text1);
    return -1;
}

static long refuse_bytes(int code, const char *what, uint32_t n, const char *rest)
{
    refuse(code, what);
    efp_text_uint(&msg, n);
    efp_text_str(&msg, rest);
    return -1;
}

/* ---------------------------------------------------------------- bundles */
/* Values in the model's input (its bytes are 4 each for a wrapped model that takes float32). */
static uint32_t elements(const efp_bundle_info *b) { return b->input_float ? b->input_bytes / 4u : b->input_bytes; }

/* Score tables and the OOD buffer: none for a model wrapped without a fingerprint. */
static size_t fingerprint_bytes(const efp_bundle_info *b)
{
    return b->layers ? ROUND16(efp_bundle_values(b) * 256u * sizeof(int32_t)) +
                           ROUND16((size_t)EFP_OOD_CAPACITY * b->input_bytes)
                     : 0;
}

/* A mean and a std per channel, for an input the host standardises (efp_classify applies them). */
static size_t standardisation_bytes(const efp_bundle_info *b)
{
    return b->standardised ? ROUND16(2u * sizeof(float) * b->channels) : 0;
}

/* The window the board's sensor fills, raw float32 values, when the firmware runs its sensor loop. */
static size_t window_bytes(const efp_bundle_info *b)
{
    return EFP_SENSOR_LOOP ? ROUND16(sizeof(float) * elements(b)) : 0;
}

/* What a bundle keeps at the arena's end (edgefp's bundle_ram counts the same). */
static size_t extras_for(const efp_bundle_info *b)
{
    return fingerprint_bytes(b) + standardisation_bytes(b) + window_bytes(b);
}

/* Bytes of every model output, back to back (what INFER_OUTPUTS answers). */
static size_t outputs_bytes(void)
{
    size_t total = 0;
    for (size_t k = 0; k < efp_engine_output_count(&engine); ++k) {
        total += efp_engine_output(&engine, k)->bytes;
    }
    return total;
}

/* Map an engine failure to an error code, the engine's message kept. */
static long refuse_engine(int status)
{
    return refuse(status == EFP_UNSUPPORTED     ? EFP_ERR_UNSUPPORTED_OP
                  : status == EFP_INVALID_MODEL ? EFP_ERR_INVALID_BUNDLE
                                                : EFP_ERR_INTERNAL,
                  engine.error);
}

static void clear_counters(void)
{
    memset(&seen, 0, sizeof seen); /* the session is drawn at the next input (below) */
    active.log.count = active.log.next = 0;
}

/* The engine's model (just set up) has the input and outputs the manifest describes, and its outputs fit
 * an INFER_OUTPUTS answer: 0, or -1 after refuse(). */
static long model_matches(const efp_bundle_info *b)
{
    const efp_io *input = efp_engine_input(&engine, 0), *probs = efp_engine_output(&engine, b->probs_index);
    int matches = efp_engine_input_count(&engine) == 1 &&
                  input->type == (b->input_float ? EFP_IO_FLOAT32 : EFP_IO_INT8) && input->bytes == b->input_bytes &&
                  (!b->layers || (probs && probs->type == EFP_IO_INT8 && probs->bytes == b->classes));
    for (uint32_t l = 0; matches && l < b->layers; ++l) {
        const efp_io *error = efp_engine_output(&engine, b->error_index[l]);
        matches = error && error->type == EFP_IO_INT8 && error->bytes == efp_bundle_scales(b, l);
    }
    int32_t type = 0;
    for (uint32_t k = 0; matches && !b->layers && k <= efp_engine_output_count(&engine); ++k) {
        const efp_io *output = efp_engine_output(&engine, k);
        uint32_t bytes = efp_bundle_output(b, k, &type);
        matches = output ? bytes == output->bytes && type == output->type : bytes == 0;
    }
    if (!matches) {
        return refuse(EFP_ERR_INVALID_BUNDLE, "the model's input or outputs are not what manifest.json says");
    }
    return 4 + outputs_bytes() > MAX_BODY ? refuse_bytes(EFP_ERR_DOES_NOT_FIT, "its outputs of ",
                                                         (uint32_t)outputs_bytes(), " bytes do not fit a frame")
                                          : 0;
}

#ifdef EFP_TRUST_KEY
static const uint8_t trust_key[32] = {EFP_TRUST_KEY};
static uint64_t signed_version; /* of the bundle signed_refused() accepted last */
static uint8_t signed_manifest[32];

/* A firmware that trusts a key takes only bundles signed with it, never older than the last one activated
 * (BAD_SIGNATURE, ROLLBACK): 0, or -1 with the reason. */
static long signed_refused(const efp_bundle_info *b)
{
    if (b->signature == NULL) {
        return refuse(EFP_ERR_BAD_SIGNATURE, "the bundle is not signed; this device takes only signed bundles");
    }
    int status = efp_signature_check(b->signature, b->manifest, b->manifest_len, trust_key, &signed_version);
    if (status != EFP_SIGNATURE_OK) {
        return refuse(EFP_ERR_BAD_SIGNATURE, status == EFP_SIGNATURE_MALFORMED ? "manifest.sig is not a signature"
                                             : status == EFP_SIGNATURE_OTHER_KEY
                                                 ? "the bundle is signed with another key"
                                                 : "the signature does not verify");
    }
    efp_sha256(b->manifest, b->manifest_len, signed_manifest);
    const efp_boot_record *r = &efp_storage_record;
    if (signed_version < r->signed_version ||
        (signed_version == r->signed_version && memcmp(signed_manifest, r->signed_manifest, 32) != 0)) {
        return refuse(EFP_ERR_ROLLBACK, "the bundle is older than the one this device runs");
    }
    return 0;
}

/* Remember the bundle signed_refused() accepted last as the one activated (committed with the record). */
static void signed_activated(void)
{
    efp_storage_record.signed_version = signed_version;
    memcpy(efp_storage_record.signed_manifest, signed_manifest, 32);
}
#else
static long signed_refused(const efp_bundle_info *b)
{
    (void)b;
    return 0;
}

static void signed_activated(void) {}
#endif

/* Serve the verified bundle in `slot`: 0, or -1 with the reason (nothing is active then). */
static long load(int slot)
{
    active.slot = -1;
    efp_bundle_info *b = &active.info;
    char reason[EFP_ERROR_LEN];
    if (efp_bundle_open(efp_slot_data(slot), efp_storage_record.slot[slot].bytes, b, reason, sizeof reason)) {
        return refuse(EFP_ERR_INVALID_BUNDLE, reason);
    }
    if (signed_refused(b)) {
        return -1;
    }
    size_t fixed = extras_for(b);
    if (fixed > EFP_ARENA_BYTES) {
        return refuse(EFP_ERR_DOES_NOT_FIT,
                      "the score tables and the buffers of the bundle's input do not fit the arena");
    }
    uint8_t *end = arena + EFP_ARENA_BYTES - fixed;
    active.tables = (int32_t *)(void *)end;
    active.ood_inputs = end + ROUND16(efp_bundle_values(b) * 256u * sizeof(int32_t));
    active.mean = (float *)(void *)(end + fingerprint_bytes(b));
    active.std = active.mean + b->channels;
    active.window = (float *)(void *)(end + fingerprint_bytes(b) + standardisation_bytes(b));
    if (efp_bundle_tables(b, active.tables)) {
        return refuse(EFP_ERR_INVALID_BUNDLE, "a z_table in manifest.json is malformed");
    }
    if (!b->input_float && efp_bundle_input(b, active.mean, active.std, &active.scale, &active.zero_point)) {
        if (b->layers) {
            return refuse(EFP_ERR_INVALID_BUNDLE,
                          "the input's scale, zero_point or preprocessing in manifest.json is malformed");
        }
        active.scale = 0.0f; /* a wrapped model whose int8 input has no scale takes no raw windows */
    }
    int status = efp_engine_init(&engine, b->model, b->model_len, arena, EFP_ARENA_BYTES - fixed);
    if (status != EFP_OK) {
        return refuse_engine(status);
    }
    size_t used = ROUND16(engine.arena_used);
    active.extras = EFP_ARENA_BYTES - used;
    efp_log_init(&active.log, arena + used, active.extras - fixed, b->classes, efp_bundle_values(b),
                 (uint32_t)sizeof(float) * elements(b), EFP_LOG_CAPACITY);
    if (model_matches(b)) {
        return -1;
    }
    active.slot = slot;
    clear_counters();
    return 0;
}

/* Check the bundle that was just uploaded to `slot` (it verifies, fits, and the engine can run it),
 * keeping the active bundle's tables and OOD inputs; the active bundle's engine is set up again after. */
static long check(int slot, uint32_t bytes, efp_bundle_info *b)
{
    char reason[EFP_ERROR_LEN];
    if (efp_bundle_open(efp_slot_data(slot), bytes, b, reason, sizeof reason)) {
        return refuse(EFP_ERR_INVALID_BUNDLE, reason);
    }
    if (signed_refused(b)) {
        return -1;
    }
    if (efp_bundle_tables(b, NULL)) {
        return refuse(EFP_ERR_INVALID_BUNDLE, "a z_table in manifest.json is malformed");
    }
    if (b->input_bytes + (b->layers ? OOD_HEAD : 0) + EFP_FRAME_OVERHEAD > EFP_MAX_FRAME) {
        return refuse_bytes(EFP_ERR_DOES_NOT_FIT, "its input of ", b->input_bytes, " bytes does not fit a frame");
    }
    size_t reserved = active.slot >= 0 ? active.extras : 0;
    int status = efp_engine_init(&engine, b->model, b->model_len, arena, EFP_ARENA_BYTES - reserved);
    size_t need = engine.arena_needed + extras_for(b);
    long result = 0;
    if (status != EFP_OK && status != EFP_ARENA_TOO_SMALL) {
        result = refuse_engine(status);
    } else if (status == EFP_OK && model_matches(b)) { /* else checked when activated: the active bundle holds room */
        result = -1;
    } else if (need > EFP_ARENA_BYTES) {
        result = refuse_bytes(EFP_ERR_DOES_NOT_FIT, "the model needs ", (uint32_t)(need - EFP_ARENA_BYTES),
                              " bytes more RAM than ");
        efp_text_str(&msg, efp_board_name);
        efp_text_str(&msg, " has");
    }
    if (active.slot >= 0 && efp_engine_init(&engine, active.info.model, active.info.model_len, arena,
                                            EFP_ARENA_BYTES - active.extras) != EFP_OK) {
        active.slot = -1; /* cannot happen: it ran before; stop serving rather than run a broken graph */
    }
    return result;
}

/* ---------------------------------------------------------------- inference */
typedef struct {
    uint8_t pred, ood;
    float score;
    uint32_t latency_us;
    const int8_t *probs;
    int8_t errors[EFP_MAX_LAYERS * EFP_MAX_SCALES];
    int32_t evidence[EFP_MAX_LAYERS];
} result;

/* Milliseconds of uptime, carried across wraps of the microsecond clock (called often enough). */
static uint32_t now_ms(void)
{
    static uint32_t last_us, ms, rest_us;
    uint32_t us = efp_board_time_us();
    rest_us += us - last_us;
    last_us = us;
    ms += rest_us / 1000u;
    rest_us %= 1000u;
    return ms;
}

/* The index of the largest value of an output (int8, int32 or float32); 255 for any beyond it (a u8
 * in INFER answers and events: hosts take the argmax of INFER_OUTPUTS). */
static uint8_t argmax(const efp_io *out)
{
    uint32_t size = out->type == EFP_IO_INT8 ? 1 : 4, best = 0;
    for (uint32_t i = 1; i < out->bytes / size; ++i) {
        const uint8_t *p = (const uint8_t *)out->data;
        int32_t a, c;
        float fa, fc;
        if (size == 1) {
            best = (int8_t)p[i] > (int8_t)p[best] ? i : best;
            continue;
        }
        memcpy(&a, p + 4 * i, 4);
        memcpy(&c, p + 4 * best, 4);
        memcpy(&fa, &a, 4);
        memcpy(&fc, &c, 4);
        best = (out->type == EFP_IO_FLOAT32 ? fa > fc : a > c) ? i : best;
    }
    return (uint8_t)(best < 255 ? best : 255);
}

static long run(const uint8_t *x, result *r)
{
    const efp_bundle_info *b = &active.info;
    memcpy(efp_engine_input(&engine, 0)->data, x, b->input_bytes);
    uint32_t start = efp_board_time_us();
    int status = efp_engine_invoke(&engine);
    r->latency_us = efp_board_time_us() - start;
    if (status != EFP_OK) {
        return refuse(EFP_ERR_INTERNAL, engine.error);
    }
    if (!b->layers) { /* no fingerprint: the argmax of the first output, never OOD */
        r->pred = argmax(efp_engine_output(&engine, 0));
        r->probs = NULL;
        r->ood = 0;
        r->score = 0.0f;
        return 0;
    }
    r->probs = efp_engine_output(&engine, b->probs_index)->data;
    r->pred = 0;
    for (uint32_t k = 1; k < b->classes; ++k) {
        r->pred = r->probs[k] > r->probs[r->pred] ? (uint8_t)k : r->pred;
    }
    int64_t units = 0;
    for (uint32_t l = 0, first = 0, scales; l < b->layers; ++l, first += scales) {
        int8_t *values = r->errors + first;
        scales = efp_bundle_scales(b, l);
        memcpy(values, efp_engine_output(&engine, b->error_index[l])->data, scales);
        uint32_t w = 0; /* the value that counts: the first below the top of its range, else the last */
        while (w + 1u < scales && values[w] == 127) {
            ++w;
        }
        r->evidence[l] = active.tables[(first + w) * 256u + (uint32_t)(values[w] + 128)];
        units += r->evidence[l];
    }
    r->ood = units > b->threshold_units;
    r->score = (float)((double)units / ((double)b->score_unit * b->layers));
    return 0;
}

/* Count one input seen (int8 x, and its raw values when known); log it; buffer it when OOD; tell a
 * subscribed host. */
static void observe(const uint8_t *x, const float *raw, const result *r)
{
    static uint32_t sessions;
    uint32_t now = now_ms();
    const efp_bundle_info *b = &active.info;
    if (seen.session == 0) { /* the clock when the first input came (the host's timing), and a count */
        seen.session = (efp_board_time_us() ^ ++sessions * 0x9E3779B9u) | 1u;
    }
    efp_log_head *h = efp_log_append(&active.log);
    if (h) {
        *h = (efp_log_head){
            seen.inputs + 1, now, r->latency_us, r->score, r->pred, r->ood, raw ? EFP_LOG_RAW : EFP_LOG_INT8, 0};
        if (b->classes) {
            memcpy(efp_log_probs(h), r->probs, b->classes);
        }
        memcpy(efp_log_probs(h) + b->classes, r->errors, efp_bundle_values(b));
        const void *data = raw ? (const void *)raw : (const void *)x;
        memcpy(efp_log_data(&active.log, h), data, raw ? sizeof(float) * elements(b) : b->input_bytes);
    }
    seen.inputs += 1;
    seen.ood += r->ood;
    if (seen.window_inputs == EFP_WINDOW) {
        seen.window_ood -= seen.window[seen.window_next];
    } else {
        seen.window_inputs += 1;
    }
    seen.window[seen.window_next] = r->ood;
    seen.window_ood += r->ood;
    seen.window_next = (seen.window_next + 1) % EFP_WINDOW;
    if (r->ood) {
        uint32_t i = seen.recent_next;
        seen.recent[i].input = seen.inputs;
        seen.recent[i].timestamp_ms = now;
        seen.recent[i].pred = r->pred;
        seen.recent[i].score = r->score;
        memcpy(active.ood_inputs + (size_t)i * active.info.input_bytes, x, active.info.input_bytes);
        seen.recent_next = (i + 1) % EFP_OOD_CAPACITY;
        seen.buffered += seen.buffered < EFP_OOD_CAPACITY;
    }
    if (events_on) {
        uint8_t event[3 + 22 + 4], *w = event + 3;
        w = put(w, now, 4);
        w = put(w, seen.inputs, 4);
        *w++ = r->pred;
        w = put_f32(w, r->score);
        *w++ = r->ood;
        w = put(w, r->latency_us, 4);
        efp_frame_send(event, efp_frame_seal(event, EFP_MSG_EVENT, 0, (size_t)(w - event - 3)));
    }
}

/* ---------------------------------------------------------------- requests
 * Each handler gets the request body and writes the response body at `out`; it returns the body's
 * length, or -1 after refuse(). */
typedef long (*handler)(const uint8_t *body, size_t len, uint8_t *out);

static long require_active(void)
{
    return active.slot < 0 ? refuse(EFP_ERR_NO_BUNDLE, "no bundle is active; flash one first") : 0;
}

static long bad_length(size_t len, size_t expected)
{
    return len == expected ? 0 : refuse_bytes(EFP_ERR_BAD_LENGTH, "the body must have ", (uint32_t)expected, " bytes");
}

static long on_hello(const uint8_t *body, size_t len, uint8_t *out)
{
    (void)body;
    if (bad_length(len, 2)) {
        return -1;
    }
    events_on = 0; /* HELLO starts a host's session, unsubscribed */
    uint8_t *w = put(out, EFP_PROTOCOL_VERSION, 2);
    w = put(w, EFP_MAX_FRAME, 4);
    *w++ = 0; /* no AUTH: a UART is a local link */
    memset(w, 0, 16);
    w = put_str8(w + 16, EFP_FIRMWARE);
    w = put_str8(w, efp_board_name);
    w = put_str8(w, "tflm");
    w = put(w, efp_slot_capacity(), 8);
    w = put(w, EFP_ARENA_BYTES, 8);
    *w++ = active.slot < 0 ? EFP_NO_SLOT : (uint8_t)active.slot;
    *w++ = EFP_SLOTS;
    for (int s = 0; s < EFP_SLOTS; ++s) {
        const efp_slot_record *r = &efp_storage_record.slot[s];
        int receiving = upload.on && upload.slot == s;
        *w++ = receiving          ? EFP_SLOT_RECEIVING
               : !r->verified     ? EFP_SLOT_EMPTY
               : s == active.slot ? EFP_SLOT_ACTIVE
                                  : EFP_SLOT_VERIFIED;
        w = put(w, receiving ? upload.total : r->verified ? r->bytes : 0, 4);
        if (receiving || !r->verified) {
            memset(w, 0, 32);
            w = put_str8(w + 32, "");
        } else {
            memcpy(w, r->sha256, 32);
            w = put_str8(w + 32, r->name);
        }
    }
    return w - out;
}

static long on_auth(const uint8_t *body, size_t len, uint8_t *out)
{
    (void)body;
    (void)out;
    return bad_length(len, 32); /* nothing to check: this device requires no key */
}

static long on_manifest(const uint8_t *body, size_t len, uint8_t *out)
{
    if (bad_length(len, 4) || require_active()) {
        return -1;
    }
    uint32_t total = active.info.manifest_len, offset = efp_read_u32(body);
    uint32_t piece = offset >= total ? 0 : total - offset;
    piece = piece > MAX_BODY - 4 ? MAX_BODY - 4 : piece;
    put(out, total, 4);
    memcpy(out + 4, active.info.manifest + (offset < total ? offset : total), piece);
    return 4 + (long)piece;
}

static long on_upload_begin(const uint8_t *body, size_t len, uint8_t *out)
{
    if (len < 37 || len != 37u + body[36]) {
        return refuse(EFP_ERR_BAD_LENGTH, "UPLOAD_BEGIN takes total, sha256 and a name");
    }
    uint32_t total = efp_read_u32(body);
    if (total > efp_slot_capacity()) {
        refuse_bytes(EFP_ERR_DOES_NOT_FIT, "the archive needs ", total - efp_slot_capacity(),
                     " bytes more storage than ");
        efp_text_str(&msg, efp_board_name);
        efp_text_str(&msg, " has");
        return -1;
    }
    upload.on = 0;
    int slot = active.slot < 0 ? (efp_storage_record.slot[0].verified && !efp_storage_record.slot[1].verified)
                               : 1 - active.slot;
    if (efp_storage_record.slot[slot].verified) { /* forget it before its bytes change */
        efp_storage_record.slot[slot].verified = 0;
        if (efp_storage_record.active == slot) {
            efp_storage_record.active = EFP_NO_SLOT;
        }
        if (efp_storage_commit()) {
            return refuse(EFP_ERR_INTERNAL, "the boot record could not be written");
        }
    }
    if (efp_slot_erase(slot, total ? total : 1)) {
        return refuse(EFP_ERR_INTERNAL, "the slot could not be erased");
    }
    upload.on = 1;
    upload.slot = slot;
    upload.total = total;
    upload.received = 0;
    memcpy(upload.sha256, body + 4, 32);
    efp_sha256_init(&upload.hash);
    return put(out, CHUNK, 4) - out;
}

static long on_upload_chunk(const uint8_t *body, size_t len, uint8_t *out)
{
    if (len < 4) {
        return refuse(EFP_ERR_BAD_LENGTH, "UPLOAD_CHUNK takes an offset and data");
    }
    uint32_t offset = efp_read_u32(body), n = (uint32_t)len - 4;
    if (!upload.on) {
        return refuse(EFP_ERR_BAD_STATE, "no upload in progress; send UPLOAD_BEGIN first");
    }
    if (offset != upload.received) {
        refuse_bytes(EFP_ERR_BAD_STATE, "chunk at offset ", offset, ", expected ");
        efp_text_uint(&msg, upload.received);
        return -1;
    }
    if (n > upload.total - offset) {
        return refuse_bytes(EFP_ERR_BAD_STATE, "chunk runs past the ", upload.total, " bytes announced");
    }
    if (efp_slot_program(upload.slot, offset, body + 4, n)) {
        upload.on = 0;
        return refuse(EFP_ERR_INTERNAL, "flash programming failed");
    }
    efp_sha256_update(&upload.hash, body + 4, n);
    upload.received += n;
    return put(out, upload.received, 4) - out;
}

static long on_upload_end(const uint8_t *body, size_t len, uint8_t *out)
{
    (void)body;
    if (bad_length(len, 0)) {
        return -1;
    }
    if (!upload.on || upload.received != upload.total) {
        if (!upload.on) {
            return refuse(EFP_ERR_BAD_STATE, "the upload is not complete (no upload)");
        }
        refuse_bytes(EFP_ERR_BAD_STATE, "the upload is not complete (", upload.received, " of ");
        efp_text_uint(&msg, upload.total);
        efp_text_str(&msg, " bytes)");
        return -1;
    }
    upload.on = 0;
    uint8_t digest[32];
    efp_sha256_final(&upload.hash, digest);
    if (memcmp(digest, upload.sha256, 32) != 0) {
        return refuse(EFP_ERR_HASH_MISMATCH, "the received bytes do not have the announced SHA-256; upload again");
    }
    efp_sha256(efp_slot_data(upload.slot), upload.total, digest); /* what the flash holds, not what passed by */
    if (memcmp(digest, upload.sha256, 32) != 0) {
        return refuse(EFP_ERR_INTERNAL, "the flash does not hold what was written");
    }
    efp_bundle_info b;
    if (check(upload.slot, upload.total, &b)) {
        return -1;
    }
    efp_slot_record *r = &efp_storage_record.slot[upload.slot];
    r->bytes = upload.total;
    memcpy(r->sha256, digest, 32);
    memcpy(r->name, b.name, sizeof r->name);
    r->verified = 1;
    if (efp_storage_commit()) {
        r->verified = 0;
        return refuse(EFP_ERR_INTERNAL, "the boot record could not be written");
    }
    *out = (uint8_t)upload.slot;
    return 1;
}

static long on_activate(const uint8_t *body, size_t len, uint8_t *out)
{
    if (bad_length(len, 32)) {
        return -1;
    }
    int slot = -1;
    for (int s = 0; s < EFP_SLOTS; ++s) {
        if (efp_storage_record.slot[s].verified && memcmp(efp_storage_record.slot[s].sha256, body, 32) == 0) {
            slot = s;
        }
    }
    if (slot < 0) {
        return refuse(EFP_ERR_BAD_STATE, "no slot holds that bundle verified; upload it first");
    }
    int previous = active.slot;
    if (load(slot)) {
        if (previous >= 0) { /* keep serving what was active */
            int code = error_code;
            char reason[sizeof message];
            memcpy(reason, message, sizeof reason);
            load(previous);
            refuse(code, reason);
        }
        return -1;
    }
    efp_storage_record.active = (uint8_t)slot;
    signed_activated();
    if (efp_storage_commit()) {
        return refuse(EFP_ERR_INTERNAL, "the boot record could not be written");
    }
    *out = (uint8_t)slot;
    return 1;
}

/* INFER's response body (also in READ_LOG's). */
static uint8_t *put_result(uint8_t *w, uint8_t pred, const int8_t *probs, const int8_t *errors, float score,
                           uint8_t ood, uint32_t latency_us)
{
    const efp_bundle_info *b = &active.info;
    *w++ = pred;
    *w++ = (uint8_t)b->classes;
    if (b->classes) {
        memcpy(w, probs, b->classes);
        w += b->classes;
    }
    uint32_t values = efp_bundle_values(b);
    *w++ = (uint8_t)values;
    memcpy(w, errors, values);
    w += values;
    w = put_f32(w, score);
    *w++ = ood;
    return put(w, latency_us, 4);
}

/* An input from the host: checked against the active bundle, run, counted and logged (INFER and
 * INFER_OUTPUTS alike). */
static int infer_request(const uint8_t *body, size_t len, result *r)
{
    if (require_active()) {
        return -1;
    }
    if (len != active.info.input_bytes) {
        refuse_bytes(EFP_ERR_BAD_INPUT_SHAPE, "the input has ", (uint32_t)len, " bytes; the model takes ");
        efp_text_uint(&msg, active.info.input_bytes);
        return -1;
    }
    memset(r, 0, sizeof *r);
    if (run(body, r)) {
        return -1;
    }
    observe(body, NULL, r);
    return 0;
}

static long on_infer(const uint8_t *body, size_t len, uint8_t *out)
{
    result r;
    if (infer_request(body, len, &r)) {
        return -1;
    }
    return put_result(out, r.pred, r.probs, r.errors, r.score, r.ood, r.latency_us) - out;
}

/* INFER_OUTPUTS: the latency, then every model output as the model lays it out. */
static long on_infer_outputs(const uint8_t *body, size_t len, uint8_t *out)
{
    result r;
    if (infer_request(body, len, &r)) {
        return -1;
    }
    uint8_t *w = put(out, r.latency_us, 4);
    for (size_t k = 0; k < efp_engine_output_count(&engine); ++k) {
        const efp_io *o = efp_engine_output(&engine, k);
        memcpy(w, o->data, o->bytes);
        w += o->bytes;
    }
    return w - out;
}

static float latency_at(const uint8_t *latencies, uint32_t i)
{
    float v;
    memcpy(&v, latencies + 4 * i, 4);
    return v;
}

/* The k-th smallest of n latencies (n is small: those that fit one frame). */
static float kth(const uint8_t *latencies, uint32_t n, uint32_t k)
{
    for (uint32_t i = 0; i < n; ++i) {
        float v = latency_at(latencies, i);
        uint32_t below = 0, equal = 0;
        for (uint32_t j = 0; j < n; ++j) {
            float u = latency_at(latencies, j);
            below += u < v;
            equal += u == v;
        }
        if (below <= k && k < below + equal) {
            return v;
        }
    }
    return 0.0f;
}

static float percentile(const uint8_t *latencies, uint32_t n, float p)
{
    float position = (float)(n - 1) * p / 100.0f;
    uint32_t lo = (uint32_t)position;
    float low = kth(latencies, n, lo);
    return lo + 1 < n ? low + (position - (float)lo) * (kth(latencies, n, lo + 1) - low) : low;
}

static long on_bench(const uint8_t *body, size_t len, uint8_t *out)
{
    if (bad_length(len, 8) || require_active()) {
        return -1;
    }
    uint32_t runs = efp_read_u32(body), warmup = efp_read_u32(body + 4);
    if (runs < 1) {
        return refuse(EFP_ERR_OUT_OF_RANGE, "runs must be at least 1");
    }
    if (runs > EFP_BENCH_MAX_RUNS || warmup > EFP_BENCH_MAX_RUNS - runs) {
        return refuse_bytes(EFP_ERR_OVER_LIMIT, "runs + warmup over ", EFP_BENCH_MAX_RUNS, "");
    }
    const efp_bundle_info *b = &active.info;
    uint32_t start = efp_board_time_us(), began = start;
    int status = efp_engine_init(&engine, b->model, b->model_len, arena, EFP_ARENA_BYTES - active.extras);
    float init_ms = (float)(efp_board_time_us() - start) / 1000.0f;
    if (status != EFP_OK) {
        active.slot = -1;
        return refuse_engine(status);
    }
    const efp_io *io = efp_engine_input(&engine, 0);
    size_t bytes = io->bytes;
    int8_t *input = io->data;
    uint32_t seed = 0x9E3779B9u; /* a fixed pseudo-random input (xorshift32) */
    for (size_t i = 0; i < bytes; ++i) {
        seed ^= seed << 13;
        seed ^= seed >> 17;
        seed ^= seed << 5;
        input[i] = (int8_t)(seed >> 24);
    }
    uint8_t *latencies = out + BENCH_HEAD + 4;
    uint32_t kept_runs = (MAX_BODY - BENCH_HEAD - 4) / 4;
    kept_runs = runs < kept_runs ? runs : kept_runs;
    double sum = 0.0, squares = 0.0;
    float first = 0.0f, lo = 0.0f, hi = 0.0f;
    for (uint32_t i = 0; i < 1 + warmup + runs; ++i) {
        if (efp_board_time_us() - began > EFP_BENCH_MAX_US) {
            refuse_bytes(EFP_ERR_OVER_LIMIT, "time limit reached after ", i, " invokes");
            return -1;
        }
        start = efp_board_time_us();
        status = efp_engine_invoke(&engine);
        float us = (float)(efp_board_time_us() - start);
        if (status != EFP_OK) {
            return refuse(EFP_ERR_INTERNAL, engine.error);
        }
        if (i == 0) {
            first = us;
        } else if (i > warmup) {
            uint32_t n = i - warmup - 1;
            sum += us;
            squares += (double)us * us;
            lo = n == 0 || us < lo ? us : lo;
            hi = n == 0 || us > hi ? us : hi;
            if (n < kept_runs) {
                memcpy(latencies + 4 * n, &us, 4);
            }
        }
    }
    double mean = sum / runs, variance = squares / runs - mean * mean;
    double std = variance > 1.0 ? variance : 1.0;
    for (int i = 0; i < 64; ++i) { /* Newton's square root: no libm needed */
        std = 0.5 * (std + (variance > 0.0 ? variance : 0.0) / std);
    }
    uint8_t *w = put_f32(out, init_ms);
    w = put_f32(w, first);
    w = put(w, runs, 4);
    w = put(w, warmup, 4);
    w = put_f32(w, (float)mean);
    w = put_f32(w, (float)std);
    w = put_f32(w, lo);
    w = put_f32(w, hi);
    w = put_f32(w, percentile(latencies, kept_runs, 50.0f));
    w = put_f32(w, percentile(latencies, kept_runs, 90.0f));
    w = put_f32(w, percentile(latencies, kept_runs, 99.0f));
    put(w, kept_runs, 4);
    return BENCH_HEAD + 4 + 4 * (long)kept_runs;
}

/* A one-byte body that must be 0 or 1 (EVENTS, RESET): 0 or 1, or -1 after refuse(). */
static int flag(const uint8_t *body, size_t len, const char *name)
{
    if (bad_length(len, 1)) {
        return -1;
    }
    if (body[0] > 1) {
        refuse(EFP_ERR_OUT_OF_RANGE, name);
        efp_text_str(&msg, " must be 0 or 1");
        return -1;
    }
    return body[0];
}

static long on_events(const uint8_t *body, size_t len, uint8_t *out)
{
    (void)out;
    int on = flag(body, len, "enable");
    if (on < 0) {
        return -1;
    }
    events_on = on;
    return 0;
}

static long on_counters(const uint8_t *body, size_t len, uint8_t *out)
{
    (void)body;
    if (bad_length(len, 0)) {
        return -1;
    }
    uint8_t *w = put(out, seen.inputs, 4);
    w = put(w, seen.ood, 4);
    w = put(w, EFP_WINDOW, 4);
    w = put(w, seen.window_inputs, 4);
    w = put_f32(w, seen.window_inputs ? (float)seen.window_ood / (float)seen.window_inputs : 0.0f);
    w = put(w, seen.buffered, 4);
    return put(w, EFP_OOD_CAPACITY, 4) - out;
}

static long on_get_ood(const uint8_t *body, size_t len, uint8_t *out)
{
    if (bad_length(len, 4) || require_active()) {
        return -1;
    }
    uint32_t index = efp_read_u32(body);
    if (index >= seen.buffered) {
        refuse_bytes(EFP_ERR_OUT_OF_RANGE, "OOD sample ", index, " asked, ");
        efp_text_uint(&msg, seen.buffered);
        efp_text_str(&msg, " buffered");
        return -1;
    }
    uint32_t i = (seen.recent_next + EFP_OOD_CAPACITY - 1 - index) % EFP_OOD_CAPACITY;
    uint8_t *w = put(out, seen.recent[i].input, 4);
    w = put(w, seen.recent[i].timestamp_ms, 4);
    *w++ = seen.recent[i].pred;
    w = put_f32(w, seen.recent[i].score);
    memcpy(w, active.ood_inputs + (size_t)i * active.info.input_bytes, active.info.input_bytes);
    return OOD_HEAD + (long)active.info.input_bytes;
}

static long on_read_log(const uint8_t *body, size_t len, uint8_t *out)
{
    if (bad_length(len, 9)) {
        return -1;
    }
    if (body[4] > 1) {
        return refuse(EFP_ERR_OUT_OF_RANGE, "ood_only must be 0 or 1");
    }
    const efp_sample_log *l = &active.log;
    const efp_bundle_info *b = &active.info;
    uint32_t after = efp_read_u32(body), offset = efp_read_u32(body + 5);
    const efp_log_head *h = active.slot < 0 ? NULL : efp_log_find(l, seen.inputs, after, body[4]);
    uint8_t *w = put(out, seen.session, 4);
    w = put(w, efp_log_first(l, seen.inputs), 4);
    w = put(w, seen.inputs, 4);
    w = put(w, active.slot < 0 ? 0 : l->capacity, 4);
    *w++ = h != NULL;
    if (h == NULL) {
        return w - out;
    }
    w = put(w, h->input, 4);
    w = put(w, h->timestamp_ms, 4);
    w = put_result(w, h->pred, efp_log_probs(h), efp_log_probs(h) + b->classes, h->score, h->ood, h->latency_us);
    uint32_t total = h->kind == EFP_LOG_RAW ? 4u * elements(b) : b->input_bytes,
             room = MAX_BODY - (uint32_t)(w - out) - 5;
    uint32_t piece = offset >= total ? 0 : total - offset;
    piece = piece < room ? piece : room;
    *w++ = h->kind;
    w = put(w, total, 4);
    memcpy(w, efp_log_data(l, h) + (offset < total ? offset : 0), piece);
    return (w - out) + (long)piece;
}

static int reboot_after_answer;

static long on_reset(const uint8_t *body, size_t len, uint8_t *out)
{
    (void)out;
    int reboot = flag(body, len, "reboot");
    if (reboot < 0) {
        return -1;
    }
    upload.on = 0;
    clear_counters();
    reboot_after_answer = reboot;
    return 0;
}

static handler handler_for(uint8_t type)
{
    switch (type) {
        case EFP_MSG_HELLO:
            return on_hello;
        case EFP_MSG_AUTH:
            return on_auth;
        case EFP_MSG_MANIFEST:
            return on_manifest;
        case EFP_MSG_UPLOAD_BEGIN:
            return on_upload_begin;
        case EFP_MSG_UPLOAD_CHUNK:
            return on_upload_chunk;
        case EFP_MSG_UPLOAD_END:
            return on_upload_end;
        case EFP_MSG_ACTIVATE:
            return on_activate;
        case EFP_MSG_INFER:
            return on_infer;
        case EFP_MSG_INFER_OUTPUTS:
            return on_infer_outputs;
        case EFP_MSG_BENCH:
            return on_bench;
        case EFP_MSG_EVENTS:
            return on_events;
        case EFP_MSG_GET_COUNTERS:
            return on_counters;
        case EFP_MSG_GET_OOD:
            return on_get_ood;
        case EFP_MSG_READ_LOG:
            return on_read_log;
        case EFP_MSG_RESET:
            return on_reset;
        default:
            return NULL;
    }
}

/* ---------------------------------------------------------------- frames */
static size_t error_body(uint8_t *out, int code, uint8_t request_type, const char *text1)
{
    size_t n = strlen(text1);
    out[0] = (uint8_t)code;
    out[1] = request_type;
    memcpy(out + 2, text1, n);
    return 2 + n;
}

static void notice(int code, uint8_t type, uint16_t seq, const char *text1)
{
    uint8_t frame[3 + 2 + 64 + 4];
    char line[64];
    efp_text t;
    efp_text_init(&t, line, sizeof line);
    efp_text_str(&t, text1);
    efp_frame_send(frame, efp_frame_seal(frame, EFP_MSG_ERROR, seq, error_body(frame + 3, code, type, line)));
}

static void answer(const uint8_t *payload, size_t len)
{
    uint8_t type = payload[0];
    uint16_t seq = (uint16_t)(payload[1] | payload[2] << 8);
    uint32_t crc = efp_read_u32(payload + len - 4);
    if (seq == 0) {
        return; /* seq 0 marks unsolicited frames, never a request: not executed, not answered */
    }
    if (type != EFP_MSG_HELLO && kept && kept_seq == seq && kept_crc == crc) {
        efp_frame_send(tx, tx_len); /* a duplicate: the kept answer again, not executed twice */
        return;
    }
    handler h = handler_for(type);
    long n = h ? h(payload + 3, len - EFP_FRAME_OVERHEAD, tx + 3)
               : refuse_bytes(EFP_ERR_UNKNOWN_TYPE, "unknown request type ", type, "");
    tx_len = n >= 0 ? efp_frame_seal(tx, type | EFP_RESPONSE, seq, (size_t)n)
                    : efp_frame_seal(tx, EFP_MSG_ERROR, seq, error_body(tx + 3, error_code, type, message));
    kept = type != EFP_MSG_HELLO;
    kept_seq = seq;
    kept_crc = crc;
    efp_frame_send(tx, tx_len);
    if (reboot_after_answer) {
        efp_board_reset();
    }
}

/* ---------------------------------------------------------------- inference from the application */
uint32_t efp_window_values(void) { return active.slot < 0 ? 0 : elements(&active.info); }

/* Run an int8 input (with its raw values when known) as an input seen; fill the verdict. */
static int classify(const uint8_t *x, const float *raw, efp_verdict *v)
{
    result r;
    memset(&r, 0, sizeof r);
    if (run(x, &r)) {
        return EFP_RUN_FAILED;
    }
    observe(x, raw, &r);
    v->input = seen.inputs;
    v->pred = r.pred;
    v->ood = r.ood;
    v->score = r.score;
    v->latency_us = r.latency_us;
    v->layers = (uint8_t)active.info.layers;
    v->values = (uint8_t)efp_bundle_values(&active.info);
    memcpy(v->errors, r.errors, sizeof v->errors);
    memcpy(v->evidence, r.evidence, sizeof v->evidence);
    return EFP_CLASSIFIED;
}

int efp_classify_int8(const int8_t *input, uint32_t values, efp_verdict *verdict)
{
    if (active.slot < 0) {
        return EFP_NO_MODEL;
    }
    if (active.info.input_float) {
        return EFP_WRONG_KIND;
    }
    return values != active.info.input_bytes ? EFP_WRONG_SIZE : classify((const uint8_t *)input, NULL, verdict);
}

int efp_classify(const float *window, uint32_t values, efp_verdict *verdict)
{
    if (active.slot < 0) {
        return EFP_NO_MODEL;
    }
    const efp_bundle_info *b = &active.info;
    if (values != elements(b)) {
        return EFP_WRONG_SIZE;
    }
    for (uint32_t i = 0; i < values; ++i) {
        if (!isfinite(window[i])) {
            return EFP_NOT_FINITE;
        }
    }
    if (b->input_float) { /* a wrapped model that takes the values as they are */
        return classify((const uint8_t *)window, window, verdict);
    }
    if (!(active.scale > 0.0f)) {
        return EFP_WRONG_KIND;
    }
    int8_t q[EFP_MAX_FRAME]; /* an input fits a frame (checked at upload) */
    for (uint32_t i = 0; i < values; ++i) {
        uint32_t c = i % b->channels;
        float z = b->standardised ? (window[i] - active.mean[c]) / active.std[c] : window[i]; /* as numpy, in float32 */
        z = z / active.scale;
        z = z < -1000.0f ? -1000.0f : z > 1000.0f ? 1000.0f : z;        /* beyond the int8 range either way */
        z = (z + 12582912.0f) - 12582912.0f + (float)active.zero_point; /* rounded half to even, as np.round */
        q[i] = (int8_t)(z < -128.0f ? -128 : z > 127.0f ? 127 : (int)z);
    }
    return classify((const uint8_t *)q, window, verdict);
}

#if EFP_SENSOR_LOOP
int efp_app_sense(void)
{
    uint32_t values = efp_window_values();
#if EFP_SENSOR_HZ
    static uint32_t last_us;
    if (efp_board_time_us() - last_us < 1000000u / EFP_SENSOR_HZ) {
        return 0;
    }
#endif
    efp_verdict verdict;
    if (values == 0 || efp_board_sensor_read(active.window, values) != 1) {
        return 0;
    }
#if EFP_SENSOR_HZ
    last_us = efp_board_time_us();
#endif
    efp_classify(active.window, values, &verdict); /* a window of NaN is dropped as it came */
    return 1;
}
#endif

int efp_app_poll(void)
{
    uint8_t chunk[64];
    size_t n = efp_board_uart_read(chunk, sizeof chunk);
    efp_app_receive(chunk, n);
    return n != 0;
}

void efp_app_receive(const uint8_t *data, size_t len)
{
    for (size_t i = 0; i < len; ++i) {
        switch (efp_frame_feed(&reader, data[i])) {
            case EFP_FRAME_OK:
                answer(reader.payload, reader.payload_len);
                break;
            case EFP_FRAME_BAD:
                notice(EFP_ERR_BAD_FRAME, 0, 0, "a frame did not decode or failed its CRC");
                break;
            case EFP_FRAME_OVERSIZED:
                notice(EFP_ERR_FRAME_TOO_LARGE, reader.type, reader.seq, "the frame exceeds the max frame");
                break;
            default:
                break;
        }
    }
}

void efp_app_init(void)
{
    active.slot = -1;
    if (efp_storage_init()) {
        return; /* no usable flash: serve the protocol without bundles */
    }
    int first = efp_storage_record.active == EFP_NO_SLOT ? 0 : efp_storage_record.active;
    for (int i = 0; i < EFP_SLOTS; ++i) { /* the active slot, else the other one if it verifies */
        int slot = (first + i) % EFP_SLOTS;
        if (efp_storage_record.slot[slot].verified && load(slot) == 0) {
            break;
        }
    }
}
