/*
 * fuzz_resume_rank.c - a rank's resume file rank-<r>.bin (resume_load_rank:
 * header checks against the job, then the residual stream). The wanted
 * header is a 1-rank job of 2 samples, 4 tokens, C 16, f32. Seeds: files
 * written by resume_save_rank (tools/make_resume_seeds.c).
 */
#include "fuzz_common.h"
#include "resume.h"

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc; (void)argv;
    fz_quiet();
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    fz_write(fz_dir(), "rank-0.bin", data, size);
    resume_head want = {.layer = 0, .world = 1, .rank = 0, .dtype = DS_DTYPE_F32, .job_fp = 0x0123456789abcdefull,
                        .rank_fp = 0xfedcba9876543210ull, .nlocal = 2, .ntok = 4, .C = 16};
    memcpy(want.magic, "DSRESUM1", 8);
    size_t nbytes = (size_t)(want.ntok * want.C) * sizeof(float);
    float *buf = xmalloc(nbytes);
    (void)resume_load_rank(fz_dir(), &want, buf, nbytes);
    free(buf);
    return 0;
}
