/*
 * tokenizer_bpe.c - the BPE model of HF tokenizers (models/bpe/model.rs,
 * word.rs): initial symbols per character (or per byte for byte-level
 * vocabularies), byte fallback "<0xHH>", unk fusing, ignore_merges, and
 * merge_all with a min-heap keyed by (rank, position) - O(n log n) per word.
 * Also the small hash maps and the word cache it needs. Dropout is not
 * supported (calibration never uses it).
 */
#include "tokenizer_bpe.h"

#include <stdlib.h>
#include <string.h>

/* ---- growable buffers ---- */

void tok_buf_reserve(tok_buf *b, size_t extra) {
    if (b->n + extra + 1 <= b->cap) return;
    size_t cap = b->cap ? b->cap : 64;
    while (cap < b->n + extra + 1) cap *= 2;
    b->p = xrealloc(b->p, cap);
    b->cap = cap;
}

void tok_buf_put(tok_buf *b, const void *s, size_t n) {
    tok_buf_reserve(b, n);
    if (n) memcpy(b->p + b->n, s, n);
    b->n += n;
    b->p[b->n] = 0;
}

void tok_ids_push(tok_ids *v, int32_t id) {
    if (v->n == v->cap) {
        v->cap = v->cap ? v->cap * 2 : 64;
        v->p = xrealloc(v->p, v->cap * sizeof *v->p);
    }
    v->p[v->n++] = id;
}

/* ---- hashing ---- */

static uint32_t hash_bytes(const char *k, size_t n) {
    uint64_t h = 0x9E3779B97F4A7C15ull ^ n;
    const unsigned char *p = (const unsigned char *)k;
    while (n >= 8) {
        uint64_t w;
        memcpy(&w, p, 8);
        h = (h ^ w) * 0xff51afd7ed558ccdull;
        h ^= h >> 32;
        p += 8; n -= 8;
    }
    uint64_t w = 0;
    for (size_t i = 0; i < n; i++) w |= (uint64_t)p[i] << (8 * i);
    h = (h ^ w) * 0xc4ceb9fe1a85ec53ull;
    h ^= h >> 29;
    h *= 0xff51afd7ed558ccdull;
    h ^= h >> 32;
    return (uint32_t)h;
}

static uint32_t pow2_at_least(uint64_t x) {
    uint32_t c = 16;
    while (c < x) c *= 2;
    return c;
}

/* ---- string map ---- */

void strmap_init(tok_strmap *m, uint32_t expected) {
    memset(m, 0, sizeof *m);
    m->cap = pow2_at_least((uint64_t)expected * 2 + 1);
    m->slots = xcalloc(m->cap, sizeof *m->slots);
}

void strmap_free(tok_strmap *m) {
    free(m->slots); free(m->koff); free(m->klen); free(m->val); free(m->arena.p);
    memset(m, 0, sizeof *m);
}

static void strmap_grow(tok_strmap *m) {
    uint32_t cap = m->cap * 2;
    uint64_t *s = xcalloc(cap, sizeof *s);
    for (uint32_t i = 0; i < m->cap; i++) {
        uint64_t e = m->slots[i];
        if (!e) continue;
        uint32_t j = (uint32_t)(e >> 32) & (cap - 1);
        while (s[j]) j = (j + 1) & (cap - 1);
        s[j] = e;
    }
    free(m->slots);
    m->slots = s;
    m->cap = cap;
}

int32_t strmap_get(const tok_strmap *m, const char *k, size_t n) {
    if (!m->cap) return -1;
    uint32_t h = hash_bytes(k, n), mask = m->cap - 1;
    for (uint32_t j = h & mask;; j = (j + 1) & mask) {
        uint64_t e = m->slots[j];
        if (!e) return -1;
        if ((uint32_t)(e >> 32) != h) continue;
        uint32_t idx = (uint32_t)e - 1;
        if (m->klen[idx] == n && memcmp(m->arena.p + m->koff[idx], k, n) == 0) return m->val[idx];
    }
}

int strmap_put(tok_strmap *m, const char *k, size_t n, int32_t v) {
    if (strmap_get(m, k, n) >= 0) return 0;
    if ((uint64_t)(m->n + 1) * 2 > m->cap) strmap_grow(m);
    if (m->n == m->ecap) {
        m->ecap = m->ecap ? m->ecap * 2 : 64;
        m->koff = xrealloc(m->koff, m->ecap * sizeof *m->koff);
        m->klen = xrealloc(m->klen, m->ecap * sizeof *m->klen);
        m->val = xrealloc(m->val, m->ecap * sizeof *m->val);
    }
    uint32_t idx = m->n++;
    m->koff[idx] = (uint32_t)m->arena.n;
    m->klen[idx] = (uint32_t)n;
    m->val[idx] = v;
    tok_buf_put(&m->arena, k, n);
    uint32_t h = hash_bytes(k, n), mask = m->cap - 1, j = h & mask;
    while (m->slots[j]) j = (j + 1) & mask;
    m->slots[j] = ((uint64_t)h << 32) | (idx + 1);
    return 1;
}

/* ---- pair map ---- */

