# cython: language_level=3
"""CPU features, compiled for the baseline ISA so it imports on any CPU."""

cdef extern from *:
    """
    static int sb_cpu_has(const char *name) {
    #if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))
        __builtin_cpu_init();
        /* __builtin_cpu_supports needs literal names; it also checks the OS saves the registers */
        if (!__builtin_strcmp(name, "avx2")) return __builtin_cpu_supports("avx2");
        if (!__builtin_strcmp(name, "fma")) return __builtin_cpu_supports("fma");
        if (!__builtin_strcmp(name, "avx512f")) return __builtin_cpu_supports("avx512f");
        if (!__builtin_strcmp(name, "avx512vl")) return __builtin_cpu_supports("avx512vl");
        if (!__builtin_strcmp(name, "avx512bw")) return __builtin_cpu_supports("avx512bw");
        if (!__builtin_strcmp(name, "avx512dq")) return __builtin_cpu_supports("avx512dq");
        if (!__builtin_strcmp(name, "avx512vnni")) return __builtin_cpu_supports("avx512vnni");
    #endif
        return 0;
    }
    """
    int sb_cpu_has(const char *name)

FEATURES = ("avx2", "fma", "avx512f", "avx512vl", "avx512bw", "avx512dq", "avx512vnni")


def cpu_features():
    """The instruction-set extensions this CPU (and OS) supports, among those sparsebench uses."""
    return tuple(f for f in FEATURES if sb_cpu_has(f.encode()))

