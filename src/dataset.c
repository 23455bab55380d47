/*
 * dataset.c - calibration datasets (dataset.h): rows -> token id sequences.
 *
 * Formats, chosen by extension (".gz" stripped first; unknown extensions are
 * sniffed: a first non-blank '{' means JSON lines):
 *   .txt    documents separated by blank (empty or whitespace-only) lines;
 *           a document is the exact text between separators, its inner
 *           newlines kept, the separating newlines dropped.
 *   .jsonl / .json   one JSON object per line with either
 *           "input_ids": [ints]   used as-is (checked against the vocab),
 *           "messages": [{role, content}]  rendered through the model's chat
 *                                 template (see below), or
 *           a text field (opts->text_field, default "text").
 *   Any of them gzip-compressed (read with zlib gzread; plain files too).
 * Chat templates are recognised, not interpreted (no Jinja engine): from
 * tokenizer_config.json's chat_template we detect Llama 3 / 3.1
 * (<|start_header_id|>), ChatML (Qwen2, Qwen2.5, Qwen3 with <think>, generic
 * <|im_start|>), Llama 2 / Mistral [INST], and Phi-3 (<|user|>); the output
 * equals transformers' apply_chat_template(tokenize=False,
 * add_generation_prompt=False) for these families (checked in
 * tests/test_dataset.c against goldens). Anything else is a DS_ERR_INPUT
 * suggesting pre-rendered "text" rows. A rendered chat is tokenized with
 * add_special=0 when it already starts with the BOS text (as llm-compressor:
 * apply_chat_template(tokenize=False) then add_special_tokens=False).
 * Skipped with a counted warning (ds_dataset.skipped), never an error:
 * empty rows, rows whose text is not valid UTF-8, blank JSONL lines are
 * ignored silently. Malformed JSON, wrong field types or out-of-range ids
 * are errors naming the file and line.
 */
#include "dataset.h"

#include <cjson/cJSON.h>
#include <stdlib.h>
#include <string.h>
#include <utf8proc.h>
#include <zlib.h>

/* ---- helpers ---- */

typedef struct sbuf { char *p; size_t n, cap; } sbuf;

static void sb_put(sbuf *b, const char *s, size_t n) {
    if (b->n + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->n + n + 1) cap *= 2;
        b->p = xrealloc(b->p, cap);
        b->cap = cap;
    }
    memcpy(b->p + b->n, s, n);
    b->n += n;
    b->p[b->n] = 0;
}

static void sb_puts(sbuf *b, const char *s) { sb_put(b, s, strlen(s)); }

static int utf8_valid(const char *s, size_t n) {
    size_t i = 0;
    while (i < n) {
        utf8proc_int32_t cp;
        utf8proc_ssize_t r = utf8proc_iterate((const utf8proc_uint8_t *)s + i, (utf8proc_ssize_t)(n - i), &cp);
        if (r <= 0) return 0;
        i += (size_t)r;
    }
    return 1;
}

static int ends_with(const char *s, const char *suf) {
    size_t a = strlen(s), b = strlen(suf);
    return a >= b && strcmp(s + a - b, suf) == 0;
}

/* Whole file through zlib (transparent for uncompressed files). */
static ds_status read_all(const char *path, char **out, size_t *len) {
    gzFile f = gzopen(path, "rb");
    if (!f) return ds_error(DS_ERR_INPUT, "%s: cannot open", path);
    gzbuffer(f, 1 << 17);
    size_t cap = 1 << 16, n = 0;
    char *b = xmalloc(cap);
    for (;;) {
        if (cap - n < (1 << 15)) { cap *= 2; b = xrealloc(b, cap); }
        int r = gzread(f, b + n, (unsigned)(cap - n - 1));
        if (r < 0) {
            int e;
            const char *msg = gzerror(f, &e);
            ds_status st = ds_error(DS_ERR_INPUT, "%s: read error: %s", path, msg ? msg : "?");
            free(b);
            gzclose(f);
            return st;
        }
        if (r == 0) break;
        n += (size_t)r;
    }
    int e = 0;
    const char *msg = gzerror(f, &e);
    if (e != Z_OK && e != Z_STREAM_END) {
        ds_status st = ds_error(DS_ERR_INPUT, "%s: %s (truncated or corrupt gzip?)", path, msg ? msg : "read error");
        free(b);
        gzclose(f);
        return st;
    }
    gzclose(f);
    b[n] = 0;
    *out = b;
    *len = n;
    return DS_OK;
}