static inline uint32_t hash_pair(uint64_t k) {
    k ^= k >> 33; k *= 0xff51afd7ed558ccdull; k ^= k >> 33;
    return (uint32_t)k;
}

void pairmap_init(tok_pairmap *m, uint32_t expected) {
    m->cap = pow2_at_least((uint64_t)expected * 2 + 1);
    m->n = 0;
    m->keys = xmalloc(m->cap * sizeof *m->keys);
    memset(m->keys, 0xff, m->cap * sizeof *m->keys);
    m->rank = xmalloc(m->cap * sizeof *m->rank);
    m->nid = xmalloc(m->cap * sizeof *m->nid);
}

void pairmap_free(tok_pairmap *m) {
    free(m->keys); free(m->rank); free(m->nid);
    memset(m, 0, sizeof *m);
}

void pairmap_put(tok_pairmap *m, int32_t a, int32_t b, int32_t rank, int32_t nid) {
    if ((uint64_t)(m->n + 1) * 2 > m->cap) {
        tok_pairmap g;
        pairmap_init(&g, m->cap);
        for (uint32_t i = 0; i < m->cap; i++)
            if (m->keys[i] != UINT64_MAX)
                pairmap_put(&g, (int32_t)(m->keys[i] >> 32), (int32_t)(uint32_t)m->keys[i], m->rank[i], m->nid[i]);
        pairmap_free(m);
        *m = g;
    }
    uint64_t k = ((uint64_t)(uint32_t)a << 32) | (uint32_t)b;
    uint32_t mask = m->cap - 1;
    for (uint32_t j = hash_pair(k) & mask;; j = (j + 1) & mask) {
        if (m->keys[j] == k) return; /* first (lowest rank) wins, as HF */
        if (m->keys[j] == UINT64_MAX) {
            m->keys[j] = k; m->rank[j] = rank; m->nid[j] = nid; m->n++;
            return;
        }
    }
}

int pairmap_get(const tok_pairmap *m, int32_t a, int32_t b, int32_t *rank, int32_t *nid) {
    uint64_t k = ((uint64_t)(uint32_t)a << 32) | (uint32_t)b;
    uint32_t mask = m->cap - 1;
    for (uint32_t j = hash_pair(k) & mask;; j = (j + 1) & mask) {
        if (m->keys[j] == k) { *rank = m->rank[j]; *nid = m->nid[j]; return 1; }
        if (m->keys[j] == UINT64_MAX) return 0;
    }
}

/* ---- word cache ---- */

enum { CACHE_MAX_WORD = 128, CACHE_MAX_ENTRIES = 200000 };

static void cache_reset(tok_cache *c) {
    strmap_free(&c->map);
    strmap_init(&c->map, 4096);
    c->n = 0;
    c->pool.n = 0;
}

static int cache_get(const tok_cache *c, const char *w, size_t n, tok_ids *out) {
    int32_t i = strmap_get(&c->map, w, n);
    if (i < 0) return 0;
    for (uint32_t k = 0; k < c->len[i]; k++) tok_ids_push(out, c->pool.p[c->off[i] + k]);
    return 1;
}

static void cache_put(tok_cache *c, const char *w, size_t n, const int32_t *ids, size_t nids) {
    if (c->n >= CACHE_MAX_ENTRIES) cache_reset(c);
    if (!c->map.cap) strmap_init(&c->map, 4096);
    if (c->n == c->cap) {
        c->cap = c->cap ? c->cap * 2 : 1024;
        c->off = xrealloc(c->off, c->cap * sizeof *c->off);
        c->len = xrealloc(c->len, c->cap * sizeof *c->len);
    }
    c->off[c->n] = (uint32_t)c->pool.n;
    c->len[c->n] = (uint32_t)nids;
    for (size_t k = 0; k < nids; k++) tok_ids_push(&c->pool, ids[k]);
    strmap_put(&c->map, w, n, (int32_t)c->n);
    c->n++;
}

/* ---- merge_all ---- */

static inline int hent_less(const bpe_hent *a, const bpe_hent *b) {
    return a->rank < b->rank || (a->rank == b->rank && a->pos < b->pos);
}

static void heap_push(bpe_scratch *s, size_t *hn, bpe_hent e) {
    if (*hn == s->heap_cap) {
        s->heap_cap = s->heap_cap ? s->heap_cap * 2 : 256;
        s->heap = xrealloc(s->heap, s->heap_cap * sizeof *s->heap);
    }
    size_t i = (*hn)++;
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (!hent_less(&e, &s->heap[p])) break;
        s->heap[i] = s->heap[p];
        i = p;
    }
    s->heap[i] = e;
}

static bpe_hent heap_pop(bpe_scratch *s, size_t *hn) {
    bpe_hent top = s->heap[0], last = s->heap[--(*hn)];
    size_t i = 0, n = *hn;
    for (;;) {
        size_t l = 2 * i + 1, r = l + 1, m = i;
        const bpe_hent *best = &last;
        if (l < n && hent_less(&s->heap[l], best)) { m = l; best = &s->heap[l]; }
        if (r < n && hent_less(&s->heap[r], best)) { m = r; }
        if (m == i) break;
        s->heap[i] = s->heap[m];
        i = m;
    }
    if (n) s->heap[i] = last;
    return top;
}

