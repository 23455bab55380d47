/*
 * safetensors.c - mmap reader for safetensors files and sharded Hugging Face
 * checkpoints (model.safetensors.index.json -> shards, or model.safetensors).
 *
 * Spec: huggingface/safetensors README "Format" + the validation done by the
 * reference reader (tensor.rs: read_metadata/validate), summarized in
 * docs/model-and-tokenizer.md §1.1-1.2:
 *   [0,8)      u64 LE header length N (N <= 100,000,000)
 *   [8,8+N)    JSON object: name -> {dtype, shape, data_offsets}, optional
 *              "__metadata__" (string -> string); whitespace around it ok
 *   [8+N,EOF)  data buffer, fully covered by the tensors, no holes/overlaps.
 *
 * What it deliberately doesn't do: write files (st_writer.c), convert FP8 or
 * integer dtypes, assume alignment (tensors may start at any byte; readers
 * copy/convert with memcpy). Nothing here aborts on bad bytes: every parse
 * error is DS_ERR_INPUT with a message naming the file (and tensor).
 */
#include "safetensors.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#define ST_MAX_HEADER 100000000ull
#define ST_MAX_INT 9007199254740992.0 /* 2^53: exact in a double */

typedef struct st_shard {
    char *path;                  /* owned */
    unsigned char *map;          /* mmap of the whole file (PROT_READ, MAP_PRIVATE) */
    size_t map_len;
    char **meta_keys, **meta_vals; /* owned "__metadata__" pairs */
    size_t n_meta;
} st_shard;

struct st_model {
    st_shard *shards;
    int n_shards;
    st_tensor *tensors;          /* (count) sorted by name */
    size_t count;
    size_t *table;               /* open addressing: index+1, 0 = empty */
    size_t table_cap;            /* power of two */
};

/* ---- small helpers ---- */

static uint64_t hash_str(const char *s) {
    uint64_t h = 1469598103934665603ull; /* FNV-1a */
    for (; *s; s++) h = (h ^ (unsigned char)*s) * 1099511628211ull;
    return h;
}

