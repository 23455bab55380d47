/*
 * summary.h - the end-of-run report (rank 0 prints; every rank must call it,
 * since per-rank figures are gathered): total time, per-stage time (max over
 * ranks), peak RSS per rank, save time and size, GPTQ loss, and an optional
 * machine-readable JSON file (--summary).
 */
#ifndef DS_SUMMARY_H
#define DS_SUMMARY_H

#include "model.h"
#include "recipe.h"
#include "run_stats.h"

/* Collective. json_path may be NULL. */
void summary_report(const run_stats *s, const model *m, const recipe *r, const char *model_dir,
                    const char *dataset, const char *output, const char *json_path, double total_s);

#endif