/* ---- chat templates ---- */

enum { CHAT_NONE, CHAT_LLAMA3, CHAT_LLAMA31, CHAT_CHATML, CHAT_INST_LLAMA2, CHAT_INST_MISTRAL, CHAT_PHI3 };

typedef struct chat_fmt {
    int kind;
    const char *default_system; /* ChatML: system prompt when messages[0] is not system */
    int user_adds_prompt;       /* Qwen2: each user turn ends with "<|im_start|>assistant\n" */
    int think;                  /* Qwen3: <think> blocks for assistant turns after the last user turn */
    const char *bos, *eos;
} chat_fmt;

static int detect_chat(const char *tpl, chat_fmt *f) {
    memset(f, 0, sizeof *f);
    if (!tpl) return CHAT_NONE;
    if (strstr(tpl, "<|start_header_id|>"))
        f->kind = strstr(tpl, "Cutting Knowledge Date") ? CHAT_LLAMA31 : CHAT_LLAMA3;
    else if (strstr(tpl, "<|im_start|>")) {
        f->kind = CHAT_CHATML;
        if (strstr(tpl, "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."))
            f->default_system = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant.";
        else if (strstr(tpl, "set system_message = 'You are a helpful assistant.'")) {
            f->default_system = "You are a helpful assistant.";
            f->user_adds_prompt = 1;
        }
        f->think = strstr(tpl, "<think>") != NULL;
    } else if (strstr(tpl, "[INST]"))
        f->kind = strstr(tpl, "<<SYS>>") ? CHAT_INST_LLAMA2 : CHAT_INST_MISTRAL;
    else if (strstr(tpl, "<|user|>") && strstr(tpl, "<|end|>"))
        f->kind = CHAT_PHI3;
    return f->kind;
}

/* Python str.strip() of ASCII/Unicode whitespace (ASCII subset here). */
static void put_stripped(sbuf *b, const char *s, int left, int right) {
    size_t a = 0, e = strlen(s);
    while (left && a < e && strchr(" \t\n\r\v\f", s[a])) a++;
    while (right && e > a && strchr(" \t\n\r\v\f", s[e - 1])) e--;
    sb_put(b, s + a, e - a);
}

/* One Llama 3 message: <|start_header_id|>role<|end_header_id|>\n\n content <|eot_id|>. */
static void put_llama3_message(sbuf *out, const char *role, const char *content) {
    sb_puts(out, "<|start_header_id|>");
    sb_puts(out, role);
    sb_puts(out, "<|end_header_id|>\n\n");
    put_stripped(out, content, 1, 1);
    sb_puts(out, "<|eot_id|>");
}

static void put_strip_nl(sbuf *b, const char *s, size_t n, int left, int right) {
    size_t a = 0, e = n;
    while (left && a < e && s[a] == '\n') a++;
    while (right && e > a && s[e - 1] == '\n') e--;
    sb_put(b, s + a, e - a);
}

