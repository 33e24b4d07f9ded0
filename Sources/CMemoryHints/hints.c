// sched_getaffinity and CPU_COUNT are GNU extensions, declared only with _GNU_SOURCE, which
// Swift's Glibc module does not define.
#define _GNU_SOURCE
#include <sched.h>
#include "CMemoryHints.h"

int clm_usable_cpus(void) {
#if defined(__linux__)
    cpu_set_t allowed;
    CPU_ZERO(&allowed);
    if (sched_getaffinity(0, sizeof allowed, &allowed) == 0) return CPU_COUNT(&allowed);
#endif
    return 0;
}
