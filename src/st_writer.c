/*
 * st_writer.c - streaming, planned safetensors writer with sharding and
 * model.safetensors.index.json.
 *
 * Follows the safetensors format (docs/model-and-tokenizer.md §1.1-1.2) and
 * the layout of the reference writer (safetensors >= 0.3): header
 * {"__metadata__":{"format":"pt"}, ...} padded with spaces so 8+N is a
 * multiple of 8, tensors ordered by descending dtype size then name, so each
 * tensor is aligned to its element size. Sharding follows transformers'
 * split: greedy in plan order, a new shard when the next tensor would pass
 * max_shard_bytes (a tensor larger than the limit gets a shard of its own).
 *
 * Output is atomic per file (docs/style.md §22): shards are written as
 * "<name>.tmp", fsync'd and renamed in stw_finish, the index last. A failed
 * run leaves only *.tmp files. A stale model.safetensors.index.json is
 * removed when the new checkpoint is a single file, so readers never pick up
 * an index from an earlier run.
 *
 * What it deliberately doesn't do: convert dtypes (callers pass bytes in the
 * planned dtype, little-endian), or check that concurrent stw_write calls on
 * the same tensor don't race (distinct tensors from distinct threads are fine).
 */
#include "st_writer.h"

#include "safetensors.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

typedef struct stw_entry {
    char *name;                  /* owned */
    ds_dtype dtype;
    int ndim;
    int64_t shape[ST_MAX_DIMS];
    uint64_t nbytes;
    int shard;
    uint64_t file_off;           /* absolute offset of the first byte in the shard file */
    uint64_t written;            /* bytes written so far */
    int done;                    /* all bytes written (also for empty tensors) */
} stw_entry;

typedef struct stw_shard {
    char *name;                  /* owned: "model-00001-of-00003.safetensors" */
    char *tmp_path, *path;       /* owned */
    int fd;
    uint64_t file_size;
} stw_shard;

struct st_writer {
    char *dir;
    uint64_t max_shard;
    stw_entry *e;
    size_t n, cap;
    size_t *table;               /* open addressing: index+1, 0 = empty */
    size_t table_cap;
    stw_shard *shards;
    int n_shards;
    int begun, finished;
    uint64_t total;
};

/* ---- small helpers ---- */

static uint64_t hash_str(const char *s) {
    uint64_t h = 1469598103934665603ull; /* FNV-1a */
    for (; *s; s++) h = (h ^ (unsigned char)*s) * 1099511628211ull;
    return h;
}

static void table_insert(st_writer *w, size_t idx) {
    if (2 * (w->n + 1) > w->table_cap) {
        size_t cap = w->table_cap ? w->table_cap * 2 : 64;
        free(w->table);
        w->table = xcalloc(cap, sizeof *w->table);
        w->table_cap = cap;
        for (size_t i = 0; i < idx; i++) {
            size_t h = (size_t)hash_str(w->e[i].name) & (cap - 1);
            while (w->table[h]) h = (h + 1) & (cap - 1);
            w->table[h] = i + 1;
        }
    }
    size_t h = (size_t)hash_str(w->e[idx].name) & (w->table_cap - 1);
    while (w->table[h]) h = (h + 1) & (w->table_cap - 1);
    w->table[h] = idx + 1;
}

static stw_entry *lookup(const st_writer *w, const char *name) {
    if (!w->table_cap) return NULL;
    size_t h = (size_t)hash_str(name) & (w->table_cap - 1);
    while (w->table[h]) {
        stw_entry *e = &w->e[w->table[h] - 1];
        if (strcmp(e->name, name) == 0) return e;
        h = (h + 1) & (w->table_cap - 1);
    }
    return NULL;
}

/* Growable string buffer for headers and the index. */
typedef struct sbuf { char *p; size_t len, cap; } sbuf;

