/*
 * summary.c - end-of-run report and --summary JSON (see summary.h).
 */
#include "summary.h"
#include "comm.h"

#include <cJSON.h>
#include <stdlib.h>
#include <string.h>

void summary_report(const run_stats *s, const model *m, const recipe *r, const char *model_dir,
                    const char *dataset, const char *output, const char *json_path, double total_s) {
    const int R = comm_size();
    double *rss = xmalloc(sizeof(double) * (size_t)R);
    comm_allgather_f64((double)ds_peak_rss_bytes(), rss);
    const char *names[] = {"load", "forward", "hessian", "reduce", "gptq", "broadcast", "propagate", "save"};
    const double mine[] = {s->t.load, s->t.forward, s->t.hessian, s->t.reduce, s->t.gptq, s->t.bcast,
                           s->t.propagate, s->t.save};
    double mx[8];
    for (int i = 0; i < 8; i++) mx[i] = comm_allreduce_max_f64(mine[i]);
    if (comm_rank() != 0) { free(rss); return; }

    double loss = 0;
    for (int i = 0; i < s->nmods; i++) loss += s->mods[i].loss;
    ds_info("done: %d modules quantized (%d RTN fallbacks) in %.2f s total (pipeline %.2f s) | %zu samples, %zu tokens",
            s->nmods, s->n_rtn, total_s, s->total_s, s->samples_total, s->tokens_total);
    char line[512];
    int n = snprintf(line, sizeof line, "stage time, max over ranks:");
    for (int i = 0; i < 8; i++) n += snprintf(line + n, sizeof line - (size_t)n, " %s %.2fs", names[i], mx[i]);
    ds_info("%s", line);
    n = snprintf(line, sizeof line, "peak RSS per rank:");
    for (int i = 0; i < R && n < (int)sizeof line - 32; i++)
        n += snprintf(line + n, sizeof line - (size_t)n, " r%d %.0f MB", i, rss[i] / 1048576.0);
    ds_info("%s", line);
    if (s->device_peak_bytes)
        ds_info("device: %s | peak device memory %.2f GiB (max over ranks)", s->device,
                (double)s->device_peak_bytes / 1073741824.0);
    /* save: what the pipeline waited for the checkpoint (claim, resume points, finish, and the writer
     * thread when it fell behind); the writer thread's own work overlaps the next layers */
    ds_info("save: %.2f s waited (checkpoint writer thread busy %.2f s, overlapped with the next layers), "
            "%.2f MB in %d shard(s), mean GPTQ loss %.4g", mx[7], s->save_busy_s, (double)s->bytes_written / 1e6,
            s->nshards, s->nmods ? loss / s->nmods : 0.0);
    ds_info("checkpoint written to %s", output);

    if (json_path) {
        cJSON *j = cJSON_CreateObject();
        cJSON_AddStringToObject(j, "version", DS_VERSION);
        cJSON_AddStringToObject(j, "model", model_dir);
        cJSON_AddStringToObject(j, "architecture", m->cfg.arch_name);
        if (dataset) cJSON_AddStringToObject(j, "dataset", dataset);
        else cJSON_AddNullToObject(j, "dataset"); /* a recipe that needs no data, run without one */
        cJSON_AddStringToObject(j, "output", output);
        cJSON_AddNumberToObject(j, "world_size", R);
        cJSON_AddStringToObject(j, "device", s->device);
        cJSON_AddNumberToObject(j, "peak_device_bytes", (double)s->device_peak_bytes);
        cJSON_AddNumberToObject(j, "num_bits", r->w.num_bits);
        cJSON_AddNumberToObject(j, "group_size", r->w.strategy == QS_GROUP ? r->w.group_size : -1);
        cJSON_AddNumberToObject(j, "samples", (double)s->samples_total);
        cJSON_AddNumberToObject(j, "tokens", (double)s->tokens_total);
        cJSON_AddNumberToObject(j, "total_time_s", total_s);
        cJSON_AddNumberToObject(j, "pipeline_time_s", s->total_s);
        cJSON_AddNumberToObject(j, "save_time_s", mx[7]);
        cJSON_AddNumberToObject(j, "save_writer_busy_s", s->save_busy_s);
        cJSON *st = cJSON_AddObjectToObject(j, "stage_time_s");
        for (int i = 0; i < 8; i++) cJSON_AddNumberToObject(st, names[i], mx[i]);
        cJSON *pr = cJSON_AddArrayToObject(j, "peak_rss_bytes");
        for (int i = 0; i < R; i++) cJSON_AddItemToArray(pr, cJSON_CreateNumber(rss[i]));
        cJSON_AddNumberToObject(j, "bytes_written", (double)s->bytes_written);
        cJSON_AddNumberToObject(j, "shards", s->nshards);
        cJSON_AddNumberToObject(j, "rtn_fallbacks", s->n_rtn);
        cJSON_AddNumberToObject(j, "mean_gptq_loss", s->nmods ? loss / s->nmods : 0.0);
        cJSON *mods = cJSON_AddArrayToObject(j, "modules");
        for (int i = 0; i < s->nmods; i++) {
            cJSON *o = cJSON_CreateObject();
            cJSON_AddStringToObject(o, "name", s->mods[i].name);
            cJSON_AddNumberToObject(o, "in_features", s->mods[i].in);
            cJSON_AddNumberToObject(o, "out_features", s->mods[i].out);
            cJSON_AddNumberToObject(o, "owner_rank", s->mods[i].owner);
            cJSON_AddNumberToObject(o, "loss", s->mods[i].loss);
            cJSON_AddNumberToObject(o, "solve_time_s", s->mods[i].seconds);
            cJSON_AddBoolToObject(o, "rtn_fallback", s->mods[i].rtn_fallback);
            cJSON_AddItemToArray(mods, o);
        }
        char *txt = cJSON_Print(j);
        FILE *f = fopen(json_path, "w");
        if (!f || fputs(txt, f) < 0 || fputc('\n', f) < 0) ds_warn("cannot write summary %s", json_path);
        if (f) fclose(f);
        free(txt);
        cJSON_Delete(j);
    }
    free(rss);
}

void run_stats_free(run_stats *s) {
    if (!s) return;
    free(s->mods);
    s->mods = NULL;
}
