#ifndef CLM_CTRAININGKERNELS_H
#define CLM_CTRAININGKERNELS_H

#include <stdint.h>

// The training LSTM's per-step element-wise work (gate activations, cell update, and their
// backward), 16 lanes at a time. In C for the same reason as the scoring kernels: a Swift
// package compiles for baseline x86-64 (4-wide SSE) and cannot pick an AVX2 or AVX-512 version
// of a function at run time without unsafe flags; here each version carries a target attribute.
// The kernel numbers are the scoring kernels' (`clm_lstm_best_kernel`).

/// One time step `t` of one layer for `batch` customers, rows [batch, ·] of the step:
/// - `gates` [batch, 4·hidden]: the pre-activations (rows i, f, g, o), replaced by the
///   activations σ(i), σ(f), tanh(g), σ(o), which backward reads;
/// - `previousCells`, `previousOutputs` [batch, hidden]: the step before, or null at t = 0;
/// - `cells`, `tanhCells`, `outputs` [batch, hidden]: c, tanh(c) and h of this step.
/// A customer whose sequence has ended (t ≥ lengths[b]) carries c and h unchanged (zero at t = 0).
void clm_lstm_train_forward_cells(int kernel, float *gates, const float *previousCells, const float *previousOutputs,
                                  float *cells, float *tanhCells, float *outputs, const int32_t *lengths, int t,
                                  int batch, int hidden);

/// Backward through the element-wise part of step `t`: adds `outputGradients` (dL/dh from above
/// or from the heads) to `hiddenCarry`, then writes the gate gradients [batch, 4·hidden] (zero
/// for an ended sequence, whose carries pass through), updates `cellCarry` to dL/dc of the step
/// before and zeroes `hiddenCarry` for the active customers (the recurrent product adds it back).
void clm_lstm_train_backward_cells(int kernel, const float *gates, const float *tanhCells, const float *previousCells,
                                   const float *outputGradients, float *hiddenCarry, float *cellCarry,
                                   float *gateGradients, const int32_t *lengths, int t, int batch, int hidden);

#endif