static void sb_put(sbuf *b, const char *s, size_t n) {
    if (b->len + n + 1 > b->cap) {
        while (b->len + n + 1 > b->cap) b->cap = b->cap ? b->cap * 2 : 4096;
        b->p = xrealloc(b->p, b->cap);
    }
    memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = 0;
}
static void sb_str(sbuf *b, const char *s) { sb_put(b, s, strlen(s)); }
static void sb_u64(sbuf *b, uint64_t v) {
    char tmp[24];
    int n = snprintf(tmp, sizeof tmp, "%llu", (unsigned long long)v);
    sb_put(b, tmp, (size_t)n);
}
/* JSON string literal with escapes (names are UTF-8, passed through). */
static void sb_json(sbuf *b, const char *s) {
    sb_put(b, "\"", 1);
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\') {
            char esc[2] = {'\\', (char)c};
            sb_put(b, esc, 2);
        } else if (c < 0x20) {
            char esc[8];
            snprintf(esc, sizeof esc, "\\u%04x", c);
            sb_put(b, esc, 6);
        } else {
            sb_put(b, (const char *)&c, 1);
        }
    }
    sb_put(b, "\"", 1);
}

/* pwrite all of buf at off; errno-based message naming the file. */
static ds_status write_all(int fd, const void *buf, size_t n, uint64_t off, const char *path) {
    const unsigned char *p = buf;
    while (n > 0) {
        size_t chunk = n > (1u << 30) ? (1u << 30) : n;
        ssize_t k = pwrite(fd, p, chunk, (off_t)off);
        if (k < 0) {
            if (errno == EINTR) continue;
            return ds_error(DS_ERR_RUNTIME, "%s: write of %zu bytes at offset %llu failed: %s", path, chunk,
                            (unsigned long long)off, strerror(errno));
        }
        if (k == 0) return ds_error(DS_ERR_RUNTIME, "%s: write at offset %llu made no progress", path,
                                    (unsigned long long)off);
        p += k;
        n -= (size_t)k;
        off += (uint64_t)k;
    }
    return DS_OK;
}

/* ---- API ---- */

st_writer *stw_open(const char *dir, uint64_t max_shard_bytes) {
    st_writer *w = xcalloc(1, sizeof *w);
    w->dir = xstrdup(dir);
    w->max_shard = max_shard_bytes;
    return w;
}

ds_status stw_plan(st_writer *w, const char *name, ds_dtype dt, int ndim, const int64_t *shape) {
    if (w->begun) return ds_error(DS_ERR_RUNTIME, "stw_plan('%s'): called after stw_begin", name);
    if (!name[0] || strcmp(name, "__metadata__") == 0)
        return ds_error(DS_ERR_RUNTIME, "stw_plan: invalid tensor name '%s'", name);
    if ((unsigned)dt >= DS_DTYPE_COUNT) return ds_error(DS_ERR_RUNTIME, "stw_plan('%s'): bad dtype %d", name, (int)dt);
    if (ndim < 0 || ndim > ST_MAX_DIMS)
        return ds_error(DS_ERR_RUNTIME, "stw_plan('%s'): ndim %d out of range [0,%d]", name, ndim, ST_MAX_DIMS);
    if (lookup(w, name)) return ds_error(DS_ERR_RUNTIME, "stw_plan: duplicate tensor name '%s'", name);
    uint64_t numel = 1;
    for (int i = 0; i < ndim; i++) {
        if (shape[i] < 0) return ds_error(DS_ERR_RUNTIME, "stw_plan('%s'): negative dimension %lld", name,
                                          (long long)shape[i]);
        uint64_t d = (uint64_t)shape[i];
        if (d && numel > (UINT64_C(1) << 48) / d)
            return ds_error(DS_ERR_RUNTIME, "stw_plan('%s'): tensor too large", name);
        numel *= d;
    }
    if (w->n == w->cap) {
        w->cap = w->cap ? w->cap * 2 : 64;
        w->e = xrealloc(w->e, w->cap * sizeof *w->e);
    }
    stw_entry *e = &w->e[w->n];
    memset(e, 0, sizeof *e);
    e->name = xstrdup(name);
    e->dtype = dt;
    e->ndim = ndim;
    for (int i = 0; i < ndim; i++) e->shape[i] = shape[i];
    e->nbytes = numel * ds_dtype_size(dt);
    table_insert(w, w->n);
    w->n++;
    w->total += e->nbytes;
    return DS_OK;
}

