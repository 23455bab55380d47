/*
 * fuzz_recipe.c - the JSON recipe (recipe_parse: modifiers / stages / bare
 * GPTQModifier, schemes, config_groups, run keys, sizes), then what the
 * pipeline and the checkpoint writer ask of an accepted recipe:
 * recipe_module_targeted over typical module names ("re:" patterns run here)
 * and recipe_quantization_config_json. The input also goes through
 * recipe_parse_size as a --max-shard-size string. Seeds: recipes/.
 */
#include "fuzz_common.h"
#include "recipe.h"

static const char *const k_modules[] = {
    "lm_head", "model.layers.0.self_attn.q_proj", "model.layers.3.mlp.down_proj",
    "model.layers.1.mlp.experts.7.up_proj", "model.layers.2.mlp.gate", "model.layers.0.mlp.shared_expert_gate",
};

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc; (void)argv;
    fz_quiet();
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    char *s = fz_cstr(data, size);
    int64_t bytes;
    (void)recipe_parse_size(s, &bytes);
    recipe r;
    memset(&r, 0, sizeof r);
    if (recipe_parse(s, "fuzz.json", &r) == DS_OK) {
        const char *ign[DS_ARRAY_LEN(k_modules)];
        int n = 0;
        for (size_t i = 0; i < DS_ARRAY_LEN(k_modules); i++) {
            if (!recipe_module_targeted(&r, k_modules[i], "Linear")) ign[n++] = k_modules[i];
            (void)recipe_module_targeted(&r, k_modules[i], "Qwen3MoeSparseMoeBlock");
        }
        char *qc = recipe_quantization_config_json(&r, ign, n);
        free(qc);
    }
    recipe_free(&r);
    free(s);
    return 0;
}