static void sym_add(bpe_scratch *s, size_t *ns, int32_t id, uint32_t len) {
    if (*ns == s->sym_cap) {
        s->sym_cap = s->sym_cap ? s->sym_cap * 2 : 256;
        s->sym = xrealloc(s->sym, s->sym_cap * sizeof *s->sym);
    }
    size_t i = (*ns)++;
    s->sym[i].id = id;
    s->sym[i].len = len;
    s->sym[i].prev = (int32_t)i - 1;
    s->sym[i].next = -1;
    if (i > 0) s->sym[i - 1].next = (int32_t)i;
}

void bpe_word(const bpe_model *m, bpe_scratch *s, const char *w, size_t n, tok_ids *out) {
    if (n == 0) return;
    if (m->ignore_merges) {
        int32_t id = strmap_get(&m->vocab, w, n);
        if (id >= 0) { tok_ids_push(out, id); return; }
    }
    int cacheable = m->cache && n <= CACHE_MAX_WORD;
    if (cacheable && cache_get(m->cache, w, n, out)) return;

    /* initial symbols (merge_word) */
    size_t ns = 0;
    int32_t unk_id = -1; uint32_t unk_len = 0;
    for (size_t i = 0; i < n;) {
        size_t cl = m->byte_level ? 1 : utf8_len((unsigned char)w[i]);
        if (cl > n - i) cl = n - i;
        int32_t id = m->byte_level ? m->byte_id[(unsigned char)w[i]] : strmap_get(&m->vocab, w + i, cl);
        if (id >= 0) {
            if (unk_id >= 0) { sym_add(s, &ns, unk_id, unk_len); unk_id = -1; }
            sym_add(s, &ns, id, (uint32_t)cl);
        } else {
            int done = 0;
            if (m->byte_fallback && !m->byte_level) {
                size_t k;
                for (k = 0; k < cl && m->byte_id[(unsigned char)w[i + k]] >= 0; k++) {}
                if (k == cl) {
                    for (k = 0; k < cl; k++) sym_add(s, &ns, m->byte_id[(unsigned char)w[i + k]], 1);
                    done = 1;
                }
            }
            if (!done && m->unk_id >= 0) {
                if (unk_id >= 0 && m->fuse_unk) unk_len += (uint32_t)cl;
                else {
                    if (unk_id >= 0) sym_add(s, &ns, unk_id, unk_len);
                    unk_id = m->unk_id; unk_len = (uint32_t)cl;
                }
            }
        }
        i += cl;
    }
    if (unk_id >= 0) sym_add(s, &ns, unk_id, unk_len);

    /* merge_all */
    size_t hn = 0;
    for (size_t i = 0; i + 1 < ns; i++) {
        int32_t r, nid;
        if (pairmap_get(&m->merges, s->sym[i].id, s->sym[i + 1].id, &r, &nid))
            heap_push(s, &hn, (bpe_hent){r, (int32_t)i, nid});
    }
    while (hn) {
        bpe_hent top = heap_pop(s, &hn);
        bpe_sym *a = &s->sym[top.pos];
        if (a->len == 0 || a->next < 0) continue;
        int32_t bi = a->next;
        bpe_sym *b = &s->sym[bi];
        int32_t r, nid;
        if (!pairmap_get(&m->merges, a->id, b->id, &r, &nid) || nid != top.nid) continue;
        a->id = top.nid;
        a->len += b->len;
        a->next = b->next;
        b->len = 0;
        if (a->next >= 0) s->sym[a->next].prev = top.pos;
        if (a->prev >= 0) {
            const bpe_sym *p = &s->sym[a->prev];
            if (pairmap_get(&m->merges, p->id, a->id, &r, &nid))
                heap_push(s, &hn, (bpe_hent){r, a->prev, nid});
        }
        if (a->next >= 0) {
            const bpe_sym *q = &s->sym[a->next];
            if (pairmap_get(&m->merges, a->id, q->id, &r, &nid))
                heap_push(s, &hn, (bpe_hent){r, top.pos, nid});
        }
    }
    size_t start = out->n;
    for (int32_t i = ns ? 0 : -1; i >= 0; i = s->sym[i].next) tok_ids_push(out, s->sym[i].id);
    /* out->p is still NULL when no word produced an id yet (an empty result is cached too) */
    if (cacheable) cache_put(m->cache, w, n, out->p ? out->p + start : NULL, out->n - start);
}

void bpe_scratch_free(bpe_scratch *s) {
    free(s->sym); free(s->heap);
    memset(s, 0, sizeof *s);
}

void bpe_model_free(bpe_model *m) {
    strmap_free(&m->vocab);
    pairmap_free(&m->merges);
    if (m->cache) {
        strmap_free(&m->cache->map);
        free(m->cache->off); free(m->cache->len); free(m->cache->pool.p);
        free(m->cache);
    }
    memset(m, 0, sizeof *m);
}
