/*
 * test.h - minimal test harness (redis testhelp.h style). Each test program
 * ends with TEST_REPORT(), which prints "N passed, N failed[, N skipped]" and
 * returns non-zero if anything failed.
 */
#ifndef DS_TEST_H
#define DS_TEST_H

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

static int t_passed, t_failed, t_skipped, t_cur_failed, t_cur_skipped, t_open;
static const char *t_cur = "";

/* A test is counted when the next one starts (or at TEST_REPORT), so a
 * `break` out of a TEST body (e.g. after SKIP) keeps the count right. */
static inline void t_finish(void) {
    if (!t_open) return;
    if (t_cur_failed) t_failed++;
    else if (!t_cur_skipped) t_passed++;
    t_open = 0;
}

#define TEST(name) \
    for (int t_once_ = (t_finish(), t_cur = (name), t_cur_failed = t_cur_skipped = 0, t_open = 1); t_once_; t_once_ = 0)

#define CHECK(cond)                                                                  \
    do {                                                                             \
        if (!(cond)) {                                                               \
            fprintf(stderr, "FAIL %s: %s:%d: %s\n", t_cur, __FILE__, __LINE__, #cond); \
            t_cur_failed = 1;                                                        \
        }                                                                            \
    } while (0)

#define CHECK_EQ_INT(a, b)                                                           \
    do {                                                                             \
        long long a_ = (long long)(a), b_ = (long long)(b);                          \
        if (a_ != b_) {                                                              \
            fprintf(stderr, "FAIL %s: %s:%d: %s == %lld, expected %s == %lld\n", t_cur, \
                    __FILE__, __LINE__, #a, a_, #b, b_);                             \
            t_cur_failed = 1;                                                        \
        }                                                                            \
    } while (0)

/* |got-want| <= atol + rtol*|want| elementwise; NaN/inf mismatches fail.
 * Prints the worst index. */
#define CHECK_CLOSE(got, want, n, atol, rtol)                                        \
    do {                                                                             \
        long worst_ = -1; double wexc_ = 0;                                          \
        for (long i_ = 0; i_ < (long)(n); i_++) {                                    \
            double g_ = (double)(got)[i_], w_ = (double)(want)[i_];                  \
            double exc_ = fabs(g_ - w_) - ((atol) + (rtol) * fabs(w_));              \
            if (isnan(g_) || isnan(w_) || isinf(g_) != isinf(w_)) exc_ = INFINITY;   \
            if (exc_ > 0 && (worst_ < 0 || exc_ > wexc_)) { worst_ = i_; wexc_ = exc_; } \
        }                                                                            \
        if (worst_ >= 0) {                                                           \
            fprintf(stderr, "FAIL %s: %s:%d: %s vs %s: worst [%ld] got %.9g want %.9g\n", \
                    t_cur, __FILE__, __LINE__, #got, #want, worst_,                  \
                    (double)(got)[worst_], (double)(want)[worst_]);                  \
            t_cur_failed = 1;                                                        \
        }                                                                            \
    } while (0)

/* Use inside TEST(): marks the test skipped instead of passed. */
#define SKIP(reason)                                                                 \
    do {                                                                             \
        fprintf(stderr, "SKIP %s: %s\n", t_cur, reason);                             \
        if (!t_cur_skipped) t_skipped++;                                             \
        t_cur_skipped = 1;                                                           \
    } while (0)

/* SKIP for a missing CUDA build or device, but a failure when the environment
 * has DS_REQUIRE_GPU set (not "0"): `make test-gpu` must never pass by skipping. */
#define SKIP_NO_GPU(reason)                                                          \
    do {                                                                             \
        const char *rq_ = getenv("DS_REQUIRE_GPU");                                  \
        if (rq_ && *rq_ && strcmp(rq_, "0") != 0) {                                  \
            fprintf(stderr, "FAIL %s: %s (DS_REQUIRE_GPU is set)\n", t_cur, reason);  \
            t_cur_failed = 1;                                                        \
        } else {                                                                     \
            SKIP(reason);                                                            \
        }                                                                            \
    } while (0)

/* system(cmd): the command's exit status, -1 if it did not exit normally. */
static inline int test_system(const char *cmd) {
    int rc = system(cmd);
    if (rc == -1 || !WIFEXITED(rc)) return -1;
    return WEXITSTATUS(rc);
}

#define TEST_REPORT()                                                                \
    (t_finish(), printf("%d passed, %d failed, %d skipped\n", t_passed, t_failed, t_skipped),   \
     t_failed ? 1 : 0)

#endif
