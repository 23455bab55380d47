/*
 * resume.c - resume state files (see resume.h).
 */
#include "resume.h"

#include <errno.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>
#include <stdlib.h>
#include <string.h>

static const char MAGIC_RANK[8] = "DSRESUM1", MAGIC_PROG[8] = "DSPROGR1";

static uint64_t fnv(uint64_t h, const void *p, size_t n) {
    const unsigned char *b = p;
    for (size_t i = 0; i < n; i++) { h ^= b[i]; h *= 1099511628211ull; }
    return h;
}

void resume_model_fingerprint(const model *m, uint64_t *full, uint64_t *content) {
    uint64_t h = 1469598103934665603ull, loc = h;
    char *cfg = ds_path_join(m->dir, "config.json"), *text = NULL;
    size_t n = 0;
    if (ds_read_file(cfg, &text, &n) == DS_OK) h = fnv(h, text, n);
    free(text);
    free(cfg);
    unsigned char *page = xmalloc(4096);
    for (int i = 0; i < st_num_shards(m->st); i++) {
        const char *path = st_shard_path(m->st, i);
        struct stat sb;
        int fd = open(path, O_RDONLY | O_CLOEXEC);
        if (fd < 0 || fstat(fd, &sb) != 0) {
            h = fnv(h, "?", 1);
            if (fd >= 0) close(fd);
            continue;
        }
        const int64_t size = (int64_t)sb.st_size;
        h = fnv(h, &size, sizeof size);
        const int64_t mt[] = {(int64_t)sb.st_mtim.tv_sec, (int64_t)sb.st_mtim.tv_nsec};
        loc = fnv(loc, mt, sizeof mt);
        char *real = realpath(path, NULL);
        if (real) loc = fnv(loc, real, strlen(real));
        free(real);
        for (int k = 0; k < 16; k++) { /* 16 pages spread over the file: weights, not just the header */
            off_t off = (off_t)((double)sb.st_size * k / 16.0);
            ssize_t got = pread(fd, page, 4096, off);
            if (got > 0) h = fnv(h, page, (size_t)got);
        }
        close(fd);
    }
    free(page);
    *content = h;
    *full = fnv(h, &loc, sizeof loc);
}

uint64_t resume_ids_fingerprint(const ds_sample *local, size_t nlocal) {
    uint64_t h = 1469598103934665603ull;
    for (size_t s = 0; s < nlocal; s++) {
        h = fnv(h, &local[s].n, sizeof local[s].n);
        h = fnv(h, local[s].ids, sizeof(int32_t) * (size_t)local[s].n);
    }
    return h;
}

uint64_t resume_job_fingerprint(const model *m, const recipe *r, int world, int cuda, size_t samples_total,
                                size_t tokens_total, uint64_t model_fp, uint64_t data_fp) {
    const model_config *c = &m->cfg;
    uint64_t h = fnv(1469598103934665603ull, &model_fp, sizeof model_fp);
    h = fnv(h, &data_fp, sizeof data_fp);
    h = fnv(h, DS_VERSION, strlen(DS_VERSION));
    h = fnv(h, r->applied_json, strlen(r->applied_json));
    h = fnv(h, c->arch_name, strlen(c->arch_name));
    const int64_t v[] = {c->C, c->F, c->L, c->NH, c->NKV, c->HS, c->V, c->E, c->dtype, world, cuda,
                         (int64_t)samples_total, (int64_t)tokens_total};
    return fnv(h, v, sizeof v);
}

uint64_t resume_rank_fingerprint(uint64_t job_fp, const ds_sample *local, size_t nlocal) {
    uint64_t ids = resume_ids_fingerprint(local, nlocal);
    return fnv(fnv(1469598103934665603ull, &job_fp, sizeof job_fp), &ids, sizeof ids);
}

/* dir/name := head + data, atomically (ds_write_file_atomic). */
static ds_status write_state(const char *dir, const char *name, const void *head, size_t hn, const void *data,
                             size_t dn) {
    char *path = xasprintf("%s/%s", dir, name);
    ds_status st = ds_write_file_atomic(path, head, hn, data, dn);
    free(path);
    return st;
}

static ds_status read_exact(FILE *f, const char *path, void *p, size_t n) {
    if (n && fread(p, 1, n, f) != n)
        return ds_error(DS_ERR_USAGE, "cannot resume: %s is truncated\nhint: drop --resume to start over", path);
    return DS_OK;
}

ds_status resume_save_rank(const char *dir, const resume_head *h, const void *data, size_t nbytes) {
    resume_head x = *h;
    memcpy(x.magic, MAGIC_RANK, sizeof x.magic);
    char name[64];
    snprintf(name, sizeof name, "rank-%d.bin", (int)h->rank);
    return write_state(dir, name, &x, sizeof x, data, nbytes);
}

