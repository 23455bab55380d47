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
 *   Any of them gzip-compressed (read with zlib gzread; plain files too),
 *   streamed a chunk at a time: never the whole file in memory, any size.
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
        if ((unsigned char)s[i] < 0x80) { i++; continue; } /* ASCII: what utf8proc_iterate would accept, faster */
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

/* ---- streaming line reader ----
 * Lines through zlib (transparent for uncompressed files), one decompressed
 * chunk at a time: memory is the chunk plus the longest line, never the file.
 * No int-sized lengths: gzread is asked for LR_CHUNK bytes at a time. */

#define LR_CHUNK ((size_t)1 << 18)

typedef struct line_reader {
    gzFile f;
    const char *path;
    char *buf;          /* decompressed bytes; [pos, end) not returned yet */
    size_t pos, end;
    int eof;
    sbuf acc;           /* a line that spans chunks */
} line_reader;

static ds_status lr_open(line_reader *r, const char *path) {
    memset(r, 0, sizeof *r);
    r->path = path;
    r->f = gzopen(path, "rb");
    if (!r->f) return ds_error(DS_ERR_INPUT, "%s: cannot open", path);
    gzbuffer(r->f, 1 << 17);
    r->buf = xmalloc(LR_CHUNK);
    return DS_OK;
}

static void lr_close(line_reader *r) {
    if (r->f) gzclose(r->f);
    free(r->buf);
    free(r->acc.p);
    memset(r, 0, sizeof *r);
}

static ds_status lr_fill(line_reader *r) {
    int got = gzread(r->f, r->buf, (unsigned)LR_CHUNK);
    int e = 0;
    if (got < 0) {
        const char *msg = gzerror(r->f, &e);
        return ds_error(DS_ERR_INPUT, "%s: read error: %s", r->path, msg ? msg : "?");
    }
    if (got == 0) {
        const char *msg = gzerror(r->f, &e);
        if (e != Z_OK && e != Z_STREAM_END)
            return ds_error(DS_ERR_INPUT, "%s: %s (truncated or corrupt gzip?)", r->path, msg ? msg : "read error");
        r->eof = 1;
    }
    r->pos = 0;
    r->end = (size_t)got;
    return DS_OK;
}

/* Next line without its '\n': *s, *n (valid until the next call; not
 * NUL-terminated, may hold NUL bytes); *got = 0 at the end. A last line
 * without '\n' is a line; the empty rest after a final '\n' is not. */
