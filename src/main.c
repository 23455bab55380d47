/*
 * main.c - the doneshot command line: `doneshot [quantize] --recipe FILE ...`
 * (GPTQ over MPI ranks), `doneshot tokenize ...`, `doneshot eval ...`.
 * Reads like the algorithm: parse -> recipe -> model -> calibration data
 * (this rank's slice) -> pipeline -> summary. Every rank takes the same path;
 * a failure on any rank is combined at each stage boundary so all ranks exit
 * with the same documented code (doneshot.1, EXIT STATUS).
 */
#include "checkpoint.h"
#include "cmd_tokenize.h"
#include "comm.h"
#include "common.h"
#include "dataset.h"
#include "eval.h"
#include "model.h"
#include "gpu_engine.h"
#include "gptq.h"
#include "pipeline.h"
#include "recipe.h"
#include "scheme.h"
#include "summary.h"
#include "tokenizer.h"

#include <cblas.h>
#include <getopt.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

typedef struct cli {
    const char *recipe, *model, *dataset, *output, *summary, *device, *text_field;
    long num_samples, max_seq_len, seed, threads;
    int64_t max_shard;
    int overwrite, verbosity;
    int moe_all_experts;          /* --moe-calibrate-all-experts: 1/0, -1 unset */
    int offload_acts;             /* --offload-activations */
    int64_t gpu_memory;           /* --gpu-memory bytes, 0 unset */
    long micro_batch;             /* --micro-batch, -1 unset */
    int resume;                   /* --resume */
    long resume_interval;         /* --resume-interval seconds, -1 unset */
    long stop_after_layer;        /* --stop-after-layer (testing aid), 0 unset */
} cli;

static void usage(FILE *f) {
    fprintf(f,
            "usage: doneshot [quantize] --recipe FILE [options]\n"
            "       doneshot tokenize --model DIR [--input FILE] [--bos|--no-bos] [--decode]\n"
            "       doneshot eval --model DIR --dataset FILE [--seq-len T] [--max-windows K] [--threads K] [--json]\n"
            "\n"
            "GPTQ post-training quantization of a Hugging Face model directory into a\n"
            "compressed-tensors checkpoint; run under mpirun/srun for several ranks.\n"
            "\n"
            "options (flags override the recipe):\n"
            "  --recipe FILE         JSON recipe (modifiers and run settings); required\n"
            "  --model DIR           model directory (config.json, safetensors, tokenizer.json: for text rows)\n"
            "  --dataset FILE        calibration data: .txt, .jsonl, .jsonl.gz, optionally gzipped\n"
            "                        (not needed by QuantizationModifier with dynamic or no\n"
            "                        activation quantization, e.g. FP8_DYNAMIC)\n"
            "  --output DIR          output checkpoint directory (default: <model>-W<bits>A16, or\n"
            "                        <model>-<SCHEME> for the other presets)\n"
            "  --num-samples N       calibration samples (default 512)\n"
            "  --max-seq-len T       tokens per sample (default 2048, capped by max_position_embeddings)\n"
            "  --seed S              shuffle seed for the calibration rows (default 42)\n"
            "  --text-field NAME     JSONL text field (default text)\n"
            "  --max-shard-size SIZE output shard size, bytes or e.g. 5GB (default 20GB)\n"
            "  --moe-calibrate-all-experts true|false\n"
            "                        MoE: every expert's Hessian sees all tokens (true, default)\n"
            "                        or only the tokens routed to it (false)\n"
            "  --device auto|cuda|cpu  compute device (default auto: cuda when this build has\n"
            "                        CUDA, every rank sees a GPU and the CUDA engine runs the\n"
            "                        model (bf16, f16, f32) and the recipe's scheme; else\n"
            "                        cpu). Rank -> GPU: local rank mod GPUs\n"
            "  --offload-activations keep calibration activations in pinned host memory (cuda)\n"
            "  --gpu-memory SIZE     device memory budget per rank, e.g. 8GB (default 90%% of free)\n"
            "  --micro-batch N       max sequences per forward chunk on the GPU (default: planned)\n"
            "  --resume              continue the interrupted run of this job (OUTPUT.partial)\n"
            "  --resume-interval S   save a resume point every S seconds at a layer boundary\n"
            "                        (default 600; 0: after every layer)\n"
            "  --stop-after-layer K  testing aid: stop (exit 1) after the resume point of layer K\n"
            "  --threads K           compute threads per rank (default: the CPUs the rank may\n"
            "                        run on, at most cores / ranks on the node)\n"
            "  --overwrite           replace an existing output checkpoint\n"
            "  --summary FILE        write a machine-readable JSON run summary\n"
            "  -q, --quiet           only warnings and errors\n"
            "  -v, --verbose         debug output\n"
            "  -h, --help            this help\n"
            "  -V, --version         print the version\n"
            "\n"
            "exit status: 0 ok, 1 runtime failure, 2 usage or recipe error, 3 bad model or data\n");
}

