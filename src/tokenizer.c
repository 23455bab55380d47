/*
 * tokenizer.c - Hugging Face tokenizer.json in C: loading and the encode /
 * decode pipelines of HF tokenizers (tokenizer/mod.rs, added_vocabulary.rs,
 * normalizers, pre_tokenizers, processors/template.rs, decoders), following
 * docs/model-and-tokenizer.md section 4:
 *   added tokens (normalized: false) -> normalizer -> added tokens
 *   (normalized: true, matched on their normalized content) -> pre-tokenizer
 *   -> BPE model (tokenizer_bpe.c) -> post-processor (BOS/EOS).
 * Supported components: model BPE; normalizers NFC/NFD/NFKC/NFKD, Prepend,
 * Replace(String), Lowercase, Sequence; pre-tokenizers Split(Regex|String,
 * Isolated), ByteLevel, Metaspace, Sequence; post-processors
 * TemplateProcessing, ByteLevel, Bert/Roberta, Sequence; decoders ByteLevel,
 * Replace, ByteFallback, Fuse, Strip, Metaspace, Sequence. Anything else is a
 * DS_ERR_INPUT naming the component. transformers' LlamaTokenizer(Fast)
 * rebuild of the template from tokenizer_config.json add_bos_token /
 * add_eos_token (v4 behaviour) is honoured.
 * Regexes run in PCRE2 (UTF+UCP, JIT) with \s / \S rewritten to
 * \p{White_Space} / \P{White_Space} to match Oniguruma. Invalid UTF-8 input
 * bytes are replaced by U+FFFD (one per bad byte) before encoding.
 * Not thread-safe per tokenizer: encode updates a word cache and uses one
 * JIT stack; use one tokenizer per thread.
 */
#include "tokenizer.h"
#include "tokenizer_bpe.h"

#include <cjson/cJSON.h>
#include <stdlib.h>
#include <string.h>
#include <utf8proc.h>
#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

/* ---- component descriptions ---- */

enum { NORM_NFC, NORM_NFD, NORM_NFKC, NORM_NFKD, NORM_PREPEND, NORM_REPLACE, NORM_LOWER };
typedef struct norm_step { int kind; char *a, *b; } norm_step;

enum { PRE_SPLIT, PRE_BYTELEVEL, PRE_METASPACE };
enum { SCHEME_ALWAYS, SCHEME_FIRST, SCHEME_NEVER };
typedef struct pre_step {
    int kind;
    pcre2_code *re;        /* Split pattern, or ByteLevel's GPT-2 regex when use_regex */
    int add_prefix_space;  /* ByteLevel */
    char *repl;            /* Metaspace replacement (UTF-8) */
    int scheme, split;     /* Metaspace */
} pre_step;

enum { DEC_BYTELEVEL, DEC_REPLACE, DEC_BYTEFALLBACK, DEC_FUSE, DEC_STRIP, DEC_METASPACE };
typedef struct dec_step { int kind; char *a, *b; int start, stop, scheme; } dec_step;

typedef struct tok_trie_node { int32_t child, sibling, tok; unsigned char c; } tok_trie_node;
typedef struct tok_trie {
    tok_trie_node *nodes; size_t n, cap;
    int32_t root[256];
} tok_trie;

typedef struct added_tok {
    int32_t id;
    char *content; size_t len;
    int special, lstrip, rstrip, single_word, normalized;
} added_tok;

enum { MAX_PRE = 8, MAX_NORM = 8, MAX_DEC = 8 };

struct tokenizer {
    bpe_model bpe;
    int32_t n_ids;                 /* max id + 1 */
    uint32_t *tok_off, *tok_len;   /* (n_ids) id -> token string in tok_arena */
    uint8_t *tok_has, *tok_special;/* (n_ids) */
    tok_buf tok_arena;
    added_tok *added; int n_added;
    tok_trie trie_raw, trie_norm;
    norm_step norm[MAX_NORM]; int n_norm;
    pre_step pre[MAX_PRE]; int n_pre;
    dec_step dec[MAX_DEC]; int n_dec; int has_decoder;
    int32_t prefix[8], suffix[8]; int n_prefix, n_suffix;
    int32_t bos_id, eos_id;
    char *bos_text, *eos_text, *chat_template;
    pcre2_jit_stack *jit_stack;
    pcre2_match_context *mctx;
};

/* ---- GPT-2 bytes_to_unicode ---- */

static int bl_byte_cp[256];
static int bl_cp_byte[0x144];

static void bl_init(void) {
    if (bl_byte_cp['!']) return;
    int n = 0;
    for (int i = 0; i < 0x144; i++) bl_cp_byte[i] = -1;
    for (int b = 0; b < 256; b++) {
        int keep = (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE);
        bl_byte_cp[b] = keep ? b : 0x100 + n++;
        bl_cp_byte[bl_byte_cp[b]] = b;
    }
}

/* Decode one UTF-8 char of valid text at s (n bytes available). */
static int32_t utf8_cp(const char *s, size_t n, size_t *cl) {
    utf8proc_int32_t cp = -1;
    utf8proc_ssize_t r = utf8proc_iterate((const utf8proc_uint8_t *)s, (utf8proc_ssize_t)n, &cp);
    if (r <= 0) { *cl = 1; return -1; }
    *cl = (size_t)r;
    return cp;
}

/* Byte-level string (vocab entry) -> raw bytes; 0 if a char is outside the map. */
static int bl_decode(const char *s, size_t n, tok_buf *out) {
    out->n = 0;
    for (size_t i = 0; i < n;) {
        size_t cl;
        int32_t cp = utf8_cp(s + i, n - i, &cl);
        if (cp < 0 || cp >= 0x144 || bl_cp_byte[cp] < 0) return 0;
        char b = (char)bl_cp_byte[cp];
        tok_buf_put(out, &b, 1);
        i += cl;
    }
    return 1;
}

/* ---- character classes (Rust char::is_whitespace, regex \w) ---- */

