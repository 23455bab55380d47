/*
 * fuzz_resume_progress.c - the resume state's progress.bin
 * (resume_load_progress: header, world size, job fingerprint, module
 * records), then the records used as the end-of-run summary uses them
 * (names as C strings, losses summed). The job is world 1, fingerprint
 * FZ_JOB_FP, 3 layers (a resume point is a layer in [0, 1]), room for 4
 * records (the pipeline passes L * (3E + 12)).
 * Seeds: files written by resume_save_progress (tools/make_resume_seeds.c).
 */
#include "fuzz_common.h"
#include "resume.h"

#define FZ_JOB_FP 0x0123456789abcdefull
#define FZ_MAX_MODS 4
#define FZ_LAYERS 3

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc; (void)argv;
    fz_quiet();
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    fz_write(fz_dir(), "progress.bin", data, size);
    run_stats s;
    memset(&s, 0, sizeof s);
    s.mods = xcalloc(FZ_MAX_MODS, sizeof *s.mods);
    int layer = -2;
    if (resume_load_progress(fz_dir(), 1, FZ_JOB_FP, FZ_LAYERS, FZ_MAX_MODS, &layer, &s) == DS_OK) {
        if (s.nmods < 0 || s.nmods > FZ_MAX_MODS || layer < 0 || layer > FZ_LAYERS - 2) __builtin_trap();
        double loss = 0;
        size_t chars = 0;
        for (int i = 0; i < s.nmods; i++) {
            loss += s.mods[i].loss;
            chars += strlen(s.mods[i].name); /* summary.c: cJSON_AddStringToObject(name) */
        }
        (void)loss;
        (void)chars;
    }
    free(s.mods);
    return 0;
}
