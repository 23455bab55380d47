/*
 * checkpoint.c - compressed-tensors "pack-quantized" checkpoint writer (see
 * checkpoint.h). Tensor layout and config follow compressed-tensors
 * compressors/pack_quantized and ModelCompressor.update_config.
 */
#include "checkpoint.h"
#include "json_util.h"
#include "scheme.h"
#include "smoothquant.h"
#include "st_writer.h"

#include <cJSON.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <sys/file.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

struct ckpt_writer {
    const model *m;
    const recipe *r;
    char *out_dir, *tmp_dir;
    int overwrite;
    st_writer *w;
    int lock_fd;       /* flock on "<out>.partial.lock": one writer per output */
    int smoothed;      /* SmoothQuant: smoothquant_tensor names are written later (ckpt_write_tensor) */
    char *lock_path;
};

/* One writer per output: an flock on "<out>.partial.lock". The holder
 * unlinks the file before it closes (releases) it, so an opener that got the
 * old file may lock an unlinked inode: after locking, the lock counts only if
 * the path still names the locked inode; otherwise retry. A lock file left by
 * a dead process holds no lock (the kernel dropped it) and never blocks. */
int ckpt_lock_acquire(const char *path, int *fd_out) {
    for (int tries = 0; tries < 100; tries++) {
        int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
        if (fd < 0) return -1;
        if (flock(fd, LOCK_EX | LOCK_NB) != 0) {
            int e = errno;
            close(fd);
            errno = e;
            return -1;
        }
        struct stat a, b;
        if (fstat(fd, &a) == 0 && stat(path, &b) == 0 && a.st_dev == b.st_dev && a.st_ino == b.st_ino) {
            *fd_out = fd;
            return 0;
        }
        close(fd); /* the holder released and unlinked it meanwhile: take the new one */
    }
    errno = EAGAIN;
    return -1;
}

void ckpt_lock_release(const char *path, int fd) {
    if (fd < 0) return;
    unlink(path); /* while still holding it: see ckpt_lock_acquire */
    close(fd);
}

static void unlock_output(ckpt_writer *c) {
    ckpt_lock_release(c->lock_path, c->lock_fd);
    c->lock_fd = -1;
    free(c->lock_path);
    c->lock_path = NULL;
}

/* ds_fatal hook while a writer is open: remove the partial output unless it
 * holds a resume point, and release the lock. */
static int rm_rf(const char *path);
static void fatal_cleanup(void *p) {
    ckpt_writer *c = p;
    if (c->tmp_dir) {
        char *prog = xasprintf("%s/resume/progress.bin", c->tmp_dir);
        if (!ds_file_exists(prog)) rm_rf(c->tmp_dir);
        free(prog);
    }
    if (c->lock_fd >= 0) ckpt_lock_release(c->lock_path, c->lock_fd);
    c->lock_fd = -1;
}

int ckpt_module_quantized(const recipe *r, const char *name) {
    return recipe_module_targeted(r, name, "Linear");
}

/* ---- small file helpers ---- */

static ds_status fsync_path(const char *path) {
    int fd = open(path, O_RDONLY);
    if (fd < 0) return ds_error(DS_ERR_RUNTIME, "%s: cannot open for fsync: %s", path, strerror(errno));
    int rc = fsync(fd);
    close(fd);
    if (rc != 0 && errno != EINVAL)
        return ds_error(DS_ERR_RUNTIME, "%s: fsync failed: %s", path, strerror(errno));
    return DS_OK;
}

static ds_status copy_file(const char *src, const char *dst) {
    char *buf;
    size_t n;
    ds_status st = ds_read_file(src, &buf, &n);
    if (st) return st;
    st = ds_write_file_atomic(dst, buf, n, NULL, 0);
    free(buf);
    return st;
}

static int rm_entry(const char *path, const struct stat *sb, int type, struct FTW *ftw) {
    (void)sb; (void)type; (void)ftw;
    return remove(path);
}

