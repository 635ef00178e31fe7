/* The error convention shared by every layer of dsm.
 *
 * Library functions never print and never exit. They return 0 (or a count) on success and a negative
 * DSM_E* code on failure, after leaving a one-line message (naming the file, tensor, key or line) in a
 * thread-local buffer that the caller reads with dsm_errmsg(). The first failure wins: dsm_fail()
 * overwrites the message, so callers that add context use dsm_fail_prefix(). */
#ifndef DSM_ERROR_H
#define DSM_ERROR_H

enum dsm_error {
	DSM_OK = 0,
	DSM_EIO = -1,          /* read/open/stat failed; message carries strerror */
	DSM_ENOMEM = -2,
	DSM_EARG = -3,         /* bad argument from the caller or the command line */
	DSM_ECONFIG = -4,      /* config.json: missing, wrong type, or inconsistent key */
	DSM_EHEADER = -5,      /* safetensors header length bad or past the end of the file */
	DSM_EJSON = -6,        /* not valid UTF-8 JSON, or JSON of the wrong shape */
	DSM_EDTYPE = -7,       /* unknown dtype, or a dtype the model does not allow here */
	DSM_ESHAPE = -8,       /* shape product overflows or does not match the byte range */
	DSM_ELAYOUT = -9,      /* data ranges out of bounds, overlapping, or leaving a hole */
	DSM_EDUPLICATE = -10,  /* a tensor name appears twice */
	DSM_EMISSING = -11,    /* a shard file or a tensor is missing */
	DSM_ETENSOR = -12,     /* a tensor has the wrong shape for the config, or a wrong scale shape */
	DSM_ETRUNCATED = -13,  /* a file is shorter than its header says */
	DSM_EUNSUPPORTED = -14,
	DSM_ECONTEXT = -15,    /* prompt or generation past the context size */
	DSM_EUTF8 = -16,       /* invalid UTF-8 input */
	DSM_ETEMPLATE = -17,   /* bad prompt template */
	DSM_EPLAN = -18,       /* bad placement plan */
	DSM_EKVFULL = -19,     /* no free block in the KV pool */
};

/* Sets the message (printf-style) and returns code, so that `return dsm_fail(DSM_EIO, ...)` reads well. */
int dsm_fail(int code, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Prepends "prefix: " to the current message and returns code. */
int dsm_fail_prefix(int code, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* The last message of this thread ("" when none). */
const char *dsm_errmsg(void);
/* A short name of an error code, e.g. "layout" for DSM_ELAYOUT. */
const char *dsm_error_name(int code);

#endif