/* "20GB", "1.5 GB", "500MB", "2GiB", "123" -> bytes; -1 on error. The
 * recipe's parser (recipe_parse_size), so a size means the same on the
 * command line and in a recipe. */
static int64_t parse_size(const char *s) {
    int64_t v;
    return recipe_parse_size(s, &v) == 0 ? v : -1;
}

static ds_status parse_cli(int argc, char **argv, cli *c) {
    static const struct option opts[] = {
        {"recipe", required_argument, 0, 'r'},  {"model", required_argument, 0, 'm'},
        {"dataset", required_argument, 0, 'd'}, {"output", required_argument, 0, 'o'},
        {"num-samples", required_argument, 0, 'n'}, {"max-seq-len", required_argument, 0, 't'},
        {"seed", required_argument, 0, 's'},    {"device", required_argument, 0, 'D'},
        {"threads", required_argument, 0, 'j'}, {"text-field", required_argument, 0, 'f'},
        {"max-shard-size", required_argument, 0, 'S'}, {"overwrite", no_argument, 0, 'O'},
        {"summary", required_argument, 0, 'J'}, {"quiet", no_argument, 0, 'q'},
        {"verbose", no_argument, 0, 'v'},       {"help", no_argument, 0, 'h'},
        {"version", no_argument, 0, 'V'},
        {"moe-calibrate-all-experts", required_argument, 0, 'E'},
        {"offload-activations", no_argument, 0, 'A'}, {"gpu-memory", required_argument, 0, 'G'},
        {"micro-batch", required_argument, 0, 'B'}, {"resume", no_argument, 0, 'R'},
        {"resume-interval", required_argument, 0, 'I'}, {"stop-after-layer", required_argument, 0, 'K'},
        {0, 0, 0, 0}};
    ds_status st = DS_OK;
    memset(c, 0, sizeof *c);
    c->num_samples = c->max_seq_len = c->seed = c->threads = -1;
    c->max_shard = -1;
    c->moe_all_experts = -1;
    c->micro_batch = -1;
    c->resume_interval = -1;
    opterr = 0;
    optind = 1;
    int ch;
    while (st == DS_OK && (ch = getopt_long(argc, argv, ":qvhV", opts, NULL)) != -1) {
        switch (ch) {
        case 'r': c->recipe = optarg; break;
        case 'm': c->model = optarg; break;
        case 'd': c->dataset = optarg; break;
        case 'o': c->output = optarg; break;
        case 'n': c->num_samples = ds_parse_long("--num-samples", optarg, 1, &st); break;
        case 't': c->max_seq_len = ds_parse_long("--max-seq-len", optarg, 1, &st); break;
        case 's': c->seed = ds_parse_long("--seed", optarg, 0, &st); break;
        case 'j': c->threads = ds_parse_long("--threads", optarg, 1, &st); break;
        case 'f': c->text_field = optarg; break;
        case 'D':
            if (strcmp(optarg, "cpu") && strcmp(optarg, "cuda") && strcmp(optarg, "auto"))
                st = ds_error(DS_ERR_USAGE, "--device: invalid value '%s' (allowed: auto, cuda, cpu)", optarg);
            c->device = optarg;
            break;
        case 'S':
            if ((c->max_shard = parse_size(optarg)) <= 0)
                st = ds_error(DS_ERR_USAGE, "--max-shard-size: invalid size '%s' (expected e.g. 5GB, 500MB, 1073741824)", optarg);
            break;
        case 'E':
            if (!strcmp(optarg, "true")) c->moe_all_experts = 1;
            else if (!strcmp(optarg, "false")) c->moe_all_experts = 0;
            else
                st = ds_error(DS_ERR_USAGE, "--moe-calibrate-all-experts: invalid value '%s' (allowed: true, false)", optarg);
            break;
        case 'A': c->offload_acts = 1; break;
        case 'G':
            if ((c->gpu_memory = parse_size(optarg)) <= 0)
                st = ds_error(DS_ERR_USAGE, "--gpu-memory: invalid size '%s' (expected e.g. 8GB, 40GiB)", optarg);
            break;
        case 'B': c->micro_batch = ds_parse_long("--micro-batch", optarg, 1, &st); break;
        case 'R': c->resume = 1; break;
        case 'I': c->resume_interval = ds_parse_long("--resume-interval", optarg, 0, &st); break;
        case 'K': c->stop_after_layer = ds_parse_long("--stop-after-layer", optarg, 1, &st); break;
        case 'O': c->overwrite = 1; break;
        case 'J': c->summary = optarg; break;
        case 'q': c->verbosity--; break;
        case 'v': c->verbosity++; break;
        case 'h': return DS_OK + 100;
        case 'V': return DS_OK + 101;
        case ':': st = ds_error(DS_ERR_USAGE, "option %s needs a value", argv[optind - 1]); break;
        default: st = ds_error(DS_ERR_USAGE, "unknown option '%s'\nhint: doneshot --help lists the options", argv[optind - 1]);
        }
    }
    if (st == DS_OK && optind < argc)
        st = ds_error(DS_ERR_USAGE, "unexpected argument '%s'\nhint: doneshot --help lists the options", argv[optind]);
    if (st == DS_OK && !c->recipe)
        st = ds_error(DS_ERR_USAGE, "--recipe FILE is required\nhint: try --recipe recipes/stories260k-w4a16.json");
    if (st == DS_OK && !gptq_factor_env_valid())
        st = ds_error(DS_ERR_USAGE, "DONESHOT_GPTQ_FACTOR=%s: expected torch, flip or potri\nhint: unset it for the "
                      "default (flip on the CPU, torch on CUDA)", getenv("DONESHOT_GPTQ_FACTOR"));
    return st;
}

