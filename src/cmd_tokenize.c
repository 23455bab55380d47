/*
 * cmd_tokenize.c - `doneshot tokenize`: encode a text file (or stdin) with a
 * model directory's tokenizer.json and print the ids, or decode ids back to
 * text. Mirrors HF tokenizers' encode(text, add_special_tokens) / decode.
 * Also prints throughput to stderr with --time (used by bench/).
 */
#include "cmd_tokenize.h"
#include "common.h"
#include "tokenizer.h"

#include <getopt.h>
#include <stdlib.h>
#include <string.h>

static void usage(FILE *f) {
    fprintf(f,
            "usage: doneshot tokenize --model DIR [--input FILE] [--bos|--no-bos] [--decode] [--time] [--help]\n"
            "  --model DIR    directory with tokenizer.json (and optional tokenizer_config.json)\n"
            "  --input FILE   text to encode, or ids to decode (default: stdin)\n"
            "  --bos          add special tokens as HF add_special_tokens=True (default)\n"
            "  --no-bos       add no special tokens (HF add_special_tokens=False)\n"
            "  --decode       read space-separated ids and print the decoded text\n"
            "  --time         print encode time and MB/s to stderr\n"
            "  --help         show this help\n");
}

static ds_status read_stream(FILE *f, char **out, size_t *len) {
    size_t cap = 1 << 16, n = 0;
    char *b = xmalloc(cap);
    for (;;) {
        if (n + 1 >= cap) { cap *= 2; b = xrealloc(b, cap); }
        size_t r = fread(b + n, 1, cap - n - 1, f);
        n += r;
        if (r == 0) break;
    }
    if (ferror(f)) { free(b); return ds_error(DS_ERR_INPUT, "stdin: read error"); }
    b[n] = 0;
    *out = b;
    *len = n;
    return DS_OK;
}

static int do_decode(const tokenizer *t, const char *s) {
    size_t n = 0, cap = 1024;
    int32_t *ids = xmalloc(cap * sizeof *ids);
    const char *p = s;
    int rc = 0;
    while (*p) {
        while (*p == ' ' || *p == '\n' || *p == '\t' || *p == '\r' || *p == ',') p++;
        if (!*p) break;
        char *end;
        long v = strtol(p, &end, 10);
        if (end == p || v < 0 || v > INT32_MAX) {
            fprintf(stderr, "doneshot: tokenize --decode: bad id near '%.20s'\n", p);
            rc = DS_ERR_INPUT;
            goto done;
        }
        if (n == cap) { cap *= 2; ids = xrealloc(ids, cap * sizeof *ids); }
        ids[n++] = (int32_t)v;
        p = end;
    }
    char *text = NULL;
    if (tokenizer_decode(t, ids, n, 0, &text)) {
        fprintf(stderr, "doneshot: %s\n", ds_errmsg());
        rc = DS_ERR_INPUT;
        goto done;
    }
    fputs(text, stdout);
    free(text);
done:
    free(ids);
    return rc;
}

int cmd_tokenize(int argc, char **argv) {
    static const struct option opts[] = {
        {"model", required_argument, 0, 'm'}, {"input", required_argument, 0, 'i'},
        {"bos", no_argument, 0, 'b'},         {"no-bos", no_argument, 0, 'B'},
        {"decode", no_argument, 0, 'd'},      {"time", no_argument, 0, 't'},
        {"help", no_argument, 0, 'h'},        {0, 0, 0, 0}};
    const char *model = NULL, *input = NULL;
    int add_special = 1, decode = 0, timing = 0, c;
    optind = 0; /* full re-initialisation: main may have used getopt already */
    while ((c = getopt_long(argc, argv, "m:i:h", opts, NULL)) != -1) {
        switch (c) {
        case 'm': model = optarg; break;
        case 'i': input = optarg; break;
        case 'b': add_special = 1; break;
        case 'B': add_special = 0; break;
        case 'd': decode = 1; break;
        case 't': timing = 1; break;
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return DS_ERR_USAGE;
        }
    }
    if (!model || optind < argc) {
        if (!model) fprintf(stderr, "doneshot: tokenize: --model is required\n");
        else fprintf(stderr, "doneshot: tokenize: unexpected argument '%s'\n", argv[optind]);
        usage(stderr);
        return DS_ERR_USAGE;
    }
    char *text = NULL;
    size_t len = 0;
    ds_status st = input ? ds_read_file(input, &text, &len) : read_stream(stdin, &text, &len);
    if (st) { fprintf(stderr, "doneshot: %s\n", ds_errmsg()); return st; }
    tokenizer *t = NULL;
    st = tokenizer_load(model, &t);
    if (st) {
        fprintf(stderr, "doneshot: %s\n", ds_errmsg());
        free(text);
        return st;
    }
    int rc = 0;
    if (decode) rc = do_decode(t, text);
    else {
        int32_t *ids = NULL;
        size_t n = 0;
        double t0 = ds_now();
        st = tokenizer_encode(t, text, len, add_special, &ids, &n);
        double dt = ds_now() - t0;
        if (st) {
            fprintf(stderr, "doneshot: %s\n", ds_errmsg());
            rc = st;
        } else {
            char *line = xmalloc(n * 12 + 2), *p = line;
            for (size_t i = 0; i < n; i++) p += sprintf(p, i ? " %d" : "%d", ids[i]);
            *p++ = '\n';
            fwrite(line, 1, (size_t)(p - line), stdout);
            free(line);
            if (timing)
                fprintf(stderr, "encode: %zu bytes -> %zu ids in %.3f s = %.2f MB/s\n", len, n, dt,
                        dt > 0 ? (double)len / 1e6 / dt : 0.0);
        }
        free(ids);
    }
    tokenizer_free(t);
    free(text);
    return rc;
}
