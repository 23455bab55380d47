/*
 * eval.c - `doneshot eval`: perplexity of an original or a doneshot
 * (compressed-tensors: every format src/scheme.c reads, with the activation
 * fake quant its quantization_config prescribes) checkpoint on a text file, with the
 * protocol of the GPTQ paper / IST-DASLab gptq `llama_eval`
 * (docs/model-and-tokenizer.md §2.7-2.8):
 *
 *   ids  = tokenize(whole file, add_special_tokens=True)   (BOS only at the start)
 *   nwin = len(ids) // T  (trailing partial window dropped; optionally capped by --max-windows)
 *   window i = ids[i*T, (i+1)*T), evaluated independently from position 0
 *   NLL  = mean over the nwin*(T-1) predicted tokens of logsumexp(logits_t) - logits_t[id_{t+1}]
 *   ppl  = exp(NLL)
 *
 * Layer-sequential like calibration: only one decoder layer's weights are
 * resident at a time (embed every local window, then layer_load ->
 * layer_forward over all local windows -> layer_free), then the final RMSNorm
 * and lm_head (tied to the embedding when tie_word_embeddings) in chunks of
 * vocabulary rows. Logits are rounded to the model dtype (as HF computes them)
 * and the log-softmax is done in double with an online logsumexp.
 *
 * Windows are split over ranks as the calibration rows are, [floor(n*r/R),
 * floor(n*(r+1)/R)). Every window's NLL sum lands in its own slot of an array
 * that is summed over ranks (one non-zero contributor per slot, so the sum is
 * exact), then added up in window order: the result is bit-identical for any
 * number of ranks.
 *
 * Test option --dump-weights FILE (for the interop tests): rank 0 writes
 * every decoder Linear weight (routers and experts included) as doneshot
 * uses it (dequantized for a pack-quantized checkpoint) to FILE as F32
 * safetensors.
 *
 * Deliberately not here: the HF strided sliding-window protocol, batching of
 * windows into one GEMM, the GPU.
 */
#include "eval.h"
#include "comm.h"
#include "common.h"
#include "model.h"
#include "ops_cpu.h"
#include "tokenizer.h"

#include <cblas.h>
#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define HEAD_CHUNK 4096 /* vocabulary rows of lm_head converted to f32 at a time */

typedef struct eval_cli {
    const char *model, *dataset, *dump;
    long seq_len, max_windows, threads;
    int json, verbosity;
} eval_cli;

static void eval_usage(FILE *f) {
    fprintf(f,
            "usage: doneshot eval --model DIR --dataset FILE [options]\n"
            "\n"
            "Perplexity of a model directory (original, or a compressed-tensors checkpoint\n"
            "of doneshot's or llm-compressor's) on a text file, GPTQ-paper protocol: the\n"
            "whole file is tokenized once (with BOS), cut into non-overlapping windows of\n"
            "T tokens (the partial last window is dropped), each window evaluated from\n"
            "position 0;\n"
            "ppl = exp(mean NLL over the T-1 predicted tokens of every window).\n"
            "Run under mpirun to split the windows over ranks; the result does not\n"
            "depend on the number of ranks.\n"
            "\n"
            "options:\n"
            "  --model DIR           model directory (config.json, safetensors, tokenizer.json)\n"
            "  --dataset FILE        UTF-8 text file, read whole (e.g. WikiText-2 test joined with \"\\n\\n\")\n"
            "  --seq-len T           tokens per window (default 2048, capped by max_position_embeddings)\n"
            "  --max-windows K       evaluate only the first K windows (default: all)\n"
            "  --threads K           compute threads per rank (default: the CPUs the rank may\n"
            "                        run on, at most cores / ranks on the node)\n"
            "  --json                print the result as one JSON object\n"
            "  --dump-weights FILE   write the decoder Linear weights as doneshot uses them\n"
            "                        (dequantized) to FILE as F32 safetensors (for tests)\n"
            "  -q, --quiet           only warnings and errors\n"
            "  -v, --verbose         debug output\n"
            "  -h, --help            this help\n"
            "\n"
            "exit status: 0 ok, 1 runtime failure, 2 usage error, 3 bad model or data\n");
}

