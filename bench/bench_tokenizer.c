/*
 * bench_tokenizer.c - C side of bench/bench_tokenizer.sh: load a
 * tokenizer.json, encode a text file in one tokenizer_encode call
 * (add_special=0), best of N runs with a freshly loaded tokenizer (cold word
 * cache) each run; prints "MB/s MB/s N ids".
 */
#include "tokenizer.h"

#include <stdlib.h>

int main(int argc, char **argv) {
    if (argc < 3) { fprintf(stderr, "usage: bench_tokenizer TOKENIZER_JSON TEXT [RUNS]\n"); return 2; }
    int runs = argc > 3 ? atoi(argv[3]) : 3;
    char *text = NULL;
    size_t len = 0, nids = 0;
    if (ds_read_file(argv[2], &text, &len)) { fprintf(stderr, "%s\n", ds_errmsg()); return 3; }
    double best = 1e9;
    for (int r = 0; r < runs; r++) {
        tokenizer *t = NULL;
        if (tokenizer_load(argv[1], &t)) { fprintf(stderr, "%s\n", ds_errmsg()); return 3; }
        int32_t *ids = NULL;
        double t0 = ds_now();
        if (tokenizer_encode(t, text, len, 0, &ids, &nids)) { fprintf(stderr, "%s\n", ds_errmsg()); return 1; }
        double dt = ds_now() - t0;
        if (dt < best) best = dt;
        free(ids);
        tokenizer_free(t);
    }
    printf("%.2f MB/s %zu ids\n", (double)len / 1e6 / best, nids);
    free(text);
    return 0;
}
