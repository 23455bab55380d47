/*
 * ckpt_diff.c - compare two doneshot int4 checkpoints of one model (the
 * bench's cross-check of -np 1 vs -np 2 and cuda vs cpu): prints the share of
 * identical int codes and the largest relative weight_scale difference.
 * Usage: ckpt_diff DIR_A DIR_B [MIN_FRACTION]; exit 1 below MIN_FRACTION
 * (default 0.99) or when the structure differs.
 */
#include "../tests/ckpt_compare.h"

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: %s DIR_A DIR_B [MIN_FRACTION]\n", argv[0]);
        return 2;
    }
    double min = argc > 3 ? atof(argv[3]) : 0.99;
    ckpt_cmp c = ckpt_compare(argv[1], argv[2]);
    double f = c.codes ? (double)c.same / (double)c.codes : 0.0;
    printf("%s vs %s: %s, %ld/%ld int codes identical (%.4f %%), max scale rel diff %.3e, %d modules\n",
           argv[1], argv[2], c.ok ? "same structure" : "STRUCTURE DIFFERS", c.same, c.codes, 100.0 * f,
           c.max_scale_rel, c.nmods);
    return c.ok && f >= min ? 0 : 1;
}
