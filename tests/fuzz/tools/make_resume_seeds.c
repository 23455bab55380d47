/*
 * make_resume_seeds.c - writes the seed inputs of fuzz_resume_progress and
 * fuzz_resume_rank with the library's own writers (resume_save_progress,
 * resume_save_rank), matching the jobs those targets expect.
 * Build and run from the repo root (any library build):
 *   mpicc -std=c11 -D_GNU_SOURCE -Isrc tests/fuzz/tools/make_resume_seeds.c build/libdoneshot.a \
 *         -lcjson -lz -lopenblas -llapacke -lpcre2-8 -lutf8proc -lpthread -lm -o /tmp/mrs && /tmp/mrs DIR
 */
#include <stdlib.h>
#include <string.h>

#include "resume.h"

int main(int argc, char **argv) {
    if (argc != 2) return 2;
    const char *dir = argv[1];
    run_stats s;
    memset(&s, 0, sizeof s);
    module_record mods[4];
    memset(mods, 0, sizeof mods);
    const char *names[] = {"model.layers.0.self_attn.q_proj", "model.layers.0.mlp.down_proj",
                           "model.layers.1.self_attn.k_proj", "model.layers.1.mlp.up_proj"};
    for (int i = 0; i < 4; i++) {
        strcpy(mods[i].name, names[i]);
        mods[i].in = 16; mods[i].out = 32; mods[i].loss = 0.5 * i; mods[i].seconds = 0.01;
    }
    s.mods = mods;
    s.nmods = 2;
    s.n_rtn = 1;
    if (resume_save_progress(dir, 0, 1, 0x0123456789abcdefull, &s)) return 1; /* the job of the target */
    char *a = ds_path_join(dir, "progress.bin"), *b = ds_path_join(dir, "progress-2mods.bin");
    rename(a, b);
    s.nmods = 4;
    if (resume_save_progress(dir, 1, 1, 0x0123456789abcdefull, &s)) return 1;
    resume_head h = {.layer = 0, .world = 1, .rank = 0, .dtype = DS_DTYPE_F32, .job_fp = 0x0123456789abcdefull,
                     .rank_fp = 0xfedcba9876543210ull, .nlocal = 2, .ntok = 4, .C = 16};
    float x[64];
    for (int i = 0; i < 64; i++) x[i] = (float)i / 8.0f;
    if (resume_save_rank(dir, &h, x, sizeof x)) return 1;
    free(a); free(b);
    return 0;
}