static int is_json_ws(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r'; }

/* A JSON number that is an exact non-negative integer below 2^53. */
static int json_uint(const cJSON *v, uint64_t *out) {
    if (!cJSON_IsNumber(v)) return 0;
    double d = v->valuedouble;
    if (!(d >= 0) || d >= ST_MAX_INT || d != floor(d)) return 0;
    *out = (uint64_t)d;
    return 1;
}

static void free_tensors(st_tensor *t, size_t n) {
    if (!t) return;
    for (size_t i = 0; i < n; i++) free(t[i].name);
    free(t);
}

static int cmp_tensor_name(const void *a, const void *b) {
    return strcmp(((const st_tensor *)a)->name, ((const st_tensor *)b)->name);
}

typedef struct span { uint64_t begin, end; size_t idx; } span;

static int cmp_span(const void *a, const void *b) {
    const span *x = a, *y = b;
    if (x->begin != y->begin) return x->begin < y->begin ? -1 : 1;
    if (x->end != y->end) return x->end < y->end ? -1 : 1;
    return 0;
}

/* ---- header parsing ---- */

/* Parse one tensor entry `e` named e->string into *t. */
static ds_status parse_entry(const cJSON *e, const unsigned char *base, size_t data_len,
                             const char *fn, st_tensor *t) {
    const char *name = e->string;
    if (!cJSON_IsObject(e))
        return ds_error(DS_ERR_INPUT, "%s: tensor '%s': expected an object {dtype, shape, data_offsets}", fn, name);
    const cJSON *jd = cJSON_GetObjectItemCaseSensitive(e, "dtype");
    const cJSON *js = cJSON_GetObjectItemCaseSensitive(e, "shape");
    const cJSON *jo = cJSON_GetObjectItemCaseSensitive(e, "data_offsets");
    if (!cJSON_IsString(jd))
        return ds_error(DS_ERR_INPUT, "%s: tensor '%s': missing or non-string \"dtype\"", fn, name);
    if (ds_dtype_from_name(jd->valuestring, &t->dtype) != 0)
        return ds_error(DS_ERR_INPUT, "%s: tensor '%s': unknown dtype \"%s\"", fn, name, jd->valuestring);
    if (!cJSON_IsArray(js))
        return ds_error(DS_ERR_INPUT, "%s: tensor '%s': missing or non-array \"shape\"", fn, name);
    int nd = cJSON_GetArraySize(js);
    if (nd > ST_MAX_DIMS)
        return ds_error(DS_ERR_INPUT, "%s: tensor '%s': %d dimensions, at most %d supported", fn, name, nd, ST_MAX_DIMS);
    t->ndim = nd;
    uint64_t numel = 1;
    int overflow = 0, i = 0;
    for (const cJSON *d = js->child; d; d = d->next, i++) {
        uint64_t v;
        if (!json_uint(d, &v))
            return ds_error(DS_ERR_INPUT, "%s: tensor '%s': shape[%d] is not a non-negative integer", fn, name, i);
        t->shape[i] = (int64_t)v;
        if (v && numel > UINT64_MAX / v) overflow = 1;
        else numel *= v;
    }
    size_t esz = ds_dtype_size(t->dtype);
    if (overflow || (numel && numel > (UINT64_MAX / esz)))
        return ds_error(DS_ERR_INPUT, "%s: tensor '%s': shape product overflows", fn, name);
    uint64_t want = numel * esz;
    uint64_t ob, oe;
    if (!cJSON_IsArray(jo) || cJSON_GetArraySize(jo) != 2 || !json_uint(jo->child, &ob) ||
        !json_uint(jo->child->next, &oe))
        return ds_error(DS_ERR_INPUT, "%s: tensor '%s': \"data_offsets\" must be 2 non-negative integers",
                        fn, name);
    if (ob > oe)
        return ds_error(DS_ERR_INPUT, "%s: tensor '%s': data_offsets [%llu,%llu) have begin > end", fn, name,
                        (unsigned long long)ob, (unsigned long long)oe);
    if (oe > data_len)
        return ds_error(DS_ERR_INPUT, "%s: tensor '%s': data_offsets [%llu,%llu) exceed data size %zu", fn,
                        name, (unsigned long long)ob, (unsigned long long)oe, data_len);
    if (oe - ob != want)
        return ds_error(DS_ERR_INPUT,
                        "%s: tensor '%s': data_offsets [%llu,%llu) span %llu bytes, expected %llu "
                        "(%llu elements of %s)", fn, name, (unsigned long long)ob, (unsigned long long)oe,
                        (unsigned long long)(oe - ob), (unsigned long long)want, (unsigned long long)numel,
                        ds_dtype_name(t->dtype));
    t->data = base + ob;
    t->nbytes = (size_t)(oe - ob);
    return DS_OK;
}

/* "__metadata__": a flat string -> string object. Copied into the out arrays. */
static ds_status parse_metadata(const cJSON *m, const char *fn, char ***keys, char ***vals, size_t *n) {
    if (!cJSON_IsObject(m))
        return ds_error(DS_ERR_INPUT, "%s: \"__metadata__\" must be an object of strings", fn);
    size_t cnt = (size_t)cJSON_GetArraySize(m), i = 0;
    *keys = xcalloc(cnt ? cnt : 1, sizeof(char *));
    *vals = xcalloc(cnt ? cnt : 1, sizeof(char *));
    *n = 0;
    for (const cJSON *e = m->child; e; e = e->next, i++) {
        if (!cJSON_IsString(e))
            return ds_error(DS_ERR_INPUT, "%s: \"__metadata__\" key '%s': expected a string value", fn, e->string);
        (*keys)[i] = xstrdup(e->string);
        (*vals)[i] = xstrdup(e->valuestring);
        *n = i + 1;
    }
    return DS_OK;
}

static void free_meta(char **keys, char **vals, size_t n) {
    for (size_t i = 0; i < n; i++) { free(keys[i]); free(vals[i]); }
    free(keys);
    free(vals);
}

/* Full header parse; optionally returns the metadata pairs (owned). */
static ds_status parse_header(const char *json, size_t n, const unsigned char *base, size_t data_len,
                              const char *fn, st_tensor **tensors, size_t *count, char ***mkeys,
                              char ***mvals, size_t *nmeta) {
    ds_status st = DS_OK;
    cJSON *root = NULL;
    st_tensor *ts = NULL;
    span *spans = NULL;
    size_t nt = 0;
    char **keys = NULL, **vals = NULL;
    size_t nm = 0;

    /* Trim the JSON whitespace the reference reader tolerates. */
    size_t lo = 0, hi = n;
    while (lo < hi && is_json_ws(json[lo])) lo++;
    while (hi > lo && is_json_ws(json[hi - 1])) hi--;
    if (lo == hi || json[lo] != '{') {
        st = ds_error(DS_ERR_INPUT, "%s: header is not a JSON object (expected '{' at byte 8)", fn);
        goto fail;
    }
    const char *end = NULL;
    root = cJSON_ParseWithLengthOpts(json + lo, hi - lo, &end, 0);
    if (!root || end != json + hi) {
        size_t at = end ? (size_t)(end - json) : 0;
        if (at > n) at = n;
        st = ds_error(DS_ERR_INPUT, "%s: header is not valid JSON (error near header byte %zu of %zu)", fn, at, n);
        goto fail;
    }
    if (!cJSON_IsObject(root)) {
        st = ds_error(DS_ERR_INPUT, "%s: header is not a JSON object", fn);
        goto fail;
    }
    size_t cap = (size_t)cJSON_GetArraySize(root);
    ts = xcalloc(cap ? cap : 1, sizeof *ts);
    spans = xcalloc(cap ? cap : 1, sizeof *spans);
    int seen_meta = 0;
    for (const cJSON *e = root->child; e; e = e->next) {
        if (strcmp(e->string, "__metadata__") == 0) {
            if (seen_meta) {
                st = ds_error(DS_ERR_INPUT, "%s: duplicate key \"__metadata__\"", fn);
                goto fail;
            }
            seen_meta = 1;
            if ((st = parse_metadata(e, fn, &keys, &vals, &nm))) goto fail;
            continue;
        }
        st_tensor *t = &ts[nt];
        if ((st = parse_entry(e, base, data_len, fn, t))) goto fail;
        t->name = xstrdup(e->string);
        nt++;
    }
    /* Duplicate names: sort a copy of the names (cJSON keeps duplicates). */
    qsort(ts, nt, sizeof *ts, cmp_tensor_name);
    for (size_t i = 1; i < nt; i++)
        if (strcmp(ts[i - 1].name, ts[i].name) == 0) {
            st = ds_error(DS_ERR_INPUT, "%s: duplicate tensor name '%s' in header", fn, ts[i].name);
            goto fail;
        }
    /* Coverage: sorted by begin, contiguous from 0 to data_len. */
    for (size_t i = 0; i < nt; i++) {
        spans[i].begin = (uint64_t)((const unsigned char *)ts[i].data - base);
        spans[i].end = spans[i].begin + ts[i].nbytes;
        spans[i].idx = i;
    }
    qsort(spans, nt, sizeof *spans, cmp_span);
    uint64_t pos = 0;
    for (size_t i = 0; i < nt; i++) {
        const st_tensor *t = &ts[spans[i].idx];
        if (spans[i].begin < pos) {
            st = ds_error(DS_ERR_INPUT, "%s: tensor '%s': data_offsets [%llu,%llu) overlap the previous tensor "
                          "(ends at %llu)", fn, t->name, (unsigned long long)spans[i].begin,
                          (unsigned long long)spans[i].end, (unsigned long long)pos);
            goto fail;
        }
        if (spans[i].begin > pos) {
            st = ds_error(DS_ERR_INPUT, "%s: tensor '%s': hole in data buffer: bytes [%llu,%llu) belong to "
                          "no tensor", fn, t->name, (unsigned long long)pos, (unsigned long long)spans[i].begin);
            goto fail;
        }
        pos = spans[i].end;
    }
    if (pos != data_len) {
        st = ds_error(DS_ERR_INPUT, "%s: tensors cover %llu bytes of the data buffer, file has %zu "
                      "(trailing bytes [%llu,%zu) belong to no tensor)", fn, (unsigned long long)pos, data_len,
                      (unsigned long long)pos, data_len);
        goto fail;
    }
    free(spans);
    cJSON_Delete(root);
    *tensors = ts;
    *count = nt;
    if (mkeys) {
        *mkeys = keys;
        *mvals = vals;
        *nmeta = nm;
    } else {
        free_meta(keys, vals, nm);
    }
    return DS_OK;
fail:
    free(spans);
    free_tensors(ts, nt);
    free_meta(keys, vals, nm);
    cJSON_Delete(root);
    return st;
}

ds_status st_parse_header(const char *json, size_t n, const unsigned char *base, size_t data_len,
                          const char *filename, st_tensor **tensors, size_t *count) {
    return parse_header(json, n, base, data_len, filename, tensors, count, NULL, NULL, NULL);
}

/* ---- one shard ---- */

/* mmap `path` and parse its header into (tensors, count); fills sh. */
static ds_status open_shard(const char *path, st_shard *sh, st_tensor **tensors, size_t *count) {
    ds_status st = DS_OK;
    memset(sh, 0, sizeof *sh);
    sh->path = xstrdup(path);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return ds_error(DS_ERR_INPUT, "%s: cannot open: %s", path, strerror(errno));
    struct stat sb;
    if (fstat(fd, &sb) != 0) {
        st = ds_error(DS_ERR_INPUT, "%s: cannot stat: %s", path, strerror(errno));
        goto fail;
    }
    if (!S_ISREG(sb.st_mode)) {
        st = ds_error(DS_ERR_INPUT, "%s: not a regular file", path);
        goto fail;
    }
    uint64_t fsize = (uint64_t)sb.st_size;
    if (fsize < 8) {
        st = ds_error(DS_ERR_INPUT, "%s: file is %llu bytes, too short for the 8-byte header length",
                      path, (unsigned long long)fsize);
        goto fail;
    }
    sh->map = mmap(NULL, (size_t)fsize, PROT_READ, MAP_PRIVATE, fd, 0);
    if (sh->map == MAP_FAILED) {
        sh->map = NULL;
        st = ds_error(DS_ERR_INPUT, "%s: mmap failed: %s", path, strerror(errno));
        goto fail;
    }
    sh->map_len = (size_t)fsize;
    close(fd);
    fd = -1;
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--) hlen = (hlen << 8) | sh->map[i];
    if (hlen > ST_MAX_HEADER) {
        st = ds_error(DS_ERR_INPUT, "%s: header length %llu exceeds the limit of %llu bytes", path,
                      (unsigned long long)hlen, ST_MAX_HEADER);
        goto fail;
    }
    if (hlen > fsize - 8) {
        st = ds_error(DS_ERR_INPUT, "%s: header length %llu exceeds file size %llu (truncated file?)", path,
                      (unsigned long long)hlen, (unsigned long long)fsize);
        goto fail;
    }
    st = parse_header((const char *)sh->map + 8, (size_t)hlen, sh->map + 8 + hlen, (size_t)(fsize - 8 - hlen),
                      path, tensors, count, &sh->meta_keys, &sh->meta_vals, &sh->n_meta);
    if (st) goto fail;
    return DS_OK;
fail:
    if (fd >= 0) close(fd);
    return st; /* sh is released by the caller's close_shard */
}

