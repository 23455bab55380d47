/*
 * util.c - error buffer, logging, checked allocation, timers, dtype
 * conversion and small file helpers (see common.h for contracts).
 */
#include "common.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <pthread.h>
#include <stdatomic.h>
#include <sched.h>
#include <unistd.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <limits.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

/* ---- error buffer ---- */

static _Thread_local char g_err[4096];

ds_status ds_error(ds_status st, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(g_err, sizeof g_err, fmt, ap);
    va_end(ap);
    return st;
}

void ds_error_prefix(const char *fmt, ...) {
    char pre[1024], old[sizeof g_err];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(pre, sizeof pre, fmt, ap);
    va_end(ap);
    memcpy(old, g_err, sizeof old);
    size_t n = strlen(pre);
    if (n > sizeof g_err - 3) n = sizeof g_err - 3;
    memcpy(g_err, pre, n);
    memcpy(g_err + n, ": ", 2);
    size_t m = strlen(old);
    if (m > sizeof g_err - n - 3) m = sizeof g_err - n - 3;
    memcpy(g_err + n + 2, old, m);
    g_err[n + 2 + m] = 0;
}

const char *ds_errmsg(void) { return g_err[0] ? g_err : "unknown error"; }

/* ---- logging ---- */

static int g_level = DS_LOG_INFO;
static int g_rank = 0, g_size = 1;

void ds_log_set_level(int level) { g_level = level; }
int ds_log_level(void) { return g_level; }
void ds_log_set_rank(int rank, int size) { g_rank = rank; g_size = size; }

void ds_log(int level, const char *fmt, ...) {
    if (level > g_level) return;
    if (level >= DS_LOG_INFO && g_rank != 0) return;
    char buf[8192];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    const char *tag = level == DS_LOG_ERROR ? "error: " : level == DS_LOG_WARN ? "warning: " : "";
    if (g_size > 1 && level <= DS_LOG_WARN)
        fprintf(stderr, "doneshot: [rank %d] %s%s\n", g_rank, tag, buf);
    else
        fprintf(stderr, "doneshot: %s%s\n", tag, buf);
    fflush(stderr);
}

static void (*g_abort)(int);
static void (*g_cleanup)(void *);
static void *g_cleanup_arg;

void ds_fatal(int code, const char *file, int line, const char *func, const char *fmt, ...) {
    char buf[4096], host[256] = "?";
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    gethostname(host, sizeof host - 1);
    fprintf(stderr, "doneshot: [rank %d %s] %s:%d %s: %s\n", g_rank, host, file, line, func, buf);
    fflush(stderr);
    void (*cleanup)(void *) = g_cleanup;
    g_cleanup = NULL; /* a failure inside the cleanup must not recurse */
    if (cleanup) cleanup(g_cleanup_arg);
    if (g_abort) g_abort(code);
    exit(code);
}

void ds_set_abort(void (*fn)(int code)) { g_abort = fn; }

void ds_set_fatal_cleanup(void (*fn)(void *), void *arg) {
    g_cleanup = fn;
    g_cleanup_arg = arg;
}

/* ---- allocation ---- */

void *xmalloc(size_t n) {
    void *p = malloc(n ? n : 1);
    if (!p) DS_DIE(1, "out of memory allocating %zu bytes", n);
    return p;
}

void *xcalloc(size_t count, size_t size) {
    void *p = calloc(count ? count : 1, size ? size : 1);
    if (!p) DS_DIE(1, "out of memory allocating %zu x %zu bytes", count, size);
    return p;
}

void *xrealloc(void *p, size_t n) {
    void *q = realloc(p, n ? n : 1);
    if (!q) DS_DIE(1, "out of memory reallocating %zu bytes", n);
    return q;
}

char *xstrdup(const char *s) {
    size_t n = strlen(s) + 1;
    return memcpy(xmalloc(n), s, n);
}

char *xasprintf(const char *fmt, ...) {
    va_list ap, ap2;
    va_start(ap, fmt);
    va_copy(ap2, ap);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    DS_ASSERT(n >= 0);
    char *s = xmalloc((size_t)n + 1);
    vsnprintf(s, (size_t)n + 1, fmt, ap2);
    va_end(ap2);
    return s;
}

/* ---- time and memory ---- */

double ds_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