/* DS_OK, a usage error, or 100 for --help. */
static int parse_eval_cli(int argc, char **argv, eval_cli *c) {
    static const struct option opts[] = {
        {"model", required_argument, 0, 'm'},       {"dataset", required_argument, 0, 'd'},
        {"seq-len", required_argument, 0, 't'},     {"max-windows", required_argument, 0, 'k'},
        {"threads", required_argument, 0, 'j'},     {"json", no_argument, 0, 'J'},
        {"dump-weights", required_argument, 0, 'W'}, {"quiet", no_argument, 0, 'q'},
        {"verbose", no_argument, 0, 'v'},           {"help", no_argument, 0, 'h'},
        {0, 0, 0, 0}};
    ds_status st = DS_OK;
    memset(c, 0, sizeof *c);
    c->seq_len = 2048;
    opterr = 0;
    optind = 1;
    int ch;
    while (st == DS_OK && (ch = getopt_long(argc, argv, ":qvh", opts, NULL)) != -1) {
        switch (ch) {
        case 'm': c->model = optarg; break;
        case 'd': c->dataset = optarg; break;
        case 't': c->seq_len = ds_parse_long("--seq-len", optarg, 2, &st); break;
        case 'k': c->max_windows = ds_parse_long("--max-windows", optarg, 1, &st); break;
        case 'j': c->threads = ds_parse_long("--threads", optarg, 1, &st); break;
        case 'J': c->json = 1; break;
        case 'W': c->dump = optarg; break;
        case 'q': c->verbosity--; break;
        case 'v': c->verbosity++; break;
        case 'h': return 100;
        case ':': st = ds_error(DS_ERR_USAGE, "option %s needs a value", argv[optind - 1]); break;
        default:
            st = ds_error(DS_ERR_USAGE, "unknown option '%s'\nhint: doneshot eval --help lists the options",
                          argv[optind - 1]);
        }
    }
    if (st == DS_OK && optind < argc)
        st = ds_error(DS_ERR_USAGE, "unexpected argument '%s'\nhint: doneshot eval --help lists the options",
                      argv[optind]);
    if (st == DS_OK && !c->model)
        st = ds_error(DS_ERR_USAGE, "--model DIR is required\nhint: try --model data/stories260K");
    if (st == DS_OK && !c->dataset && !c->dump)
        st = ds_error(DS_ERR_USAGE, "--dataset FILE is required\n"
                      "hint: e.g. the WikiText-2 test split as plain text, the standard GPTQ perplexity set");
    return (int)st;
}

/* ---- tokenization (rank 0) and broadcast ---- */

static ds_status tokenize_file(const char *path, const char *model_dir, int32_t **ids, size_t *n) {
    char *text = NULL;
    size_t len = 0;
    tokenizer *tok = NULL;
    ds_status st = ds_read_file(path, &text, &len);
    if (st == DS_OK) st = tokenizer_load(model_dir, &tok);
    if (st == DS_OK && memmem(text, len, "\r\n", 2))
        ds_warn("%s has CRLF line endings; they are evaluated as stored ('\\r' is a token)\n"
                "hint: for the standard WikiText-2 protocol convert to LF first (tr -d '\\r')", path);
    if (st == DS_OK && (st = tokenizer_encode(tok, text, len, 1, ids, n)) != DS_OK)
        ds_error_prefix("%s: tokenizing", path);
    tokenizer_free(tok);
    free(text);
    return st;
}

/* ---- --dump-weights ---- */

/* One F32 safetensors file with every decoder Linear weight, streamed layer
 * by layer (only one layer resident); header entries and data in model
 * order, shapes [out, in] as nn.Linear. */
