/*
 * test_smoothquant.c - SmoothQuant scales and folding (src/smoothquant.c)
 * against llm-compressor's own _apply_smoothing (goldens:
 * tests/gen_smoothquant_golden.py), the mappings per architecture and the
 * smoothed tensor names.
 */
#include "golden.h"
#include "recipe.h"
#include "smoothquant.h"
#include "test.h"

#define GOLD_DIR "tests/golden/smoothquant/"

static int dtype_of(const char *v) {
    return !strcmp(v, "BF16") ? DS_DTYPE_BF16 : !strcmp(v, "F16") ? DS_DTYPE_F16 : DS_DTYPE_F32;
}

/* One golden case: norm g [C] -> nb Linears; mapping 0 (q/k/v) when nb == 3,
 * mapping 1 (gate/up) when nb == 2 (the other mapping gets s = 1). Exact
 * equality for 16-bit dtypes, 1 ulp-ish (pow) for f32. */
static void run_case(const char *name) {
    char path[256], v[64];
    snprintf(path, sizeof path, GOLD_DIR "%s.safetensors", name);
    gold g;
    if (gold_open(path, &g) != 0) { SKIP("no golden"); return; }
    const ds_dtype dt = dtype_of(gold_meta(&g, "dtype", v, sizeof v));
    const double alpha = atof(gold_meta(&g, "alpha", v, sizeof v));
    const int log_eq = !strcmp(gold_meta(&g, "algorithm", v, sizeof v), "log_equalization");
    const int nb = atoi(gold_meta(&g, "nb", v, sizeof v));
    size_t C = 0;
    float *gw = gold_f32(&g, "g", &C), *mn = gold_f32(&g, "mn", NULL), *mx = gold_f32(&g, "mx", NULL);
    float *g_out = gold_f32(&g, "g_out", NULL);
    model_config c = {.C = (int)C, .dtype = dt, .L = 1};
    layer_weights lw = {.nlin = LIN_COUNT};
    layer_linear lin[LIN_COUNT];
    memset(lin, 0, sizeof lin);
    lw.lin = lin;
    lw.in_norm = xmalloc(sizeof(float) * C);
    lw.post_norm = xmalloc(sizeof(float) * C);
    for (size_t j = 0; j < C; j++) lw.in_norm[j] = lw.post_norm[j] = gw[j];
    const int k = nb == 3 ? 0 : 1, roles[2][3] = {{LIN_Q, LIN_K, LIN_V}, {LIN_GATE, LIN_UP, -1}};
    for (int r = 0; r < LIN_COUNT; r++) { lin[r].in = (int)C; lin[r].out = 1; lin[r].w = xcalloc(C, sizeof(float)); }
    float *wmax = xcalloc(C, sizeof(float));
    for (int b = 0; b < nb; b++) {
        char tn[16];
        snprintf(tn, sizeof tn, "w%d", b);
        size_t n = 0;
        layer_linear *li = &lin[roles[k][b]];
        free(li->w);
        li->w = gold_f32(&g, tn, &n);
        li->out = (int)(n / C);
        for (size_t e = 0; e < n; e++) wmax[e % C] = fmaxf(wmax[e % C], fabsf(li->w[e]));
    }
    float *s = xmalloc(sizeof(float) * 2 * C);
    for (size_t j = 0; j < 2 * C; j++) s[j] = 1.0f;
    smoothquant_scales((int)C, mn, mx, wmax, alpha, log_eq, dt, s + (size_t)k * C);
    smoothquant_apply(&c, &lw, s);
    const double tol = dt == DS_DTYPE_F32 ? 3e-7 : 0;
    CHECK_CLOSE(k == 0 ? lw.in_norm : lw.post_norm, g_out, C, 0, tol);
    CHECK_CLOSE(k == 0 ? lw.post_norm : lw.in_norm, gw, C, 0, 0); /* s = 1: unchanged */
    for (int b = 0; b < nb; b++) {
        char tn[16];
        snprintf(tn, sizeof tn, "w%d_out", b);
        size_t n = 0;
        float *want = gold_f32(&g, tn, &n);
        CHECK(want && n == (size_t)lin[roles[k][b]].out * C);
        if (want) CHECK_CLOSE(lin[roles[k][b]].w, want, n, 0, tol);
        free(want);
    }
    for (int r = 0; r < LIN_COUNT; r++) free(lin[r].w);
    free(lw.in_norm); free(lw.post_norm); free(gw); free(mn); free(mx); free(g_out); free(wmax); free(s);
    gold_close(&g);
}

#define QKV "[\"re:.*q_proj\", \"re:.*k_proj\", \"re:.*v_proj\"]"

/* smoothquant_resolve of a W8A8 recipe whose SmoothQuantModifier has the
 * JSON members `sq` (on [L][nmap] filled with 9s first); the recipe must parse. */
static ds_status resolve(const model_config *c, const char *sq, unsigned char *on) {
    char json[1024];
    snprintf(json, sizeof json, "{\"modifiers\": [{\"SmoothQuantModifier\": {%s}}, "
             "{\"GPTQModifier\": {\"scheme\": \"W8A8\"}}]}", sq);
    recipe r;
    if (recipe_parse(json, "t.json", &r) != DS_OK) return DS_ERR_RUNTIME; /* not USAGE: a test expecting that fails */
    memset(on, 9, (size_t)c->L * (size_t)smoothquant_num_mappings(c));
    const ds_status st = smoothquant_resolve(c, &r, on, 0);
    recipe_free(&r);
    return st;
}

