/*
 * json_util.c - see json_util.h.
 */
#include "json_util.h"
#include "common.h"

#include <stdlib.h>
#include <string.h>

static int key_cmp(const void *a, const void *b) {
    return strcmp((*(cJSON *const *)a)->string, (*(cJSON *const *)b)->string);
}

void ds_json_sort_keys(cJSON *o) {
    if (!o) return;
    for (cJSON *c = o->child; c; c = c->next) ds_json_sort_keys(c);
    if (!cJSON_IsObject(o) || !o->child) return;
    size_t n = 0;
    for (cJSON *c = o->child; c; c = c->next) n++;
    cJSON **v = xmalloc(n * sizeof *v);
    n = 0;
    for (cJSON *c = o->child; c; c = c->next) v[n++] = c;
    qsort(v, n, sizeof *v, key_cmp);
    for (size_t i = 0; i < n; i++) {
        v[i]->prev = i ? v[i - 1] : v[n - 1]; /* cJSON: child->prev is the tail */
        v[i]->next = i + 1 < n ? v[i + 1] : NULL;
    }
    o->child = v[0];
    free(v);
}

char *ds_json_take_compact(cJSON *root) {
    char *txt = cJSON_PrintUnformatted(root);
    DS_ASSERT(txt);
    cJSON_Delete(root);
    char *out = xstrdup(txt);
    cJSON_free(txt);
    return out;
}
