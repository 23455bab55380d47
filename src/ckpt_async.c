/*
 * ckpt_async.c - the checkpoint writer thread (see ckpt_async.h): a FIFO of
 * jobs under one mutex, one worker, layer marks for the bound, a sticky
 * first error.
 */
#include "ckpt_async.h"

#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>

#define MARKS 8 /* ring of layer ends; > the largest depth */

typedef struct job_node {
    ckpt_job job;
    uint64_t seq; /* 1-based submission number (fault injection) */
    struct job_node *next;
} job_node;

struct ckpt_async {
    int threaded, depth;
    pthread_t th;
    pthread_mutex_t mu;
    pthread_cond_t work, done_cv;
    job_node *head, *tail;
    uint64_t submitted, done;  /* jobs queued so far; jobs run or dropped */
    uint64_t marks[MARKS];     /* submitted count at each layer end */
    uint64_t nmarks;
    int stop;
    ds_status err;             /* first failure (sticky) */
    char msg[4096];            /* its message (ds_errmsg is per thread) */
    uint64_t fault_job;        /* DONESHOT_FAULT_WRITE_JOB, 0: none */
    double busy;
};

static ds_status run_one(ckpt_async *a, const job_node *n) {
    if (a->fault_job && n->seq == a->fault_job)
        return ds_error(DS_ERR_RUNTIME, "checkpoint writer: injected write failure in job %llu "
                        "(DONESHOT_FAULT_WRITE_JOB)", (unsigned long long)n->seq);
    return n->job.fn(n->job.arg);
}

/* Record a job's outcome; called with the mutex held (threaded) or inline. */
static void record(ckpt_async *a, ds_status st, double secs) {
    if (st && !a->err) {
        a->err = st;
        snprintf(a->msg, sizeof a->msg, "%s", ds_errmsg());
    }
    a->busy += secs;
    a->done++;
}

static void *worker(void *p) {
    ckpt_async *a = p;
    pthread_mutex_lock(&a->mu);
    for (;;) {
        while (!a->head && !a->stop) pthread_cond_wait(&a->work, &a->mu);
        if (!a->head) break; /* stop, nothing left */
        job_node *n = a->head;
        a->head = n->next;
        if (!a->head) a->tail = NULL;
        const int skip = a->err != DS_OK; /* after a failure: drop */
        pthread_mutex_unlock(&a->mu);
        const double t = ds_now();
        const ds_status st = skip ? DS_OK : run_one(a, n);
        if (n->job.free_fn) n->job.free_fn(n->job.arg);
        const double secs = ds_now() - t;
        free(n);
        pthread_mutex_lock(&a->mu);
        record(a, st, secs);
        pthread_cond_broadcast(&a->done_cv);
    }
    pthread_mutex_unlock(&a->mu);
    return NULL;
}

ckpt_async *ckpt_async_start(int depth) {
    ckpt_async *a = xcalloc(1, sizeof *a);
    const char *sync = getenv("DONESHOT_SYNC_SAVE");
    const char *fault = getenv("DONESHOT_FAULT_WRITE_JOB");
    if (fault && *fault) a->fault_job = strtoull(fault, NULL, 10);
    if (sync && *sync && strcmp(sync, "0") != 0) depth = 0;
    a->depth = depth < 0 ? 0 : depth > MARKS / 2 ? MARKS / 2 : depth;
    if (a->depth == 0) return a;
    pthread_mutex_init(&a->mu, NULL);
    pthread_cond_init(&a->work, NULL);
    pthread_cond_init(&a->done_cv, NULL);
    /* the writer takes no signals: SIGTERM/SIGUSR1 reach the pipeline's thread */
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, &old);
    a->threaded = pthread_create(&a->th, NULL, worker, a) == 0;
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (!a->threaded) {
        ds_warn("could not start the checkpoint writer thread; writing synchronously");
        pthread_mutex_destroy(&a->mu);
        pthread_cond_destroy(&a->work);
        pthread_cond_destroy(&a->done_cv);
        a->depth = 0;
    }
    return a;
}

int ckpt_async_threaded(const ckpt_async *a) { return a && a->threaded; }

/* The sticky status, with its message in this thread's error buffer. */
static ds_status sticky(const ckpt_async *a) {
    return a->err ? ds_error(a->err, "%s", a->msg) : DS_OK;
}

ds_status ckpt_async_submit(ckpt_async *a, ckpt_job job) {
    if (!a->threaded) {
        job_node n = {.job = job, .seq = ++a->submitted};
        const double t = ds_now();
        const ds_status st = a->err ? DS_OK : run_one(a, &n);
        if (job.free_fn) job.free_fn(job.arg);
        record(a, st, ds_now() - t);
        return sticky(a);
    }
    job_node *n = xcalloc(1, sizeof *n);
    n->job = job;
    pthread_mutex_lock(&a->mu);
    n->seq = ++a->submitted;
    if (a->tail) a->tail->next = n;
    else a->head = n;
    a->tail = n;
    pthread_cond_signal(&a->work);
    const ds_status st = sticky(a);
    pthread_mutex_unlock(&a->mu);
    return st;
}

ds_status ckpt_async_end_layer(ckpt_async *a) {
    if (!a->threaded) return sticky(a);
    pthread_mutex_lock(&a->mu);
    a->marks[a->nmarks % MARKS] = a->submitted;
    a->nmarks++;
    if (a->nmarks > (uint64_t)a->depth) { /* the layer `depth` marks back must be written */
        const uint64_t need = a->marks[(a->nmarks - 1 - (uint64_t)a->depth) % MARKS];
        while (a->done < need && !a->err) pthread_cond_wait(&a->done_cv, &a->mu);
    }
    const ds_status st = sticky(a);
    pthread_mutex_unlock(&a->mu);
    return st;
}

ds_status ckpt_async_drain(ckpt_async *a) {
    if (!a->threaded) return sticky(a);
    pthread_mutex_lock(&a->mu);
    while (a->done < a->submitted) pthread_cond_wait(&a->done_cv, &a->mu);
    const ds_status st = sticky(a);
    pthread_mutex_unlock(&a->mu);
    return st;
}

double ckpt_async_busy_s(const ckpt_async *a) {
    if (!a) return 0.0;
    if (!a->threaded) return a->busy;
    pthread_mutex_t *mu = (pthread_mutex_t *)&a->mu;
    pthread_mutex_lock(mu);
    const double b = a->busy;
    pthread_mutex_unlock(mu);
    return b;
}

void ckpt_async_stop(ckpt_async *a) {
    if (!a) return;
    if (a->threaded) {
        pthread_mutex_lock(&a->mu);
        job_node *n = a->head; /* queued, not started: dropped */
        a->head = a->tail = NULL;
        a->stop = 1;
        pthread_cond_signal(&a->work);
        pthread_mutex_unlock(&a->mu);
        while (n) {
            job_node *next = n->next;
            if (n->job.free_fn) n->job.free_fn(n->job.arg);
            free(n);
            n = next;
        }
        pthread_join(a->th, NULL);
        pthread_mutex_destroy(&a->mu);
        pthread_cond_destroy(&a->work);
        pthread_cond_destroy(&a->done_cv);
    }
    free(a);
}