/* Layout order inside a shard: descending dtype size, then name. */
static int cmp_layout(const void *a, const void *b) {
    const stw_entry *x = *(stw_entry *const *)a, *y = *(stw_entry *const *)b;
    size_t sx = ds_dtype_size(x->dtype), sy = ds_dtype_size(y->dtype);
    if (sx != sy) return sx > sy ? -1 : 1;
    return strcmp(x->name, y->name);
}

static int cmp_name(const void *a, const void *b) {
    return strcmp((*(stw_entry *const *)a)->name, (*(stw_entry *const *)b)->name);
}

/* Build one shard's header (ord = its entries in layout order); sets offsets. */
static void build_header(stw_entry *const *ord, size_t cnt, sbuf *hb) {
    hb->len = 0;
    sb_str(hb, "{\"__metadata__\":{\"format\":\"pt\"}");
    uint64_t off = 0;
    for (size_t k = 0; k < cnt; k++) {
        stw_entry *e = ord[k];
        sb_str(hb, ",");
        sb_json(hb, e->name);
        sb_str(hb, ":{\"dtype\":\"");
        sb_str(hb, ds_dtype_name(e->dtype));
        sb_str(hb, "\",\"shape\":[");
        for (int i = 0; i < e->ndim; i++) {
            if (i) sb_str(hb, ",");
            sb_u64(hb, (uint64_t)e->shape[i]);
        }
        sb_str(hb, "],\"data_offsets\":[");
        sb_u64(hb, off);
        sb_str(hb, ",");
        sb_u64(hb, off + e->nbytes);
        sb_str(hb, "]}");
        e->file_off = off; /* relative for now */
        off += e->nbytes;
    }
    sb_str(hb, "}");
    while (hb->len % 8) sb_str(hb, " ");
}

/* done == NULL: create the shard files; else reopen them (resume) and mark
 * the tensors done(name) accepts as written. */