static void close_shard(st_shard *sh) {
    if (sh->map) munmap(sh->map, sh->map_len);
    free_meta(sh->meta_keys, sh->meta_vals, sh->n_meta);
    free(sh->path);
    memset(sh, 0, sizeof *sh);
}

/* ---- model assembly ---- */

/* Sort tensors by name, reject duplicates across shards, build the hash table. */
static ds_status finish_model(st_model *m) {
    if (m->count) qsort(m->tensors, m->count, sizeof *m->tensors, cmp_tensor_name);
    for (size_t i = 1; i < m->count; i++)
        if (strcmp(m->tensors[i - 1].name, m->tensors[i].name) == 0)
            return ds_error(DS_ERR_INPUT, "%s: tensor '%s' also appears in %s", st_shard_path(m, m->tensors[i].shard),
                            m->tensors[i].name, st_shard_path(m, m->tensors[i - 1].shard));
    size_t cap = 16;
    while (cap < 2 * m->count) cap *= 2;
    m->table = xcalloc(cap, sizeof *m->table);
    m->table_cap = cap;
    for (size_t i = 0; i < m->count; i++) {
        size_t h = (size_t)hash_str(m->tensors[i].name) & (cap - 1);
        while (m->table[h]) h = (h + 1) & (cap - 1);
        m->table[h] = i + 1;
    }
    return DS_OK;
}