static int is_ws_cp(int32_t c) {
    return (c >= 9 && c <= 13) || c == 32 || c == 0x85 || c == 0xA0 || c == 0x1680 ||
           (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F ||
           c == 0x205F || c == 0x3000;
}

static int is_word_cp(int32_t c) {
    if (c < 0) return 0;
    if (c < 128) return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_';
    utf8proc_category_t k = utf8proc_category(c);
    return (k >= UTF8PROC_CATEGORY_LU && k <= UTF8PROC_CATEGORY_ME) || k == UTF8PROC_CATEGORY_ND ||
           k == UTF8PROC_CATEGORY_NL || k == UTF8PROC_CATEGORY_PC;
}

/* Code point of the char ending at s[end-1] (valid UTF-8), its start in *st. */
static int32_t utf8_prev_cp(const char *s, size_t end, size_t *st) {
    size_t i = end;
    do { i--; } while (i > 0 && ((unsigned char)s[i] & 0xC0) == 0x80);
    size_t cl;
    *st = i;
    return utf8_cp(s + i, end - i, &cl);
}

/* ---- added-token trie (leftmost-longest) ---- */

static void trie_init(tok_trie *t) {
    memset(t, 0, sizeof *t);
    for (int i = 0; i < 256; i++) t->root[i] = -1;
}

static int32_t trie_new(tok_trie *t, unsigned char c) {
    if (t->n == t->cap) {
        t->cap = t->cap ? t->cap * 2 : 256;
        t->nodes = xrealloc(t->nodes, t->cap * sizeof *t->nodes);
    }
    t->nodes[t->n] = (tok_trie_node){-1, -1, -1, c};
    return (int32_t)t->n++;
}

static void trie_add(tok_trie *t, const char *s, size_t n, int32_t tok) {
    if (n == 0) return;
    unsigned char c0 = (unsigned char)s[0];
    if (t->root[c0] < 0) t->root[c0] = trie_new(t, c0);
    int32_t node = t->root[c0];
    for (size_t i = 1; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        int32_t ch = t->nodes[node].child;
        while (ch >= 0 && t->nodes[ch].c != c) ch = t->nodes[ch].sibling;
        if (ch < 0) {
            ch = trie_new(t, c);
            t->nodes[ch].sibling = t->nodes[node].child;
            t->nodes[node].child = ch;
        }
        node = ch;
    }
    if (t->nodes[node].tok < 0) t->nodes[node].tok = tok;
}

/* Longest token starting at s[i]: its index, length in *len; -1 if none. */
static int32_t trie_longest(const tok_trie *t, const char *s, size_t n, size_t i, size_t *len) {
    int32_t node = t->root[(unsigned char)s[i]], best = -1;
    size_t k = i + 1;
    while (node >= 0) {
        if (t->nodes[node].tok >= 0) { best = t->nodes[node].tok; *len = k - i; }
        if (k >= n) break;
        unsigned char c = (unsigned char)s[k++];
        int32_t ch = t->nodes[node].child;
        while (ch >= 0 && t->nodes[ch].c != c) ch = t->nodes[ch].sibling;
        node = ch;
    }
    return best;
}

/* Next added-token match in s[scan..n) (AddedVocabulary::find_matches).
 * ms, me: the span incl. lstrip/rstrip (ms >= start_off); *scan moves past
 * the raw match. Returns the added_tok index or -1 when none is left. */
static int32_t added_next(const tokenizer *t, const tok_trie *tr, const char *s, size_t n,
                          size_t *scan, size_t start_off, size_t *ms, size_t *me) {
    for (size_t i = *scan; i < n; i++) {
        if (tr->root[(unsigned char)s[i]] < 0) continue;
        size_t len = 0;
        int32_t k = trie_longest(tr, s, n, i, &len);
        if (k < 0) continue;
        const added_tok *a = &t->added[k];
        size_t st = i, en = i + len;
        *scan = en;
        if (a->single_word) {
            size_t ps, cl;
            int before = st > 0 && is_word_cp(utf8_prev_cp(s, st, &ps));
            int after = en < n && is_word_cp(utf8_cp(s + en, n - en, &cl));
            if (before || after) { i = en - 1; continue; }
        }
        if (a->lstrip) {
            while (st > start_off) {
                size_t ps;
                if (!is_ws_cp(utf8_prev_cp(s, st, &ps))) break;
                st = ps;
            }
        }
        if (a->rstrip) {
            while (en < n) {
                size_t cl;
                if (!is_ws_cp(utf8_cp(s + en, n - en, &cl))) break;
                en += cl;
            }
        }
        if (st < start_off) st = start_off;
        *ms = st; *me = en;
        return k;
    }
    *scan = n;
    return -1;
}

/* ---- encode ---- */

typedef struct enc_ctx {
    const tokenizer *t;
    tok_ids *out;
    bpe_scratch bs;
    tok_buf pre_buf[MAX_PRE];
    tok_buf nbuf[2];
    pcre2_match_data *md;
    int err;
} enc_ctx;

static void pretok(enc_ctx *c, int level, const char *s, size_t n, int first);

/* Split/Isolated: matches and the gaps between them are pieces. */
static void regex_split(enc_ctx *c, const pcre2_code *re, int level, const char *s, size_t n, int first) {
    size_t pos = 0, last = 0;
    while (pos < n) {
        int rc = pcre2_match(re, (PCRE2_SPTR)s, n, pos, PCRE2_NO_UTF_CHECK, c->md, c->t->mctx);
        if (rc == PCRE2_ERROR_NOMATCH) break;
        if (rc < 0) { c->err = rc; break; }
        PCRE2_SIZE *ov = pcre2_get_ovector_pointer(c->md);
        size_t ms = ov[0], me = ov[1];
        if (me <= ms) { pos = ms + utf8_len((unsigned char)s[ms]); continue; }
        if (ms > last) pretok(c, level + 1, s + last, ms - last, first && last == 0);
        pretok(c, level + 1, s + ms, me - ms, first && ms == 0);
        last = pos = me;
    }
    if (last < n) pretok(c, level + 1, s + last, n - last, first && last == 0);
}

static void pretok(enc_ctx *c, int level, const char *s, size_t n, int first) {
    const tokenizer *t = c->t;
    if (n == 0) return;
    if (level == t->n_pre) { bpe_word(&t->bpe, &c->bs, s, n, c->out); return; }
    const pre_step *p = &t->pre[level];
    tok_buf *b = &c->pre_buf[level];
    switch (p->kind) {
    case PRE_SPLIT:
        regex_split(c, p->re, level, s, n, first);
        break;
    case PRE_BYTELEVEL:
        if (p->add_prefix_space && s[0] != ' ') {
            b->n = 0;
            tok_buf_put(b, " ", 1);
            tok_buf_put(b, s, n);
            s = b->p; n = b->n;
        }
        if (p->re) regex_split(c, p->re, level, s, n, first);
        else pretok(c, level + 1, s, n, first);
        break;
    case PRE_METASPACE: {
        size_t rl = strlen(p->repl);
        b->n = 0;
        int pre = p->scheme == SCHEME_ALWAYS || (p->scheme == SCHEME_FIRST && first);
        /* after the ' ' -> repl replacement: prepend unless it starts with repl */
        if (pre && s[0] != ' ' && !(n >= rl && memcmp(s, p->repl, rl) == 0)) tok_buf_put(b, p->repl, rl);
        for (size_t i = 0; i < n; i++) {
            if (s[i] == ' ') tok_buf_put(b, p->repl, rl);
            else tok_buf_put(b, s + i, 1);
        }
        if (!p->split) { pretok(c, level + 1, b->p, b->n, first); break; }
        size_t st = 0;
        for (size_t i = 1; i + rl <= b->n; i++) {
            if (memcmp(b->p + i, p->repl, rl) == 0) {
                pretok(c, level + 1, b->p + st, i - st, first && st == 0);
                st = i;
            }
        }
        pretok(c, level + 1, b->p + st, b->n - st, first && st == 0);
        break;
    }
    }
}

static int all_ascii(const char *s, size_t n) {
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)s[i] >= 0x80) return 0;
    return 1;
}

/* Apply the normalizer chain; returns a pointer to the result (s itself,
 * or one of c->nbuf) and its length in *on. */