/* Remove a directory tree (no shell: any character in the path is safe). */
static int rm_rf(const char *path) {
    return nftw(path, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
}

/* ---- what may be replaced ---- */

/* Entries in a directory other than "." and ".." (0 if it cannot be read). */
static int dir_entries(const char *path) {
    DIR *d = opendir(path);
    if (!d) return 0;
    int n = 0;
    for (struct dirent *e; (e = readdir(d));)
        if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..")) n++;
    closedir(d);
    return n;
}

/* A directory holding config.json with a quantization_config: a checkpoint. */
static int is_checkpoint(const char *dir) {
    char *p = ds_path_join(dir, "config.json"), *text = NULL;
    int yes = 0;
    if (ds_file_exists(p) && ds_read_file(p, &text, NULL) == DS_OK) {
        cJSON *j = cJSON_Parse(text);
        yes = cJSON_IsObject(cJSON_GetObjectItemCaseSensitive(j, "quantization_config"));
        cJSON_Delete(j);
    }
    free(text);
    free(p);
    return yes;
}

/* "<out>.partial" made by doneshot: empty, or holding its resume/ folder, or
 * a finished checkpoint not yet renamed. */
static int partial_is_ours(const char *dir) {
    char *rd = ds_path_join(dir, "resume");
    int ours = ds_is_dir(rd) || dir_entries(dir) == 0 || is_checkpoint(dir);
    free(rd);
    return ours;
}

/* Can the checkpoint be written at out (see ckpt_check_output)? */
static ds_status check_target(const char *out, int overwrite) {
    struct stat sb;
    if (stat(out, &sb) != 0) return DS_OK;
    if (!S_ISDIR(sb.st_mode))
        return ds_error(DS_ERR_USAGE, "output path '%s' exists and is not a directory\n"
                        "hint: --output names the checkpoint directory to create", out);
    if (dir_entries(out) == 0) return DS_OK;
    if (!is_checkpoint(out))
        return ds_error(DS_ERR_USAGE, "output directory '%s' exists, is not empty and is not a checkpoint "
                        "(no config.json with quantization_config); refusing to replace it, with or without "
                        "--overwrite\nhint: choose a new --output path (doneshot creates it)", out);
    if (!overwrite)
        return ds_error(DS_ERR_USAGE, "output directory '%s' already holds a checkpoint\n"
                        "hint: pass --overwrite to replace it, or choose another --output", out);
    return DS_OK;
}

/* The nearest existing ancestor of absolute path p (malloc'd). */
static char *existing_ancestor(const char *p) {
    char *a = xstrdup(p);
    for (;;) {
        struct stat sb;
        if (stat(a, &sb) == 0 || strcmp(a, "/") == 0) return a;
        char *sl = strrchr(a, '/');
        if (sl == a) sl[1] = 0;
        else *sl = 0;
    }
}

static ds_status check_writable_parent(const char *what, const char *arg, const char *abs) {
    char *anc = existing_ancestor(abs);
    ds_status st = DS_OK;
    if (!ds_is_dir(anc))
        st = ds_error(DS_ERR_USAGE, "%s '%s': '%s' is not a directory", what, arg, anc);
    else { /* a real probe: access() says yes to root even where nothing can be created */
        char *probe = xasprintf("%s/.doneshot-probe-%ld", strcmp(anc, "/") ? anc : "", (long)getpid());
        int fd = open(probe, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
        if (fd < 0)
            st = ds_error(DS_ERR_USAGE, "%s '%s': cannot create files in '%s': %s\n"
                          "hint: choose a writable location", what, arg, anc, strerror(errno));
        else {
            close(fd);
            unlink(probe);
        }
        free(probe);
    }
    free(anc);
    return st;
}

static int is_model_file(const char *name) {
    size_t n = strlen(name);
    return strcmp(name, "config.json") == 0 || strncmp(name, "tokenizer", 9) == 0 ||
           strstr(name, ".safetensors") != NULL || (n > 5 && strcmp(name + n - 5, ".bin") == 0) ||
           strcmp(name, "generation_config.json") == 0;
}

ds_status ckpt_check_output(const ckpt_paths *p, int overwrite) {
    const char *out = p->out;
    if (!out || !*out)
        return ds_error(DS_ERR_USAGE, "--output: empty path\nhint: name the checkpoint directory to create, "
                        "e.g. --output out/model-W4A16");
    size_t n = strlen(out);
    while (n > 1 && out[n - 1] == '/') n--;
    const char *base = out + n;
    while (base > out && base[-1] != '/') base--;
    size_t bl = (size_t)(out + n - base);
    if ((bl == 1 && base[0] == '.') || (bl == 2 && base[0] == '.' && base[1] == '.'))
        return ds_error(DS_ERR_USAGE, "--output '%s': the path ends in '%.*s'\nhint: name a new directory, "
                        "e.g. --output ./model-W4A16", out, (int)bl, base);
    char *abs = ds_abspath(out), *pabs = NULL, *mabs = NULL, *dabs = NULL, *rabs = NULL, *sabs = NULL;
    ds_status st = DS_OK;
    if (!abs) return ds_error(DS_ERR_USAGE, "--output '%s': cannot resolve the path: %s", out, strerror(errno));
    pabs = xasprintf("%s.partial", abs);
    if (p->model) mabs = ds_abspath(p->model);
    if (p->dataset) dabs = ds_abspath(p->dataset);
    if (p->recipe) rabs = ds_abspath(p->recipe);
    if (p->summary) sabs = ds_abspath(p->summary);
    if (strcmp(abs, "/") == 0)
        st = ds_error(DS_ERR_USAGE, "--output '%s' is the root directory\nhint: name a new directory", out);
    else if (mabs && ds_path_within(mabs, abs))
        st = ds_error(DS_ERR_USAGE, "--output '%s' %s the input model '%s'; refusing to replace it\n"
                      "hint: write the checkpoint to a new directory", out,
                      strcmp(mabs, abs) ? "contains" : "is", p->model);
    else if (dabs && ds_path_within(dabs, abs))
        st = ds_error(DS_ERR_USAGE, "--output '%s' contains the calibration file '%s'; refusing to replace it\n"
                      "hint: write the checkpoint to a new directory", out, p->dataset);
    else if (rabs && ds_path_within(rabs, abs))
        st = ds_error(DS_ERR_USAGE, "--output '%s' contains the recipe '%s'; refusing to replace it\n"
                      "hint: write the checkpoint to a new directory", out, p->recipe);
    else if (ds_is_dir(pabs) && !partial_is_ours(pabs))
        st = ds_error(DS_ERR_USAGE, "'%s' exists and is not a doneshot partial run; refusing to remove it\n"
                      "hint: move it away, or choose another --output", pabs);
    else if (!(st = check_target(out, overwrite)))
        st = check_writable_parent("--output", out, abs);
    if (!st && p->summary) {
        const char *sb = strrchr(sabs ? sabs : "", '/');
        struct stat ss;
        if (!sabs || !*p->summary)
            st = ds_error(DS_ERR_USAGE, "--summary: empty or unresolvable path '%s'", p->summary);
        else if (ds_path_within(sabs, abs) || ds_path_within(sabs, pabs))
            st = ds_error(DS_ERR_USAGE, "--summary '%s' lies inside the output checkpoint '%s' and would "
                          "overwrite or add to it\nhint: write the summary outside the output directory",
                          p->summary, out);
        else if ((dabs && strcmp(sabs, dabs) == 0) || (rabs && strcmp(sabs, rabs) == 0))
            st = ds_error(DS_ERR_USAGE, "--summary '%s' is the %s; refusing to overwrite it", p->summary,
                          dabs && strcmp(sabs, dabs) == 0 ? "calibration file" : "recipe");
        else if (mabs && ds_path_within(sabs, mabs) && sb && is_model_file(sb + 1))
            st = ds_error(DS_ERR_USAGE, "--summary '%s' would overwrite a file of the input model; refusing\n"
                          "hint: write the summary elsewhere", p->summary);
        else if (stat(sabs, &ss) == 0 && !S_ISREG(ss.st_mode))
            st = ds_error(DS_ERR_USAGE, "--summary '%s' exists and is not a regular file", p->summary);
        else {
            char *dir = xstrdup(sabs), *sl = strrchr(dir, '/');
            if (sl == dir) sl[1] = 0;
            else *sl = 0;
            if (!ds_is_dir(dir))
                st = ds_error(DS_ERR_USAGE, "--summary '%s': directory '%s' does not exist\n"
                              "hint: create it first", p->summary, dir);
            else
                st = check_writable_parent("--summary", p->summary, dir);
            free(dir);
        }
    }
    free(abs); free(pabs); free(mabs); free(dabs); free(rabs); free(sabs);
    return st;
}

/* ---- planning ---- */

/* Parse "<module>.weight" of a quantized Linear (attention, dense MLP,
 * expert or shared expert; never a router); returns the module name length
 * or 0. O(1) per tensor: no per-module lists. */
static size_t quantized_weight(const ckpt_writer *c, const char *tensor, char *module, size_t cap) {
    size_t n = strlen(tensor);
    if (n < 8 || strcmp(tensor + n - 7, ".weight") != 0 || n - 7 >= cap) return 0;
    if (strncmp(tensor, "model.layers.", 13) != 0) return 0;
    memcpy(module, tensor, n - 7);
    module[n - 7] = 0;
    return model_linear_quantizable(&c->m->cfg, module) && ckpt_module_quantized(c->r, module) ? n - 7 : 0;
}

/* Plan the tensors of one quantized module [out, in]: the scheme's table. */
static ds_status plan_module(ckpt_writer *c, const char *module, int out, int in) {
    scheme_tensor_spec spec[SCHEME_MAX_TENSORS];
    int n = scheme_tensors(&c->r->w, c->m->cfg.dtype, out, in, spec);
    char name[600];
    ds_status st;
    for (int k = 0; k < n; k++) {
        snprintf(name, sizeof name, "%s.%s", module, spec[k].suffix);
        if ((st = stw_plan(c->w, name, spec[k].dtype, spec[k].ndim, spec[k].shape))) return st;
    }
    return DS_OK;
}

char *ckpt_partial_dir(const char *out_dir) {
    char *d = xstrdup(out_dir);
    size_t n = strlen(d);
    while (n > 1 && d[n - 1] == '/') d[--n] = 0;
    char *p = xasprintf("%s.partial", d);
    free(d);
    return p;
}

/* Resume: which planned tensors the interrupted run already wrote: all but
 * the quantized tensors of layers >= resume_layers and (SmoothQuant: the
 * smoothing epoch runs again on a resume and rewrites them) the smoothed ones. */
typedef struct resume_ctx { int layers; const ckpt_writer *c; } resume_ctx;
static int written_before(void *p, const char *name) {
    const resume_ctx *rc = p;
    int l = -1;
    char module[512];
    if (rc->c->smoothed && smoothquant_tensor(&rc->c->m->cfg, name) &&
        !quantized_weight(rc->c, name, module, sizeof module)) /* int-quantized q_proj.weight: the codes */
        return 0;
    if (sscanf(name, "model.layers.%d.", &l) != 1 || l < rc->layers) return 1;
    if (scheme_writes_weight(&rc->c->r->w) && quantized_weight(rc->c, name, module, sizeof module))
        return 0; /* float-quantized: "<module>.weight" holds the codes */
    return !scheme_is_module_tensor(name);
}

ds_status ckpt_begin(const model *m, const recipe *r, const char *out_dir, int overwrite,
                     uint64_t max_shard_bytes, int resume_layers, ckpt_writer **out) {
    ckpt_writer *c = xcalloc(1, sizeof *c);
    ds_status st = DS_OK;
    c->lock_fd = -1;
    c->m = m;
    c->r = r;
    c->overwrite = overwrite;
    c->out_dir = xstrdup(out_dir);
    size_t n = strlen(c->out_dir);
    while (n > 1 && c->out_dir[n - 1] == '/') c->out_dir[--n] = 0;
    if (n == 0) {
        st = ds_error(DS_ERR_USAGE, "--output: empty path");
        goto fail;
    }
    if ((st = check_target(c->out_dir, overwrite))) goto fail;
    /* mkdir -p the parent of the output */
    for (char *sl = strchr(c->out_dir + 1, '/'); sl; sl = strchr(sl + 1, '/')) {
        *sl = 0;
        if (!ds_is_dir(c->out_dir)) mkdir(c->out_dir, 0755);
        *sl = '/';
    }
    c->tmp_dir = ckpt_partial_dir(c->out_dir);
    c->lock_path = xasprintf("%s.lock", c->tmp_dir);
    if (ckpt_lock_acquire(c->lock_path, &c->lock_fd) != 0) {
        int busy = errno == EWOULDBLOCK;
        st = busy ? ds_error(DS_ERR_USAGE, "another doneshot is writing '%s' (it holds %s)\n"
                             "hint: wait for it, or choose another --output", c->out_dir, c->lock_path)
                  : ds_error(DS_ERR_RUNTIME, "cannot create '%s': %s", c->lock_path, strerror(errno));
        c->lock_fd = -1; /* not ours: do not remove it */
        free(c->tmp_dir);
        c->tmp_dir = NULL;
        goto fail;
    }
    if (ds_is_dir(c->tmp_dir) && !partial_is_ours(c->tmp_dir)) {
        st = ds_error(DS_ERR_USAGE, "'%s' exists and is not a doneshot partial run; refusing to remove it\n"
                      "hint: move it away, or choose another --output", c->tmp_dir);
        free(c->tmp_dir);
        c->tmp_dir = NULL;
        goto fail;
    }
    ds_set_fatal_cleanup(fatal_cleanup, c);
    if (resume_layers < 0) rm_rf(c->tmp_dir);
    if (resume_layers >= 0 && !ds_is_dir(c->tmp_dir)) {
        st = ds_error(DS_ERR_INPUT, "cannot resume: '%s' is gone", c->tmp_dir);
        free(c->tmp_dir);
        c->tmp_dir = NULL;
        goto fail;
    }
    if (resume_layers < 0 && mkdir(c->tmp_dir, 0755) != 0) {
        st = ds_error(DS_ERR_RUNTIME, "cannot create '%s': %s\nhint: check that the parent directory of "
                      "--output exists and is writable", c->tmp_dir, strerror(errno));
        free(c->tmp_dir);
        c->tmp_dir = NULL;
        goto fail;
    }
    c->w = stw_open(c->tmp_dir, max_shard_bytes);
    c->smoothed = smoothquant_recipe_on(r);
    char module[512];
    for (size_t i = 0; i < st_count(m->st); i++) {
        const st_tensor *t = st_get(m->st, i);
        if (quantized_weight(c, t->name, module, sizeof module))
            st = plan_module(c, module, (int)t->shape[0], (int)t->shape[1]);
        else
            st = stw_plan(c->w, t->name, t->dtype, t->ndim, t->shape);
        if (st) goto fail;
    }
    if (resume_layers >= 0) {
        resume_ctx rc = {resume_layers, c};
        if ((st = stw_begin_resume(c->w, written_before, &rc))) goto fail;
        *out = c;
        return DS_OK;
    }
    char *rd = ds_path_join(c->tmp_dir, "resume");
    int mk = mkdir(rd, 0755);
    free(rd);
    if (mk != 0) {
        st = ds_error(DS_ERR_RUNTIME, "cannot create '%s/resume': %s", c->tmp_dir, strerror(errno));
        goto fail;
    }
    if ((st = stw_begin(c->w))) goto fail;
    for (size_t i = 0; i < st_count(m->st); i++) {
        const st_tensor *t = st_get(m->st, i);
        if (quantized_weight(c, t->name, module, sizeof module)) continue;
        if (c->smoothed && smoothquant_tensor(&m->cfg, t->name)) continue; /* smoothquant_calibrate writes it */
        if ((st = stw_write(c->w, t->name, t->data, t->nbytes))) goto fail;
    }
    *out = c;
    return DS_OK;
fail:
    ckpt_abort(c, resume_layers >= 0);
    return st;
}

ds_status ckpt_write_module(ckpt_writer *c, const char *module, const int8_t *q, const float *scale,
                            const int *zp, const int *g_idx, int out, int in) {
    return ckpt_write_module_act(c, module, q, scale, zp, g_idx, out, in, NULL);
}

ds_status ckpt_write_module_act(ckpt_writer *c, const char *module, const int8_t *q, const float *scale,
                                const int *zp, const int *g_idx, int out, int in, const float *act_scale) {
    return ckpt_write_module_gs(c, module, q, scale, zp, g_idx, out, in, act_scale, NULL);
}

ds_status ckpt_write_module_gs(ckpt_writer *c, const char *module, const int8_t *q, const float *scale,
                               const int *zp, const int *g_idx, int out, int in, const float *act_scale,
                               const float *global_scale) {
    const quant_args *a = &c->r->w;
    if ((a->act == QACT_INPUT_SCALE || a->act == QACT_INPUT_GLOBAL_SCALE) && !act_scale)
        return ds_error(DS_ERR_RUNTIME, "%s: the scheme stores an input_%sscale and none was calibrated", module,
                        a->act == QACT_INPUT_GLOBAL_SCALE ? "global_" : "");
    if (a->strategy == QS_TENSOR_GROUP && !global_scale)
        return ds_error(DS_ERR_RUNTIME, "%s: the scheme stores a weight_global_scale and none was computed", module);
    const scheme_module sm = {.q = q, .scale = scale, .zp = zp, .g_idx = g_idx, .out = out, .in = in,
                              .dtype = c->m->cfg.dtype, .act_scale = act_scale, .global_scale = global_scale};
    scheme_tensor_spec spec[SCHEME_MAX_TENSORS];
    int n = scheme_tensors(a, sm.dtype, out, in, spec);
    char name[600];
    ds_status st = DS_OK;
    for (int k = 0; k < n && !st; k++) {
        void *buf = xmalloc(spec[k].nbytes ? spec[k].nbytes : 1);
        scheme_encode(a, k, &sm, buf);
        snprintf(name, sizeof name, "%s.%s", module, spec[k].suffix);
        st = stw_write(c->w, name, buf, spec[k].nbytes);
        free(buf);
    }
    return st;
}

ds_status ckpt_write_tensor(ckpt_writer *c, const char *name, const float *data, size_t n) {
    char module[512];
    if (quantized_weight(c, name, module, sizeof module)) return DS_OK;
    const st_tensor *t = st_find(c->m->st, name);
    if (!t || (size_t)st_numel(t) != n)
        return ds_error(DS_ERR_RUNTIME, "ckpt_write_tensor: '%s' is not a model tensor of %zu elements", name, n);
    const size_t nb = ds_dtype_size(t->dtype) * n;
    void *buf = xmalloc(nb ? nb : 1);
    ds_convert_from_f32(buf, data, t->dtype, n);
    ds_status st = stw_write(c->w, name, buf, nb);
    free(buf);
    return st;
}

/* ---- config.json ---- */

static ds_status write_config(ckpt_writer *c) {
    const model *m = c->m;
    char *src = ds_path_join(m->dir, "config.json"), *text = NULL;
    ds_status st = ds_read_file(src, &text, NULL);
    free(src);
    if (st) return st;
    cJSON *j = cJSON_Parse(text);
    free(text);
    if (!j) return ds_error(DS_ERR_INPUT, "%s/config.json: not valid JSON", m->dir);
    /* Unquantized Linear modules, by name, in model order (compressed-tensors
     * rebuilds the ignore list from the model at save time): untargeted
     * Linears, every MoE router (mlp.gate / block_sparse_moe.gate) and
     * shared_expert_gate, then lm_head. */
    const model_config *mc = &m->cfg;
    layer_linear *ll = xmalloc(sizeof(layer_linear) * (size_t)(3 * mc->E + 12));
    size_t cap = 16, n = 0;
    char **ign = xmalloc(sizeof(char *) * cap);
    for (int l = 0; l < mc->L; l++) {
        int nl = model_layer_linears(mc, l, 1, ll);
        for (int k = 0; k < nl; k++) {
            if (ll[k].quantizable && ckpt_module_quantized(c->r, ll[k].name)) continue;
            if (n + 2 > cap) ign = xrealloc(ign, sizeof(char *) * (cap *= 2));
            ign[n++] = xstrdup(ll[k].name);
        }
    }
    free(ll);
    ign[n++] = xstrdup("lm_head");
    char *qc = recipe_quantization_config_json(c->r, (const char *const *)ign, (int)n);
    for (size_t i = 0; i < n; i++) free(ign[i]);
    free(ign);
    cJSON *qj = cJSON_Parse(qc);
    free(qc);
    DS_ASSERT(qj);
    cJSON_DeleteItemFromObjectCaseSensitive(j, "quantization_config");
    cJSON_AddItemToObject(j, "quantization_config", qj);
    ds_json_sort_keys(j);
    char *out = cJSON_Print(j);
    cJSON_Delete(j);
    char *path = ds_path_join(c->tmp_dir, "config.json");
    size_t len = strlen(out);
    out = xrealloc(out, len + 2);
    out[len] = '\n';
    out[len + 1] = 0;
    st = ds_write_file_atomic(path, out, len + 1, NULL, 0);
    free(path);
    free(out);
    return st;
}

ds_status ckpt_finish(ckpt_writer *c, uint64_t *bytes, int *nshards) {
    static const char *extra[] = {"tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                                  "generation_config.json", "tokenizer.model", "vocab.json", "merges.txt",
                                  "added_tokens.json", "chat_template.jinja", "chat_template.json"};
    ds_status st = stw_finish(c->w);
    if (st) return st;
    if (bytes) *bytes = stw_total_bytes(c->w);
    if (nshards) *nshards = stw_num_shards(c->w);
    for (size_t i = 0; i < DS_ARRAY_LEN(extra); i++) {
        char *src = ds_path_join(c->m->dir, extra[i]);
        if (ds_file_exists(src)) {
            char *dst = ds_path_join(c->tmp_dir, extra[i]);
            st = copy_file(src, dst);
            free(dst);
        }
        free(src);
        if (st) return st;
    }
    char *rp = ds_path_join(c->tmp_dir, "recipe.yaml");
    st = ds_write_file_atomic(rp, c->r->applied_json, strlen(c->r->applied_json), NULL, 0);
    free(rp);
    if (st) return st;
    char *rd = ds_path_join(c->tmp_dir, "resume");
    rm_rf(rd); /* the resume state is not part of the checkpoint */
    free(rd);
    if ((st = write_config(c))) return st; /* last: marks the checkpoint complete */
    if ((st = fsync_path(c->tmp_dir))) return st;
    char *old = NULL;
    if (ds_is_dir(c->out_dir) && dir_entries(c->out_dir) && !is_checkpoint(c->out_dir))
        return ds_error(DS_ERR_RUNTIME, "'%s' was filled with other files during the run; not replacing it\n"
                        "hint: move those files away and run again", c->out_dir);
    if (ds_is_dir(c->out_dir)) { /* --overwrite or an empty dir: move it aside first */
        old = xasprintf("%s.old-%ld", c->out_dir, (long)getpid());
        if (rename(c->out_dir, old) != 0) {
            st = ds_error(DS_ERR_RUNTIME, "cannot move '%s' aside: %s", c->out_dir, strerror(errno));
            free(old);
            return st;
        }
    }
    if (rename(c->tmp_dir, c->out_dir) != 0) {
        st = ds_error(DS_ERR_RUNTIME, "cannot rename '%s' to '%s': %s", c->tmp_dir, c->out_dir, strerror(errno));
        if (old) rename(old, c->out_dir);
        free(old);
        return st;
    }
    if (old) { rm_rf(old); free(old); }
    char *parent = xstrdup(c->out_dir), *slash = strrchr(parent, '/');
    if (slash) { if (slash == parent) slash[1] = 0; else *slash = 0; }
    else { free(parent); parent = xstrdup("."); }
    fsync_path(parent);
    free(parent);
    ds_set_fatal_cleanup(NULL, NULL);
    free(c->tmp_dir);
    c->tmp_dir = NULL;
    stw_close(c->w);
    c->w = NULL;
    unlock_output(c);
    free(c->out_dir);
    free(c);
    return DS_OK;
}

ds_status ckpt_sync(ckpt_writer *c) { return stw_sync(c->w); }

void ckpt_abort(ckpt_writer *c, int keep) {
    if (!c) return;
    ds_set_fatal_cleanup(NULL, NULL);
    stw_close(c->w);
    if (c->tmp_dir && !keep) rm_rf(c->tmp_dir);
    unlock_output(c);
    free(c->tmp_dir);
    free(c->out_dir);
    free(c);
}