static char *default_output(const char *model_dir, const recipe *r) {
    char *d = xstrdup(model_dir);
    size_t n = strlen(d);
    while (n > 1 && d[n - 1] == '/') d[--n] = 0;
    char *out = r->w.type == QT_INT && r->in.num_bits == 0 ? xasprintf("%s-W%dA16", d, r->w.num_bits)
                : xasprintf("%s-%s", d, r->scheme_name ? r->scheme_name : "quantized");
    free(d);
    return out;
}

/* Load the calibration rows, shuffle with the seed, keep N, take this rank's
 * slice [floor(N*r/R), floor(N*(r+1)/R)) (reference-llm-compressor.md §2.1).
 * The file is streamed and only this rank's rows are tokenized
 * (dataset_load_slice). data->n = N; only data->rows[*first, *first + *count)
 * hold ids, the other entries are empty. */
static ds_status load_calibration(const char *path, const char *model_dir, int vocab, const recipe *r,
                                  long max_seq, long num_samples, uint64_t seed, ds_dataset *data, size_t *first,
                                  size_t *count) {
    tokenizer *tok = NULL;
    ds_status st = DS_OK;
    /* no tokenizer.json: pre-tokenized rows still work (ids below the
     * model's vocab_size; a text row is then an error naming the file), and
     * the checkpoint gets no tokenizer files */
    char *tj = ds_path_join(model_dir, "tokenizer.json");
    const int have_tok = ds_file_exists(tj);
    free(tj);
    if (have_tok) st = tokenizer_load(model_dir, &tok);
    else if (comm_rank() == 0)
        ds_warn("%s has no tokenizer.json: the calibration rows must be pre-tokenized (input_ids), and the "
                "checkpoint will have no tokenizer files", model_dir);
    if (st) return st;
    dataset_opts o = {.text_field = r->text_field, .max_seq_len = max_seq, .add_special = 1,
                      .model_dir = model_dir, .vocab_size = vocab};
    ds_dataset mine = {0};
    dataset_slice_info info;
    st = dataset_load_slice(path, tok, &o, seed, (size_t)num_samples, comm_rank(), comm_size(), &mine, &info);
    tokenizer_free(tok);
    if (st) return st;
    if ((size_t)num_samples > info.usable)
        ds_warn("%s has %zu usable rows, fewer than the %ld calibration samples asked for; using %zu",
                path, info.usable, num_samples, info.usable);
    data->rows = xcalloc(info.total, sizeof *data->rows);
    data->n = info.total;
    data->skipped = mine.skipped;
    if (mine.n) memcpy(data->rows + info.first, mine.rows, mine.n * sizeof *mine.rows);
    free(mine.rows);
    *first = info.first;
    *count = mine.n;
    return DS_OK;
}