static ds_status dump_weights(const model *m, const char *path) {
    const model_config *c = &m->cfg;
    FILE *f = fopen(path, "wb");
    if (!f) return ds_error(DS_ERR_RUNTIME, "%s: cannot create: %s", path, strerror(errno));
    size_t total = 0;
    for (int l = 0; l < c->L; l++) total += (size_t)model_layer_linears(c, l, 1, NULL);
    size_t cap = 256 + total * 320, hl = 0;
    char *hdr = xmalloc(cap);
    uint64_t off = 0;
    hl += (size_t)snprintf(hdr + hl, cap - hl, "{\"__metadata__\":{\"format\":\"pt\",\"writer\":\"doneshot eval\"}");
    for (int l = 0; l < c->L; l++) {
        int nl = model_layer_linears(c, l, 1, NULL);
        layer_linear *ll = xcalloc((size_t)nl, sizeof *ll);
        model_layer_linears(c, l, 1, ll); /* names and shapes only */
        for (int k = 0; k < nl; k++) {
            uint64_t nb = (uint64_t)ll[k].out * ll[k].in * 4;
            hl += (size_t)snprintf(hdr + hl, cap - hl,
                                   ",\"%s.weight\":{\"dtype\":\"F32\",\"shape\":[%d,%d],\"data_offsets\":[%llu,%llu]}",
                                   ll[k].name, ll[k].out, ll[k].in, (unsigned long long)off,
                                   (unsigned long long)(off + nb));
            off += nb;
        }
        free(ll);
    }
    hl += (size_t)snprintf(hdr + hl, cap - hl, "}");
    DS_ASSERT(hl < cap);
    while (hl % 8) hdr[hl++] = ' ';
    uint64_t n8 = hl;
    unsigned char le[8];
    for (int i = 0; i < 8; i++) le[i] = (unsigned char)(n8 >> (8 * i));
    int ok = fwrite(le, 1, 8, f) == 8 && fwrite(hdr, 1, hl, f) == hl;
    free(hdr);
    ds_status st = DS_OK;
    for (int l = 0; ok && st == DS_OK && l < c->L; l++) {
        layer_weights lw;
        if ((st = layer_load(m, l, &lw))) break;
        DS_ASSERT(lw.nlin == model_layer_linears(c, l, 1, NULL));
        for (int k = 0; ok && k < lw.nlin; k++) {
            size_t ne = (size_t)lw.lin[k].out * lw.lin[k].in;
            ok = fwrite(lw.lin[k].w, sizeof(float), ne, f) == ne;
        }
        layer_free(&lw);
    }
    if (fclose(f) != 0) ok = 0;
    if (st) return st;
    if (!ok) return ds_error(DS_ERR_RUNTIME, "%s: write failed: %s", path, strerror(errno));
    return DS_OK;
}

/* ---- perplexity ---- */

/* NLL sums of windows [first, first+count) (win_nll[w - first]); ids holds all
 * nwin*T tokens. Collective-free. */
