#ifndef CLM_ALLOCATION_COUNTING_H
#define CLM_ALLOCATION_COUNTING_H

/// Starts counting the heap allocations made by the calling thread.
void clm_allocation_counting_begin(void);
/// Stops counting and returns how many allocations the calling thread made since the begin.
long clm_allocation_counting_end(void);

#endif
