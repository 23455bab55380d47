/*
 * test_ckpt_async.c - the checkpoint writer thread (src/ckpt_async.c):
 * FIFO order, the layer bound (end_layer blocks while `depth` layers are
 * unwritten), the sticky first error (later jobs dropped but freed, every
 * call returns the error with its message), synchronous mode (depth 0 and
 * DONESHOT_SYNC_SAVE), fault injection (DONESHOT_FAULT_WRITE_JOB), stop with
 * jobs still queued. The byte-identity of whole checkpoints is
 * tests/test_async_save.sh.
 */
#include "test.h"
#include "ckpt_async.h"

#include <pthread.h>
#include <stdatomic.h>
#include <unistd.h>

typedef struct log_ctx {
    int order[256];
    atomic_int n, freed;
    atomic_int gate; /* jobs with wait set spin until gate != 0 */
    int fail_at;     /* job value that fails, -1: none */
} log_ctx;

typedef struct tjob {
    log_ctx *c;
    int v, wait;
} tjob;

static ds_status tjob_run(void *p) {
    tjob *j = p;
    while (j->wait && !atomic_load(&j->c->gate)) usleep(1000);
    if (j->v == j->c->fail_at) return ds_error(DS_ERR_RUNTIME, "out.partial/model.safetensors.tmp: write failed: "
                                               "No space left on device (job %d)", j->v);
    j->c->order[atomic_fetch_add(&j->c->n, 1)] = j->v;
    return DS_OK;
}

static void tjob_free(void *p) {
    tjob *j = p;
    atomic_fetch_add(&j->c->freed, 1);
    free(j);
}

static ckpt_job mk(log_ctx *c, int v, int wait) {
    tjob *j = xcalloc(1, sizeof *j);
    j->c = c;
    j->v = v;
    j->wait = wait;
    return (ckpt_job){tjob_run, tjob_free, j};
}

typedef struct end_arg { ckpt_async *a; atomic_int returned; ds_status st; } end_arg;
static void *end_layer_thread(void *p) {
    end_arg *e = p;
    e->st = ckpt_async_end_layer(e->a);
    atomic_store(&e->returned, 1);
    return NULL;
}