static ds_status eval_windows(const model *m, const int32_t *ids, int T, size_t first, size_t count,
                              double *win_nll) {
    const model_config *c = &m->cfg;
    const int C = c->C, V = c->V, P = T - 1; /* P predicted positions per window */
    const size_t rows = count * (size_t)P;
    ds_status st = DS_OK;
    float *x = xmalloc(sizeof(float) * (count ? count : 1) * (size_t)T * C);   /* [count, T, C] */
    double *run_max = xmalloc(sizeof(double) * (rows ? rows : 1));            /* [count, P] */
    double *run_sum = xcalloc(rows ? rows : 1, sizeof(double));               /* [count, P] */
    double *tgt = xcalloc(rows ? rows : 1, sizeof(double));                   /* [count, P] */
    float *head = xmalloc(sizeof(float) * (size_t)DS_MIN(V, HEAD_CHUNK) * C);  /* [chunk, C] */
    float *logits = xmalloc(sizeof(float) * (size_t)P * DS_MIN(V, HEAD_CHUNK)); /* [P, chunk] */
    float *norm = xmalloc(sizeof(float) * C);
    layer_scratch s;
    layer_scratch_init(&s, c, T);
    for (size_t i = 0; i < rows; i++) run_max[i] = -INFINITY;

    for (size_t w = 0; w < count && st == DS_OK; w++)
        st = model_embed(m, ids + (first + w) * (size_t)T, T, x + w * (size_t)T * C);
    if (st) goto done;
    for (int l = 0; l < c->L && count > 0; l++) {
        double t0 = ds_now();
        layer_weights lw;
        if ((st = layer_load(m, l, &lw))) goto done;
        layer_set_all_experts(&lw, 0); /* MoE: route tokens as in inference */
        for (size_t w = 0; w < count; w++) layer_forward(m, &lw, x + w * (size_t)T * C, T, &s, NULL, NULL);
        layer_free(&lw);
        ds_debug("eval layer %d/%d | %.2fs", l + 1, c->L, ds_now() - t0);
    }

    /* final RMSNorm (only the P rows that predict a token are needed) */
    const st_tensor *nt = st_find(m->st, "model.norm.weight");
    if ((st = st_to_f32(nt, norm))) goto done;
    for (size_t w = 0; w < count; w++)
        rmsnorm_forward_cpu(x + w * (size_t)T * C, x + w * (size_t)T * C, norm, P, C, c->eps, c->dtype);

    /* lm_head in chunks of vocabulary rows; online logsumexp in double */
    const st_tensor *ht = st_find(m->st, c->tie || !st_find(m->st, "lm_head.weight") ? "model.embed_tokens.weight"
                                                                                       : "lm_head.weight");
    DS_ASSERT(ht && ht->ndim == 2 && ht->shape[0] == V && ht->shape[1] == C);
    const size_t esz = ds_dtype_size(ht->dtype);
    for (int v0 = 0; v0 < V; v0 += HEAD_CHUNK) {
        const int nv = DS_MIN(HEAD_CHUNK, V - v0);
        st = ds_convert_to_f32(head, (const unsigned char *)ht->data + (size_t)v0 * C * esz, ht->dtype,
                               (size_t)nv * C);
        if (st) goto done;
        for (size_t w = 0; w < count; w++) {
            const int32_t *wid = ids + (first + w) * (size_t)T;
            matmul_forward_cpu(logits, x + w * (size_t)T * C, head, NULL, P, C, nv, c->dtype);
            for (int t = 0; t < P; t++) {
                const float *lg = logits + (size_t)t * nv;
                const size_t r = w * (size_t)P + t;
                double mx = lg[0];
                for (int j = 1; j < nv; j++) mx = lg[j] > mx ? lg[j] : mx;
                double m_new = mx > run_max[r] ? mx : run_max[r], acc = 0.0;
                for (int j = 0; j < nv; j++) acc += exp((double)lg[j] - m_new);
                run_sum[r] = run_sum[r] * exp(run_max[r] - m_new) + acc;
                run_max[r] = m_new;
                const int y = wid[t + 1];
                if (y >= v0 && y < v0 + nv) tgt[r] = lg[y - v0];
            }
        }
    }
    for (size_t w = 0; w < count; w++) {
        double sum = 0.0;
        for (int t = 0; t < P; t++) {
            const size_t r = w * (size_t)P + t;
            sum += run_max[r] + log(run_sum[r]) - tgt[r];
        }
        win_nll[w] = sum;
    }
done:
    layer_scratch_free(&s);
    free(x); free(run_max); free(run_sum); free(tgt); free(head); free(logits); free(norm);
    return st;
}