static ds_status lr_next(line_reader *r, const char **s, size_t *n, int *got) {
    int partial = 0;
    r->acc.n = 0;
    *got = 0;
    for (;;) {
        if (r->pos == r->end) {
            if (r->eof) break;
            ds_status st = lr_fill(r);
            if (st) return st;
            continue;
        }
        char *p = r->buf + r->pos, *nl = memchr(p, '\n', r->end - r->pos);
        if (nl) {
            size_t k = (size_t)(nl - p);
            r->pos += k + 1;
            *got = 1;
            if (!partial) { *s = p; *n = k; return DS_OK; }
            sb_put(&r->acc, p, k);
            break;
        }
        sb_put(&r->acc, p, r->end - r->pos);
        partial = 1;
        r->pos = r->end;
    }
    if (partial) { *s = r->acc.p; *n = r->acc.n; *got = 1; }
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

/* ---- rows ----
 * One loader walks the file's rows in file order in one of three passes:
 *   PASS_ALL   tokenize every usable row, append (dataset_load);
 *   PASS_SCAN  decide which rows are usable, one bit per candidate row
 *              (non-blank JSONL line / .txt document), tokenizing only when
 *              that is the only way to know the row gives >= 1 id;
 *   PASS_KEEP  tokenize only the usable rows listed in keep[] and store each
 *              at its slot; every other row is read past, not parsed.
 * Usable / skipped is decided by the same code in every pass. */

enum { PASS_ALL, PASS_SCAN, PASS_KEEP };

typedef struct keep_item { size_t ord, slot; } keep_item; /* usable-row ordinal -> output slot */

typedef struct loader {
    const char *path;
    const tokenizer *tok;
    const dataset_opts *o;
    int pass;
    ds_dataset *d;
    size_t cap;
    size_t first_skip_line;
    size_t min_ids[2];      /* ids of encode("", add_special 0/1): a lower bound for any text */
    size_t cand;            /* candidate rows seen */
    size_t n_usable;        /* usable rows seen */
    uint64_t *bits;         /* PASS_SCAN sets, PASS_KEEP reads: candidate row is usable */
    size_t bits_words;
    const keep_item *keep;  /* PASS_KEEP: sorted by ord */
    size_t n_keep, k_next, slot;
    int done;               /* PASS_KEEP: every kept row placed */
} loader;

/* A candidate row starts: should the pass look at it? (PASS_KEEP: only the
 * next kept usable row.) */
static int row_begin(loader *L) {
    size_t c = L->cand++;
    if (L->pass != PASS_KEEP) return 1;
    if (c / 64 >= L->bits_words || !(L->bits[c / 64] >> (c % 64) & 1)) return 0; /* past the end: file grew */
    size_t u = L->n_usable++;
    if (L->k_next < L->n_keep && L->keep[L->k_next].ord == u) { L->slot = L->keep[L->k_next].slot; return 1; }
    return 0;
}

/* ids (malloc'd, may be NULL in PASS_SCAN) of the current row, which is usable. */
static ds_status use_row(loader *L, int32_t *ids, size_t n) {
    if (L->pass == PASS_SCAN) {
        size_t c = L->cand - 1;
        if (c / 64 >= L->bits_words) {
            size_t w = L->bits_words ? L->bits_words * 2 : 64;
            while (w <= c / 64) w *= 2;
            L->bits = xrealloc(L->bits, w * sizeof *L->bits);
            memset(L->bits + L->bits_words, 0, (w - L->bits_words) * sizeof *L->bits);
            L->bits_words = w;
        }
        L->bits[c / 64] |= (uint64_t)1 << (c % 64);
        L->n_usable++;
        free(ids);
        return DS_OK;
    }
    if (L->o->max_seq_len > 0 && n > (size_t)L->o->max_seq_len) {
        n = (size_t)L->o->max_seq_len;
        ids = xrealloc(ids, n * sizeof *ids); /* keep only what is used */
    }
    ds_sample *dst;
    if (L->pass == PASS_KEEP) {
        dst = &L->d->rows[L->slot];
        if (++L->k_next == L->n_keep) L->done = 1;
    } else {
        if (L->d->n == L->cap) {
            L->cap = L->cap ? L->cap * 2 : 256;
            L->d->rows = xrealloc(L->d->rows, L->cap * sizeof *L->d->rows);
        }
        dst = &L->d->rows[L->d->n++];
        L->n_usable++;
    }
    dst->ids = ids;
    dst->n = (int32_t)n;
    return DS_OK;
}

static ds_status skip_row(loader *L, size_t line, const char *why) {
    if (L->pass == PASS_KEEP) /* it was usable in the first read */
        return ds_error(DS_ERR_INPUT, "%s:%zu: row changed between the two reads of the file (now: %s)\n"
                        "hint: do not modify the calibration file while doneshot runs", L->path, line, why);
    if (L->d->skipped == 0) L->first_skip_line = line;
    L->d->skipped++;
    if (L->d->skipped <= 3) ds_warn("%s:%zu: skipping row: %s", L->path, line, why);
    return DS_OK;
}

/* A row that needs the tokenizer, and there is none (dataset_opts). */
static ds_status no_tokenizer(const loader *L, size_t line, const char *what) {
    return ds_error(DS_ERR_INPUT, "%s:%zu: a %s row, but the model folder%s%s has no tokenizer.json\n"
                    "hint: copy the model's tokenizer files (tokenizer.json, tokenizer_config.json) into it, or "
                    "give pre-tokenized rows {\"input_ids\": [...]}", L->path, line, what,
                    L->o->model_dir ? " " : "", L->o->model_dir ? L->o->model_dir : "");
}

/* utf8_ok: 1/0 when known, -1 to check s. s may be NULL in PASS_SCAN when
 * min_ids[add_special] > 0 (the row is usable without tokenizing it). */
static ds_status text_row(loader *L, const char *s, size_t n, int utf8_ok, size_t line, int add_special) {
    if (!L->tok) return no_tokenizer(L, line, "text");
    if (n == 0) return skip_row(L, line, "empty");
    if (utf8_ok < 0) utf8_ok = utf8_valid(s, n);
    if (!utf8_ok) return skip_row(L, line, "invalid UTF-8");
    if (L->pass == PASS_SCAN && L->min_ids[add_special != 0] > 0) return use_row(L, NULL, 0);
    int32_t *ids = NULL;
    size_t nid = 0;
    ds_status st = tokenizer_encode(L->tok, s, n, add_special, &ids, &nid);
    if (st) { ds_error_prefix("%s:%zu", L->path, line); return st; }
    if (nid == 0) { free(ids); return skip_row(L, line, "no tokens"); }
    return use_row(L, ids, nid);
}

/* Whether a .txt document must be held in memory to decide / tokenize it. */
static int txt_needs_text(const loader *L) {
    return L->pass != PASS_SCAN || L->min_ids[L->o->add_special != 0] == 0;
}

static ds_status load_txt(loader *L, line_reader *R) {
    size_t line = 0, doc_line = 0, doc_n = 0;
    int in_doc = 0, take = 0, doc_ok = 1, keep_text = txt_needs_text(L);
    sbuf doc = {0};
    ds_status st = DS_OK;
    for (;;) {
        const char *s = NULL;
        size_t n = 0;
        int got;
        if ((st = lr_next(R, &s, &n, &got))) break;
        int blank = 1;
        if (got) {
            line++;
            for (size_t k = 0; k < n; k++)
                if (!strchr(" \t\r\v\f", s[k])) { blank = 0; break; }
        }
        if (!blank) {
            if (!in_doc) {
                in_doc = 1; doc_line = line; doc_n = 0; doc_ok = 1; doc.n = 0;
                take = row_begin(L);
            }
            if (take) { /* the document is the exact text of its lines joined by '\n' */
                if (doc_n) doc_n++;
                doc_n += n;
                doc_ok = doc_ok && utf8_valid(s, n); /* no UTF-8 sequence can span a '\n' */
                if (keep_text) {
                    if (doc.n) sb_put(&doc, "\n", 1);
                    sb_put(&doc, s, n);
                }
            }
        } else if (in_doc) {
            in_doc = 0;
            if (take && (st = text_row(L, keep_text ? doc.p : NULL, doc_n, doc_ok, doc_line, L->o->add_special))) break;
            if (L->done) break;
        }
        if (!got) break;
    }
    free(doc.p);
    return st;
}

static ds_status json_row(loader *L, cJSON *row, size_t line) {
    const char *field = L->o->text_field ? L->o->text_field : "text";
    const cJSON *ids = cJSON_GetObjectItemCaseSensitive(row, "input_ids");
    const cJSON *msgs = cJSON_GetObjectItemCaseSensitive(row, "messages");
    const cJSON *text = cJSON_GetObjectItemCaseSensitive(row, field);
    if (ids) {
        if (!cJSON_IsArray(ids)) return ds_error(DS_ERR_INPUT, "%s:%zu: 'input_ids' is not an array", L->path, line);
        int n = cJSON_GetArraySize(ids), k = 0, vs = L->tok ? tokenizer_vocab_size(L->tok) : L->o->vocab_size;
        if (n == 0) return skip_row(L, line, "empty input_ids");
        int32_t *v = xmalloc((size_t)n * sizeof *v);
        const cJSON *e;
        cJSON_ArrayForEach(e, ids) {
            if (!cJSON_IsNumber(e) || e->valuedouble < 0 || e->valuedouble >= vs || e->valuedouble != (double)(int32_t)e->valuedouble) {
                free(v);
                return ds_error(DS_ERR_INPUT, "%s:%zu: input_ids[%d] is not a token id in [0, %d)", L->path, line, k, vs);
            }
            v[k++] = (int32_t)e->valuedouble;
        }
        return use_row(L, v, (size_t)n);
    }
    if (msgs) {
        if (!L->tok) return no_tokenizer(L, line, "chat (messages)");
        char *mj = cJSON_PrintUnformatted(msgs), *r = NULL;
        ds_status st = dataset_render_chat(L->tok, L->o->model_dir, mj, &r);
        free(mj);
        if (st) { ds_error_prefix("%s:%zu", L->path, line); return st; }
        const char *bos = tokenizer_bos_text(L->tok);
        int has_bos = bos && *bos && strncmp(r, bos, strlen(bos)) == 0;
        st = text_row(L, r, strlen(r), -1, line, has_bos ? 0 : L->o->add_special);
        free(r);
        return st;
    }
    if (!text || cJSON_IsNull(text)) {
        if (!text) return ds_error(DS_ERR_INPUT, "%s:%zu: row has no '%s' field (nor 'messages' or 'input_ids')\n"
                                   "hint: choose the field with the dataset text-field option", L->path, line, field);
        return skip_row(L, line, "null text");
    }
    if (!cJSON_IsString(text)) return ds_error(DS_ERR_INPUT, "%s:%zu: field '%s' is not a string", L->path, line, field);
    return text_row(L, text->valuestring, strlen(text->valuestring), -1, line, L->o->add_special);
}

static ds_status load_jsonl(loader *L, line_reader *R) {
    size_t line = 0;
    while (!L->done) {
        const char *s;
        size_t n;
        int got;
        ds_status st = lr_next(R, &s, &n, &got);
        if (st) return st;
        if (!got) break;
        line++;
        size_t k = 0;
        while (k < n && strchr(" \t\r\v\f", s[k])) k++;
        if (k == n || !row_begin(L)) continue;
        cJSON *row = cJSON_ParseWithLength(s, n);
        if (!cJSON_IsObject(row)) {
            cJSON_Delete(row);
            return ds_error(DS_ERR_INPUT, "%s:%zu: expected one JSON object per line", L->path, line);
        }
        st = json_row(L, row, line);
        cJSON_Delete(row);
        if (st) return st;
    }
    return DS_OK;
}

/* Format by extension (".gz" stripped first); otherwise sniffed: the first
 * character that is not blank (" \t\r\n") is '{' -> JSON lines. */
static ds_status detect_jsonl(const char *path, int *jsonl) {
    char *base = xstrdup(path);
    if (ends_with(base, ".gz")) base[strlen(base) - 3] = 0;
    int known = 1;
    *jsonl = 0;
    if (ends_with(base, ".jsonl") || ends_with(base, ".json")) *jsonl = 1;
    else if (!ends_with(base, ".txt")) known = 0;
    free(base);
    line_reader R;
    ds_status st = lr_open(&R, path); /* also: unreadable files fail here, before any work */
    while (!st && !known) {
        const char *s;
        size_t n, k = 0;
        int got;
        if ((st = lr_next(&R, &s, &n, &got)) || !got) break;
        while (k < n && strchr(" \t\r\n", s[k])) k++;
        if (k < n) { *jsonl = s[k] == '{'; break; }
    }
    lr_close(&R);
    return st;
}

/* One pass over the file. */
static ds_status run_pass(loader *L, int jsonl) {
    line_reader R;
    ds_status st = lr_open(&R, L->path);
    if (st) return st;
    L->cand = L->n_usable = 0;
    L->k_next = 0;
    L->done = L->pass == PASS_KEEP && L->n_keep == 0;
    if (!L->done) st = jsonl ? load_jsonl(L, &R) : load_txt(L, &R);
    if (!st && L->pass == PASS_KEEP && !L->done)
        st = ds_error(DS_ERR_INPUT, "%s: the file has fewer rows than in its first read\n"
                      "hint: do not modify the calibration file while doneshot runs", L->path);
    lr_close(&R);
    return st;
}

static ds_status loader_start(loader *L, const char *path, const tokenizer *tok, const dataset_opts *o, int pass,
                              ds_dataset *out, int *jsonl) {
    memset(L, 0, sizeof *L);
    memset(out, 0, sizeof *out);
    if (!tok && o->vocab_size <= 0)
        return ds_error(DS_ERR_USAGE, "dataset_load: no tokenizer and no vocab_size for pre-tokenized rows");
    *L = (loader){.path = path, .tok = tok, .o = o, .pass = pass, .d = out};
    for (int a = 0; a < 2 && tok; a++) {
        int32_t *ids = NULL;
        if (tokenizer_encode(tok, "", 0, a, &ids, &L->min_ids[a])) L->min_ids[a] = 0; /* unknown: tokenize */
        free(ids);
    }
    return detect_jsonl(path, jsonl);
}

static ds_status loader_scanned(loader *L) {
    if (L->d->skipped)
        ds_warn("%s: skipped %zu row(s) (empty or invalid UTF-8; first at line %zu)", L->path, L->d->skipped,
                L->first_skip_line);
    if (L->n_usable == 0) return ds_error(DS_ERR_INPUT, "%s: no usable rows", L->path);
    return DS_OK;
}

ds_status dataset_load(const char *path, const tokenizer *tok, const dataset_opts *o, ds_dataset *out) {
    dataset_opts def = {0};
    loader L;
    int jsonl = 0;
    ds_status st = loader_start(&L, path, tok, o ? o : &def, PASS_ALL, out, &jsonl);
    if (!st) st = run_pass(&L, jsonl);
    if (!st) st = loader_scanned(&L);
    if (st) dataset_free(out);
    return st;
}

static int keep_cmp(const void *a, const void *b) {
    size_t x = ((const keep_item *)a)->ord, y = ((const keep_item *)b)->ord;
    return x < y ? -1 : x > y;
}

ds_status dataset_load_slice(const char *path, const tokenizer *tok, const dataset_opts *o, uint64_t seed,
                             size_t num_samples, int rank, int world, ds_dataset *out, dataset_slice_info *info) {
    dataset_opts def = {0};
    loader L;
    int jsonl = 0;
    memset(info, 0, sizeof *info);
    memset(out, 0, sizeof *out);
    if (world < 1 || rank < 0 || rank >= world)
        return ds_error(DS_ERR_USAGE, "dataset_load_slice: rank %d of %d ranks", rank, world);
    ds_status st = loader_start(&L, path, tok, o ? o : &def, PASS_SCAN, out, &jsonl);
    if (!st) st = run_pass(&L, jsonl);
    if (!st) st = loader_scanned(&L);
    if (st) { free(L.bits); return st; }
    size_t n = L.n_usable, N = num_samples < n ? num_samples : n, R = (size_t)world, k = (size_t)rank;
    size_t first = N * k / R, count = N * (k + 1) / R - first;
    info->usable = n;
    info->total = N;
    info->first = first;
    keep_item *keep = xmalloc((count ? count : 1) * sizeof *keep);
    size_t *ord = xmalloc((count ? count : 1) * sizeof *ord);
    dataset_shuffle_positions(seed, n, first, count, ord);
    for (size_t i = 0; i < count; i++) keep[i] = (keep_item){.ord = ord[i], .slot = i};
    free(ord);
    qsort(keep, count, sizeof *keep, keep_cmp);
    out->rows = xcalloc(count ? count : 1, sizeof *out->rows);
    out->n = count;
    L.pass = PASS_KEEP;
    L.keep = keep;
    L.n_keep = count;
    st = run_pass(&L, jsonl);
    free(keep);
    free(L.bits);
    if (st) dataset_free(out);
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

/* Small open-addressing map position -> slot (linear probing, backward-shift delete). */
typedef struct pos_map { size_t *key, *val, mask; } pos_map;
#define PM_EMPTY SIZE_MAX

static size_t pm_home(const pos_map *m, size_t key) { return (size_t)((key * 0x9E3779B97F4A7C15ull) >> 17) & m->mask; }

static size_t pm_find(const pos_map *m, size_t key) {
    for (size_t i = pm_home(m, key);; i = (i + 1) & m->mask) {
        if (m->key[i] == key) return i;
        if (m->key[i] == PM_EMPTY) return PM_EMPTY;
    }
}

static void pm_put(pos_map *m, size_t key, size_t val) {
    size_t i = pm_home(m, key);
    while (m->key[i] != PM_EMPTY) i = (i + 1) & m->mask;
    m->key[i] = key;
    m->val[i] = val;
}

static void pm_del(pos_map *m, size_t i) {
    for (size_t j = i;;) {
        m->key[i] = PM_EMPTY;
        for (;;) {
            j = (j + 1) & m->mask;
            if (m->key[j] == PM_EMPTY) return;
            size_t h = pm_home(m, m->key[j]); /* may entry j move into the hole at i? */
            if (i <= j ? (h <= i || h > j) : (h <= i && h > j)) break;
        }
        m->key[i] = m->key[j];
        m->val[i] = m->val[j];
        i = j;
    }
}

void dataset_shuffle_positions(uint64_t seed, size_t n, size_t first, size_t count, size_t *ord) {
    if (count == 0) return;
    pos_map m;
    size_t cap = 16;
    while (cap < 2 * count) cap *= 2;
    m.mask = cap - 1;
    m.key = xmalloc(cap * sizeof *m.key);
    m.val = xmalloc(cap * sizeof *m.val);
    for (size_t i = 0; i < cap; i++) m.key[i] = PM_EMPTY;
    for (size_t i = 0; i < count; i++) pm_put(&m, first + i, i);
    /* dataset_shuffle_take's step for i (= n, n-1, ..., 2) draws splitmix64
     * number n - i + 1 (state seed + (n - i) * gamma before the draw): undo the
     * swaps from the last (i = 2) to the first (i = n), moving the tracked
     * positions with them. */
    const uint64_t gamma = 0x9E3779B97F4A7C15ull;
    uint64_t s = seed + (uint64_t)(n < 2 ? 0 : n - 2) * gamma; /* state before the draw for i = 2 */
    for (size_t i = 2; i <= n; i++, s -= gamma) {
        uint64_t t = s;
        size_t j = (size_t)(splitmix64(&t) % i), x = i - 1;
        if (j == x) continue;
        size_t a = pm_find(&m, x), b = pm_find(&m, j);
        if (a != PM_EMPTY && b != PM_EMPTY) {
            size_t v = m.val[a]; m.val[a] = m.val[b]; m.val[b] = v;
        } else if (a != PM_EMPTY) {
            size_t v = m.val[a]; pm_del(&m, a); pm_put(&m, j, v);
        } else if (b != PM_EMPTY) {
            size_t v = m.val[b]; pm_del(&m, b); pm_put(&m, x, v);
        }
    }
    for (size_t i = 0; i < cap; i++)
        if (m.key[i] != PM_EMPTY) ord[m.val[i]] = m.key[i];
    free(m.key);
    free(m.val);
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