size_t ds_peak_rss_bytes(void) {
    FILE *f = fopen("/proc/self/status", "r");
    if (!f) return 0;
    char line[256];
    size_t kb = 0;
    while (fgets(line, sizeof line, f))
        if (sscanf(line, "VmHWM: %zu kB", &kb) == 1) break;
    fclose(f);
    return kb * 1024;
}

/* ---- dtypes ---- */

static const struct { const char *st, *torch; size_t size; } g_dtypes[DS_DTYPE_COUNT] = {
    [DS_DTYPE_F32] = {"F32", "float32", 4},    [DS_DTYPE_BF16] = {"BF16", "bfloat16", 2},
    [DS_DTYPE_F16] = {"F16", "float16", 2},    [DS_DTYPE_F64] = {"F64", "float64", 8},
    [DS_DTYPE_I64] = {"I64", "int64", 8},      [DS_DTYPE_I32] = {"I32", "int32", 4},
    [DS_DTYPE_I16] = {"I16", "int16", 2},      [DS_DTYPE_I8] = {"I8", "int8", 1},
    [DS_DTYPE_U8] = {"U8", "uint8", 1},        [DS_DTYPE_BOOL] = {"BOOL", "bool", 1},
    [DS_DTYPE_U16] = {"U16", "uint16", 2},     [DS_DTYPE_U32] = {"U32", "uint32", 4},
    [DS_DTYPE_U64] = {"U64", "uint64", 8},
    [DS_DTYPE_F8_E4M3] = {"F8_E4M3", "float8_e4m3fn", 1},
    [DS_DTYPE_F8_E5M2] = {"F8_E5M2", "float8_e5m2", 1},
};

size_t ds_dtype_size(ds_dtype dt) { return (unsigned)dt < DS_DTYPE_COUNT ? g_dtypes[dt].size : 0; }
const char *ds_dtype_name(ds_dtype dt) { return (unsigned)dt < DS_DTYPE_COUNT ? g_dtypes[dt].st : "?"; }
const char *ds_dtype_torch_name(ds_dtype dt) { return (unsigned)dt < DS_DTYPE_COUNT ? g_dtypes[dt].torch : "?"; }

int ds_dtype_from_name(const char *name, ds_dtype *out) {
    for (int i = 0; i < DS_DTYPE_COUNT; i++)
        if (strcmp(name, g_dtypes[i].st) == 0) { *out = (ds_dtype)i; return 0; }
    return -1;
}

float f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000) << 16, exp = (h >> 10) & 0x1f, man = h & 0x3ff, u;
    if (exp == 0) {
        if (man == 0) u = sign;
        else { /* subnormal: normalise */
            int e = -1;
            do { man <<= 1; e++; } while (!(man & 0x400));
            u = sign | ((uint32_t)(127 - 15 - e) << 23) | ((man & 0x3ff) << 13);
        }
    } else if (exp == 31) u = sign | 0x7f800000u | (man << 13);
    else u = sign | ((exp + 127 - 15) << 23) | (man << 13);
    union { uint32_t u; float f; } v; v.u = u; return v.f;
}

uint16_t f32_to_f16(float f) {
    union { uint32_t u; float f; } v; v.f = f;
    uint32_t u = v.u, sign = (u >> 16) & 0x8000, a = u & 0x7fffffffu;
    if (a > 0x7f800000u) return (uint16_t)(sign | 0x7e00);          /* NaN */
    if (a >= 0x477ff000u) return (uint16_t)(sign | 0x7c00);         /* overflow -> inf */
    if (a < 0x38800000u) {                                          /* subnormal or zero */
        if (a < 0x33000000u) return (uint16_t)sign;                 /* < half of min subnormal */
        uint32_t e = a >> 23, m = (a & 0x7fffff) | 0x800000;
        /* value = m * 2^(e-150); half subnormal unit = 2^-24 -> q = m * 2^(e-126) */
        uint32_t sh = 126 - e; /* number of bits to drop, 14..24 */
        uint32_t q = m >> sh, rem = m & ((1u << sh) - 1), half = 1u << (sh - 1);
        if (rem > half || (rem == half && (q & 1))) q++;
        return (uint16_t)(sign | q);
    }
    uint32_t r = a - 0x38000000u; /* rebias exponent: (e-112)<<23 */
    uint32_t q = r >> 13, rem = r & 0x1fff;
    if (rem > 0x1000 || (rem == 0x1000 && (q & 1))) q++;
    return (uint16_t)(sign | q);
}