static const char *normalize(const tokenizer *t, tok_buf nbuf[2], const char *s, size_t n, size_t *on) {
    int cur = 0;
    for (int k = 0; k < t->n_norm; k++) {
        const norm_step *st = &t->norm[k];
        tok_buf *o = &nbuf[cur];
        o->n = 0;
        switch (st->kind) {
        case NORM_NFC: case NORM_NFD: case NORM_NFKC: case NORM_NFKD: {
            if (all_ascii(s, n)) continue;
            int opt = UTF8PROC_STABLE;
            opt |= (st->kind == NORM_NFC || st->kind == NORM_NFKC) ? UTF8PROC_COMPOSE : UTF8PROC_DECOMPOSE;
            if (st->kind == NORM_NFKC || st->kind == NORM_NFKD) opt |= UTF8PROC_COMPAT;
            utf8proc_uint8_t *dst = NULL;
            utf8proc_ssize_t r = utf8proc_map((const utf8proc_uint8_t *)s, (utf8proc_ssize_t)n, &dst,
                                              (utf8proc_option_t)opt);
            if (r < 0) { free(dst); continue; }
            tok_buf_put(o, dst, (size_t)r);
            free(dst);
            break;
        }
        case NORM_PREPEND:
            if (n == 0) continue;
            tok_buf_put(o, st->a, strlen(st->a));
            tok_buf_put(o, s, n);
            break;
        case NORM_REPLACE: {
            size_t al = strlen(st->a), bl = strlen(st->b);
            if (al == 0) continue;
            for (size_t i = 0; i < n;) {
                if (i + al <= n && memcmp(s + i, st->a, al) == 0) { tok_buf_put(o, st->b, bl); i += al; }
                else tok_buf_put(o, s + i++, 1);
            }
            break;
        }
        case NORM_LOWER:
            for (size_t i = 0; i < n;) {
                size_t cl;
                int32_t cp = utf8_cp(s + i, n - i, &cl);
                utf8proc_uint8_t u[4];
                utf8proc_ssize_t w = utf8proc_encode_char(utf8proc_tolower(cp), u);
                tok_buf_put(o, u, (size_t)w);
                i += cl;
            }
            break;
        }
        tok_buf_reserve(o, 0);
        s = o->p; n = o->n;
        cur ^= 1;
    }
    *on = n;
    return s;
}

/* One segment left by the raw added-token pass: normalize, match
 * normalized added tokens, pre-tokenize, BPE. */
static void encode_segment(enc_ctx *c, const char *s, size_t n, int first) {
    const tokenizer *t = c->t;
    size_t nn;
    const char *ns = normalize(t, c->nbuf, s, n, &nn);
    if (t->trie_norm.n == 0) { pretok(c, 0, ns, nn, first); return; }
    size_t scan = 0, off = 0, ms, me;
    int32_t k;
    while ((k = added_next(t, &t->trie_norm, ns, nn, &scan, off, &ms, &me)) >= 0) {
        if (ms > off) pretok(c, 0, ns + off, ms - off, first && off == 0);
        tok_ids_push(c->out, t->added[k].id);
        off = me;
        if (scan < off) scan = off;
    }
    if (off < nn) pretok(c, 0, ns + off, nn - off, first && off == 0);
}

/* Copy of text with invalid UTF-8 bytes replaced by U+FFFD; NULL if valid. */
static char *utf8_repair(const char *s, size_t n, size_t *on) {
    size_t i = 0;
    tok_buf b = {0};
    int bad = 0;
    while (i < n) {
        utf8proc_int32_t cp;
        utf8proc_ssize_t r = utf8proc_iterate((const utf8proc_uint8_t *)s + i, (utf8proc_ssize_t)(n - i), &cp);
        if (r > 0) {
            if (bad) tok_buf_put(&b, s + i, (size_t)r);
            i += (size_t)r;
            continue;
        }
        if (!bad) { bad = 1; tok_buf_put(&b, s, i); }
        tok_buf_put(&b, "\xEF\xBF\xBD", 3);
        i++;
    }
    if (!bad) return NULL;
    *on = b.n;
    return b.p;
}

ds_status tokenizer_encode(const tokenizer *t, const char *text, size_t len, int add_special,
                           int32_t **ids, size_t *n) {
    *ids = NULL; *n = 0;
    if (!t || (!text && len)) return ds_error(DS_ERR_INPUT, "tokenizer_encode: NULL argument");
    size_t rlen = 0;
    char *fixed = utf8_repair(text ? text : "", len, &rlen);
    const char *s = fixed ? fixed : text;
    size_t sn = fixed ? rlen : len;
    tok_ids out = {0};
    enc_ctx c = {.t = t, .out = &out};
    if (t->n_pre) {
        for (int k = 0; k < t->n_pre; k++)
            if (t->pre[k].re) { c.md = pcre2_match_data_create_from_pattern(t->pre[k].re, NULL); break; }
    }
    if (add_special)
        for (int k = 0; k < t->n_prefix; k++) tok_ids_push(&out, t->prefix[k]);
    size_t scan = 0, off = 0, ms, me;
    int32_t k;
    if (t->trie_raw.n) {
        while ((k = added_next(t, &t->trie_raw, s, sn, &scan, off, &ms, &me)) >= 0) {
            if (ms > off) encode_segment(&c, s + off, ms - off, off == 0);
            tok_ids_push(&out, t->added[k].id);
            off = me;
            if (scan < off) scan = off;
        }
    }
    if (off < sn) encode_segment(&c, s + off, sn - off, off == 0);
    if (add_special)
        for (int j = 0; j < t->n_suffix; j++) tok_ids_push(&out, t->suffix[j]);
    bpe_scratch_free(&c.bs);
    for (int j = 0; j < MAX_PRE; j++) free(c.pre_buf[j].p);
    free(c.nbuf[0].p); free(c.nbuf[1].p);
    if (c.md) pcre2_match_data_free(c.md);
    free(fixed);
    if (c.err) {
        free(out.p);
        return ds_error(DS_ERR_RUNTIME, "tokenizer_encode: regex match failed (PCRE2 error %d)", c.err);
    }
    if (!out.p) out.p = xmalloc(sizeof *out.p);
    *ids = out.p;
    *n = out.n;
    return DS_OK;
}

/* ---- decode ---- */

typedef struct str_list { tok_buf *v; size_t n, cap; } str_list;

static void sl_push(str_list *l, const char *s, size_t n) {
    if (l->n == l->cap) {
        l->cap = l->cap ? l->cap * 2 : 64;
        l->v = xrealloc(l->v, l->cap * sizeof *l->v);
    }
    l->v[l->n] = (tok_buf){0};
    tok_buf_put(&l->v[l->n], s, n);
    l->n++;
}

static void sl_free(str_list *l) {
    for (size_t i = 0; i < l->n; i++) free(l->v[i].p);
    free(l->v);
    memset(l, 0, sizeof *l);
}

static void replace_all(tok_buf *dst, const char *s, size_t n, const char *a, const char *b) {
    size_t al = strlen(a), bl = strlen(b);
    dst->n = 0;
    tok_buf_reserve(dst, n);
    for (size_t i = 0; i < n;) {
        if (al && i + al <= n && memcmp(s + i, a, al) == 0) { tok_buf_put(dst, b, bl); i += al; }
        else tok_buf_put(dst, s + i++, 1);
    }
}

static int hexv(char ch) {
    if (ch >= '0' && ch <= '9') return ch - '0';
    if (ch >= 'A' && ch <= 'F') return ch - 'A' + 10;
    if (ch >= 'a' && ch <= 'f') return ch - 'a' + 10;
    return -1;
}

static void flush_bytes(str_list *o, tok_buf *pend) {
    if (!pend->n) return;
    size_t rn;
    char *fx = utf8_repair(pend->p, pend->n, &rn);
    if (!fx) sl_push(o, pend->p, pend->n);
    else {
        for (size_t i = 0; i < pend->n; i++) sl_push(o, "\xEF\xBF\xBD", 3);
        free(fx);
    }
    pend->n = 0;
}

