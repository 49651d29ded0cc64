# cython: language_level=3
"""CPU features and identity (CPUID), compiled for the baseline ISA so it imports on any CPU."""

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



cdef extern from *:
    """
    #if defined(__x86_64__) || defined(__i386__)
    #include <cpuid.h>
    #include <string.h>
    /* vendor (13 bytes), brand (49 bytes), display family/model (extended fields folded in as
       Linux does) and stepping from CPUID; 0 if this CPU has no CPUID leaf 1 */
    static int sb_cpuid_identity(char *vendor, char *brand, int *family, int *model, int *stepping) {
        unsigned int eax, ebx, ecx, edx, max_ext, leaf;
        if (!__get_cpuid(0, &eax, &ebx, &ecx, &edx) || eax < 1) return 0;
        memcpy(vendor, &ebx, 4); memcpy(vendor + 4, &edx, 4); memcpy(vendor + 8, &ecx, 4);
        vendor[12] = 0;
        __get_cpuid(1, &eax, &ebx, &ecx, &edx);
        *stepping = eax & 0xf;
        *family = (eax >> 8) & 0xf;
        *model = (eax >> 4) & 0xf;
        if (*family == 0xf) *family += (eax >> 20) & 0xff;
        if (*family >= 6) *model += ((eax >> 16) & 0xf) << 4;
        brand[0] = 0;
        max_ext = __get_cpuid_max(0x80000000, 0);
        if (max_ext >= 0x80000004) {
            for (leaf = 0; leaf < 3; leaf++) {
                __get_cpuid(0x80000002 + leaf, &eax, &ebx, &ecx, &edx);
                memcpy(brand + 16 * leaf, &eax, 4); memcpy(brand + 16 * leaf + 4, &ebx, 4);
                memcpy(brand + 16 * leaf + 8, &ecx, 4); memcpy(brand + 16 * leaf + 12, &edx, 4);
            }
            brand[48] = 0;
        }
        return 1;
    }
    #else
    static int sb_cpuid_identity(char *vendor, char *brand, int *family, int *model, int *stepping) {
        return 0;
    }
    #endif
    """
    int sb_cpuid_identity(char *vendor, char *brand, int *family, int *model, int *stepping)


def cpuid_identity():
    """{vendor, brand, family, model, stepping} from CPUID (display family/model, as Linux
    reports them), or None on CPUs without CPUID (non-x86)."""
    cdef char vendor[13]
    cdef char brand[49]
    cdef int family = 0, model = 0, stepping = 0
    if not sb_cpuid_identity(vendor, brand, &family, &model, &stepping):
        return None
    return {"vendor": vendor.decode("ascii", "replace"), "brand": brand.decode("ascii", "replace").strip(),
            "family": family, "model": model, "stepping": stepping}