void ds_round_array(float *x, size_t n, ds_dtype dt) {
    if (dt == DS_DTYPE_F32) return;
    for (size_t i = 0; i < n; i++) x[i] = ds_round_to(x[i], dt);
}

/* ---- stop requests ---- */

static volatile sig_atomic_t g_stop_sig;

static void on_stop_signal(int sig) { g_stop_sig = sig; }

void ds_install_stop_handlers(void) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_stop_signal;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = SA_RESTART;
    sigaction(SIGUSR1, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
}

int ds_stop_signal(void) { return (int)g_stop_sig; }

/* ---- threads ---- */

static int g_threads = 1;
/* A thread's own budget for the ds_parallel_for calls it makes (0: g_threads):
 * 1 in the workers of ds_parallel_for (no nested fan-out), a share of the
 * threads in the workers of ds_parallel_tasks. */
static _Thread_local int tl_budget;
void ds_set_threads(int n) { g_threads = n < 1 ? 1 : n > DS_MAX_THREADS ? DS_MAX_THREADS : n; }
int ds_threads(void) { return tl_budget ? tl_budget : g_threads; }

int ds_pick_threads(long requested, int local_ranks, int warn) {
    if (requested > 0) return (int)DS_MIN(requested, (long)INT_MAX);
    const long online = sysconf(_SC_NPROCESSORS_ONLN);
    const int fair = (int)DS_MAX(1L, (online > 0 ? online : 1) / DS_MAX(1, local_ranks));
    int bound = fair;
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof set, &set) == 0 && CPU_COUNT(&set) > 0) bound = CPU_COUNT(&set);
    const int threads = DS_MAX(1, DS_MIN(bound, fair));
    if (warn && threads < fair)
        ds_info("this rank may run on %d CPU(s) (its affinity mask) but the node has %d per rank: %d thread(s) "
                "per rank, cores left idle\nhint: Open MPI binds each rank to one core when -np <= 2; run "
                "mpirun --bind-to none (or --map-by slot:PE=%d), or doneshot without mpirun for one rank",
                threads, fair, threads, fair);
    return threads;
}

typedef struct par_job {
    void (*fn)(void *, size_t, size_t);
    void *ctx;
    size_t lo, hi;
} par_job;

static void *par_run(void *p) {
    par_job *j = p;
    const int saved = tl_budget;
    tl_budget = 1; /* a nested ds_parallel_for runs inline */
    j->fn(j->ctx, j->lo, j->hi);
    tl_budget = saved;
    return NULL;
}

void ds_parallel_for(size_t n, size_t min_chunk, void (*fn)(void *ctx, size_t lo, size_t hi), void *ctx) {
    size_t T = (size_t)ds_threads(), most = n / (min_chunk ? min_chunk : 1);
    if (T > most) T = most;
    if (T <= 1) {
        if (n) fn(ctx, 0, n);
        return;
    }
    pthread_t th[DS_MAX_THREADS];
    par_job job[DS_MAX_THREADS];
    int started[DS_MAX_THREADS] = {0};
    for (size_t t = 0; t < T; t++) job[t] = (par_job){fn, ctx, n * t / T, n * (t + 1) / T};
    for (size_t t = 1; t < T; t++) started[t] = pthread_create(&th[t], NULL, par_run, &job[t]) == 0;
    par_run(&job[0]);
    for (size_t t = 1; t < T; t++) {
        if (started[t]) pthread_join(th[t], NULL);
        else par_run(&job[t]); /* no thread: run it here */
    }
}

typedef struct task_pool {
    void (*fn)(void *, size_t);
    void (*worker_done)(void *);
    void *ctx;
    size_t n;
    atomic_size_t next;
} task_pool;

typedef struct task_worker {
    task_pool *pool;
    int budget;
} task_worker;

static void *task_run(void *p) {
    task_worker *w = p;
    task_pool *pool = w->pool;
    const int saved = tl_budget;
    tl_budget = w->budget;
    for (size_t i; (i = atomic_fetch_add(&pool->next, 1)) < pool->n;) pool->fn(pool->ctx, i);
    if (pool->worker_done) pool->worker_done(pool->ctx);
    tl_budget = saved;
    return NULL;
}