static void dec_apply(const dec_step *d, str_list *l) {
    str_list o = {0};
    tok_buf tmp = {0};
    switch (d->kind) {
    case DEC_BYTELEVEL: {
        for (size_t i = 0; i < l->n; i++) {
            const char *s = l->v[i].p;
            size_t n = l->v[i].n;
            for (size_t j = 0; j < n;) {
                size_t cl;
                int32_t cp = utf8_cp(s + j, n - j, &cl);
                if (cp >= 0 && cp < 0x144 && bl_cp_byte[cp] >= 0) {
                    char ch = (char)bl_cp_byte[cp];
                    tok_buf_put(&tmp, &ch, 1);
                } else tok_buf_put(&tmp, s + j, cl);
                j += cl;
            }
        }
        size_t rn;
        char *fx = utf8_repair(tmp.p ? tmp.p : "", tmp.n, &rn);
        if (fx) { sl_push(&o, fx, rn); free(fx); }
        else sl_push(&o, tmp.p ? tmp.p : "", tmp.n);
        break;
    }
    case DEC_REPLACE:
    case DEC_METASPACE:
        for (size_t i = 0; i < l->n; i++) {
            replace_all(&tmp, l->v[i].p, l->v[i].n, d->a, d->b);
            size_t skip = 0;
            if (d->kind == DEC_METASPACE && i == 0 && d->scheme != SCHEME_NEVER && tmp.n && tmp.p[0] == ' ')
                skip = 1;
            sl_push(&o, tmp.p + skip, tmp.n - skip);
        }
        break;
    case DEC_BYTEFALLBACK:
        for (size_t i = 0; i < l->n; i++) {
            const char *s = l->v[i].p;
            if (l->v[i].n == 6 && s[0] == '<' && s[1] == '0' && s[2] == 'x' && s[5] == '>' &&
                hexv(s[3]) >= 0 && hexv(s[4]) >= 0) {
                char ch = (char)(hexv(s[3]) * 16 + hexv(s[4]));
                tok_buf_put(&tmp, &ch, 1);
                continue;
            }
            flush_bytes(&o, &tmp);
            sl_push(&o, s, l->v[i].n);
        }
        flush_bytes(&o, &tmp);
        break;
    case DEC_FUSE:
        for (size_t i = 0; i < l->n; i++) tok_buf_put(&tmp, l->v[i].p, l->v[i].n);
        sl_push(&o, tmp.p ? tmp.p : "", tmp.n);
        break;
    case DEC_STRIP: {
        size_t cl = strlen(d->a);
        for (size_t i = 0; i < l->n; i++) {
            const char *s = l->v[i].p;
            size_t a = 0, b = l->v[i].n;
            for (int k = 0; k < d->start && cl && b - a >= cl && memcmp(s + a, d->a, cl) == 0; k++) a += cl;
            for (int k = 0; k < d->stop && cl && b - a >= cl && memcmp(s + b - cl, d->a, cl) == 0; k++) b -= cl;
            sl_push(&o, s + a, b - a);
        }
        break;
    }
    }
    free(tmp.p);
    sl_free(l);
    *l = o;
}

ds_status tokenizer_decode(const tokenizer *t, const int32_t *ids, size_t n, int skip_special,
                           char **text) {
    *text = NULL;
    str_list l = {0};
    for (size_t i = 0; i < n; i++) {
        int32_t id = ids[i];
        if (id < 0 || id >= t->n_ids || !t->tok_has[id]) continue;
        if (skip_special && t->tok_special[id]) continue;
        sl_push(&l, t->tok_arena.p + t->tok_off[id], t->tok_len[id]);
    }
    tok_buf out = {0};
    if (t->has_decoder) {
        for (int k = 0; k < t->n_dec; k++) dec_apply(&t->dec[k], &l);
        for (size_t i = 0; i < l.n; i++) tok_buf_put(&out, l.v[i].p, l.v[i].n);
    } else {
        for (size_t i = 0; i < l.n; i++) {
            if (i) tok_buf_put(&out, " ", 1);
            tok_buf_put(&out, l.v[i].p, l.v[i].n);
        }
    }
    sl_free(&l);
    tok_buf_reserve(&out, 0);
    out.p[out.n] = 0;
    *text = out.p;
    return DS_OK;
}

/* ---- accessors ---- */

int tokenizer_vocab_size(const tokenizer *t) { return t->n_ids; }
int32_t tokenizer_bos_id(const tokenizer *t) { return t->bos_id; }
int32_t tokenizer_eos_id(const tokenizer *t) { return t->eos_id; }
const char *tokenizer_chat_template(const tokenizer *t) { return t->chat_template; }
const char *tokenizer_bos_text(const tokenizer *t) { return t->bos_text; }
const char *tokenizer_eos_text(const tokenizer *t) { return t->eos_text; }

int32_t tokenizer_token_to_id(const tokenizer *t, const char *s) {
    for (int k = 0; k < t->n_added; k++)
        if (strcmp(t->added[k].content, s) == 0) return t->added[k].id;
    /* byte-level vocab keys are raw bytes, so the text's bytes look up directly */
    return strmap_get(&t->bpe.vocab, s, strlen(s));
}

int tokenizer_prefix_count(const tokenizer *t) { return t->n_prefix; }

void tokenizer_free(tokenizer *t) {
    if (!t) return;
    bpe_model_free(&t->bpe);
    free(t->tok_off); free(t->tok_len); free(t->tok_has); free(t->tok_special);
    free(t->tok_arena.p);
    for (int k = 0; k < t->n_added; k++) free(t->added[k].content);
    free(t->added);
    free(t->trie_raw.nodes); free(t->trie_norm.nodes);
    for (int k = 0; k < t->n_norm; k++) { free(t->norm[k].a); free(t->norm[k].b); }
    for (int k = 0; k < t->n_pre; k++) { if (t->pre[k].re) pcre2_code_free(t->pre[k].re); free(t->pre[k].repl); }
    for (int k = 0; k < t->n_dec; k++) { free(t->dec[k].a); free(t->dec[k].b); }
    free(t->bos_text); free(t->eos_text); free(t->chat_template);
    if (t->mctx) pcre2_match_context_free(t->mctx);
    if (t->jit_stack) pcre2_jit_stack_free(t->jit_stack);
    free(t);
}


/* ---- loading ---- */

static const char *jstr(const cJSON *o, const char *k) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);
    return cJSON_IsString(v) ? v->valuestring : NULL;
}

static int jbool(const cJSON *o, const char *k, int def) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);
    return cJSON_IsBool(v) ? cJSON_IsTrue(v) : def;
}

static const char *jtype(const cJSON *o) {
    const char *s = jstr(o, "type");
    return s ? s : "(no type)";
}

/* Rewrite \s / \S to \p{White_Space} / \P{White_Space}: Oniguruma's \s is
 * the White_Space property, PCRE2-UCP's also has U+180E. */
static char *rewrite_ws(const char *p) {
    tok_buf b = {0};
    for (size_t i = 0; p[i]; i++) {
        if (p[i] == '\\' && p[i + 1]) {
            if (p[i + 1] == 's') tok_buf_put(&b, "\\p{White_Space}", 15);
            else if (p[i + 1] == 'S') tok_buf_put(&b, "\\P{White_Space}", 15);
            else tok_buf_put(&b, p + i, 2);
            i++;
            continue;
        }
        tok_buf_put(&b, p + i, 1);
    }
    tok_buf_reserve(&b, 0);
    b.p[b.n] = 0; /* an empty pattern puts nothing: terminate it here */
    return b.p;
}