/* Append a shard's tensors to m (takes ownership of ts). */
static void add_tensors(st_model *m, st_tensor *ts, size_t n, int shard, size_t *cap) {
    if (m->count + n > *cap) {
        while (m->count + n > *cap) *cap = *cap ? *cap * 2 : 64;
        m->tensors = xrealloc(m->tensors, *cap * sizeof *m->tensors);
    }
    for (size_t i = 0; i < n; i++) {
        ts[i].shard = shard;
        m->tensors[m->count++] = ts[i];
    }
    free(ts);
}

ds_status st_open_file(const char *path, st_model **out) {
    *out = NULL;
    st_model *m = xcalloc(1, sizeof *m);
    m->shards = xcalloc(1, sizeof *m->shards);
    m->n_shards = 1;
    st_tensor *ts = NULL;
    size_t n = 0, cap = 0;
    ds_status st = open_shard(path, &m->shards[0], &ts, &n);
    if (st) goto fail;
    add_tensors(m, ts, n, 0, &cap);
    if ((st = finish_model(m))) goto fail;
    *out = m;
    return DS_OK;
fail:
    st_close(m);
    return st;
}

typedef struct wm_entry { const char *name, *file; } wm_entry;

static int cmp_wm(const void *a, const void *b) {
    return strcmp(((const wm_entry *)a)->name, ((const wm_entry *)b)->name);
}

