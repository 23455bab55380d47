/*
 * gpu_loader.c - the CUDA engine of a CUDA build (make CUDA=1), loaded on
 * first use (gpu_engine.h, "lazy loading"). The doneshot binary links no CUDA
 * library: mapping and relocating cudart, cuBLAS and cuSOLVER costs ~180 MB of
 * RSS per rank and start-up time, which a CPU run must not pay.
 *
 * gpu_engine_device_count, on its first call:
 *   1. DONESHOT_CUDA_LIB set: that file must exist (else 0 devices, warning);
 *   2. the driver: dlopen libcuda.so.1, cuInit, cuDeviceGetCount (honours
 *      CUDA_VISIBLE_DEVICES); no driver or no device: 0 devices, nothing else
 *      is loaded (the reason is logged with -v);
 *   3. the engine: dlopen libdoneshot-cuda.so from DONESHOT_CUDA_LIB, else
 *      beside the executable (a build tree, the device bundle), else
 *      ../lib/doneshot/ relative to it, else DS_CUDA_LIBDIR (make install);
 *      its doneshot_gpu_backend() table must match this binary's version and
 *      GPU_BACKEND_ABI; the count is then the CUDA runtime's.
 * A failure in 3 (devices present, engine unusable) is a warning naming the
 * dlerror; every failure makes the count 0, so --device auto falls back to
 * the CPU and --device cuda is a usage error, as in a build without devices.
 */
#include "gpu_engine.h"

#include <dlfcn.h>
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#ifndef DS_CUDA_LIBDIR
#define DS_CUDA_LIBDIR "/usr/local/lib/doneshot"
#endif
#define CUDA_LIB_NAME "libdoneshot-cuda.so"
#define CUDA_LIB_HINT                                                                              \
    "hint: make CUDA=1 builds " CUDA_LIB_NAME " beside doneshot and make install puts it in "     \
    DS_CUDA_LIBDIR "; DONESHOT_CUDA_LIB=/path/" CUDA_LIB_NAME " names it, --device cpu avoids it"

static int g_tried, g_count;
static const gpu_backend *g_be;
static char g_why[1024] = "the CUDA engine was not probed";

/* dlsym into a function pointer (POSIX: the object pointer holds it). */
static void *sym(void *h, const char *name) { return h ? dlsym(h, name) : NULL; }

/* Devices the driver sees; 0 with g_why set when there is no driver or device. */
static int driver_count(void) {
    void *h = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
    if (!h) {
        snprintf(g_why, sizeof g_why, "no CUDA driver (%.900s)", dlerror());
        return 0;
    }
    int (*init)(unsigned), (*count)(int *), (*err_name)(int, const char **);
    *(void **)&init = sym(h, "cuInit");
    *(void **)&count = sym(h, "cuDeviceGetCount");
    *(void **)&err_name = sym(h, "cuGetErrorName");
    int n = 0, rc = -1;
    const char *what = "cuInit";
    if (init && count && (rc = init(0)) == 0) {
        what = "cuDeviceGetCount";
        rc = count(&n);
    }
    if (rc != 0 || n <= 0) {
        const char *name = NULL;
        if (rc > 0 && err_name) err_name(rc, &name);
        if (!init || !count)
            snprintf(g_why, sizeof g_why, "libcuda.so.1 lacks cuInit/cuDeviceGetCount");
        else if (rc != 0)
            snprintf(g_why, sizeof g_why, "no usable CUDA device (%s: %s)", what, name ? name : "error");
        else
            snprintf(g_why, sizeof g_why, "no CUDA device is visible (driver count 0, CUDA_VISIBLE_DEVICES=%.200s)",
                     getenv("CUDA_VISIBLE_DEVICES") ? getenv("CUDA_VISIBLE_DEVICES") : "unset");
        dlclose(h);
        return 0;
    }
    return n; /* the driver stays loaded: the engine uses it */
}

/* The library path: DONESHOT_CUDA_LIB, else the first candidate that exists,
 * else the last one (dlopen then names it in its error). */
static const char *lib_path(char *buf, size_t cap) {
    const char *env = getenv("DONESHOT_CUDA_LIB");
    if (env && *env) return env;
    char exe[PATH_MAX];
    ssize_t k = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (k > 0) {
        exe[k] = '\0';
        char *slash = strrchr(exe, '/');
        if (slash) {
            *slash = '\0';
            snprintf(buf, cap, "%s/" CUDA_LIB_NAME, exe);
            if (access(buf, F_OK) == 0) return buf;
            snprintf(buf, cap, "%s/../lib/doneshot/" CUDA_LIB_NAME, exe);
            if (access(buf, F_OK) == 0) return buf;
        }
    }
    snprintf(buf, cap, "%s/" CUDA_LIB_NAME, DS_CUDA_LIBDIR);
    return buf;
}

/* Load the engine library; NULL with g_why set (and a warning) on failure. */
static const gpu_backend *load_backend(const char *path) {
    void *h = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    const gpu_backend *(*entry)(void) = NULL;
    if (h) *(void **)&entry = sym(h, "doneshot_gpu_backend");
    const gpu_backend *be = entry ? entry() : NULL;
    if (!h || !entry)
        snprintf(g_why, sizeof g_why, "cannot load the CUDA engine: %.900s", dlerror());
    else if (!be || strcmp(be->version, DS_VERSION) != 0 || be->abi != GPU_BACKEND_ABI)
        snprintf(g_why, sizeof g_why, "the CUDA engine %.600s is from another build (version %.20s, ABI %zu; "
                 "this doneshot: %s, ABI %zu)", path, be ? be->version : "?", be ? be->abi : (size_t)0, DS_VERSION,
                 (size_t)GPU_BACKEND_ABI);
    else
        return be;
    ds_warn("%s\n" CUDA_LIB_HINT, g_why);
    if (h) dlclose(h);
    return NULL;
}

int gpu_engine_built(void) { return 1; }

int gpu_engine_device_count(void) {
    if (g_tried) return g_count;
    g_tried = 1;
    char buf[PATH_MAX + 64];
    const char *path = lib_path(buf, sizeof buf);
    const char *env = getenv("DONESHOT_CUDA_LIB");
    if (env && *env && access(env, R_OK) != 0) {
        snprintf(g_why, sizeof g_why, "DONESHOT_CUDA_LIB=%.800s: %s", env, strerror(errno));
        ds_warn("%s\n" CUDA_LIB_HINT, g_why);
        return 0;
    }
    int n = driver_count();
    if (n > 0 && (g_be = load_backend(path)) != NULL) {
        g_count = g_be->device_count();
        if (g_count <= 0) snprintf(g_why, sizeof g_why, "the CUDA runtime reports no device (driver: %d)", n);
    }
    if (g_count > 0) {
        g_why[0] = '\0';
        ds_debug("CUDA engine: %s, %d device(s)", path, g_count);
    } else {
        ds_debug("CUDA engine not loaded: %s", g_why);
    }
    return g_count;
}

const char *gpu_engine_why_none(void) { return g_why; }

ds_status gpu_engine_create_engine(const model *m, const ds_sample *local, size_t nlocal, const gpu_engine_opts *o,
                                   engine **out) {
    *out = NULL;
    if (gpu_engine_device_count() <= 0 || !g_be)
        return ds_error(DS_ERR_USAGE, "--device cuda: %s\n%s", g_why,
                        strstr(g_why, "engine") || strstr(g_why, "DONESHOT_CUDA_LIB")
                            ? CUDA_LIB_HINT
                            : "hint: check nvidia-smi, or use --device cpu");
    return g_be->create_engine(m, local, nlocal, o, out);
}