static ds_status compile_re(const char *what, const char *pat, int literal, pcre2_code **out) {
    int errc;
    PCRE2_SIZE erroff;
    char *p = literal ? xstrdup(pat) : rewrite_ws(pat);
    uint32_t opt = PCRE2_UTF | (literal ? PCRE2_LITERAL : PCRE2_UCP);
    *out = pcre2_compile((PCRE2_SPTR)p, PCRE2_ZERO_TERMINATED, opt, &errc, &erroff, NULL);
    free(p);
    if (!*out) {
        PCRE2_UCHAR msg[256];
        pcre2_get_error_message(errc, msg, sizeof msg);
        return ds_error(DS_ERR_INPUT, "%s: bad regex at offset %zu: %s", what, (size_t)erroff, (char *)msg);
    }
    pcre2_jit_compile(*out, PCRE2_JIT_COMPLETE); /* on failure the interpreter is used */
    return DS_OK;
}

static const char *GPT2_RE =
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";

static ds_status parse_norm(tokenizer *t, const cJSON *n) {
    if (!n || cJSON_IsNull(n)) return DS_OK;
    if (!cJSON_IsObject(n)) return ds_error(DS_ERR_INPUT, "normalizer: expected an object");
    const char *ty = jtype(n);
    if (!strcmp(ty, "Sequence")) {
        const cJSON *arr = cJSON_GetObjectItemCaseSensitive(n, "normalizers"), *e;
        if (!cJSON_IsArray(arr)) return ds_error(DS_ERR_INPUT, "normalizer Sequence: missing 'normalizers' array");
        cJSON_ArrayForEach(e, arr) {
            ds_status st = parse_norm(t, e);
            if (st) return st;
        }
        return DS_OK;
    }
    if (t->n_norm == MAX_NORM) return ds_error(DS_ERR_INPUT, "normalizer: more than %d steps", MAX_NORM);
    norm_step *s = &t->norm[t->n_norm];
    memset(s, 0, sizeof *s);
    if (!strcmp(ty, "NFC")) s->kind = NORM_NFC;
    else if (!strcmp(ty, "NFD")) s->kind = NORM_NFD;
    else if (!strcmp(ty, "NFKC")) s->kind = NORM_NFKC;
    else if (!strcmp(ty, "NFKD")) s->kind = NORM_NFKD;
    else if (!strcmp(ty, "Lowercase")) s->kind = NORM_LOWER;
    else if (!strcmp(ty, "Prepend")) {
        const char *p = jstr(n, "prepend");
        if (!p) return ds_error(DS_ERR_INPUT, "normalizer Prepend: missing 'prepend' string");
        s->kind = NORM_PREPEND;
        s->a = xstrdup(p);
    } else if (!strcmp(ty, "Replace")) {
        const cJSON *pat = cJSON_GetObjectItemCaseSensitive(n, "pattern");
        const char *a = jstr(pat, "String"), *b = jstr(n, "content");
        if (!a || !b)
            return ds_error(DS_ERR_INPUT, "normalizer Replace: only {\"String\": ...} patterns with a 'content' string are supported");
        s->kind = NORM_REPLACE;
        s->a = xstrdup(a);
        s->b = xstrdup(b);
    } else
        return ds_error(DS_ERR_INPUT, "unsupported normalizer type '%s' (supported: NFC, NFD, NFKC, NFKD, Lowercase, Prepend, Replace, Sequence)", ty);
    t->n_norm++;
    return DS_OK;
}

static int parse_scheme(const cJSON *n, int *scheme) {
    const char *ps = jstr(n, "prepend_scheme");
    if (!ps) { *scheme = jbool(n, "add_prefix_space", 1) ? SCHEME_ALWAYS : SCHEME_NEVER; return 0; }
    if (!strcmp(ps, "always")) *scheme = SCHEME_ALWAYS;
    else if (!strcmp(ps, "first")) *scheme = SCHEME_FIRST;
    else if (!strcmp(ps, "never")) *scheme = SCHEME_NEVER;
    else return -1;
    return 0;
}

static ds_status parse_pre(tokenizer *t, const cJSON *n) {
    if (!n || cJSON_IsNull(n)) return DS_OK;
    if (!cJSON_IsObject(n)) return ds_error(DS_ERR_INPUT, "pre_tokenizer: expected an object");
    const char *ty = jtype(n);
    if (!strcmp(ty, "Sequence")) {
        const cJSON *arr = cJSON_GetObjectItemCaseSensitive(n, "pretokenizers"), *e;
        if (!cJSON_IsArray(arr)) return ds_error(DS_ERR_INPUT, "pre_tokenizer Sequence: missing 'pretokenizers' array");
        cJSON_ArrayForEach(e, arr) {
            ds_status st = parse_pre(t, e);
            if (st) return st;
        }
        return DS_OK;
    }
    if (t->n_pre == MAX_PRE) return ds_error(DS_ERR_INPUT, "pre_tokenizer: more than %d steps", MAX_PRE);
    pre_step *s = &t->pre[t->n_pre];
    memset(s, 0, sizeof *s);
    ds_status st = DS_OK;
    if (!strcmp(ty, "Split")) {
        const cJSON *pat = cJSON_GetObjectItemCaseSensitive(n, "pattern");
        const char *re = jstr(pat, "Regex"), *lit = jstr(pat, "String"), *beh = jstr(n, "behavior");
        if (!re && !lit) return ds_error(DS_ERR_INPUT, "pre_tokenizer Split: missing pattern {\"Regex\"|\"String\": ...}");
        if (!beh || strcmp(beh, "Isolated"))
            return ds_error(DS_ERR_INPUT, "pre_tokenizer Split: unsupported behavior '%s' (supported: Isolated)", beh ? beh : "(none)");
        if (jbool(n, "invert", 0)) return ds_error(DS_ERR_INPUT, "pre_tokenizer Split: invert=true is not supported");
        s->kind = PRE_SPLIT;
        st = compile_re("pre_tokenizer Split", re ? re : lit, !re, &s->re);
    } else if (!strcmp(ty, "ByteLevel")) {
        s->kind = PRE_BYTELEVEL;
        s->add_prefix_space = jbool(n, "add_prefix_space", 1);
        if (jbool(n, "use_regex", 1)) st = compile_re("pre_tokenizer ByteLevel", GPT2_RE, 0, &s->re);
        t->bpe.byte_level = 1;
    } else if (!strcmp(ty, "Metaspace")) {
        const char *r = jstr(n, "replacement");
        s->kind = PRE_METASPACE;
        s->repl = xstrdup(r && *r ? r : "\xE2\x96\x81");
        s->split = jbool(n, "split", 1);
        if (parse_scheme(n, &s->scheme)) {
            free(s->repl);
            return ds_error(DS_ERR_INPUT, "pre_tokenizer Metaspace: unknown prepend_scheme '%s'", jstr(n, "prepend_scheme"));
        }
    } else
        return ds_error(DS_ERR_INPUT, "unsupported pre_tokenizer type '%s' (supported: Split, ByteLevel, Metaspace, Sequence)", ty);
    t->n_pre++;
    return st;
}