/* --device: "cuda" must work on every rank (else a usage error naming why);
 * "auto" picks cuda only when it works on every rank, so all ranks run the
 * same engine. */
/* NULL when the CUDA engine runs recipe r's scheme, else why not: it runs
 * QuantizationModifier with any scheme, and GPTQModifier with int weights
 * (tensor/channel/group), fp8 e4m3 weights (tensor/channel/group/block) or
 * NVFP4 weights (fp4 tensor_group), activations none, dynamic or static
 * (W4A16, W8A16, W8A8, W8A8 with static int8 activations, FP8, FP8_DYNAMIC,
 * FP8_BLOCK, NVFP4A16, NVFP4; the static observers' max |x| comes from
 * act_absmax_cuda). */
static const char *cuda_scheme_why(const recipe *r) {
    /* QuantizationModifier: round-to-nearest on the host; the engine runs the
     * forward and the static activation observer (act_absmax_cuda): any scheme */
    if (r->quantizer != RQ_GPTQ) return NULL;
    const quant_kind_t k = quant_kind(&r->w);
    /* activations: dynamic ones (W8A8, FP8_DYNAMIC, FP8_BLOCK) are quantized
     * only where the checkpoint is used, so the GPTQ pass is weight-only; static
     * ones (FP8 input_scale, NVFP4 input_global_scale) are observed on the device */
    if ((k == QK_FP4 && r->w.strategy != QS_TENSOR_GROUP) ||
        (r->w.strategy != QS_TENSOR && r->w.strategy != QS_CHANNEL && r->w.strategy != QS_GROUP &&
         !(k == QK_FP8 && r->w.strategy == QS_BLOCK) && !(k == QK_FP4 && r->w.strategy == QS_TENSOR_GROUP)))
        return "the CUDA engine's GPTQ runs int weight-only schemes, W8A8, FP8, FP8_DYNAMIC, FP8_BLOCK, NVFP4A16 "
               "and NVFP4; this recipe's weight strategy runs on the CPU";
    return NULL;
}

static ds_status select_device(const char *want, const model_config *mc, const recipe *r, int *cuda) {
    ds_status st = DS_OK;
    const char *why = NULL;
    *cuda = 0;
    if (strcmp(want, "cpu") == 0) return DS_OK;
    if (cuda_scheme_why(r)) {
        if (strcmp(want, "cuda") == 0)
            return ds_error(DS_ERR_USAGE, "--device cuda: %s\nhint: use --device cpu", cuda_scheme_why(r));
        if (comm_rank() == 0 && gpu_engine_built()) ds_info("device auto: cpu (%s)", cuda_scheme_why(r));
        return DS_OK;
    }
    if (strcmp(want, "cuda") == 0) {
        if (!gpu_engine_built())
            st = ds_error(DS_ERR_USAGE, "--device cuda: this doneshot was built without CUDA\n"
                          "hint: use --device cpu, or rebuild with nvcc installed (make CUDA=1)");
        else if (gpu_engine_device_count() <= 0)
            st = ds_error(DS_ERR_USAGE, "--device cuda: no CUDA device is visible on this node "
                          "(%s; CUDA_VISIBLE_DEVICES=%s)\nhint: check nvidia-smi, or use --device cpu",
                          gpu_engine_why_none(),
                          getenv("CUDA_VISIBLE_DEVICES") ? getenv("CUDA_VISIBLE_DEVICES") : "unset");
        else
            st = gpu_engine_check_model(mc); /* names what is not supported */
        *cuda = st == DS_OK;
        return st;
    }
    /* auto: the model first, so a model the engine does not run never loads
     * the CUDA libraries */
    if (!gpu_engine_built())
        why = "this doneshot was built without CUDA";
    else if (gpu_engine_check_model(mc) != DS_OK)
        why = "the CUDA engine does not run this model's dtype";
    else if (gpu_engine_device_count() <= 0)
        why = gpu_engine_why_none();
    int ok = why == NULL;
    *cuda = !comm_allreduce_max_int(!ok); /* auto: every rank can, or none does */
    if (!*cuda && comm_rank() == 0 && gpu_engine_built())
        ds_info("device auto: cpu (%s)", why ? why : "a rank has no usable CUDA device");
    return DS_OK;
}

