/* The one thread pool of sparsebench, compiled once into sparsebench._pool (kernels/pool.pyx);
 * every kernel module reaches it through the function table of pool.h.
 *
 * Why not OpenMP's own team: on a small machine that also runs BLAS, an idle OpenMP team either
 * spins on PAUSE (numpy's OpenBLAS, alternating with us, measured 6x slower on 2 cores) or
 * sleeps in the kernel (our worker then wakes after the short kernel is over). Here idle workers
 * spin with sched_yield(), which hands the core to any runnable thread at once, and sleep on a
 * condition variable after spin_ns. Tasks are claimed one at a time with a compare-and-swap
 * on (generation, next task), so the calling thread does every task itself if the workers are
 * late, and a late worker can never run a task of a job that has ended.
 */
#ifndef SPARSEBENCH_POOL_IMPL_H
#define SPARSEBENCH_POOL_IMPL_H

#include <pthread.h>
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <time.h>

#define SB_POOL_PROVIDER
#include "pool.h"

/* Microseconds an idle worker keeps yielding before it sleeps. Long enough that the workers are
 * still awake for the next job of a forward pass, where fp32, int8 and encoder jobs follow each
 * other with only Python glue in between; short enough that, once the kernels stop (a dense
 * BLAS layer, numpy work, another process), the cores are handed back soon after. With one pool
 * for the process no pool spins through another's jobs any more, which is what the old per-module
 * 100 us settings were for. SPARSEBENCH_SPIN_US overrides it (sparsebench.cpu). */
#define SB_POOL_DEFAULT_SPIN_US 500

/* the `next task` field of a finished job's state: no task is ever that high */
#define SB_POOL_CLOSED 0xFFFFFFFFu

typedef struct {
    pthread_mutex_t call;          /* one job at a time: concurrent callers queue here */
    pthread_mutex_t lock;
    pthread_cond_t wake;
    int nworkers;                  /* workers started so far */
    int sleepers;                  /* workers blocked on `wake` */
    long spin_ns;                  /* how long an idle worker yields before sleeping */
    uint64_t state;                /* generation << 32 | next task index (atomic) */
    int active;                    /* workers the current job may use */
    sb_task_fn fn;
    void *ctx;
    int ntasks;
    int done;                      /* tasks finished in the current job (atomic) */
} sb_pool_t;

static sb_pool_t sb_pool = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_MUTEX_INITIALIZER,
                            PTHREAD_COND_INITIALIZER, 0, 0, SB_POOL_DEFAULT_SPIN_US * 1000L,
                            0, 0, 0, 0, 0, 0};

static inline long sb_now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1000000000L + t.tv_nsec;
}

static long sb_pool_spin_ns(void) { return __atomic_load_n(&sb_pool.spin_ns, __ATOMIC_RELAXED); }

/* Claim and run tasks of generation `gen` until none is left; returns how many it ran. */
static int sb_pool_work(uint32_t gen) {
    int ran = 0;
    for (;;) {
        uint64_t s = __atomic_load_n(&sb_pool.state, __ATOMIC_ACQUIRE);
        if ((uint32_t)(s >> 32) != gen) return ran;
        sb_task_fn fn = __atomic_load_n(&sb_pool.fn, __ATOMIC_RELAXED);
        void *ctx = __atomic_load_n(&sb_pool.ctx, __ATOMIC_RELAXED);
        uint32_t next = (uint32_t)s;
        /* unsigned: a closed job (next = SB_POOL_CLOSED) never has a task left */
        if (next >= (uint32_t)__atomic_load_n(&sb_pool.ntasks, __ATOMIC_RELAXED)) return ran;
        if (!__atomic_compare_exchange_n(&sb_pool.state, &s, s + 1, 0, __ATOMIC_ACQ_REL,
                                         __ATOMIC_ACQUIRE))
            continue;
        /* the CAS succeeded on an unfinished job of `gen`: fn and ctx belong to it */
        fn(ctx, (int)next);
        __atomic_add_fetch(&sb_pool.done, 1, __ATOMIC_RELEASE);
        ran++;
    }
}