static ds_status parse_dec(tokenizer *t, const cJSON *n) {
    if (!n || cJSON_IsNull(n)) return DS_OK;
    if (!cJSON_IsObject(n)) return ds_error(DS_ERR_INPUT, "decoder: expected an object");
    t->has_decoder = 1;
    const char *ty = jtype(n);
    if (!strcmp(ty, "Sequence")) {
        const cJSON *arr = cJSON_GetObjectItemCaseSensitive(n, "decoders"), *e;
        if (!cJSON_IsArray(arr)) return ds_error(DS_ERR_INPUT, "decoder Sequence: missing 'decoders' array");
        cJSON_ArrayForEach(e, arr) {
            ds_status st = parse_dec(t, e);
            if (st) return st;
        }
        return DS_OK;
    }
    if (t->n_dec == MAX_DEC) return ds_error(DS_ERR_INPUT, "decoder: more than %d steps", MAX_DEC);
    dec_step *s = &t->dec[t->n_dec];
    memset(s, 0, sizeof *s);
    if (!strcmp(ty, "ByteLevel")) s->kind = DEC_BYTELEVEL;
    else if (!strcmp(ty, "ByteFallback")) s->kind = DEC_BYTEFALLBACK;
    else if (!strcmp(ty, "Fuse")) s->kind = DEC_FUSE;
    else if (!strcmp(ty, "Replace")) {
        const char *a = jstr(cJSON_GetObjectItemCaseSensitive(n, "pattern"), "String"), *b = jstr(n, "content");
        if (!a || !b) return ds_error(DS_ERR_INPUT, "decoder Replace: only {\"String\": ...} patterns are supported");
        s->kind = DEC_REPLACE;
        s->a = xstrdup(a);
        s->b = xstrdup(b);
    } else if (!strcmp(ty, "Strip")) {
        const char *c = jstr(n, "content");
        const cJSON *a = cJSON_GetObjectItemCaseSensitive(n, "start"), *b = cJSON_GetObjectItemCaseSensitive(n, "stop");
        s->kind = DEC_STRIP;
        s->a = xstrdup(c ? c : " ");
        s->start = cJSON_IsNumber(a) ? a->valueint : 0;
        s->stop = cJSON_IsNumber(b) ? b->valueint : 0;
    } else if (!strcmp(ty, "Metaspace")) {
        const char *r = jstr(n, "replacement");
        s->kind = DEC_METASPACE;
        s->a = xstrdup(r && *r ? r : "\xE2\x96\x81");
        s->b = xstrdup(" ");
        if (parse_scheme(n, &s->scheme)) return ds_error(DS_ERR_INPUT, "decoder Metaspace: unknown prepend_scheme");
    } else
        return ds_error(DS_ERR_INPUT, "unsupported decoder type '%s' (supported: ByteLevel, Replace, ByteFallback, Fuse, Strip, Metaspace, Sequence)", ty);
    t->n_dec++;
    return DS_OK;
}

static ds_status push_special_ids(tokenizer *t, const cJSON *specials, const char *name, int after) {
    const cJSON *sp = cJSON_GetObjectItemCaseSensitive(specials, name);
    const cJSON *ids = cJSON_GetObjectItemCaseSensitive(sp, "ids"), *e;
    if (!cJSON_IsArray(ids))
        return ds_error(DS_ERR_INPUT, "post_processor TemplateProcessing: special token '%s' has no 'ids'", name);
    cJSON_ArrayForEach(e, ids) {
        if (!cJSON_IsNumber(e)) return ds_error(DS_ERR_INPUT, "post_processor: non-numeric id for '%s'", name);
        int32_t *arr = after ? t->suffix : t->prefix;
        int *cnt = after ? &t->n_suffix : &t->n_prefix;
        if (*cnt == 8) return ds_error(DS_ERR_INPUT, "post_processor: too many special tokens");
        arr[(*cnt)++] = (int32_t)e->valuedouble;
    }
    return DS_OK;
}

static ds_status parse_post(tokenizer *t, const cJSON *n) {
    if (!n || cJSON_IsNull(n)) return DS_OK;
    if (!cJSON_IsObject(n)) return ds_error(DS_ERR_INPUT, "post_processor: expected an object");
    const char *ty = jtype(n);
    if (!strcmp(ty, "Sequence")) {
        const cJSON *arr = cJSON_GetObjectItemCaseSensitive(n, "processors"), *e;
        if (!cJSON_IsArray(arr)) return ds_error(DS_ERR_INPUT, "post_processor Sequence: missing 'processors' array");
        cJSON_ArrayForEach(e, arr) {
            ds_status st = parse_post(t, e);
            if (st) return st;
        }
        return DS_OK;
    }
    if (!strcmp(ty, "ByteLevel")) return DS_OK; /* offsets only */
    if (!strcmp(ty, "TemplateProcessing")) {
        const cJSON *single = cJSON_GetObjectItemCaseSensitive(n, "single"), *e;
        const cJSON *specials = cJSON_GetObjectItemCaseSensitive(n, "special_tokens");
        if (!cJSON_IsArray(single)) return ds_error(DS_ERR_INPUT, "post_processor TemplateProcessing: missing 'single' array");
        t->n_prefix = t->n_suffix = 0;
        int after = 0;
        cJSON_ArrayForEach(e, single) {
            const cJSON *sp = cJSON_GetObjectItemCaseSensitive(e, "SpecialToken");
            if (cJSON_GetObjectItemCaseSensitive(e, "Sequence")) { after = 1; continue; }
            const char *name = jstr(sp, "id");
            if (!name) return ds_error(DS_ERR_INPUT, "post_processor TemplateProcessing: bad 'single' item");
            ds_status st = push_special_ids(t, specials, name, after);
            if (st) return st;
        }
        return DS_OK;
    }
    if (!strcmp(ty, "BertProcessing") || !strcmp(ty, "RobertaProcessing")) {
        const cJSON *cls = cJSON_GetObjectItemCaseSensitive(n, "cls"), *sep = cJSON_GetObjectItemCaseSensitive(n, "sep");
        if (cJSON_GetArraySize(cls) != 2 || cJSON_GetArraySize(sep) != 2)
            return ds_error(DS_ERR_INPUT, "post_processor %s: missing cls/sep", ty);
        t->prefix[0] = (int32_t)cJSON_GetArrayItem(cls, 1)->valuedouble;
        t->suffix[0] = (int32_t)cJSON_GetArrayItem(sep, 1)->valuedouble;
        t->n_prefix = t->n_suffix = 1;
        return DS_OK;
    }
    return ds_error(DS_ERR_INPUT, "unsupported post_processor type '%s' (supported: TemplateProcessing, ByteLevel, BertProcessing, RobertaProcessing, Sequence)", ty);
}

enum { MAX_TOKEN_ID = 1 << 24 };

static void set_token(tokenizer *t, int32_t id, const char *s, size_t n) {
    t->tok_off[id] = (uint32_t)t->tok_arena.n;
    t->tok_len[id] = (uint32_t)n;
    t->tok_has[id] = 1;
    tok_buf_put(&t->tok_arena, s, n);
}