int cmd_eval(int argc, char **argv) {
    eval_cli c;
    model m;
    int have_model = 0;
    int32_t *ids = NULL;
    double *win = NULL;
    const double t_start = ds_now();
    const int rank = comm_rank(), R = comm_size();

    int pr = parse_eval_cli(argc, argv, &c);
    if (pr == 100) {
        if (rank == 0) eval_usage(stdout);
        return 0;
    }
    ds_log_set_level(DS_LOG_INFO + c.verbosity);
    ds_status st = comm_sync_report((ds_status)pr);
    if (st) {
        if (rank == 0) fprintf(stderr, "usage: doneshot eval --model DIR --dataset FILE [options]; see doneshot eval --help\n");
        return (int)st;
    }

    st = model_open_quantized_ok(c.model, &m);
    have_model = st == DS_OK;
    if ((st = comm_sync_report(st))) goto done;
    const int threads = ds_pick_threads(c.threads, comm_local_size(), comm_rank() == 0);
    openblas_set_num_threads(1); /* the host threads split the GEMMs (ops_cpu.c): no BLAS worker spins beside them */
    ds_set_threads(threads);

    if (c.dump) {
        st = rank == 0 ? dump_weights(&m, c.dump) : DS_OK;
        if ((st = comm_sync_report(st))) goto done;
        ds_info("wrote the dequantized Linear weights of %s to %s", c.model, c.dump);
        if (!c.dataset) goto done;
    }

    /* tokenize on rank 0, broadcast the ids */
    double t_tok = ds_now();
    size_t n = 0;
    if (rank == 0) {
        st = tokenize_file(c.dataset, c.model, &ids, &n);
        if (st == DS_OK && c.seq_len > m.cfg.max_pos)
            ds_info("--seq-len %ld capped to max_position_embeddings %d", c.seq_len, m.cfg.max_pos);
    }
    const long T = DS_MIN(c.seq_len, (long)m.cfg.max_pos);
    if (rank == 0 && st == DS_OK && (long)(n / (size_t)T) < 1)
        st = ds_error(DS_ERR_INPUT, "%s: %zu tokens, fewer than one window of %ld tokens\n"
                      "hint: lower --seq-len or use a longer text", c.dataset, n, T);
    if ((st = comm_sync_report(st))) goto done;
    uint64_t n64 = n;
    comm_bcast(&n64, sizeof n64, 0);
    n = (size_t)n64;
    size_t nwin = n / (size_t)T;
    if (c.max_windows > 0 && (size_t)c.max_windows < nwin) nwin = (size_t)c.max_windows;
    if (rank != 0) ids = xmalloc(sizeof(int32_t) * nwin * (size_t)T);
    comm_bcast(ids, sizeof(int32_t) * nwin * (size_t)T, 0);
    ds_info("eval: %s | %s | %zu tokens -> %zu windows of %ld | ranks %d | threads/rank %d | tokenize %.2fs",
            c.model, c.dataset, n, nwin, T, R, threads, ds_now() - t_tok);

    /* this rank's windows, NLL sums into their slots, exact sum over ranks */
    size_t first = nwin * (size_t)rank / (size_t)R, count = nwin * (size_t)(rank + 1) / (size_t)R - first;
    win = xcalloc(nwin, sizeof(double));
    st = eval_windows(&m, ids, (int)T, first, count, win + first);
    if ((st = comm_sync_report(st))) goto done;
    comm_allreduce_sum_f64(win, nwin);
    double total = 0.0;
    for (size_t w = 0; w < nwin; w++) total += win[w];
    const uint64_t ntok = (uint64_t)nwin * (uint64_t)(T - 1);
    const double nll = total / (double)ntok, ppl = exp(nll);
    if (!isfinite(nll)) {
        st = ds_error(DS_ERR_RUNTIME, "%s: the negative log-likelihood is not finite (%g)", c.model, nll);
        st = comm_sync_report(st);
        goto done;
    }
    if (rank == 0) {
        if (c.json)
            printf("{\"ppl\": %.17g, \"nll\": %.17g, \"predicted_tokens\": %llu, \"windows\": %zu, "
                   "\"seq_len\": %ld, \"text_tokens\": %zu, \"quantized\": %s, \"ranks\": %d, "
                   "\"seconds\": %.3f}\n",
                   ppl, nll, (unsigned long long)ntok, nwin, T, n, m.quantized ? "true" : "false", R,
                   ds_now() - t_start);
        else
            printf("ppl %.6f (nll %.8f, %llu tokens, %zu windows of %ld)\n", ppl, nll,
                   (unsigned long long)ntok, nwin, T);
        fflush(stdout);
    }
    ds_info("eval done in %.2fs", ds_now() - t_start);

done:
    free(win);
    free(ids);
    if (have_model) model_close(&m);
    return (int)st;
}
