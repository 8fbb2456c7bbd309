/* The contract between the host and the firmware: protocol, shared caps, the engine's status codes
 * and its input/output record. Generated from edgefp's Python definitions
 * (edgefp/firmware_host/firmware/contract.py) by
 *   python -m edgefp.firmware_host.firmware.contract
 * Do not edit: change the Python and regenerate. */
#ifndef EFP_CONTRACT_H
#define EFP_CONTRACT_H

#include <stdint.h>

#define EFP_PROTOCOL_VERSION   1        /* HELLO's protocol version */
#define EFP_RESPONSE           128      /* response type = request type | EFP_RESPONSE */
#define EFP_NAME_MAX           32       /* bytes of a bundle name in HELLO */
#define EFP_NO_SLOT            255      /* HELLO's active slot when none is */
#define EFP_FRAME_OVERHEAD     7        /* type, seq and CRC around every body */
#define EFP_MIN_FRAME          512      /* the least a device's largest frame may be */
#define EFP_FRAME_LIMIT        65536    /* the most a device's largest frame may be */
#define EFP_SENSOR_FRAME       64       /* frame type of the sensor link: offset:u32 (in values) | float32 values */
#define EFP_SENSOR_ASK         63       /* the byte a chip sends on its sensor link for the next window */
#define EFP_BENCH_MAX_RUNS     100000   /* runs + warm-ups of one BENCH */
#define EFP_BENCH_MAX_SECONDS  5        /* a BENCH still running after this long stops */
#define EFP_BUNDLE_VERSION     4        /* the manifest's version */
#define EFP_MAX_LAYERS         16       /* fingerprinted layers a bundle may have */
#define EFP_MAX_SCALES         2        /* int8 values of one layer's evidence output (an error at two scales) */
#define EFP_MAX_COARSE_FACTOR  127      /* the most an error output's second value is coarser */
#define EFP_MAX_DIMS           6        /* dimensions of a model input or output */
#define EFP_MAX_INPUT_ELEMENTS 16777216 /* elements of a tensor's shape in a manifest */
#define EFP_MAX_OUTPUTS        16       /* outputs of a model wrapped without a fingerprint */
#define EFP_MAX_CLASSES        255      /* labels of a bundle */
#define EFP_MAX_FILES          8        /* files of a bundle besides its manifest */
#define EFP_MAX_DEPTH          16       /* JSON nesting of a manifest */
#define EFP_MAX_NAME           64       /* bytes of a bundle's name in its manifest */
#define EFP_SIGNATURE_BYTES    88       /* bytes of a bundle's signature, manifest.sig */
#define EFP_QUANTILES          101      /* quantiles of a layer's score in a manifest */
#define EFP_OOD_CAPACITY       16       /* recent OOD inputs kept for GET_OOD */
#define EFP_ERROR_LEN          96       /* bytes of the engine's error message, terminator included */

/* message types (link/protocol.py, Msg) */
enum efp_msg {
    EFP_MSG_HELLO = 0x01,
    EFP_MSG_AUTH = 0x02,
    EFP_MSG_MANIFEST = 0x03,
    EFP_MSG_UPLOAD_BEGIN = 0x10,
    EFP_MSG_UPLOAD_CHUNK = 0x11,
    EFP_MSG_UPLOAD_END = 0x12,
    EFP_MSG_ACTIVATE = 0x13,
    EFP_MSG_INFER = 0x20,
    EFP_MSG_BENCH = 0x21,
    EFP_MSG_INFER_OUTPUTS = 0x22,
    EFP_MSG_EVENTS = 0x30,
    EFP_MSG_GET_COUNTERS = 0x31,
    EFP_MSG_GET_OOD = 0x32,
    EFP_MSG_READ_LOG = 0x33,
    EFP_MSG_RESET = 0x3F,
    EFP_MSG_EVENT = 0xFE,
    EFP_MSG_ERROR = 0xFF,
};

/* error codes of ERROR answers (link/protocol.py, Err) */
enum efp_err {
    EFP_ERR_BAD_FRAME = 0x01,
    EFP_ERR_UNKNOWN_TYPE = 0x02,
    EFP_ERR_BAD_LENGTH = 0x03,
    EFP_ERR_FRAME_TOO_LARGE = 0x04,
    EFP_ERR_NO_BUNDLE = 0x10,
    EFP_ERR_BAD_INPUT_SHAPE = 0x11,
    EFP_ERR_HASH_MISMATCH = 0x12,
    EFP_ERR_INVALID_BUNDLE = 0x13,
    EFP_ERR_DOES_NOT_FIT = 0x14,
    EFP_ERR_BAD_STATE = 0x15,
    EFP_ERR_OUT_OF_RANGE = 0x16,
    EFP_ERR_UNSUPPORTED_OP = 0x17,
    EFP_ERR_OVER_LIMIT = 0x18,
    EFP_ERR_AUTH_REQUIRED = 0x20,
    EFP_ERR_AUTH_FAILED = 0x21,
    EFP_ERR_BAD_SIGNATURE = 0x22,
    EFP_ERR_ROLLBACK = 0x23,
    EFP_ERR_INTERNAL = 0x7F,
};

/* a slot's state in HELLO (link/protocol.py, SlotState) */
enum efp_slot_state {
    EFP_SLOT_EMPTY = 0x00,
    EFP_SLOT_RECEIVING = 0x01,
    EFP_SLOT_VERIFIED = 0x02,
    EFP_SLOT_ACTIVE = 0x03,
};

/* what the engine's functions return (firmware/contract.py, Status) */
enum efp_status {
    EFP_OK = 0x00,
    EFP_INVALID_MODEL = 0x01,
    EFP_UNSUPPORTED = 0x02,
    EFP_ARENA_TOO_SMALL = 0x03,
    EFP_EVAL_FAILED = 0x04,
};

/* model input and output types: TFLite's TensorType (contract.py, IoType) */
enum efp_io_type {
    EFP_IO_FLOAT32 = 0x00,
    EFP_IO_INT32 = 0x02,
    EFP_IO_INT8 = 0x09,
};

/* A model input or output (efp_io): write inputs' bytes before efp_engine_invoke, read outputs' after. */
typedef struct {
    void *data;
    uint32_t bytes;
    int32_t type;
    int32_t ndim;
    int32_t dims[6];
    float scale;
    int32_t zero_point;
} efp_io;

#endif