/* Model (BPE) and added tokens. */
static ds_status parse_model(tokenizer *t, const cJSON *m, const cJSON *added) {
    if (!cJSON_IsObject(m)) return ds_error(DS_ERR_INPUT, "missing 'model' object");
    const char *ty = jstr(m, "type");
    if (ty && strcmp(ty, "BPE"))
        return ds_error(DS_ERR_INPUT, "unsupported model type '%s' (supported: BPE)", ty);
    const cJSON *vocab = cJSON_GetObjectItemCaseSensitive(m, "vocab");
    const cJSON *merges = cJSON_GetObjectItemCaseSensitive(m, "merges"), *e;
    if (!cJSON_IsObject(vocab)) return ds_error(DS_ERR_INPUT, "model: missing 'vocab' object");
    if (!cJSON_IsArray(merges)) return ds_error(DS_ERR_INPUT, "model BPE: missing 'merges' array");
    const cJSON *drop = cJSON_GetObjectItemCaseSensitive(m, "dropout");
    if (cJSON_IsNumber(drop) && drop->valuedouble > 0) return ds_error(DS_ERR_INPUT, "model BPE: dropout is not supported");
    const char *csp = jstr(m, "continuing_subword_prefix"), *eow = jstr(m, "end_of_word_suffix");
    if ((csp && *csp) || (eow && *eow))
        return ds_error(DS_ERR_INPUT, "model BPE: continuing_subword_prefix / end_of_word_suffix are not supported");
    if (added && !cJSON_IsArray(added)) return ds_error(DS_ERR_INPUT, "'added_tokens' is not an array");

    bpe_model *b = &t->bpe;
    tok_strmap orig;
    tok_buf tmp = {0};
    ds_status st = DS_OK;
    int nv = cJSON_GetArraySize(vocab);
    strmap_init(&orig, (uint32_t)nv + 1);
    int32_t maxid = -1;
    cJSON_ArrayForEach(e, vocab) {
        if (!cJSON_IsNumber(e) || e->valuedouble < 0 || e->valuedouble >= MAX_TOKEN_ID) {
            st = ds_error(DS_ERR_INPUT, "model.vocab: token '%s' has an invalid id", e->string);
            goto fail;
        }
        strmap_put(&orig, e->string, strlen(e->string), (int32_t)e->valuedouble);
        maxid = DS_MAX(maxid, (int32_t)e->valuedouble);
    }
    cJSON_ArrayForEach(e, added) {
        const cJSON *id = cJSON_GetObjectItemCaseSensitive(e, "id");
        if (!cJSON_IsNumber(id) || id->valuedouble < 0 || id->valuedouble >= MAX_TOKEN_ID || !jstr(e, "content")) {
            st = ds_error(DS_ERR_INPUT, "added_tokens: entry without a valid 'id' and 'content'");
            goto fail;
        }
        maxid = DS_MAX(maxid, (int32_t)id->valuedouble);
    }
    t->n_ids = maxid + 1;
    size_t nid = (size_t)(t->n_ids > 0 ? t->n_ids : 1);
    t->tok_off = xcalloc(nid, sizeof *t->tok_off);
    t->tok_len = xcalloc(nid, sizeof *t->tok_len);
    t->tok_has = xcalloc(nid, 1);
    t->tok_special = xcalloc(nid, 1);
    cJSON_ArrayForEach(e, vocab) set_token(t, (int32_t)e->valuedouble, e->string, strlen(e->string));

    b->byte_fallback = jbool(m, "byte_fallback", 0);
    b->fuse_unk = jbool(m, "fuse_unk", 0);
    b->ignore_merges = jbool(m, "ignore_merges", 0);
    const char *unk = jstr(m, "unk_token");
    b->unk_id = unk ? strmap_get(&orig, unk, strlen(unk)) : -1;
    for (int i = 0; i < 256; i++) b->byte_id[i] = -1;

    /* merges: rank = index; "a b" strings or ["a", "b"] pairs */
    pairmap_init(&b->merges, (uint32_t)cJSON_GetArraySize(merges) + 1);
    int rank = 0;
    cJSON_ArrayForEach(e, merges) {
        const char *a = NULL, *bb = NULL;
        size_t al = 0, bl = 0;
        if (cJSON_IsString(e)) {
            const char *sp = strchr(e->valuestring, ' ');
            if (rank == 0 && !strncmp(e->valuestring, "#version", 8)) continue;
            if (!sp) { st = ds_error(DS_ERR_INPUT, "model.merges[%d]: expected \"a b\", got \"%s\"", rank, e->valuestring); goto fail; }
            a = e->valuestring; al = (size_t)(sp - a);
            bb = sp + 1; bl = strlen(bb);
        } else if (cJSON_GetArraySize(e) == 2 && cJSON_IsString(cJSON_GetArrayItem(e, 0)) &&
                   cJSON_IsString(cJSON_GetArrayItem(e, 1))) {
            a = cJSON_GetArrayItem(e, 0)->valuestring; al = strlen(a);
            bb = cJSON_GetArrayItem(e, 1)->valuestring; bl = strlen(bb);
        } else {
            st = ds_error(DS_ERR_INPUT, "model.merges[%d]: expected a string \"a b\" or a pair [\"a\", \"b\"]", rank);
            goto fail;
        }
        tmp.n = 0;
        tok_buf_put(&tmp, a, al);
        tok_buf_put(&tmp, bb, bl);
        int32_t ia = strmap_get(&orig, a, al), ib = strmap_get(&orig, bb, bl), iab = strmap_get(&orig, tmp.p, tmp.n);
        /* "a b" strings whose tokens contain spaces (the llama2 file has
         * "   "): HF tokenizers rejects them; take the first split point at
         * which a, b and ab are all vocab entries. */
        for (size_t sp = al + 1; cJSON_IsString(e) && (ia < 0 || ib < 0 || iab < 0) && a[sp]; sp++) {
            if (a[sp] != ' ') continue;
            int32_t xa = strmap_get(&orig, a, sp), xb = strmap_get(&orig, a + sp + 1, strlen(a + sp + 1));
            tmp.n = 0;
            tok_buf_put(&tmp, a, sp);
            tok_buf_put(&tmp, a + sp + 1, strlen(a + sp + 1));
            int32_t xab = strmap_get(&orig, tmp.p, tmp.n);
            if (xa >= 0 && xb >= 0 && xab >= 0) { ia = xa; ib = xb; iab = xab; }
        }
        if (ia < 0 || ib < 0 || iab < 0) {
            st = ds_error(DS_ERR_INPUT, "model.merges[%d]: '%.*s' is not in the vocab", rank,
                          ia < 0 ? (int)al : ib < 0 ? (int)bl : (int)tmp.n, ia < 0 ? a : ib < 0 ? bb : tmp.p);
            goto fail;
        }
        pairmap_put(&b->merges, ia, ib, rank, iab);
        rank++;
    }

    if (b->byte_level) {
        /* re-key the vocab by raw bytes so words never need the byte alphabet */
        strmap_init(&b->vocab, (uint32_t)nv + 1);
        for (uint32_t i = 0; i < orig.n; i++) {
            if (!bl_decode(orig.arena.p + orig.koff[i], orig.klen[i], &tmp)) continue;
            strmap_put(&b->vocab, tmp.p ? tmp.p : "", tmp.n, orig.val[i]);
        }
        for (int i = 0; i < 256; i++) {
            char ch = (char)i;
            b->byte_id[i] = strmap_get(&b->vocab, &ch, 1);
        }
        strmap_free(&orig);
    } else {
        b->vocab = orig;
        if (b->byte_fallback)
            for (int i = 0; i < 256; i++) {
                char nm[8];
                snprintf(nm, sizeof nm, "<0x%02X>", i);
                b->byte_id[i] = strmap_get(&b->vocab, nm, 6);
            }
    }
    memset(&orig, 0, sizeof orig);
    b->cache = xcalloc(1, sizeof *b->cache);

    /* added tokens: raw trie for normalized=false, trie of normalized contents otherwise */
    trie_init(&t->trie_raw);
    trie_init(&t->trie_norm);
    t->n_added = cJSON_GetArraySize(added);
    t->added = xcalloc((size_t)(t->n_added ? t->n_added : 1), sizeof *t->added);
    int k = 0;
    cJSON_ArrayForEach(e, added) {
        added_tok *a = &t->added[k];
        const char *c = jstr(e, "content");
        a->id = (int32_t)cJSON_GetObjectItemCaseSensitive(e, "id")->valuedouble;
        a->special = jbool(e, "special", 0);
        a->normalized = jbool(e, "normalized", !a->special);
        a->lstrip = jbool(e, "lstrip", 0);
        a->rstrip = jbool(e, "rstrip", 0);
        a->single_word = jbool(e, "single_word", 0);
        a->len = strlen(c);
        a->content = xstrdup(c);
        t->tok_special[a->id] = (uint8_t)a->special;
        if (a->normalized && t->n_norm) {
            /* HF matches and decodes normalized tokens by their normalized
             * content (llama2: "<s>" is "\u2581<s>") */
            tok_buf nb[2] = {{0}, {0}};
            size_t nn;
            const char *ns = normalize(t, nb, c, a->len, &nn);
            trie_add(&t->trie_norm, ns, nn, k);
            set_token(t, a->id, ns, nn);
            free(nb[0].p); free(nb[1].p);
        } else {
            trie_add(a->normalized ? &t->trie_norm : &t->trie_raw, c, a->len, k);
            set_token(t, a->id, c, a->len);
        }
        k++;
    }
    free(tmp.p);
    return DS_OK;
fail:
    strmap_free(&orig);
    free(tmp.p);
    return st;
}

