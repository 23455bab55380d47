/*
 * json_util.h - small cJSON helpers shared by the recipe and checkpoint code.
 */
#ifndef DS_JSON_UTIL_H
#define DS_JSON_UTIL_H

#include <cJSON.h>

/* Sort every object's keys by byte order, recursively, in place: the key
 * order of Python's json.dump(sort_keys=True) for ASCII keys. NULL is a no-op. */
void ds_json_sort_keys(cJSON *o);

/* cJSON_PrintUnformatted(root) as an xmalloc'd string (free()), then
 * cJSON_Delete(root). */
char *ds_json_take_compact(cJSON *root);

#endif
