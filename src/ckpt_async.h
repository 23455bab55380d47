/*
 * ckpt_async.h - the checkpoint writer thread (rank 0): encodes and writes
 * each quantized module's tensors while the pipeline goes on with the next
 * layer (issue 12 item 5).
 *
 * One writer thread runs the submitted jobs in submission order (FIFO), so
 * every pwrite lands where the synchronous writer put it: the checkpoint is
 * byte-identical. Jobs are grouped into layers (ckpt_async_end_layer); at
 * most `depth` finished layers wait in the queue, so memory stays bounded
 * (the layer being submitted plus `depth` queued ones).
 *
 * Errors: the first failing job's status and message are kept (sticky);
 * later jobs are dropped, and every call below returns that status from then
 * on, so the pipeline stops at its next layer boundary with the error's exit
 * code. Data safety: a resume point must call ckpt_async_drain (every
 * submitted tensor written) before fsync and the progress file.
 *
 * Synchronous mode (depth 0, or DONESHOT_SYNC_SAVE=1 in the environment):
 * no thread; ckpt_async_submit runs the job at once, as before the writer
 * thread existed (for tests comparing the two, and a fallback).
 * Fault injection (tests only): DONESHOT_FAULT_WRITE_JOB=k makes the k-th
 * job (counted from 1) fail with DS_ERR_RUNTIME instead of running.
 */
#ifndef DS_CKPT_ASYNC_H
#define DS_CKPT_ASYNC_H

#include "common.h"

typedef struct ckpt_async ckpt_async;

/* One unit of work: fn(arg) runs on the writer thread (must not touch state
 * the pipeline changes meanwhile; its errors via ds_error); free_fn(arg)
 * (may be NULL) runs afterwards, also when the job is dropped. */
typedef struct ckpt_job {
    ds_status (*fn)(void *arg);
    void (*free_fn)(void *arg);
    void *arg;
} ckpt_job;

/* Start the writer; depth >= 1 queued layers (clamped to 1..4), 0 (or the
 * environment variable DONESHOT_SYNC_SAVE set to a non-empty value other than
 * "0"): synchronous. Never fails (no thread: synchronous). */
ckpt_async *ckpt_async_start(int depth);
/* 1 if jobs run on a writer thread. */
int ckpt_async_threaded(const ckpt_async *a);
/* Queue job (taken over: freed by the writer, also on error). Returns the
 * sticky error status (message in ds_errmsg()) or DS_OK. */
ds_status ckpt_async_submit(ckpt_async *a, ckpt_job job);
/* The jobs submitted since the last call form one layer; waits until at most
 * `depth` layers are queued or being written. Returns the sticky status. */
ds_status ckpt_async_end_layer(ckpt_async *a);
/* Wait until every submitted job has run. Returns the sticky status. */
ds_status ckpt_async_drain(ckpt_async *a);
/* Seconds the writer spent running jobs (busy time, overlapped or not). */
double ckpt_async_busy_s(const ckpt_async *a);
/* Drop queued jobs, wait for the running one, join the thread, free. NULL ok. */
void ckpt_async_stop(ckpt_async *a);

#endif