void ds_parallel_tasks(size_t n, void (*fn)(void *ctx, size_t i), void (*worker_done)(void *ctx), void *ctx) {
    const int T = ds_threads();
    const int W = (int)DS_MIN((size_t)T, n);
    task_pool pool = {.fn = fn, .worker_done = worker_done, .ctx = ctx, .n = n};
    atomic_init(&pool.next, 0);
    if (W <= 1) {
        task_worker w = {&pool, T};
        task_run(&w);
        return;
    }
    pthread_t th[DS_MAX_THREADS];
    task_worker tw[DS_MAX_THREADS];
    int started[DS_MAX_THREADS] = {0};
    for (int w = 0; w < W; w++) tw[w] = (task_worker){&pool, T / W + (w < T % W)};
    for (int w = 1; w < W; w++) started[w] = pthread_create(&th[w], NULL, task_run, &tw[w]) == 0;
    task_run(&tw[0]);
    for (int w = 1; w < W; w++)
        if (started[w]) pthread_join(th[w], NULL);
    /* a worker that could not start took no task: the others drained the queue */
}

/* ---- conversions (split over ds_threads() above 1M elements) ---- */

typedef struct conv_ctx {
    void *dst;
    const void *src;
    ds_dtype dt;
} conv_ctx;

static void to_f32_range(void *p, size_t lo, size_t hi) {
    const conv_ctx *c = p;
    const unsigned char *s = c->src;
    float *dst = c->dst;
    if (c->dt == DS_DTYPE_BF16)
        for (size_t i = lo; i < hi; i++) { uint16_t h; memcpy(&h, s + 2 * i, 2); dst[i] = bf16_to_f32(h); }
    else if (c->dt == DS_DTYPE_F16)
        for (size_t i = lo; i < hi; i++) { uint16_t h; memcpy(&h, s + 2 * i, 2); dst[i] = f16_to_f32(h); }
    else
        memcpy(dst + lo, s + 4 * lo, (hi - lo) * 4);
}

static void from_f32_range(void *p, size_t lo, size_t hi) {
    const conv_ctx *c = p;
    unsigned char *d = c->dst;
    const float *src = c->src;
    if (c->dt == DS_DTYPE_BF16)
        for (size_t i = lo; i < hi; i++) { uint16_t h = f32_to_bf16(src[i]); memcpy(d + 2 * i, &h, 2); }
    else if (c->dt == DS_DTYPE_F16)
        for (size_t i = lo; i < hi; i++) { uint16_t h = f32_to_f16(src[i]); memcpy(d + 2 * i, &h, 2); }
    else
        memcpy(d + 4 * lo, src + lo, (hi - lo) * 4);
}

ds_status ds_convert_to_f32(float *dst, const void *src, ds_dtype dt, size_t n) {
    if (dt != DS_DTYPE_F32 && dt != DS_DTYPE_BF16 && dt != DS_DTYPE_F16)
        return ds_error(DS_ERR_INPUT, "unsupported tensor dtype %s (expected F32, BF16 or F16)",
                        ds_dtype_name(dt));
    conv_ctx c = {dst, src, dt};
    ds_parallel_for(n, (size_t)1 << 20, to_f32_range, &c);
    return DS_OK;
}

void ds_convert_from_f32(void *dst, const float *src, ds_dtype dt, size_t n) {
    if (dt != DS_DTYPE_F32 && dt != DS_DTYPE_BF16 && dt != DS_DTYPE_F16)
        DS_DIE(1, "ds_convert_from_f32: unsupported dtype %s", ds_dtype_name(dt));
    conv_ctx c = {dst, src, dt};
    ds_parallel_for(n, (size_t)1 << 20, from_f32_range, &c);
}

ds_status ds_write_file_atomic(const char *path, const void *head, size_t hn, const void *body, size_t bn) {
    char *tmp = xasprintf("%s.tmp", path);
    ds_status st = DS_OK;
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    const unsigned char *part[2] = {head, body};
    const size_t len[2] = {hn, bn};
    if (fd < 0) st = ds_error(DS_ERR_RUNTIME, "%s: cannot create: %s", tmp, strerror(errno));
    for (int k = 0; k < 2 && !st; k++)
        for (size_t off = 0; off < len[k];) {
            size_t chunk = len[k] - off > ((size_t)1 << 30) ? (size_t)1 << 30 : len[k] - off;
            ssize_t w = write(fd, part[k] + off, chunk);
            if (w < 0 && errno == EINTR) continue;
            if (w <= 0) { st = ds_error(DS_ERR_RUNTIME, "%s: write failed: %s", tmp, strerror(errno)); break; }
            off += (size_t)w;
        }
    if (fd >= 0 && !st && fsync(fd) != 0) st = ds_error(DS_ERR_RUNTIME, "%s: fsync failed: %s", tmp, strerror(errno));
    if (fd >= 0 && close(fd) != 0 && !st) st = ds_error(DS_ERR_RUNTIME, "%s: close failed: %s", tmp, strerror(errno));
    if (!st && rename(tmp, path) != 0)
        st = ds_error(DS_ERR_RUNTIME, "%s: rename to %s failed: %s", tmp, path, strerror(errno));
    if (st) unlink(tmp);
    free(tmp);
    return st;
}

