/*
 * common.h - status codes, error reporting, logging, allocation, timers and
 * dtype conversion shared by every doneshot module.
 *
 * Error tiers (docs/style.md):
 *   (a) invariants        DS_ASSERT(expr)                     -> abort the job
 *   (b) system failures   xmalloc & co, DS_CHECK_SYS           -> abort the job
 *   (c) bad user input    return ds_error(DS_ERR_INPUT, ...)   -> caller reports
 * Parsers never abort on bad bytes: they return a ds_status and leave a message
 * in the thread-local error buffer (ds_errmsg()).
 */
#ifndef DS_COMMON_H
#define DS_COMMON_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

/* Exit codes (doneshot.1, EXIT STATUS). */
typedef enum {
    DS_OK = 0,          /* success */
    DS_ERR_RUNTIME = 1, /* runtime failure (I/O, numerics, MPI) */
    DS_ERR_USAGE = 2,   /* bad command line or recipe */
    DS_ERR_INPUT = 3,   /* bad model or data files */
} ds_status;

/* Record an error message (printf-style) and return `st`. The message stays
 * available via ds_errmsg() until the next ds_error() on the same thread.
 * Messages say what, where, expected vs got; a second line "hint: ..." may
 * follow. */
ds_status ds_error(ds_status st, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
/* Prefix the current error message with "ctx: " (for adding file names). */
void ds_error_prefix(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
const char *ds_errmsg(void);

/* ---- logging (stderr, prefixed "doneshot:") ---- */
enum { DS_LOG_ERROR = 0, DS_LOG_WARN = 1, DS_LOG_INFO = 2, DS_LOG_DEBUG = 3 };
void ds_log_set_level(int level);
int ds_log_level(void);
/* Rank info for prefixes; INFO/DEBUG print on rank 0 only, WARN/ERROR on any
 * rank with a "[rank r]" prefix when size > 1. */
void ds_log_set_rank(int rank, int size);
void ds_log(int level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
#define ds_warn(...) ds_log(DS_LOG_WARN, __VA_ARGS__)
#define ds_info(...) ds_log(DS_LOG_INFO, __VA_ARGS__)
#define ds_debug(...) ds_log(DS_LOG_DEBUG, __VA_ARGS__)

/* Print "doneshot: [rank r] file:line func: msg" and abort the whole job with
 * exit code `code` (MPI_Abort when MPI is up, exit() otherwise). */
_Noreturn void ds_fatal(int code, const char *file, int line, const char *func,
                        const char *fmt, ...) __attribute__((format(printf, 5, 6)));
/* What ds_fatal does after printing: ds_set_abort(fn) makes it call fn(code)
 * (comm_init sets MPI_Abort, so one rank's death takes the job down) instead
 * of exit(code). ds_set_fatal_cleanup(fn, arg) runs fn(arg) first, once
 * (e.g. remove a partial output); NULL clears it. */
void ds_set_abort(void (*fn)(int code));
void ds_set_fatal_cleanup(void (*fn)(void *arg), void *arg);
#define DS_ASSERT(x)                                                            \
    do {                                                                        \
        if (!(x)) ds_fatal(1, __FILE__, __LINE__, __func__, "assertion failed: %s", #x); \
    } while (0)
#define DS_DIE(code, ...) ds_fatal((code), __FILE__, __LINE__, __func__, __VA_ARGS__)

#define DS_ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))
#define DS_MIN(a, b) ((a) < (b) ? (a) : (b))
#define DS_MAX(a, b) ((a) > (b) ? (a) : (b))

/* ---- allocation: abort the job (exit 1) with a clear message on failure ---- */
void *xmalloc(size_t n);
void *xcalloc(size_t count, size_t size);
void *xrealloc(void *p, size_t n);
char *xstrdup(const char *s);
/* malloc'd printf. */
char *xasprintf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* ---- time and memory ---- */
double ds_now(void);             /* monotonic seconds */
size_t ds_peak_rss_bytes(void);  /* VmHWM of this process, bytes (0 if unknown) */

/* ---- dtypes ---- */
typedef enum {
    DS_DTYPE_F32 = 0, DS_DTYPE_BF16, DS_DTYPE_F16, DS_DTYPE_F64,
    DS_DTYPE_I64, DS_DTYPE_I32, DS_DTYPE_I16, DS_DTYPE_I8, DS_DTYPE_U8,
    DS_DTYPE_BOOL, DS_DTYPE_U16, DS_DTYPE_U32, DS_DTYPE_U64,
    DS_DTYPE_F8_E4M3, DS_DTYPE_F8_E5M2,
    DS_DTYPE_COUNT
} ds_dtype;
size_t ds_dtype_size(ds_dtype dt);            /* bytes per element */
const char *ds_dtype_name(ds_dtype dt);       /* safetensors name: "BF16" */
int ds_dtype_from_name(const char *name, ds_dtype *out); /* 0 ok, -1 unknown */
const char *ds_dtype_torch_name(ds_dtype dt); /* "bfloat16", for config.json */

/* bf16 <-> f32 as PyTorch: round to nearest even, NaN -> 0x7FC0. */
static inline float bf16_to_f32(uint16_t h) {
    union { uint32_t u; float f; } v; v.u = (uint32_t)h << 16; return v.f;
}
static inline uint16_t f32_to_bf16(float f) {
    union { uint32_t u; float f; } v; v.f = f;
    if ((v.u & 0x7fffffffu) > 0x7f800000u) return 0x7fc0;
    return (uint16_t)((v.u + 0x7fffu + ((v.u >> 16) & 1u)) >> 16);
}
float f16_to_f32(uint16_t h);   /* IEEE binary16, subnormals, inf/NaN */
uint16_t f32_to_f16(float f);   /* round to nearest even */
/* Round an f32 to the nearest value representable in `dt` (BF16/F16; F32 is
 * the identity). Used at the HF rounding points of the forward pass. */
static inline float ds_round_to(float x, ds_dtype dt) {
    if (dt == DS_DTYPE_BF16) return bf16_to_f32(f32_to_bf16(x));
    if (dt == DS_DTYPE_F16) return f16_to_f32(f32_to_f16(x));
    return x;
}
void ds_round_array(float *x, size_t n, ds_dtype dt);
/* Convert n elements of F32/BF16/F16 (possibly unaligned) to f32.
 * Returns DS_ERR_INPUT for other dtypes. */
ds_status ds_convert_to_f32(float *dst, const void *src, ds_dtype dt, size_t n);
/* Convert n f32 values to F32/BF16/F16 storage. */
void ds_convert_from_f32(void *dst, const float *src, ds_dtype dt, size_t n);

/* ---- host threads for element-wise loops (BLAS has its own) ---- */
#define DS_MAX_THREADS 64
/* Threads ds_parallel_for may use (default 1; main sets --threads). */
void ds_set_threads(int n);
/* The compute threads of a rank: requested (--threads) when > 0, else the
 * CPUs its affinity mask allows (mpirun binds each rank to one core when
 * -np <= 2, Slurm to its --cpus-per-task), at most the online CPUs divided
 * by local_ranks (the ranks on this node), at least 1. With warn set, says
 * (ds_info, with the mpirun hint; -q silences it) when that default leaves
 * cores idle. */
int ds_pick_threads(long requested, int local_ranks, int warn);
/* The threads this thread may fan out to: --threads, or its share inside a
 * ds_parallel_tasks worker, 1 inside a ds_parallel_for worker. */
int ds_threads(void);
/* fn(ctx, lo, hi) over [0, n) split into contiguous ranges of at least
 * min_chunk items, one per thread (the caller runs the first); runs inline
 * when one thread suffices. fn must only write what its range owns; results
 * are then independent of the thread count. */
void ds_parallel_for(size_t n, size_t min_chunk, void (*fn)(void *ctx, size_t lo, size_t hi), void *ctx);
/* fn(ctx, i) for every task i in [0, n), handed out in index order to
 * min(ds_threads(), n) workers as each finishes its last (dynamic
 * scheduling: order the tasks by decreasing cost for a longest-first
 * schedule); the caller is one of the workers. The threads are shared out:
 * ds_threads() (so each ds_parallel_for) inside a task sees its worker's
 * share, at least 1. worker_done (may be NULL) runs once on each worker
 * thread after its last task (e.g. to free thread-local memos). Tasks must
 * only write what they own; a ds_parallel_for inside a ds_parallel_for
 * worker runs inline. */
void ds_parallel_tasks(size_t n, void (*fn)(void *ctx, size_t i), void (*worker_done)(void *ctx), void *ctx);

/* ---- stop requests (SIGUSR1, SIGTERM) ---- */
/* Install handlers that only record the signal; the pipeline polls
 * ds_stop_signal() at layer boundaries (save a resume point, then stop).
 * SIGINT keeps its default action (Ctrl-C stops at once). */
void ds_install_stop_handlers(void);
/* The signal received (SIGUSR1 or SIGTERM), 0 if none. */
int ds_stop_signal(void);

/* Parse a command-line integer >= lo for option `opt`; on error sets *st to
 * DS_ERR_USAGE with "opt: invalid value 'x' (expected an integer >= lo)". */
long ds_parse_long(const char *opt, const char *s, long lo, ds_status *st);

/* ---- files ---- */
/* Read a whole file into a NUL-terminated malloc'd buffer. DS_ERR_INPUT with
 * a message naming the path on failure. */
ds_status ds_read_file(const char *path, char **out, size_t *len);
/* Write head[0, hn) then body[0, bn) (either may be empty) to "<path>.tmp",
 * fsync, and rename it to path, so readers see the old file or the whole new
 * one. DS_ERR_RUNTIME naming the file and the failing call; the .tmp file is
 * removed on failure. */
ds_status ds_write_file_atomic(const char *path, const void *head, size_t hn, const void *body, size_t bn);
int ds_file_exists(const char *path);
int ds_is_dir(const char *path);
/* Absolute, normalised form of path whether or not it exists (malloc'd):
 * the longest existing prefix resolved by realpath (symlinks followed), the
 * rest appended with "." and ".." folded lexically. NULL (errno set) for an
 * empty path or when the working directory cannot be read. */
char *ds_abspath(const char *path);
/* 1 if absolute path a equals b or lies below it (both from ds_abspath). */
int ds_path_within(const char *a, const char *b);
/* Join a directory and a file name (malloc'd). */
char *ds_path_join(const char *dir, const char *name);

#endif