/* Render messages (validated: objects with string role/content). */
static ds_status render_chat(const chat_fmt *f, const cJSON *msgs, sbuf *out) {
    int n = cJSON_GetArraySize(msgs);
    const char *role[512], *content[512];
    if (n == 0) return ds_error(DS_ERR_INPUT, "'messages' is empty");
    if (n > 512) return ds_error(DS_ERR_INPUT, "'messages' has more than 512 entries");
    for (int i = 0; i < n; i++) {
        const cJSON *m = cJSON_GetArrayItem(msgs, i);
        const cJSON *r = cJSON_GetObjectItemCaseSensitive(m, "role"), *c = cJSON_GetObjectItemCaseSensitive(m, "content");
        if (!cJSON_IsString(r) || !cJSON_IsString(c))
            return ds_error(DS_ERR_INPUT, "messages[%d]: expected string 'role' and 'content'", i);
        role[i] = r->valuestring;
        content[i] = c->valuestring;
    }
    const char *bos = f->bos ? f->bos : "", *eos = f->eos ? f->eos : "";
    switch (f->kind) {
    case CHAT_LLAMA3:
        for (int i = 0; i < n; i++) {
            if (i == 0) sb_puts(out, bos);
            put_llama3_message(out, role[i], content[i]);
        }
        break;
    case CHAT_LLAMA31: {
        int first = 0;
        sb_puts(out, bos);
        sb_puts(out, "<|start_header_id|>system<|end_header_id|>\n\n");
        sb_puts(out, "Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n");
        if (!strcmp(role[0], "system")) { put_stripped(out, content[0], 1, 1); first = 1; }
        sb_puts(out, "<|eot_id|>");
        for (int i = first; i < n; i++) put_llama3_message(out, role[i], content[i]);
        break;
    }
    case CHAT_CHATML: {
        int last_user = -1;
        for (int i = 0; i < n; i++)
            if (!strcmp(role[i], "user")) last_user = i;
        if (strcmp(role[0], "system") && f->default_system) {
            sb_puts(out, "<|im_start|>system\n");
            sb_puts(out, f->default_system);
            sb_puts(out, "<|im_end|>\n");
        }
        for (int i = 0; i < n; i++) {
            if (f->user_adds_prompt) { /* Qwen2 template */
                if (!strcmp(role[i], "system") && i == 0) {
                    sb_puts(out, "<|im_start|>system\n");
                    sb_puts(out, content[i]);
                    sb_puts(out, "<|im_end|>\n");
                } else if (!strcmp(role[i], "user")) {
                    sb_puts(out, "<|im_start|>user\n");
                    sb_puts(out, content[i]);
                    sb_puts(out, "<|im_end|>\n<|im_start|>assistant\n");
                } else if (!strcmp(role[i], "assistant")) {
                    sb_puts(out, content[i]);
                    sb_puts(out, "<|im_end|>\n");
                }
                continue;
            }
            if (f->think && !strcmp(role[i], "assistant")) {
                const char *c = content[i], *end = strstr(c, "</think>");
                sbuf reason = {0};
                const char *body = c;
                if (end) {
                    /* reasoning = before </think>, rstrip \n, after last <think>, lstrip \n */
                    const char *st = c, *p;
                    for (p = c; (p = strstr(p, "<think>")) && p < end; p++) st = p + 7;
                    size_t rl = (size_t)(end - st);
                    while (rl && st[rl - 1] == '\n') rl--;
                    while (rl && *st == '\n') { st++; rl--; }
                    sb_put(&reason, st, rl);
                    const char *q = end, *last = end;
                    while ((q = strstr(q + 1, "</think>"))) last = q;
                    body = last + 8;
                    while (*body == '\n') body++;
                }
                sb_puts(out, "<|im_start|>assistant\n");
                if (i > last_user && (i == n - 1 || (reason.n > 0))) {
                    sb_puts(out, "<think>\n");
                    put_strip_nl(out, reason.p ? reason.p : "", reason.n, 1, 1);
                    sb_puts(out, "\n</think>\n\n");
                    while (*body == '\n') body++;
                }
                sb_puts(out, body);
                sb_puts(out, "<|im_end|>\n");
                free(reason.p);
                continue;
            }
            sb_puts(out, "<|im_start|>");
            sb_puts(out, role[i]);
            sb_puts(out, "\n");
            sb_puts(out, content[i]);
            sb_puts(out, "<|im_end|>\n");
        }
        break;
    }
    case CHAT_INST_LLAMA2: {
        int first = 0;
        const char *sys = NULL;
        if (!strcmp(role[0], "system")) { sys = content[0]; first = 1; }
        for (int i = first; i < n; i++) {
            int want_user = (i - first) % 2 == 0;
            if ((!strcmp(role[i], "user")) != want_user)
                return ds_error(DS_ERR_INPUT, "messages: roles must alternate user/assistant/user/...");
            if (!strcmp(role[i], "user")) {
                sbuf c = {0};
                if (i == first && sys) {
                    sb_puts(&c, "<<SYS>>\n");
                    sb_puts(&c, sys);
                    sb_puts(&c, "\n<</SYS>>\n\n");
                }
                sb_puts(&c, content[i]);
                sb_puts(out, bos);
                sb_puts(out, "[INST] ");
                put_stripped(out, c.p, 1, 1);
                sb_puts(out, " [/INST]");
                free(c.p);
            } else if (!strcmp(role[i], "assistant")) {
                sb_puts(out, " ");
                put_stripped(out, content[i], 1, 1);
                sb_puts(out, " ");
                sb_puts(out, eos);
            }
        }
        break;
    }
    case CHAT_INST_MISTRAL:
        sb_puts(out, bos);
        for (int i = 0; i < n; i++) {
            if ((!strcmp(role[i], "user")) != (i % 2 == 0))
                return ds_error(DS_ERR_INPUT, "messages: roles must alternate user/assistant/user/...");
            if (!strcmp(role[i], "user")) {
                sb_puts(out, "[INST] ");
                sb_puts(out, content[i]);
                sb_puts(out, " [/INST]");
            } else if (!strcmp(role[i], "assistant")) {
                sb_puts(out, content[i]);
                sb_puts(out, eos);
            } else
                return ds_error(DS_ERR_INPUT, "messages: only user and assistant roles are supported by this template");
        }
        break;
    case CHAT_PHI3:
        for (int i = 0; i < n; i++) {
            if (strcmp(role[i], "system") && strcmp(role[i], "user") && strcmp(role[i], "assistant")) continue;
            sb_puts(out, "<|");
            sb_puts(out, role[i]);
            sb_puts(out, "|>\n");
            sb_puts(out, content[i]);
            sb_puts(out, "<|end|>\n");
        }
        sb_puts(out, eos);
        break;
    default:
        return ds_error(DS_ERR_INPUT, "no supported chat template");
    }
    return DS_OK;
}