static int cmd_quantize(int argc, char **argv) {
    cli c;
    recipe r;
    model m;
    ds_dataset data = {0};
    run_stats stats = {0};
    char *output = NULL;
    int have_recipe = 0, have_model = 0;
    const double t_start = ds_now();

    ds_status st = parse_cli(argc, argv, &c);
    if ((int)st == 100 || (int)st == 101) {
        if (comm_rank() == 0) {
            if ((int)st == 100) usage(stdout);
            else printf("doneshot %s\n", DS_VERSION);
        }
        return 0;
    }
    ds_log_set_level(DS_LOG_INFO + c.verbosity);
    /* SIGUSR1/SIGTERM from here on (also while the model and data load): a
     * resume point at the next layer boundary, then stop */
    ds_install_stop_handlers();
    if ((st = comm_sync_report(st))) {
        if (comm_rank() == 0) fprintf(stderr, "usage: doneshot --recipe FILE [options]; see doneshot --help\n");
        return st;
    }
    st = recipe_load(c.recipe, &r);
    have_recipe = st == DS_OK;
    if ((st = comm_sync_report(st))) goto done;

    /* flags override the recipe; then defaults as the reference */
    const char *model_dir = c.model ? c.model : r.model;
    const char *dataset = c.dataset ? c.dataset : r.dataset;
    if (c.text_field) { free(r.text_field); r.text_field = xstrdup(c.text_field); }
    long num_samples = c.num_samples > 0 ? c.num_samples : r.num_samples > 0 ? r.num_samples : 512;
    long max_seq = c.max_seq_len > 0 ? c.max_seq_len : r.max_seq_len > 0 ? r.max_seq_len : 2048;
    long seed = c.seed >= 0 ? c.seed : r.seed >= 0 ? r.seed : 42;
    int moe_all = c.moe_all_experts >= 0 ? c.moe_all_experts : r.moe_calibrate_all_experts >= 0 ? r.moe_calibrate_all_experts : 1;
    int64_t max_shard = c.max_shard > 0 ? c.max_shard : r.max_shard_size > 0 ? r.max_shard_size : (int64_t)20e9;
    if (!model_dir)
        st = ds_error(DS_ERR_USAGE, "no model given\nhint: pass --model DIR or set \"model\" in %s", c.recipe);
    else if (!dataset && recipe_needs_data(&r))
        st = ds_error(DS_ERR_USAGE, "no calibration dataset given, and this recipe calibrates (GPTQ, SmoothQuant or "
                      "static activation scales)\nhint: pass --dataset FILE or set \"dataset\" in %s", c.recipe);
    if ((st = comm_sync_report(st))) goto done;

    /* the output before anything heavy: never replace what is not ours, fail
     * in a second rather than after the work (rank 0 writes it) */
    output = c.output ? xstrdup(c.output) : r.output ? xstrdup(r.output) : default_output(model_dir, &r);
    if (comm_rank() == 0) {
        ckpt_paths cp = {.out = output, .model = model_dir, .dataset = dataset, .recipe = c.recipe,
                         .summary = c.summary};
        st = ckpt_check_output(&cp, c.overwrite);
    }
    if ((st = comm_sync_report(st))) goto done;

    st = model_open(model_dir, &m);
    have_model = st == DS_OK;
    if (st == DS_OK) st = pipeline_validate(&m, &r);
    if ((st = comm_sync_report(st))) goto done;
    int cuda = 0;
    st = select_device(c.device ? c.device : "auto", &m.cfg, &r, &cuda);
    if ((st = comm_sync_report(st))) goto done;
    if (max_seq > m.cfg.max_pos) max_seq = m.cfg.max_pos;

    const int threads = ds_pick_threads(c.threads, comm_local_size(), comm_rank() == 0);
    openblas_set_num_threads(1); /* the host threads split the GEMMs (ops_cpu.c): no BLAS worker spins beside them */
    ds_set_threads(threads);

    size_t first = 0, count = 0;
    double t_data = ds_now();
    if (dataset) /* else a recipe that needs no data: no forward pass has anything to feed its modules */
        st = load_calibration(dataset, model_dir, m.cfg.V, &r, max_seq, num_samples, (uint64_t)seed, &data, &first,
                              &count);
    if ((st = comm_sync_report(st))) goto done;

    /* the scheme as recipes name it: the preset (W4A16, FP8, ...) or, for
     * config_groups, weights type/bits/strategy and the activations' bits */
    char gs[32] = "", sch[96];
    if (r.w.strategy == QS_GROUP) snprintf(gs, sizeof gs, " %d", r.w.group_size);
    snprintf(sch, sizeof sch, "%s%s (weights %s%d %s %s%s%s)", r.quantizer == RQ_QUANTIZATION ? "RTN " : "",
             r.scheme_name ? r.scheme_name : "config_groups", scheme_type_name(r.w.type), r.w.num_bits,
             r.w.symmetric ? "sym" : "asym", scheme_strategy_name(r.w.strategy), gs,
             r.in.num_bits ? ", activations quantized" : "");
    ds_info("doneshot %s | model %s (%s, %d layers, %s) | scheme %s | ranks %d | threads/rank %d", DS_VERSION,
            model_dir, m.cfg.arch_name, m.cfg.L, ds_dtype_torch_name(m.cfg.dtype), sch, comm_size(), threads);
    if (dataset)
        ds_info("calibration: %s | %zu samples (max %ld tokens each, seed %ld) | rank 0 holds %zu | data %.2fs",
                dataset, data.n, max_seq, seed, count, ds_now() - t_data);
    else
        ds_info("calibration: none (round-to-nearest with dynamic or no activation quantization needs no data)");

    run_opts ro = {.out_dir = output, .overwrite = c.overwrite, .max_shard_bytes = (uint64_t)max_shard,
                   .moe_routed_only = !moe_all, .cuda = cuda, .offload_acts = c.offload_acts,
                   .gpu_budget_bytes = (size_t)c.gpu_memory, .max_micro_batch = c.micro_batch > 0 ? (int)c.micro_batch : 0, .resume = c.resume,
                   .resume_interval = c.resume_interval >= 0 ? (double)c.resume_interval : 600.0,
                   .stop_after_layer = (int)c.stop_after_layer};
    st = pipeline_quantize(&m, &r, data.rows + first, count, &ro, &stats);
    if ((st = comm_sync_report(st))) goto done;
    summary_report(&stats, &m, &r, model_dir, dataset, output, c.summary, ds_now() - t_start);

done:
    run_stats_free(&stats);
    dataset_free(&data);
    if (have_model) model_close(&m);
    if (have_recipe) recipe_free(&r);
    free(output);
    return (int)st;
}

int main(int argc, char **argv) {
    comm_init(&argc, &argv);
    int rc;
    if (argc > 1 && strcmp(argv[1], "tokenize") == 0)
        rc = comm_rank() == 0 ? cmd_tokenize(argc - 1, argv + 1) : 0;
    else if (argc > 1 && strcmp(argv[1], "eval") == 0)
        rc = cmd_eval(argc - 1, argv + 1);
    else if (argc > 1 && strcmp(argv[1], "quantize") == 0)
        rc = cmd_quantize(argc - 1, argv + 1);
    else
        rc = cmd_quantize(argc, argv);
    comm_finalize(); /* every rank reaches here with the same rc */
    return rc;
}
