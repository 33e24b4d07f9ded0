#ifndef CLM_CFORWARDKERNELS_H
#define CLM_CFORWARDKERNELS_H

#include <stddef.h>

// The scoring LSTM's step, fused: the gate products and the cell update of a tile of customers
// in one pass, with the gates kept in registers. Written in C because a Swift package cannot
// build one function for AVX2 or AVX-512 and pick it at run time without unsafe flags; here each
// version carries a target attribute, and `clm_lstm_best_kernel` asks the CPU which it can run.

enum {
    /// No version here: the caller uses its own (baseline x86-64) path.
    CLM_LSTM_KERNEL_PORTABLE = 0,
    CLM_LSTM_KERNEL_AVX2 = 1,
    CLM_LSTM_KERNEL_AVX512 = 2,
};

/// The best kernel this CPU (and its operating system) runs.
int clm_lstm_best_kernel(void);

/// Customers per tile: the row stride of every [rows, batch] buffer must be a multiple of this,
/// because whole tiles are read and the cells of whole tiles written.
int clm_lstm_tile_columns(int kernel);

/// Floats of a layer's packed weights, and of the scratch a step needs.
size_t clm_lstm_packed_count(int kernel, int hidden, int width);
size_t clm_lstm_scratch_count(int kernel, int hidden, int width);

/// Rearranges a layer's [4·hidden, width] row-major gate weights (rows i, f, g, o) so that each
/// tile of units reads its weights for one input row as one contiguous run.
void clm_lstm_pack(int kernel, const float *weights, int hidden, int width, float *packed);

/// One layer's step for the customers in columns [0, count):
///   gates = W · block[0 ..< depth rows], then c and h as `InferenceLSTM.lanesUpdate` computes them.
/// `block` is the layer's input block, [width, stride]; `recurrent` its h rows inside it, which
/// the step reads and then overwrites (columns < count only); `next`, if not null, the next
/// layer's input rows, written like `recurrent`. Cells are written for whole tiles: columns from
/// `count` to the tile's end belong to customers whose sequences have ended, and their cells are
/// never read again.
void clm_lstm_step(int kernel, const float *packed, int hidden, int width, int depth,
                   const float *block, size_t stride, float *recurrent, float *cell, float *next,
                   int count, float cellScale, float limit, float *scratch);

/// The few-customer form of `clm_lstm_step` (same arguments, with the weights as
/// `clm_lstm_transpose` lays them out): one customer at a time, vectors along the gate rows.
/// Each customer's results are the same bits as `clm_lstm_step` gives it, so a customer's scores
/// do not depend on the batch it is scored in.
void clm_lstm_step_columns(int kernel, const float *transposed, int hidden, int width, int depth,
                           const float *block, size_t stride, float *recurrent, float *cell, float *next,
                           int count, float cellScale, float limit, float *scratch);

/// The weights [width][4·hidden rounded up to 16], for `clm_lstm_step_columns`.
size_t clm_lstm_transposed_count(int hidden, int width);
void clm_lstm_transpose(const float *weights, int hidden, int width, float *transposed);

#endif