static int cmp_str(const void *a, const void *b) {
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* Sharded checkpoint: weight_map -> shard files; every mapped tensor must be in
 * its shard, and no shard may hold a tensor mapped elsewhere. */
static ds_status open_index(const char *dir, const char *ipath, st_model **out) {
    ds_status st = DS_OK;
    char *text = NULL, *spath = NULL;
    size_t len = 0, cap = 0, nw = 0, nf = 0;
    cJSON *root = NULL;
    wm_entry *wm = NULL;
    const char **files = NULL;
    st_model *m = xcalloc(1, sizeof *m);

    if ((st = ds_read_file(ipath, &text, &len))) goto fail;
    root = cJSON_ParseWithLength(text, len);
    if (!cJSON_IsObject(root)) {
        st = ds_error(DS_ERR_INPUT, "%s: not a JSON object", ipath);
        goto fail;
    }
    const cJSON *map = cJSON_GetObjectItemCaseSensitive(root, "weight_map");
    if (!cJSON_IsObject(map)) {
        st = ds_error(DS_ERR_INPUT, "%s: missing or non-object \"weight_map\"", ipath);
        goto fail;
    }
    size_t nmap = (size_t)cJSON_GetArraySize(map);
    wm = xcalloc(nmap ? nmap : 1, sizeof *wm);
    files = xcalloc(nmap ? nmap : 1, sizeof *files);
    for (const cJSON *e = map->child; e; e = e->next) {
        if (!cJSON_IsString(e) || !e->valuestring[0] || strchr(e->valuestring, '/')) {
            st = ds_error(DS_ERR_INPUT, "%s: weight_map['%s']: expected a shard file name in the same directory",
                          ipath, e->string);
            goto fail;
        }
        wm[nw].name = e->string;
        wm[nw++].file = e->valuestring;
        files[nf++] = e->valuestring;
    }
    qsort(wm, nw, sizeof *wm, cmp_wm);
    for (size_t i = 1; i < nw; i++)
        if (strcmp(wm[i - 1].name, wm[i].name) == 0) {
            st = ds_error(DS_ERR_INPUT, "%s: weight_map: duplicate tensor '%s'", ipath, wm[i].name);
            goto fail;
        }
    /* Unique shard files, sorted (model-00001-of-N... order). */
    qsort(files, nf, sizeof *files, cmp_str);
    size_t u = 0;
    for (size_t i = 0; i < nf; i++)
        if (u == 0 || strcmp(files[u - 1], files[i]) != 0) files[u++] = files[i];
    nf = u;
    m->shards = xcalloc(nf ? nf : 1, sizeof *m->shards);
    for (size_t s = 0; s < nf; s++) {
        st_tensor *ts = NULL;
        size_t n = 0;
        spath = ds_path_join(dir, files[s]);
        if (!ds_file_exists(spath)) {
            st = ds_error(DS_ERR_INPUT, "%s: shard '%s' listed in weight_map is missing (%s)", ipath, files[s], spath);
            goto fail;
        }
        m->n_shards = (int)s + 1;
        if ((st = open_shard(spath, &m->shards[s], &ts, &n))) goto fail;
        free(spath);
        spath = NULL;
        /* Tensors in this shard must be mapped to it (when mapped at all). */
        for (size_t i = 0; i < n; i++) {
            wm_entry key = {ts[i].name, NULL};
            const wm_entry *hit = bsearch(&key, wm, nw, sizeof *wm, cmp_wm);
            if (hit && strcmp(hit->file, files[s]) != 0) {
                st = ds_error(DS_ERR_INPUT, "%s: tensor '%s' is in shard %s but weight_map maps it to %s",
                              ipath, ts[i].name, files[s], hit->file);
                free_tensors(ts, n);
                goto fail;
            }
        }
        add_tensors(m, ts, n, (int)s, &cap);
    }
    if ((st = finish_model(m))) goto fail;
    /* Every mapped tensor must exist (in its shard, checked above). */
    for (size_t i = 0; i < nw; i++)
        if (!st_find(m, wm[i].name)) {
            st = ds_error(DS_ERR_INPUT, "%s: tensor '%s' is mapped to %s/%s, but that shard does not contain it",
                          ipath, wm[i].name, dir, wm[i].file);
            goto fail;
        }
    free(wm);
    free(files);
    cJSON_Delete(root);
    free(text);
    *out = m;
    return DS_OK;
fail:
    free(spath);
    free(wm);
    free(files);
    cJSON_Delete(root);
    free(text);
    st_close(m);
    return st;
}

ds_status st_open_dir(const char *dir, st_model **out) {
    *out = NULL;
    if (!ds_is_dir(dir)) return ds_error(DS_ERR_INPUT, "%s: not a directory", dir);
    char *ipath = ds_path_join(dir, "model.safetensors.index.json");
    char *spath = ds_path_join(dir, "model.safetensors");
    ds_status st;
    if (ds_file_exists(ipath))
        st = open_index(dir, ipath, out);
    else if (ds_file_exists(spath))
        st = st_open_file(spath, out);
    else
        st = ds_error(DS_ERR_INPUT, "%s: no model weights found (looked for model.safetensors.index.json "
                      "and model.safetensors)", dir);
    free(ipath);
    free(spath);
    return st;
}

/* ---- queries ---- */

const st_tensor *st_find(const st_model *m, const char *name) {
    if (!m || !m->table_cap) return NULL;
    size_t h = (size_t)hash_str(name) & (m->table_cap - 1);
    while (m->table[h]) {
        const st_tensor *t = &m->tensors[m->table[h] - 1];
        if (strcmp(t->name, name) == 0) return t;
        h = (h + 1) & (m->table_cap - 1);
    }
    return NULL;
}

size_t st_count(const st_model *m) { return m ? m->count : 0; }

const st_tensor *st_get(const st_model *m, size_t i) {
    DS_ASSERT(m && i < m->count);
    return &m->tensors[i];
}

const char *st_shard_path(const st_model *m, int shard) {
    DS_ASSERT(m && shard >= 0 && shard < m->n_shards);
    return m->shards[shard].path;
}

int st_num_shards(const st_model *m) { return m ? m->n_shards : 0; }

const char *st_metadata(const st_model *m, const char *key) {
    if (!m || m->n_shards < 1) return NULL;
    const st_shard *sh = &m->shards[0];
    for (size_t i = 0; i < sh->n_meta; i++)
        if (strcmp(sh->meta_keys[i], key) == 0) return sh->meta_vals[i];
    return NULL;
}

void st_close(st_model *m) {
    if (!m) return;
    for (int i = 0; i < m->n_shards; i++) close_shard(&m->shards[i]);
    free(m->shards);
    free_tensors(m->tensors, m->count);
    free(m->table);
    free(m);
}

int64_t st_numel(const st_tensor *t) {
    int64_t n = 1;
    for (int i = 0; i < t->ndim; i++) n *= t->shape[i];
    return n;
}

ds_status st_to_f32(const st_tensor *t, float *dst) {
    if (t->dtype != DS_DTYPE_F32 && t->dtype != DS_DTYPE_BF16 && t->dtype != DS_DTYPE_F16)
        return ds_error(DS_ERR_INPUT, "tensor '%s': dtype %s cannot be converted to f32 (expected F32, BF16 or F16)",
                        t->name, ds_dtype_name(t->dtype));
    return ds_convert_to_f32(dst, t->data, t->dtype, (size_t)st_numel(t));
}
