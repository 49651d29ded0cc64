/* The kernels' thread pool, as its clients see it: sb_pool_run and SB_POOL_MAX.
 *
 * The pool itself (pool_impl.h) is compiled once, into sparsebench._pool, which publishes its
 * entry points as a table in the PyCapsule SB_POOL_CAPSULE (as numpy does its C API). Every
 * kernel module calls sb_pool_import() when it is imported (common.pxi), so all of them share
 * one set of worker threads and one spin setting.
 */
#ifndef SPARSEBENCH_POOL_H
#define SPARSEBENCH_POOL_H

#include <Python.h>

#define SB_POOL_MAX 256
#define SB_POOL_CAPSULE "sparsebench._pool._C_API"
#define SB_POOL_API_VERSION 1

typedef void (*sb_task_fn)(void *ctx, int task);

typedef struct {
    int version;                   /* SB_POOL_API_VERSION of the provider */
    /* Run fn(ctx, t) for t in [0, ntasks) on up to `threads` threads, the caller included.
     * Concurrent callers run one after the other. Returns 0, or -1 if a worker thread could
     * not be started (the tasks still all run, on the threads there are). */
    int (*run)(int threads, int ntasks, sb_task_fn fn, void *ctx);
    void (*set_spin_ns)(long ns);  /* how long idle workers yield before they sleep */
    long (*spin_ns)(void);
} sb_pool_api_t;

#ifndef SB_POOL_PROVIDER
static const sb_pool_api_t *sb_pool_api = NULL;

/* Fill sb_pool_api from sparsebench._pool; 0, or -1 with ImportError set. */
static int sb_pool_import(void) {
    const sb_pool_api_t *api = (const sb_pool_api_t *)PyCapsule_Import(SB_POOL_CAPSULE, 0);
    if (api == NULL) {
        PyObject *type, *value, *tb;
        PyErr_Fetch(&type, &value, &tb);
        PyErr_Format(PyExc_ImportError, "sparsebench kernels need the thread pool %s: %S",
                     SB_POOL_CAPSULE, value ? value : Py_None);
        Py_XDECREF(type);
        Py_XDECREF(value);
        Py_XDECREF(tb);
        return -1;
    }
    if (api->version != SB_POOL_API_VERSION) {
        PyErr_Format(PyExc_ImportError, "sparsebench._pool has API version %d, this module needs %d: "
                     "rebuild sparsebench", api->version, SB_POOL_API_VERSION);
        return -1;
    }
    sb_pool_api = api;
    return 0;
}

static inline int sb_pool_run(int threads, int ntasks, sb_task_fn fn, void *ctx) {
    return sb_pool_api->run(threads, ntasks, fn, ctx);
}
#endif

#endif /* SPARSEBENCH_POOL_H */