ds_status resume_load_rank(const char *dir, const resume_head *want, void *data, size_t nbytes) {
    char *path = xasprintf("%s/rank-%d.bin", dir, (int)want->rank);
    FILE *f = fopen(path, "rb");
    resume_head h;
    ds_status st = DS_OK;
    if (!f)
        st = ds_error(DS_ERR_USAGE, "cannot resume: %s: %s\nhint: drop --resume to start over", path,
                      strerror(errno));
    else if (!(st = read_exact(f, path, &h, sizeof h))) {
        const char *what = memcmp(h.magic, MAGIC_RANK, sizeof h.magic) ? "not a resume file"
                           : h.layer != want->layer   ? "written at another layer than progress.bin says"
                           : h.world != want->world   ? "from another world size"
                           : h.job_fp != want->job_fp ? "from another job"
                           : h.rank_fp != want->rank_fp || h.nlocal != want->nlocal || h.ntok != want->ntok
                               ? "from other calibration samples"
                           : h.C != want->C || h.dtype != want->dtype ? "of another model"
                                                                      : NULL;
        if (what)
            st = ds_error(DS_ERR_USAGE, "cannot resume: %s is %s\nhint: drop --resume to start over", path, what);
        else
            st = read_exact(f, path, data, nbytes);
    }
    if (f) fclose(f);
    free(path);
    return st;
}

typedef struct prog_head {
    char magic[8];
    int32_t layer, world, nmods, n_rtn, n_no_tokens, pad;
    uint64_t job_fp;
} prog_head;

ds_status resume_save_progress(const char *dir, int layer, int world, uint64_t job_fp, const run_stats *s) {
    prog_head h = {.layer = layer, .world = world, .nmods = s->nmods, .n_rtn = s->n_rtn,
                   .n_no_tokens = s->n_no_tokens, .job_fp = job_fp};
    memcpy(h.magic, MAGIC_PROG, sizeof h.magic);
    return write_state(dir, "progress.bin", &h, sizeof h, s->mods, sizeof(module_record) * (size_t)s->nmods);
}

ds_status resume_load_progress(const char *dir, int world, uint64_t job_fp, int nlayers, int max_mods, int *layer,
                               run_stats *s) {
    char *path = xasprintf("%s/progress.bin", dir);
    *layer = -1;
    FILE *f = fopen(path, "rb");
    if (!f) { free(path); return DS_OK; }
    prog_head h;
    ds_status st = read_exact(f, path, &h, sizeof h);
    if (!st && memcmp(h.magic, MAGIC_PROG, sizeof h.magic))
        st = ds_error(DS_ERR_USAGE, "cannot resume: %s is not a doneshot progress file\n"
                      "hint: drop --resume to start over", path);
    else if (!st && (h.layer < 0 || h.layer > nlayers - 2 || h.nmods < 0 || h.nmods > max_mods || h.n_rtn < 0 ||
                     h.n_rtn > h.nmods || h.n_no_tokens < 0 || h.n_no_tokens > h.nmods))
        st = ds_error(DS_ERR_USAGE, "cannot resume: %s is corrupt (layer %d, expected 0..%d; %d module records, "
                      "expected 0..%d)\nhint: drop --resume to start over", path, (int)h.layer, nlayers - 2,
                      (int)h.nmods, max_mods);
    else if (!st && h.world != world)
        st = ds_error(DS_ERR_USAGE, "cannot resume: the partial run used %d ranks, this one %d\n"
                      "hint: resume with mpirun -np %d, or drop --resume to start over", h.world, world, h.world);
    else if (!st && h.job_fp != job_fp)
        st = ds_error(DS_ERR_USAGE, "cannot resume: the partial run was made with another recipe, model, "
                      "calibration set, device or doneshot version\nhint: rerun with the same settings, or drop "
                      "--resume to start over");
    if (!st) {
        s->nmods = h.nmods;
        s->n_rtn = h.n_rtn;
        s->n_no_tokens = h.n_no_tokens;
        st = read_exact(f, path, s->mods, sizeof(module_record) * (size_t)h.nmods);
        for (int i = 0; !st && i < h.nmods; i++) {
            module_record *mr = &s->mods[i];
            mr->name[sizeof mr->name - 1] = 0;
            if (mr->owner < 0 || mr->owner >= world || mr->in <= 0 || mr->out <= 0)
                st = ds_error(DS_ERR_USAGE, "cannot resume: %s is corrupt (module record %d)\n"
                              "hint: drop --resume to start over", path, i);
        }
        if (!st) *layer = h.layer;
        else s->nmods = s->n_rtn = s->n_no_tokens = 0;
    }
    fclose(f);
    free(path);
    return st;
}
