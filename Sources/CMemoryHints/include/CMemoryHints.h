#ifndef CLM_CMEMORYHINTS_H
#define CLM_CMEMORYHINTS_H

#if defined(__GLIBC__) || defined(__linux__)
#include <malloc.h>
#endif

// Swift has no prefetch intrinsic. Aggregating a date-ordered export reads one random
// customer record per row; asking for the records of rows a few places ahead lets those
// cache misses overlap instead of being paid one after another.
static inline void clm_prefetch_write(const void *address) {
    __builtin_prefetch(address, 1, 3);
}

// The same for reading: writing a dataset visits customers in id order, which is no order at
// all in memory.
static inline void clm_prefetch_read(const void *address) {
    __builtin_prefetch(address, 0, 3);
}

// Hands the heap's free pages back to the system. glibc keeps freed blocks under its
// (adaptive, up to 32 MiB) mmap threshold in the heap, where they still count as resident;
// after an import frees tens of MB of such blocks and before it allocates its next large
// arrays, this is what keeps the freed memory from adding to the peak. (glibc's <malloc.h>
// is not part of Swift's Glibc module.)
static inline void clm_release_free_memory(void) {
#if defined(__GLIBC__)
    malloc_trim(0);
#endif
}

// Blocks of `bytes` or more get a mapping of their own, unmapped when freed. glibc's adaptive
// threshold rises with every large block freed, up to 32 MiB, and from then on the buffers an
// import grows and frees stay in the heap, resident. On the 10M-row date-ordered import with
// the aggregation on a second thread, the peak was 292 MiB with the adaptive threshold and
// 285 MiB with 256 KiB (1 MiB: 337 MiB).
static inline void clm_map_blocks_from(size_t bytes) {
#if defined(__GLIBC__)
    mallopt(M_MMAP_THRESHOLD, (int)bytes);
#endif
}

// The CPUs this process may run on (its affinity mask: taskset, a cpuset, a batch system's
// allocation); 0 when unknown. Foundation's activeProcessorCount counts every online CPU.
int clm_usable_cpus(void);

#endif