ds_status dataset_render_chat(const tokenizer *tok, const char *model_dir, const char *messages_json,
                              char **out) {
    *out = NULL;
    char *tpl_owned = NULL;
    const char *tpl = tok ? tokenizer_chat_template(tok) : NULL;
    if (!tpl && model_dir) {
        char *p = ds_path_join(model_dir, "tokenizer_config.json"), *buf = NULL;
        size_t len;
        if (ds_file_exists(p) && ds_read_file(p, &buf, &len) == DS_OK) {
            cJSON *cfg = cJSON_ParseWithLength(buf, len);
            const cJSON *ct = cJSON_GetObjectItemCaseSensitive(cfg, "chat_template");
            if (cJSON_IsString(ct)) tpl = tpl_owned = xstrdup(ct->valuestring);
            cJSON_Delete(cfg);
        }
        free(buf);
        free(p);
    }
    chat_fmt f;
    if (!detect_chat(tpl, &f)) {
        free(tpl_owned);
        return ds_error(DS_ERR_INPUT, "%s chat template (tokenizer_config.json chat_template) for 'messages' rows\n"
                                      "hint: supported: Llama 3 <|start_header_id|>, ChatML/Qwen <|im_start|>, "
                                      "Llama 2/Mistral [INST], Phi-3 <|user|>; otherwise pre-render the chats "
                                      "(apply_chat_template(tokenize=False)) into a \"text\" field",
                        tpl ? "unrecognised" : "no");
    }
    free(tpl_owned);
    f.bos = tok ? tokenizer_bos_text(tok) : NULL;
    f.eos = tok ? tokenizer_eos_text(tok) : NULL;
    cJSON *msgs = cJSON_Parse(messages_json);
    if (!cJSON_IsArray(msgs)) {
        cJSON_Delete(msgs);
        return ds_error(DS_ERR_INPUT, "'messages' is not a JSON array");
    }
    sbuf b = {0};
    ds_status st = render_chat(&f, msgs, &b);
    cJSON_Delete(msgs);
    if (st) { free(b.p); return st; }
    if (!b.p) sb_put(&b, "", 0);
    *out = b.p;
    return DS_OK;
}

/* ---- rows ---- */

typedef struct loader {
    const char *path;
    const tokenizer *tok;
    const dataset_opts *o;
    ds_dataset *d;
    size_t cap;
    size_t first_skip_line;
} loader;