int main(void) {
    unsetenv("DONESHOT_SYNC_SAVE");
    unsetenv("DONESHOT_FAULT_WRITE_JOB");

    TEST("threaded: every job runs once, in submission order, and is freed") {
        log_ctx c = {.fail_at = -1};
        ckpt_async *a = ckpt_async_start(1);
        CHECK(ckpt_async_threaded(a));
        for (int i = 0; i < 200; i++) {
            CHECK_EQ_INT(ckpt_async_submit(a, mk(&c, i, 0)), DS_OK);
            if (i % 20 == 19) CHECK_EQ_INT(ckpt_async_end_layer(a), DS_OK);
        }
        CHECK_EQ_INT(ckpt_async_drain(a), DS_OK);
        CHECK_EQ_INT(atomic_load(&c.n), 200);
        int inorder = 1;
        for (int i = 0; i < 200; i++) inorder &= c.order[i] == i;
        CHECK(inorder);
        CHECK_EQ_INT(atomic_load(&c.freed), 200);
        CHECK(ckpt_async_busy_s(a) >= 0.0);
        ckpt_async_stop(a);
    }

    TEST("bound: end_layer waits while depth layers are unwritten") {
        log_ctx c = {.fail_at = -1};
        ckpt_async *a = ckpt_async_start(1);
        CHECK_EQ_INT(ckpt_async_submit(a, mk(&c, 0, 1)), DS_OK); /* layer 0: blocked on the gate */
        CHECK_EQ_INT(ckpt_async_end_layer(a), DS_OK);            /* one layer queued: returns */
        CHECK_EQ_INT(ckpt_async_submit(a, mk(&c, 1, 0)), DS_OK); /* layer 1 */
        end_arg e = {.a = a};
        pthread_t th;
        CHECK(pthread_create(&th, NULL, end_layer_thread, &e) == 0);
        usleep(100000);
        CHECK_EQ_INT(atomic_load(&e.returned), 0); /* layer 0 not written yet: waits */
        atomic_store(&c.gate, 1);
        pthread_join(th, NULL);
        CHECK_EQ_INT(atomic_load(&e.returned), 1);
        CHECK_EQ_INT(e.st, DS_OK);
        CHECK(atomic_load(&c.n) >= 1 && c.order[0] == 0); /* layer 0 is written when it returns */
        CHECK_EQ_INT(ckpt_async_drain(a), DS_OK);
        CHECK_EQ_INT(atomic_load(&c.n), 2);
        ckpt_async_stop(a);
    }

    TEST("threaded: the first error is sticky, later jobs are dropped and freed") {
        log_ctx c = {.fail_at = 3};
        ckpt_async *a = ckpt_async_start(2);
        for (int i = 0; i < 10; i++) ckpt_async_submit(a, mk(&c, i, 0));
        ds_status st = ckpt_async_drain(a);
        CHECK_EQ_INT(st, DS_ERR_RUNTIME);
        CHECK(strstr(ds_errmsg(), "No space left on device (job 3)") != NULL);
        CHECK_EQ_INT(atomic_load(&c.n), 3); /* 0, 1, 2 written; 3 failed; 4..9 dropped */
        CHECK_EQ_INT(atomic_load(&c.freed), 10);
        ds_error(DS_OK, "cleared");
        CHECK_EQ_INT(ckpt_async_submit(a, mk(&c, 20, 0)), DS_ERR_RUNTIME);
        CHECK(strstr(ds_errmsg(), "job 3") != NULL);
        CHECK_EQ_INT(ckpt_async_end_layer(a), DS_ERR_RUNTIME);
        CHECK_EQ_INT(ckpt_async_drain(a), DS_ERR_RUNTIME);
        CHECK_EQ_INT(atomic_load(&c.n), 3);
        CHECK_EQ_INT(atomic_load(&c.freed), 11);
        ckpt_async_stop(a);
    }

    TEST("synchronous mode (depth 0): jobs run inside submit; errors sticky") {
        log_ctx c = {.fail_at = 2};
        ckpt_async *a = ckpt_async_start(0);
        CHECK(!ckpt_async_threaded(a));
        CHECK_EQ_INT(ckpt_async_submit(a, mk(&c, 0, 0)), DS_OK);
        CHECK_EQ_INT(atomic_load(&c.n), 1);
        CHECK_EQ_INT(ckpt_async_submit(a, mk(&c, 1, 0)), DS_OK);
        CHECK_EQ_INT(ckpt_async_submit(a, mk(&c, 2, 0)), DS_ERR_RUNTIME);
        CHECK_EQ_INT(ckpt_async_submit(a, mk(&c, 3, 0)), DS_ERR_RUNTIME);
        CHECK_EQ_INT(ckpt_async_end_layer(a), DS_ERR_RUNTIME);
        CHECK_EQ_INT(ckpt_async_drain(a), DS_ERR_RUNTIME);
        CHECK_EQ_INT(atomic_load(&c.n), 2);
        CHECK_EQ_INT(atomic_load(&c.freed), 4);
        ckpt_async_stop(a);
    }

    TEST("DONESHOT_SYNC_SAVE=1 forces synchronous mode; =0 does not") {
        setenv("DONESHOT_SYNC_SAVE", "1", 1);
        ckpt_async *a = ckpt_async_start(1);
        CHECK(!ckpt_async_threaded(a));
        ckpt_async_stop(a);
        setenv("DONESHOT_SYNC_SAVE", "0", 1);
        a = ckpt_async_start(1);
        CHECK(ckpt_async_threaded(a));
        ckpt_async_stop(a);
        unsetenv("DONESHOT_SYNC_SAVE");
    }

    TEST("DONESHOT_FAULT_WRITE_JOB=k fails the k-th job (threaded and synchronous)") {
        setenv("DONESHOT_FAULT_WRITE_JOB", "4", 1);
        for (int depth = 0; depth <= 1; depth++) {
            log_ctx c = {.fail_at = -1};
            ckpt_async *a = ckpt_async_start(depth);
            for (int i = 0; i < 6; i++) ckpt_async_submit(a, mk(&c, i, 0));
            CHECK_EQ_INT(ckpt_async_drain(a), DS_ERR_RUNTIME);
            CHECK(strstr(ds_errmsg(), "injected write failure in job 4") != NULL);
            CHECK_EQ_INT(atomic_load(&c.n), 3);
            CHECK_EQ_INT(atomic_load(&c.freed), 6);
            ckpt_async_stop(a);
        }
        unsetenv("DONESHOT_FAULT_WRITE_JOB");
    }

    TEST("stop with queued jobs: the running one finishes, the rest are dropped and freed") {
        log_ctx c = {.fail_at = -1};
        ckpt_async *a = ckpt_async_start(4);
        ckpt_async_submit(a, mk(&c, 0, 1));
        for (int i = 1; i < 8; i++) ckpt_async_submit(a, mk(&c, i, 0));
        usleep(20000);
        atomic_store(&c.gate, 1);
        ckpt_async_stop(a);
        CHECK_EQ_INT(atomic_load(&c.freed), 8);
        CHECK(atomic_load(&c.n) >= 1 && c.order[0] == 0);
        ckpt_async_stop(NULL);
    }

    return TEST_REPORT();
}