long ds_parse_long(const char *opt, const char *s, long lo, ds_status *st) {
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (*s == 0 || *end != 0 || errno || v < lo) {
        *st = ds_error(DS_ERR_USAGE, "%s: invalid value '%s' (expected an integer >= %ld)", opt, s, lo);
        return 0;
    }
    return v;
}

/* ---- files ---- */

ds_status ds_read_file(const char *path, char **out, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) return ds_error(DS_ERR_INPUT, "%s: cannot open: %s", path, strerror(errno));
    size_t cap = 1 << 16, n = 0;
    char *buf = xmalloc(cap);
    for (;;) {
        if (n + 1 >= cap) buf = xrealloc(buf, cap *= 2);
        size_t got = fread(buf + n, 1, cap - n - 1, f);
        n += got;
        if (got == 0) break;
    }
    int err = ferror(f);
    fclose(f);
    if (err) { free(buf); return ds_error(DS_ERR_INPUT, "%s: read error", path); }
    buf[n] = 0;
    *out = buf;
    if (len) *len = n;
    return DS_OK;
}

int ds_file_exists(const char *path) { struct stat st; return stat(path, &st) == 0 && S_ISREG(st.st_mode); }
int ds_is_dir(const char *path) { struct stat st; return stat(path, &st) == 0 && S_ISDIR(st.st_mode); }

char *ds_path_join(const char *dir, const char *name) {
    size_t n = strlen(dir);
    if (n && dir[n - 1] == '/') return xasprintf("%s%s", dir, name);
    return xasprintf("%s/%s", dir, name);
}

/* Append component c (len n) to the absolute path in buf (len *len), folding
 * "." and ".." lexically. */
static void path_push(char *buf, size_t *len, const char *c, size_t n) {
    if (n == 0 || (n == 1 && c[0] == '.')) return;
    if (n == 2 && c[0] == '.' && c[1] == '.') {
        while (*len > 1 && buf[*len - 1] != '/') (*len)--;
        if (*len > 1) (*len)--;
        buf[*len] = 0;
        return;
    }
    if (*len > 1) buf[(*len)++] = '/';
    memcpy(buf + *len, c, n);
    *len += n;
    buf[*len] = 0;
}

char *ds_abspath(const char *path) {
    if (!path || !*path) { errno = EINVAL; return NULL; }
    size_t cap = strlen(path) + PATH_MAX + 2, len = 1;
    char *buf = xmalloc(cap), *cwd = NULL;
    strcpy(buf, "/");
    if (path[0] != '/') {
        if (!(cwd = getcwd(NULL, 0))) { free(buf); return NULL; }
        free(buf);
        cap += strlen(cwd);
        buf = xmalloc(cap);
        strcpy(buf, cwd);
        len = strlen(buf);
        free(cwd);
    }
    int exists = 1; /* buf names an existing, canonical directory so far */
    for (const char *p = path; *p;) {
        while (*p == '/') p++;
        const char *e = p;
        while (*e && *e != '/') e++;
        size_t n = (size_t)(e - p);
        if (n) {
            path_push(buf, &len, p, n);
            struct stat st;
            if (exists && lstat(buf, &st) == 0) {
                char *r = realpath(buf, NULL); /* follows a symlink component */
                if (r) {
                    if (strlen(r) + (strlen(path) + 2) > cap) { cap = strlen(r) + strlen(path) + PATH_MAX; buf = xrealloc(buf, cap); }
                    strcpy(buf, r);
                    len = strlen(buf);
                    free(r);
                } else {
                    exists = 0;
                }
            } else {
                exists = 0;
            }
        }
        p = e;
    }
    return buf;
}

int ds_path_within(const char *a, const char *b) {
    size_t n = strlen(b);
    if (n == 1 && b[0] == '/') return 1;
    return strncmp(a, b, n) == 0 && (a[n] == 0 || a[n] == '/');
}