static void add_row(loader *L, int32_t *ids, size_t n) {
    if (L->o->max_seq_len > 0 && (long)n > L->o->max_seq_len) n = (size_t)L->o->max_seq_len;
    if (L->d->n == L->cap) {
        L->cap = L->cap ? L->cap * 2 : 256;
        L->d->rows = xrealloc(L->d->rows, L->cap * sizeof *L->d->rows);
    }
    L->d->rows[L->d->n].ids = ids;
    L->d->rows[L->d->n].n = (int32_t)n;
    L->d->n++;
}

static void skip_row(loader *L, size_t line, const char *why) {
    if (L->d->skipped == 0) L->first_skip_line = line;
    L->d->skipped++;
    if (L->d->skipped <= 3) ds_warn("%s:%zu: skipping row: %s", L->path, line, why);
}

static ds_status text_row(loader *L, const char *s, size_t n, size_t line, int add_special) {
    if (n == 0) { skip_row(L, line, "empty"); return DS_OK; }
    if (!utf8_valid(s, n)) { skip_row(L, line, "invalid UTF-8"); return DS_OK; }
    int32_t *ids = NULL;
    size_t nid = 0;
    ds_status st = tokenizer_encode(L->tok, s, n, add_special, &ids, &nid);
    if (st) { ds_error_prefix("%s:%zu", L->path, line); return st; }
    if (nid == 0) { free(ids); skip_row(L, line, "no tokens"); return DS_OK; }
    add_row(L, ids, nid);
    return DS_OK;
}

static ds_status load_txt(loader *L, const char *buf, size_t len) {
    size_t i = 0, line = 1, doc_start = 0, doc_end = 0, doc_line = 0;
    int in_doc = 0;
    while (i <= len) {
        size_t e = i;
        while (e < len && buf[e] != '\n') e++;
        int blank = 1;
        for (size_t k = i; k < e; k++)
            if (!strchr(" \t\r\v\f", buf[k])) { blank = 0; break; }
        if (!blank) {
            if (!in_doc) { in_doc = 1; doc_start = i; doc_line = line; }
            doc_end = e;
        } else if (in_doc) {
            ds_status st = text_row(L, buf + doc_start, doc_end - doc_start, doc_line, L->o->add_special);
            if (st) return st;
            in_doc = 0;
        }
        if (e >= len) break;
        i = e + 1;
        line++;
    }
    if (in_doc) return text_row(L, buf + doc_start, doc_end - doc_start, doc_line, L->o->add_special);
    return DS_OK;
}

static ds_status json_row(loader *L, cJSON *row, size_t line) {
    const char *field = L->o->text_field ? L->o->text_field : "text";
    const cJSON *ids = cJSON_GetObjectItemCaseSensitive(row, "input_ids");
    const cJSON *msgs = cJSON_GetObjectItemCaseSensitive(row, "messages");
    const cJSON *text = cJSON_GetObjectItemCaseSensitive(row, field);
    if (ids) {
        if (!cJSON_IsArray(ids)) return ds_error(DS_ERR_INPUT, "%s:%zu: 'input_ids' is not an array", L->path, line);
        int n = cJSON_GetArraySize(ids), k = 0, vs = tokenizer_vocab_size(L->tok);
        if (n == 0) { skip_row(L, line, "empty input_ids"); return DS_OK; }
        int32_t *v = xmalloc((size_t)n * sizeof *v);
        const cJSON *e;
        cJSON_ArrayForEach(e, ids) {
            if (!cJSON_IsNumber(e) || e->valuedouble < 0 || e->valuedouble >= vs || e->valuedouble != (double)(int32_t)e->valuedouble) {
                free(v);
                return ds_error(DS_ERR_INPUT, "%s:%zu: input_ids[%d] is not a token id in [0, %d)", L->path, line, k, vs);
            }
            v[k++] = (int32_t)e->valuedouble;
        }
        add_row(L, v, (size_t)n);
        return DS_OK;
    }
    if (msgs) {
        char *mj = cJSON_PrintUnformatted(msgs), *r = NULL;
        ds_status st = dataset_render_chat(L->tok, L->o->model_dir, mj, &r);
        free(mj);
        if (st) { ds_error_prefix("%s:%zu", L->path, line); return st; }
        const char *bos = tokenizer_bos_text(L->tok);
        int has_bos = bos && *bos && strncmp(r, bos, strlen(bos)) == 0;
        st = text_row(L, r, strlen(r), line, has_bos ? 0 : L->o->add_special);
        free(r);
        return st;
    }
    if (!text || cJSON_IsNull(text)) {
        if (!text) return ds_error(DS_ERR_INPUT, "%s:%zu: row has no '%s' field (nor 'messages' or 'input_ids')\n"
                                   "hint: choose the field with the dataset text-field option", L->path, line, field);
        skip_row(L, line, "null text");
        return DS_OK;
    }
    if (!cJSON_IsString(text)) return ds_error(DS_ERR_INPUT, "%s:%zu: field '%s' is not a string", L->path, line, field);
    return text_row(L, text->valuestring, strlen(text->valuestring), line, L->o->add_special);
}

