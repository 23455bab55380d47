/*
 * fuzz_common.h - shared helpers of the libFuzzer targets (tests/fuzz/fuzz_<target>.c).
 *
 * Each target is `LLVMFuzzerTestOneInput(data, size)` over one parser a
 * user's file reaches, through the public API (src/ headers), linked against the
 * library built with -fsanitize=fuzzer-no-link,address,undefined (make fuzz).
 * A finding is anything the sanitizers or libFuzzer flag: a memory error,
 * undefined behaviour, a leak, an allocation over -malloc_limit_mb, a
 * timeout, or an exit(): ds_fatal (DS_DIE, DS_ASSERT, xmalloc failure)
 * reached by bad bytes is a bug, parsers must return a ds_status instead.
 *
 * Parsers that read a directory or a path get the input written to a file in
 * a per-process temporary directory (/dev/shm when available), the fixed
 * companion files (a fixture model's tensors, a tokenizer) symlinked beside
 * it. Fixtures live in tests/fuzz/fixtures/ and the bundled data/; the repo
 * root is DS_FUZZ_ROOT (set by the Makefile) or $FUZZ_ROOT.
 */
#ifndef DS_FUZZ_COMMON_H
#define DS_FUZZ_COMMON_H

#define _GNU_SOURCE 1
#include <fcntl.h>
#include <ftw.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common.h"

#ifndef DS_FUZZ_ROOT
#define DS_FUZZ_ROOT "."
#endif

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerInitialize(int *argc, char ***argv);

static char fz_tmp[256];

static inline int fz_rm_one(const char *p, const struct stat *sb, int flag, struct FTW *ftw) {
    (void)sb; (void)flag; (void)ftw;
    remove(p);
    return 0;
}

static inline void fz_cleanup(void) {
    if (fz_tmp[0]) nftw(fz_tmp, fz_rm_one, 16, FTW_DEPTH | FTW_PHYS);
}

/* Repo-root-relative path (malloc'd). */
static inline char *fz_path(const char *rel) {
    const char *root = getenv("FUZZ_ROOT");
    return xasprintf("%s/%s", root && *root ? root : DS_FUZZ_ROOT, rel);
}

/* The per-process scratch directory (created on first use, removed at exit). */
static inline const char *fz_dir(void) {
    if (fz_tmp[0]) return fz_tmp;
    const char *base = access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp";
    snprintf(fz_tmp, sizeof fz_tmp, "%s/ds-fuzz-XXXXXX", base);
    if (!mkdtemp(fz_tmp)) { perror("mkdtemp"); abort(); }
    atexit(fz_cleanup);
    return fz_tmp;
}

/* A subdirectory of the scratch dir (malloc'd path). */
static inline char *fz_subdir(const char *name) {
    char *p = xasprintf("%s/%s", fz_dir(), name);
    if (mkdir(p, 0700) != 0 && !ds_is_dir(p)) { perror(p); abort(); }
    return p;
}

/* dir/name := data[0, n). */
static inline void fz_write(const char *dir, const char *name, const void *data, size_t n) {
    char *p = xasprintf("%s/%s", dir, name);
    int fd = open(p, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    if (fd < 0) { perror(p); abort(); }
    const char *b = data;
    while (n) {
        ssize_t w = write(fd, b, n);
        if (w <= 0) { perror(p); abort(); }
        b += w;
        n -= (size_t)w;
    }
    close(fd);
    free(p);
}

/* dir/name -> repo file rel (a symlink; replaced if present). */
static inline void fz_link(const char *dir, const char *name, const char *rel) {
    char *src = fz_path(rel), *dst = xasprintf("%s/%s", dir, name);
    if (access(src, R_OK) != 0) { fprintf(stderr, "fuzz: missing fixture %s\n", src); abort(); }
    unlink(dst);
    if (symlink(src, dst) != 0) { perror(dst); abort(); }
    free(src);
    free(dst);
}

static inline void fz_unlink(const char *dir, const char *name) {
    char *p = xasprintf("%s/%s", dir, name);
    unlink(p);
    free(p);
}

/* Copy of the input with a terminating NUL (malloc'd). */
static inline char *fz_cstr(const uint8_t *data, size_t size) {
    char *s = xmalloc(size + 1);
    memcpy(s, data, size);
    s[size] = 0;
    return s;
}

/* Silence warnings (skipped rows etc.): they are expected for fuzzed input. */
static inline void fz_quiet(void) { ds_log_set_level(DS_LOG_ERROR - 1); }

#endif