/* "bos_token": "<s>" or {"content": "<s>", ...} */
static const char *cfg_token(const cJSON *cfg, const char *key) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(cfg, key);
    if (cJSON_IsString(v)) return v->valuestring;
    return jstr(v, "content");
}

static ds_status parse_config(tokenizer *t, const char *path) {
    char *buf = NULL;
    size_t len;
    ds_status st = ds_read_file(path, &buf, &len);
    if (st) return st;
    cJSON *cfg = cJSON_ParseWithLength(buf, len);
    free(buf);
    if (!cJSON_IsObject(cfg)) {
        cJSON_Delete(cfg);
        return ds_error(DS_ERR_INPUT, "%s: not a JSON object", path);
    }
    const char *bos = cfg_token(cfg, "bos_token"), *eos = cfg_token(cfg, "eos_token");
    if (bos) { t->bos_text = xstrdup(bos); t->bos_id = tokenizer_token_to_id(t, bos); }
    if (eos) { t->eos_text = xstrdup(eos); t->eos_id = tokenizer_token_to_id(t, eos); }
    const cJSON *ct = cJSON_GetObjectItemCaseSensitive(cfg, "chat_template"), *e;
    if (cJSON_IsString(ct)) t->chat_template = xstrdup(ct->valuestring);
    else if (cJSON_IsArray(ct)) {
        cJSON_ArrayForEach(e, ct) {
            const char *nm = jstr(e, "name"), *tp = jstr(e, "template");
            if (tp && (!t->chat_template || (nm && !strcmp(nm, "default")))) {
                free(t->chat_template);
                t->chat_template = xstrdup(tp);
            }
        }
    }
    /* transformers v4 LlamaTokenizerFast.update_post_processor() */
    const char *cls = jstr(cfg, "tokenizer_class");
    if (cls && (!strcmp(cls, "LlamaTokenizer") || !strcmp(cls, "LlamaTokenizerFast") ||
                !strncmp(cls, "CodeLlamaTokenizer", 18))) {
        int add_bos = jbool(cfg, "add_bos_token", 1), add_eos = jbool(cfg, "add_eos_token", 0);
        t->n_prefix = t->n_suffix = 0;
        if (add_bos && t->bos_id >= 0) t->prefix[t->n_prefix++] = t->bos_id;
        if (add_eos && t->eos_id >= 0) t->suffix[t->n_suffix++] = t->eos_id;
    }
    cJSON_Delete(cfg);
    return DS_OK;
}

/* Line and column of byte offset `off` in buf, for JSON error messages. */
static void line_col(const char *buf, size_t off, int *line, int *col) {
    *line = 1; *col = 1;
    for (size_t i = 0; i < off; i++) {
        if (buf[i] == '\n') { (*line)++; *col = 1; }
        else (*col)++;
    }
}

ds_status tokenizer_load(const char *dir, tokenizer **out) {
    *out = NULL;
    char *path = NULL, *cfg_path = NULL, *buf = NULL;
    cJSON *root = NULL;
    tokenizer *t = NULL;
    size_t len = 0;
    ds_status st;
    bl_init();
    if (ds_is_dir(dir)) {
        path = ds_path_join(dir, "tokenizer.json");
        cfg_path = ds_path_join(dir, "tokenizer_config.json");
    } else {
        /* a tokenizer.json path: take tokenizer_config.json from its folder */
        path = xstrdup(dir);
        const char *sl = strrchr(dir, '/');
        cfg_path = sl ? xasprintf("%.*s/tokenizer_config.json", (int)(sl - dir), dir) : xstrdup("tokenizer_config.json");
    }
    st = ds_read_file(path, &buf, &len);
    if (st) {
        free(path);
        free(cfg_path);
        return st; /* the message already names the path */
    }
    root = cJSON_ParseWithLength(buf, len);
    if (!cJSON_IsObject(root)) {
        const char *ep = cJSON_GetErrorPtr();
        int line = 0, col = 0;
        if (ep && ep >= buf && ep <= buf + len) line_col(buf, (size_t)(ep - buf), &line, &col);
        st = ds_error(DS_ERR_INPUT, "not valid JSON (error near line %d, column %d)", line, col);
        goto fail;
    }
    t = xcalloc(1, sizeof *t);
    t->bos_id = t->eos_id = -1;
    if ((st = parse_norm(t, cJSON_GetObjectItemCaseSensitive(root, "normalizer")))) goto fail;
    if ((st = parse_pre(t, cJSON_GetObjectItemCaseSensitive(root, "pre_tokenizer")))) goto fail;
    if ((st = parse_model(t, cJSON_GetObjectItemCaseSensitive(root, "model"),
                          cJSON_GetObjectItemCaseSensitive(root, "added_tokens")))) goto fail;
    if ((st = parse_post(t, cJSON_GetObjectItemCaseSensitive(root, "post_processor")))) goto fail;
    if ((st = parse_dec(t, cJSON_GetObjectItemCaseSensitive(root, "decoder")))) goto fail;
    for (int k = 0; k < t->n_prefix + t->n_suffix; k++) {
        int32_t id = k < t->n_prefix ? t->prefix[k] : t->suffix[k - t->n_prefix];
        if (id < 0 || id >= t->n_ids) { st = ds_error(DS_ERR_INPUT, "post_processor: special id %d out of range", id); goto fail; }
    }
    cJSON_Delete(root);
    root = NULL;
    free(buf);
    buf = NULL;
    if (ds_file_exists(cfg_path)) {
        st = parse_config(t, cfg_path);
        if (st) goto fail;
    }
    if (t->bos_id < 0 && !t->bos_text && t->n_prefix) t->bos_id = t->prefix[0];
    if (t->bos_id >= 0 && !t->bos_text && t->tok_has[t->bos_id])
        t->bos_text = xasprintf("%.*s", (int)t->tok_len[t->bos_id], t->tok_arena.p + t->tok_off[t->bos_id]);
    if (t->eos_id < 0 && !t->eos_text) {
        static const char *names[] = {"</s>", "<|end_of_text|>", "<|endoftext|>"};
        for (size_t i = 0; i < DS_ARRAY_LEN(names) && t->eos_id < 0; i++) t->eos_id = tokenizer_token_to_id(t, names[i]);
    }
    t->jit_stack = pcre2_jit_stack_create(32 * 1024, 16 * 1024 * 1024, NULL);
    t->mctx = pcre2_match_context_create(NULL);
    if (t->jit_stack) pcre2_jit_stack_assign(t->mctx, NULL, t->jit_stack);
    free(path);
    free(cfg_path);
    *out = t;
    return DS_OK;
fail:
    ds_error_prefix("%s", path);
    cJSON_Delete(root);
    free(buf);
    free(path);
    free(cfg_path);
    tokenizer_free(t);
    return st;
}
