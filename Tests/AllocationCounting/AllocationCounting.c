// Interposes the C allocator in the test executable so a test can assert that a hot path
// allocates nothing. Every allocation Swift makes (arrays, classes, closures' contexts) reaches
// one of these functions; they forward to glibc's own entry points and count only on the
// thread that asked, so tests running in parallel on other threads do not disturb the count.
#include <errno.h>
#include <execinfo.h>
#include <stddef.h>
#include <stdlib.h>
#include <unistd.h>
#include "AllocationCounting.h"

extern void *__libc_malloc(size_t size);
extern void *__libc_calloc(size_t count, size_t size);
extern void *__libc_realloc(void *pointer, size_t size);
extern void *__libc_memalign(size_t alignment, size_t size);
extern void *__libc_valloc(size_t size);
extern void *__libc_pvalloc(size_t size);
extern void __libc_free(void *pointer);

static __thread long allocations;
static __thread int counting;
static int tracing = -1;

// With CLM_ALLOCATION_TRACE=1 in the environment, every counted allocation prints its stack
// to stderr (symbolised with `swift demangle`), to find what a failing test counted.
static inline void note(void) {
    if (!counting) return;
    allocations++;
    if (tracing < 0) {
        counting = 0;
        const char *setting = getenv("CLM_ALLOCATION_TRACE");
        tracing = setting != NULL && setting[0] == '1';
        counting = 1;
    }
    if (tracing) {
        counting = 0;
        void *frames[24];
        int depth = backtrace(frames, 24);
        write(2, "-- counted allocation:\n", 23);
        backtrace_symbols_fd(frames, depth, 2);
        counting = 1;
    }
}

void *malloc(size_t size) { note(); return __libc_malloc(size); }
void *calloc(size_t count, size_t size) { note(); return __libc_calloc(count, size); }
void *realloc(void *pointer, size_t size) { note(); return __libc_realloc(pointer, size); }
void *memalign(size_t alignment, size_t size) { note(); return __libc_memalign(alignment, size); }
void *aligned_alloc(size_t alignment, size_t size) { note(); return __libc_memalign(alignment, size); }
void *valloc(size_t size) { note(); return __libc_valloc(size); }
void *pvalloc(size_t size) { note(); return __libc_pvalloc(size); }
void free(void *pointer) { __libc_free(pointer); }

int posix_memalign(void **result, size_t alignment, size_t size) {
    note();
    if (alignment % sizeof(void *) != 0 || (alignment & (alignment - 1)) != 0) return EINVAL;
    void *pointer = __libc_memalign(alignment, size);
    if (pointer == NULL) return ENOMEM;
    *result = pointer;
    return 0;
}

void clm_allocation_counting_begin(void) {
    allocations = 0;
    counting = 1;
}

long clm_allocation_counting_end(void) {
    counting = 0;
    return allocations;
}