static ds_status begin_impl(st_writer *w, int (*done)(void *ctx, const char *name), void *ctx) {
    if (w->begun) return ds_error(DS_ERR_RUNTIME, "stw_begin: called twice");
    w->begun = 1;
    ds_status st = DS_OK;
    stw_entry **ord = xmalloc((w->n ? w->n : 1) * sizeof *ord);
    sbuf hb = {0};

    /* Greedy shard assignment in plan order. */
    int ns = 1;
    uint64_t cur = 0;
    for (size_t i = 0; i < w->n; i++) {
        if (w->max_shard && cur > 0 && cur + w->e[i].nbytes > w->max_shard) {
            ns++;
            cur = 0;
        }
        w->e[i].shard = ns - 1;
        cur += w->e[i].nbytes;
    }
    w->shards = xcalloc((size_t)ns, sizeof *w->shards);
    w->n_shards = ns;
    for (int s = 0; s < ns; s++) w->shards[s].fd = -1;
    for (int s = 0; s < ns; s++) {
        stw_shard *sh = &w->shards[s];
        sh->name = ns == 1 ? xstrdup("model.safetensors")
                           : xasprintf("model-%05d-of-%05d.safetensors", s + 1, ns);
        sh->path = ds_path_join(w->dir, sh->name);
        sh->tmp_path = xasprintf("%s.tmp", sh->path);
        size_t cnt = 0;
        for (size_t i = 0; i < w->n; i++)
            if (w->e[i].shard == s) ord[cnt++] = &w->e[i];
        qsort(ord, cnt, sizeof *ord, cmp_layout);
        build_header(ord, cnt, &hb);
        uint64_t data = 0;
        for (size_t k = 0; k < cnt; k++) {
            ord[k]->file_off += 8 + hb.len;
            data += ord[k]->nbytes;
        }
        sh->file_size = 8 + hb.len + data;
        if (done) { /* resume: the same layout must already be on disk */
            sh->fd = open(sh->tmp_path, O_RDWR | O_CLOEXEC);
            struct stat sb;
            unsigned char *head = xmalloc(8 + hb.len);
            int same = sh->fd >= 0 && fstat(sh->fd, &sb) == 0 && (uint64_t)sb.st_size == sh->file_size &&
                       pread(sh->fd, head, 8 + hb.len, 0) == (ssize_t)(8 + hb.len) &&
                       memcmp(head + 8, hb.p, hb.len) == 0;
            free(head);
            if (!same) {
                st = ds_error(DS_ERR_INPUT, "%s: missing, or not the layout this job plans (another model, "
                              "recipe or --max-shard-size)", sh->tmp_path);
                goto out;
            }
            continue;
        }
        sh->fd = open(sh->tmp_path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
        if (sh->fd < 0) {
            st = ds_error(DS_ERR_RUNTIME, "%s: cannot create: %s", sh->tmp_path, strerror(errno));
            goto out;
        }
        unsigned char len8[8];
        for (int i = 0; i < 8; i++) len8[i] = (unsigned char)((uint64_t)hb.len >> (8 * i));
        if ((st = write_all(sh->fd, len8, 8, 0, sh->tmp_path))) goto out;
        if ((st = write_all(sh->fd, hb.p, hb.len, 8, sh->tmp_path))) goto out;
        /* Reserve the space now so ENOSPC shows up here, not halfway through;
         * fall back to a sparse file where fallocate is unsupported. */
        if (sh->file_size > 8 + hb.len) {
            int rc = fallocate(sh->fd, 0, 0, (off_t)sh->file_size);
            if (rc != 0 && errno != EOPNOTSUPP && errno != ENOSYS && errno != EINVAL) {
                st = ds_error(DS_ERR_RUNTIME, "%s: cannot reserve %llu bytes: %s", sh->tmp_path,
                              (unsigned long long)sh->file_size, strerror(errno));
                goto out;
            }
            if (rc != 0 && ftruncate(sh->fd, (off_t)sh->file_size) != 0) {
                st = ds_error(DS_ERR_RUNTIME, "%s: cannot resize to %llu bytes: %s", sh->tmp_path,
                              (unsigned long long)sh->file_size, strerror(errno));
                goto out;
            }
        }
    }
    if (done)
        for (size_t i = 0; i < w->n; i++)
            if (done(ctx, w->e[i].name)) {
                w->e[i].written = w->e[i].nbytes;
                w->e[i].done = 1;
            }
out:
    free(ord);
    free(hb.p);
    return st;
}

ds_status stw_begin(st_writer *w) { return begin_impl(w, NULL, NULL); }

ds_status stw_begin_resume(st_writer *w, int (*done)(void *ctx, const char *name), void *ctx) {
    return begin_impl(w, done, ctx);
}

ds_status stw_sync(st_writer *w) {
    for (int s = 0; s < w->n_shards; s++)
        if (w->shards[s].fd >= 0 && fsync(w->shards[s].fd) != 0)
            return ds_error(DS_ERR_RUNTIME, "%s: fsync failed: %s", w->shards[s].tmp_path, strerror(errno));
    return DS_OK;
}

ds_status stw_write_range(st_writer *w, const char *name, uint64_t offset, const void *data, size_t nbytes) {
    if (!w->begun || w->finished)
        return ds_error(DS_ERR_RUNTIME, "stw_write('%s'): writer is not between stw_begin and stw_finish", name);
    stw_entry *e = lookup(w, name);
    if (!e) return ds_error(DS_ERR_RUNTIME, "stw_write: tensor '%s' was not planned", name);
    if (offset > e->nbytes || nbytes > e->nbytes - offset)
        return ds_error(DS_ERR_RUNTIME, "stw_write('%s'): bytes [%llu,%llu) outside the tensor's %llu bytes", name,
                        (unsigned long long)offset, (unsigned long long)(offset + nbytes),
                        (unsigned long long)e->nbytes);
    if (e->written + nbytes > e->nbytes)
        return ds_error(DS_ERR_RUNTIME, "stw_write('%s'): more than the planned %llu bytes written", name,
                        (unsigned long long)e->nbytes);
    stw_shard *sh = &w->shards[e->shard];
    ds_status st = write_all(sh->fd, data, nbytes, e->file_off + offset, sh->tmp_path);
    if (st) return st;
    e->written += nbytes;
    if (e->written == e->nbytes) e->done = 1;
    return DS_OK;
}

ds_status stw_write(st_writer *w, const char *name, const void *data, size_t nbytes) {
    stw_entry *e = w->begun ? lookup(w, name) : NULL;
    if (e && nbytes != e->nbytes)
        return ds_error(DS_ERR_RUNTIME, "stw_write('%s'): %zu bytes given, planned %llu", name, nbytes,
                        (unsigned long long)e->nbytes);
    if (e && e->done)
        return ds_error(DS_ERR_RUNTIME, "stw_write('%s'): tensor already written", name);
    return stw_write_range(w, name, 0, data, nbytes);
}

ds_status stw_finish(st_writer *w) {
    if (!w->begun || w->finished) return ds_error(DS_ERR_RUNTIME, "stw_finish: writer not begun or already finished");
    size_t missing = 0, first = 0;
    for (size_t i = 0; i < w->n; i++)
        if (!w->e[i].done && missing++ == 0) first = i;
    if (missing)
        return ds_error(DS_ERR_RUNTIME, "%s: %zu planned tensor(s) not (fully) written, first '%s' (%llu of %llu bytes)",
                        w->dir, missing, w->e[first].name, (unsigned long long)w->e[first].written,
                        (unsigned long long)w->e[first].nbytes);
    for (int s = 0; s < w->n_shards; s++) {
        stw_shard *sh = &w->shards[s];
        if (fsync(sh->fd) != 0)
            return ds_error(DS_ERR_RUNTIME, "%s: fsync failed: %s", sh->tmp_path, strerror(errno));
        int rc = close(sh->fd);
        sh->fd = -1;
        if (rc != 0) return ds_error(DS_ERR_RUNTIME, "%s: close failed: %s", sh->tmp_path, strerror(errno));
        if (rename(sh->tmp_path, sh->path) != 0)
            return ds_error(DS_ERR_RUNTIME, "%s: rename to %s failed: %s", sh->tmp_path, sh->path, strerror(errno));
    }
    char *ipath = ds_path_join(w->dir, "model.safetensors.index.json");
    ds_status st = DS_OK;
    if (w->n_shards > 1) {
        /* Same shape as transformers' json.dumps(index, indent=2, sort_keys=True). */
        stw_entry **ord = xmalloc((w->n ? w->n : 1) * sizeof *ord);
        for (size_t i = 0; i < w->n; i++) ord[i] = &w->e[i];
        qsort(ord, w->n, sizeof *ord, cmp_name);
        sbuf b = {0};
        sb_str(&b, "{\n  \"metadata\": {\n    \"total_size\": ");
        sb_u64(&b, w->total);
        sb_str(&b, "\n  },\n  \"weight_map\": {");
        for (size_t k = 0; k < w->n; k++) {
            sb_str(&b, k ? ",\n    " : "\n    ");
            sb_json(&b, ord[k]->name);
            sb_str(&b, ": ");
            sb_json(&b, w->shards[ord[k]->shard].name);
        }
        sb_str(&b, "\n  }\n}\n");
        st = ds_write_file_atomic(ipath, b.p, b.len, NULL, 0);
        free(b.p);
        free(ord);
    } else if (unlink(ipath) != 0 && errno != ENOENT) {
        st = ds_error(DS_ERR_RUNTIME, "%s: cannot remove stale index: %s", ipath, strerror(errno));
    }
    free(ipath);
    if (st) return st;
    /* Make the renames durable. */
    int dfd = open(w->dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd >= 0) {
        fsync(dfd);
        close(dfd);
    }
    w->finished = 1;
    return DS_OK;
}

int stw_num_shards(const st_writer *w) { return w->n_shards; }

uint64_t stw_total_bytes(const st_writer *w) { return w->total; }

const char *stw_shard_name(const st_writer *w, const char *tensor) {
    const stw_entry *e = w->begun ? lookup(w, tensor) : NULL;
    return e ? w->shards[e->shard].name : NULL;
}

void stw_close(st_writer *w) {
    if (!w) return;
    for (int s = 0; s < w->n_shards; s++) {
        if (w->shards[s].fd >= 0) close(w->shards[s].fd);
        free(w->shards[s].name);
        free(w->shards[s].path);
        free(w->shards[s].tmp_path);
    }
    free(w->shards);
    for (size_t i = 0; i < w->n; i++) free(w->e[i].name);
    free(w->e);
    free(w->table);
    free(w->dir);
    free(w);
}