static void *sb_pool_worker(void *arg) {
    int id = (int)(intptr_t)arg;
    uint32_t seen = (uint32_t)(__atomic_load_n(&sb_pool.state, __ATOMIC_ACQUIRE) >> 32);
    for (;;) {
        long start = sb_now_ns();
        uint32_t gen;
        while ((gen = (uint32_t)(__atomic_load_n(&sb_pool.state, __ATOMIC_ACQUIRE) >> 32)) == seen) {
            if (sb_now_ns() - start > sb_pool_spin_ns()) {
                pthread_mutex_lock(&sb_pool.lock);
                sb_pool.sleepers++;
                while ((uint32_t)(__atomic_load_n(&sb_pool.state, __ATOMIC_ACQUIRE) >> 32) == seen)
                    pthread_cond_wait(&sb_pool.wake, &sb_pool.lock);
                sb_pool.sleepers--;
                pthread_mutex_unlock(&sb_pool.lock);
                start = sb_now_ns();
            } else {
                sched_yield();
            }
        }
        seen = gen;
        if (id < __atomic_load_n(&sb_pool.active, __ATOMIC_ACQUIRE))
            sb_pool_work(gen);
    }
    return NULL;
}

/* sb_pool_api_t.run (pool.h) */
static int sb_pool_run(int threads, int ntasks, sb_task_fn fn, void *ctx) {
    int t, rc = 0;
    if (threads > SB_POOL_MAX) threads = SB_POOL_MAX;
    if (threads <= 1 || ntasks <= 1) {
        for (t = 0; t < ntasks; t++) fn(ctx, t);
        return 0;
    }
    pthread_mutex_lock(&sb_pool.call);
    while (sb_pool.nworkers < threads - 1) {
        pthread_t th;
        pthread_attr_t attr;
        pthread_attr_init(&attr);
        pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
        if (pthread_create(&th, &attr, sb_pool_worker, (void *)(intptr_t)sb_pool.nworkers)) {
            pthread_attr_destroy(&attr);
            rc = -1;
            break;
        }
        pthread_attr_destroy(&attr);
        /* named here, not by the worker: the name is there before the worker first runs */
        char name[16];
        snprintf(name, sizeof name, "sb-pool-%d", sb_pool.nworkers + 1);
        pthread_setname_np(th, name);
        sb_pool.nworkers++;
    }
    __atomic_store_n(&sb_pool.fn, fn, __ATOMIC_RELAXED);
    __atomic_store_n(&sb_pool.ctx, ctx, __ATOMIC_RELAXED);
    __atomic_store_n(&sb_pool.ntasks, ntasks, __ATOMIC_RELAXED);
    __atomic_store_n(&sb_pool.done, 0, __ATOMIC_RELAXED);
    __atomic_store_n(&sb_pool.active, threads - 1 < sb_pool.nworkers ? threads - 1 : sb_pool.nworkers,
                     __ATOMIC_RELAXED);
    uint32_t gen = (uint32_t)(__atomic_load_n(&sb_pool.state, __ATOMIC_ACQUIRE) >> 32) + 1;
    __atomic_store_n(&sb_pool.state, (uint64_t)gen << 32, __ATOMIC_RELEASE);
    pthread_mutex_lock(&sb_pool.lock);
    if (sb_pool.sleepers) pthread_cond_broadcast(&sb_pool.wake);
    pthread_mutex_unlock(&sb_pool.lock);
    sb_pool_work(gen);
    while (__atomic_load_n(&sb_pool.done, __ATOMIC_ACQUIRE) < ntasks)
        sched_yield();
    /* close the job before the next caller may rewrite fn, ctx and ntasks: a worker that read
     * this generation's state late then finds no task left (its CAS or its bound check fails) */
    __atomic_store_n(&sb_pool.state, ((uint64_t)gen << 32) | SB_POOL_CLOSED, __ATOMIC_RELEASE);
    pthread_mutex_unlock(&sb_pool.call);
    return rc;
}

static void sb_pool_set_spin_ns(long ns) {
    __atomic_store_n(&sb_pool.spin_ns, ns < 0 ? 0 : ns, __ATOMIC_RELAXED);
}
/* Worker threads started so far (the caller of a job is not one of them). */
static int sb_pool_workers(void) {
    pthread_mutex_lock(&sb_pool.call);
    int n = sb_pool.nworkers;
    pthread_mutex_unlock(&sb_pool.call);
    return n;
}

static const sb_pool_api_t sb_pool_table = {SB_POOL_API_VERSION, sb_pool_run, sb_pool_set_spin_ns,
                                            sb_pool_spin_ns};

#endif /* SPARSEBENCH_POOL_IMPL_H */