int main(void) {
    (void)g_cases;
    static const char *cases[] = {"f32_a08", "f32_a05", "bf16_a08", "f16_a065", "f32_logeq", "bf16_logeq"};
    for (size_t i = 0; i < DS_ARRAY_LEN(cases); i++) {
        char t[96];
        snprintf(t, sizeof t, "llm-compressor _apply_smoothing golden %s", cases[i]);
        TEST(t) run_case(cases[i]);
    }

    TEST("scales: weight scale 0 -> activation range; clamp 1e-5; alpha 0.5 is sqrt") {
        float mn[3] = {-1.0f, -1e-13f, -4.0f}, mx[3] = {3.0f, 1e-13f, 5.0f}, w[3] = {0.0f, 0.5f, 0.125f}, s[3];
        smoothquant_scales(3, mn, mx, w, 0.5, 0, DS_DTYPE_F32, s);
        CHECK(s[0] == 4.0f);                       /* max - min where ws == 0 */
        CHECK(s[1] == 1e-5f);                      /* clamp */
        CHECK(s[2] == sqrtf(9.0f) / sqrtf(0.25f)); /* 3 / 0.5 */
    }

    TEST("mappings: dense architectures smooth attention and MLP, MoE attention only") {
        model_config d = {.C = 8, .L = 2, .E = 0}, moe = {.C = 8, .L = 2, .E = 4};
        CHECK_EQ_INT(smoothquant_num_mappings(&d), 2);
        CHECK_EQ_INT(smoothquant_num_mappings(&moe), 1);
        CHECK(smoothquant_tensor(&d, "model.layers.1.input_layernorm.weight"));
        CHECK(smoothquant_tensor(&d, "model.layers.0.post_attention_layernorm.weight"));
        CHECK(smoothquant_tensor(&d, "model.layers.0.self_attn.k_proj.weight"));
        CHECK(smoothquant_tensor(&d, "model.layers.0.mlp.up_proj.weight"));
        CHECK(!smoothquant_tensor(&d, "model.layers.0.mlp.down_proj.weight"));
        CHECK(!smoothquant_tensor(&d, "model.layers.0.self_attn.o_proj.weight"));
        CHECK(!smoothquant_tensor(&d, "model.layers.0.self_attn.q_proj.bias"));
        CHECK(!smoothquant_tensor(&d, "model.layers.2.input_layernorm.weight"));
        CHECK(!smoothquant_tensor(&d, "model.norm.weight"));
        CHECK(smoothquant_tensor(&moe, "model.layers.0.input_layernorm.weight"));
        CHECK(!smoothquant_tensor(&moe, "model.layers.0.post_attention_layernorm.weight"));
        CHECK(!smoothquant_tensor(&moe, "model.layers.0.mlp.experts.0.up_proj.weight"));
    }

    TEST("resolve: mappings scoped to a decoder layer; ignore; Qwen3 q_norm/k_norm; Qwen2-MoE shared expert") {
        model_config d = {.arch_name = "LlamaForCausalLM", .arch = ARCH_LLAMA, .C = 8, .F = 16, .L = 3, .NH = 2,
                          .NKV = 1, .HS = 4, .dtype = DS_DTYPE_F32};
        unsigned char on[8];
        /* one layer's norm (exact name), balance by one regex; layer 2's MLP by class name + ignore */
        CHECK_EQ_INT(resolve(&d, "\"mappings\": [[[\"re:.*[qkv]_proj$\"], \"model.layers.1.input_layernorm\"],"
                             "[[\"re:.*gate_proj\", \"re:.*up_proj\"], \"re:.*post_attention_layernorm\"]],"
                             "\"ignore\": [\"re:model\\\\.layers\\\\.2\\\\.(post_attention_layernorm|mlp\\\\..*)$\"]",
                             on), DS_OK);
        const unsigned char want[6] = {0, 1, 1, 1, 0, 0}; /* [layer][attention, MLP] */
        CHECK(!memcmp(on, want, sizeof want));
        /* Qwen3: "re:.*_norm$" also names q_norm and k_norm: refused */
        model_config q3 = d;
        snprintf(q3.arch_name, sizeof q3.arch_name, "Qwen3ForCausalLM");
        q3.arch = ARCH_QWEN3;
        q3.qk_norm = 1;
        CHECK_EQ_INT(resolve(&q3, "\"mappings\": [[" QKV ", \"re:.*_norm$\"]]", on), DS_ERR_USAGE);
        CHECK(strstr(ds_errmsg(), "self_attn.q_norm") != NULL);
        /* by class name: Qwen3RMSNorm names every norm of a layer (4 in Qwen3): refused */
        CHECK_EQ_INT(resolve(&q3, "\"mappings\": [[" QKV ", \"Qwen3RMSNorm\"]]", on), DS_ERR_USAGE);
        CHECK(strstr(ds_errmsg(), "matches both model.layers.0.input_layernorm") != NULL);
        /* a "re:" match that fails (PCRE2 match limit) is the error reported, not "matches no module" */
        CHECK_EQ_INT(resolve(&d, "\"mappings\": [[" QKV ", \"re:(.*.*.*)*\\\\.in_norm$\"]]", on), DS_ERR_USAGE);
        CHECK(strstr(ds_errmsg(), "SmoothQuantModifier.mappings[0][1]: regex") != NULL);
        CHECK(strstr(ds_errmsg(), "match limit") != NULL);
        /* defaults on Qwen2-MoE: attention only, every layer */
        model_config moe = d;
        snprintf(moe.arch_name, sizeof moe.arch_name, "Qwen2MoeForCausalLM");
        moe.arch = ARCH_QWEN2_MOE;
        moe.E = 4; moe.K = 2; moe.IM = 8; moe.IS = 8; moe.sparse_step = 1;
        CHECK_EQ_INT(resolve(&moe, "", on), DS_OK);
        CHECK(on[0] == 1 && on[1] == 1 && on[2] == 1);
    }
    return TEST_REPORT();
}