static ds_status load_jsonl(loader *L, char *buf, size_t len) {
    size_t i = 0, line = 1;
    while (i < len) {
        size_t e = i;
        while (e < len && buf[e] != '\n') e++;
        size_t k = i;
        while (k < e && strchr(" \t\r\v\f", buf[k])) k++;
        if (k < e) {
            cJSON *row = cJSON_ParseWithLength(buf + i, e - i);
            if (!cJSON_IsObject(row)) {
                cJSON_Delete(row);
                return ds_error(DS_ERR_INPUT, "%s:%zu: expected one JSON object per line", L->path, line);
            }
            ds_status st = json_row(L, row, line);
            cJSON_Delete(row);
            if (st) return st;
        }
        i = e + 1;
        line++;
    }
    return DS_OK;
}

ds_status dataset_load(const char *path, const tokenizer *tok, const dataset_opts *o, ds_dataset *out) {
    memset(out, 0, sizeof *out);
    dataset_opts def = {0};
    if (!o) o = &def;
    if (!tok) return ds_error(DS_ERR_INPUT, "dataset_load: no tokenizer");
    char *buf = NULL, *base = xstrdup(path);
    size_t len = 0;
    ds_status st = read_all(path, &buf, &len);
    if (st) goto done;
    if (ends_with(base, ".gz")) base[strlen(base) - 3] = 0;
    int jsonl;
    if (ends_with(base, ".jsonl") || ends_with(base, ".json")) jsonl = 1;
    else if (ends_with(base, ".txt")) jsonl = 0;
    else {
        size_t k = 0;
        while (k < len && strchr(" \t\r\n", buf[k])) k++;
        jsonl = k < len && buf[k] == '{';
    }
    loader L = {.path = path, .tok = tok, .o = o, .d = out};
    st = jsonl ? load_jsonl(&L, buf, len) : load_txt(&L, buf, len);
    if (st) { dataset_free(out); goto done; }
    if (out->skipped)
        ds_warn("%s: skipped %zu row(s) (empty or invalid UTF-8; first at line %zu)", path, out->skipped, L.first_skip_line);
    if (out->n == 0) {
        st = ds_error(DS_ERR_INPUT, "%s: no usable rows", path);
        dataset_free(out);
    }
done:
    free(buf);
    free(base);
    return st;
}

void dataset_free(ds_dataset *d) {
    if (!d) return;
    for (size_t i = 0; i < d->n; i++) free(d->rows[i].ids);
    free(d->rows);
    memset(d, 0, sizeof *d);
}

/* ---- shuffle ---- */

static uint64_t splitmix64(uint64_t *s) {
    uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

void dataset_shuffle_take(ds_dataset *d, uint64_t seed, size_t n) {
    uint64_t s = seed;
    for (size_t i = d->n; i > 1; i--) {
        size_t j = (size_t)(splitmix64(&s) % i); /* modulo bias < 2^-40 for real sizes */
        ds_sample t = d->rows[i - 1];
        d->rows[i - 1] = d->rows[j];
        d->rows[j] = t;
    }
    if (n < d->n) {
        for (size_t i = n; i < d->n; i++) free(d->rows[i].ids);
        d->n = n;
    }
}
