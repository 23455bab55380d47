/*
 * fixtures.h - the generated test fixtures (tests/fixtures.py): model variants
 * made from data/stories260K and the tokenizers committed under
 * tests/data/tokenizers, in the layout the goldens were made from. Directory:
 * $DS_FIXTURES, else $BUILD/fixtures (BUILD default "build"); made on first use
 * (python3, ~3 s), reused after. Include after test.h; run from the repo root.
 */
#ifndef DS_TEST_FIXTURES_H
#define DS_TEST_FIXTURES_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The fixture directory, materialized; NULL (with a message on stderr) when
 * tests/fixtures.py fails, e.g. without python3. */
static inline const char *fixtures_dir(void) {
    static char dir[512];
    static int state; /* 0 not tried, 1 ok, -1 failed */
    if (state) return state > 0 ? dir : NULL;
    const char *env = getenv("DS_FIXTURES"), *build = getenv("BUILD");
    if (env && *env) snprintf(dir, sizeof dir, "%s", env);
    else snprintf(dir, sizeof dir, "%s/fixtures", build && *build ? build : "build");
    char cmd[1200];
    snprintf(cmd, sizeof cmd, "%s tests/fixtures.py '%s'", getenv("PYTHON") ? getenv("PYTHON") : "python3", dir);
    int rc = test_system(cmd);
    if (rc != 0) fprintf(stderr, "fixtures: '%s' failed (exit %d): the tests that need them fail\n", cmd, rc);
    state = rc == 0 ? 1 : -1;
    return state > 0 ? dir : NULL;
}

/* "FIXTURES/rel" in one of 8 rotating static buffers; a path that names
 * nothing when the fixtures could not be made. A golden's "../shared/X" maps
 * to fixture("X"). */
static inline const char *fixture(const char *rel) {
    static char buf[8][1024];
    static int k;
    const char *d = fixtures_dir();
    char *p = buf[k++ & 7];
    if (strncmp(rel, "../shared/", 10) == 0) rel += 10;
    snprintf(p, sizeof buf[0], "%s/%s", d ? d : "/nonexistent-fixtures", rel);
    return p;
}

#endif
