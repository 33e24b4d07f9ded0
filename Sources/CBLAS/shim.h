#ifndef CLM_CBLAS_SHIM_H
#define CLM_CBLAS_SHIM_H

// OpenBLAS's cblas.h also declares openblas_set_num_threads, which the project uses to pin
// BLAS to one thread per rank (MPI ranks already occupy the cores).
#include <cblas.h>

#endif
