#include "CForwardKernels.h"

#include <string.h>

// The 16-float vectors below never cross a call: every helper is inlined into a function built
// for AVX2 or AVX-512, so the ABI note clang gives for them does not apply.
#pragma clang diagnostic ignored "-Wpsabi"

// 16 floats: one AVX-512 register, or two AVX2 registers (two independent halves, which keeps
// the exponentials' dependency chains overlapped as the Swift path's 16 lanes on SSE do).
typedef float v16f __attribute__((ext_vector_type(16)));
typedef int v16i __attribute__((ext_vector_type(16)));

#define INLINE static inline __attribute__((always_inline, unused))

INLINE v16f load16(const float *p) {
    v16f v;
    memcpy(&v, p, sizeof v);
    return v;
}

INLINE void store16(float *p, v16f v) { memcpy(p, &v, sizeof v); }

// `x < low ? low : x` is x86's max (and min likewise): one instruction each, where the NaN-aware
// elementwise builtins add a compare and a blend. Gate inputs are finite.
INLINE v16f clamp16(v16f x, float limit) {
    v16f low = -limit, high = limit;
    v16f raised = x < low ? low : x;
    return raised > high ? high : raised;
}

// 2^u as `InferenceLSTM.exp2` computes it, with the same polynomial (see there).
INLINE v16f exp2_16(v16f u) {
    const v16f magic = 12582912.0f;
    v16f shifted = u + magic;
    v16f s = u - (shifted - magic);
    v16f y = 1.5345812e-4f;
    y = y * s + 1.3399931e-3f;
    y = y * s + 9.618489e-3f;
    y = y * s + 5.5503286e-2f;
    y = y * s + 2.4022646e-1f;
    y = y * s + 6.931472e-1f;
    y = y * s + 1.0f;
    v16i exponent = (__builtin_bit_cast(v16i, shifted) - (0x4B400000 - 127)) << 23;
    return y * __builtin_bit_cast(v16f, exponent);
}

// c' and h from gate inputs pre-scaled by −log2(e) (the candidate's by twice that), as
// `InferenceLSTM.lanesUpdate` derives: two divisions for the three sigmoids and two tanh.
INLINE void cell_update(v16f i, v16f f, v16f g, v16f o, v16f c, float cellScale, float limit,
                        v16f *newCell, v16f *newHidden) {
    const v16f one = 1.0f;
    v16f ei = one + exp2_16(clamp16(i, limit)), ef = one + exp2_16(clamp16(f, limit));
    v16f eg = exp2_16(clamp16(g, limit)), eo = one + exp2_16(clamp16(o, limit));
    v16f a = ei * (one + eg);
    v16f cell = (c * a + (one - eg) * ef) / (ef * a);
    v16f ec = exp2_16(clamp16(cell * cellScale, limit));
    *newCell = cell;
    *newHidden = (one - ec) / (eo * (one + ec));
}

enum { MAX_TILE_UNITS = 2, MAX_TILE_VECTORS = 2 };

// A tile is `units` hidden units (their 4 gate rows each) by 16·`vectors` customers. The
// accumulators are the tile's gates, 4·units·vectors registers: 16 of AVX-512's 32 with 2 × 2,
// 8 of AVX2's 16 (two halves each) with 1 × 1. Constant arguments after inlining unroll the
// loops and keep `gates` in registers.
INLINE void step_tiles(const int units, const int vectors, const float *packed, int hidden, int width,
                       int depth, const float *block, size_t stride, float *recurrent, float *cell,
                       float *next, int count, float cellScale, float limit, float *scratch) {
    const int rows = 4 * units, columns = 16 * vectors;
    const int unitTiles = (hidden + units - 1) / units;
    for (int column = 0; column < count; column += columns) {
        for (int tile = 0; tile < unitTiles; tile++) {
            const float *weights = packed + (size_t)tile * (size_t)width * (size_t)rows;
            v16f gates[4 * MAX_TILE_UNITS][MAX_TILE_VECTORS];
            for (int r = 0; r < rows; r++)
                for (int v = 0; v < vectors; v++) gates[r][v] = 0.0f;
            const float *input = block + column;
            for (int k = 0; k < depth; k++) {
                v16f x[MAX_TILE_VECTORS];
                for (int v = 0; v < vectors; v++) x[v] = load16(input + 16 * v);
                for (int r = 0; r < rows; r++) {
                    v16f w = weights[r];
                    for (int v = 0; v < vectors; v++) gates[r][v] += w * x[v];
                }
                input += stride;
                weights += rows;
            }
            for (int u = 0; u < units; u++) {
                int unit = tile * units + u;
                if (unit >= hidden) break;
                for (int v = 0; v < vectors; v++) {
                    float *c = cell + (size_t)unit * stride + column + 16 * v;
                    v16f newCell, newHidden;
                    cell_update(gates[u][v], gates[units + u][v], gates[2 * units + u][v], gates[3 * units + u][v],
                                load16(c), cellScale, limit, &newCell, &newHidden);
                    store16(c, newCell);
                    store16(scratch + (size_t)unit * columns + 16 * v, newHidden);
                }
            }
        }
        // h_t goes over h_{t−1} only now: every unit tile of these columns has read h_{t−1}.
        // Columns past `count` keep their h (finished customers' last states, which the heads read).
        int lanes = count - column < columns ? count - column : columns;
        for (int unit = 0; unit < hidden; unit++) {
            const float *h = scratch + (size_t)unit * columns;
            memcpy(recurrent + (size_t)unit * stride + column, h, (size_t)lanes * sizeof(float));
            if (next) memcpy(next + (size_t)unit * stride + column, h, (size_t)lanes * sizeof(float));
        }
    }
}

// The same step for a few customers, one at a time, with vectors along the gate rows instead
// of across customers (a tile of 32 customers holding one would compute 32). Each gate is the
// same chain of multiply-adds over k in the same order as in `step_tiles`, and the cell update
// the same inlined code, so a customer's results are the same bits either way: scores do not
// depend on which customers share a batch, or on when a batch thins out to a few.
INLINE void step_columns(const int vectors, const float *transposed, int hidden, int width, int depth,
                         const float *block, size_t stride, float *recurrent, float *cell, float *next,
                         int count, float cellScale, float limit, float *scratch) {
    const int rows = 4 * hidden, paddedRows = (rows + 15) / 16 * 16;
    const int paddedHidden = (hidden + 15) / 16 * 16;
    // Scratch: the customer's input column, its gates (with a vector of slack, read by the last
    // units' vectors), its cells, its new h.
    float *x = scratch, *gates = x + width, *c = gates + paddedRows + 16, *h = c + paddedHidden;
    for (int column = 0; column < count; column++) {
        for (int k = 0; k < depth; k++) x[k] = block[(size_t)k * stride + (size_t)column];
        for (int first = 0; first < paddedRows; first += 16 * vectors) {
            int chunk = (paddedRows - first) / 16 < vectors ? (paddedRows - first) / 16 : vectors;
            v16f sums[8];
            for (int v = 0; v < vectors; v++) sums[v] = 0.0f;
            const float *weights = transposed + first;
            for (int k = 0; k < depth; k++) {
                v16f input = x[k];
                for (int v = 0; v < vectors; v++)
                    if (v < chunk) sums[v] += load16(weights + 16 * v) * input;
                weights += paddedRows;
            }
            for (int v = 0; v < vectors; v++)
                if (v < chunk) store16(gates + first + 16 * v, sums[v]);
        }
        for (int unit = 0; unit < hidden; unit++) c[unit] = cell[(size_t)unit * stride + (size_t)column];
        for (int unit = 0; unit < hidden; unit += 16) {
            v16f newCell, newHidden;
            cell_update(load16(gates + unit), load16(gates + hidden + unit), load16(gates + 2 * hidden + unit),
                        load16(gates + 3 * hidden + unit), load16(c + unit), cellScale, limit, &newCell, &newHidden);
            store16(c + unit, newCell);
            store16(h + unit, newHidden);
        }
        for (int unit = 0; unit < hidden; unit++) {
            size_t at = (size_t)unit * stride + (size_t)column;
            cell[at] = c[unit];
            recurrent[at] = h[unit];
            if (next) next[at] = h[unit];
        }
    }
}

static int tile_units(int kernel) { return kernel == CLM_LSTM_KERNEL_AVX512 ? 2 : 1; }

int clm_lstm_tile_columns(int kernel) { return kernel == CLM_LSTM_KERNEL_AVX512 ? 32 : 16; }

size_t clm_lstm_packed_count(int kernel, int hidden, int width) {
    int units = tile_units(kernel);
    return (size_t)((hidden + units - 1) / units) * (size_t)units * 4 * (size_t)width;
}

size_t clm_lstm_scratch_count(int kernel, int hidden, int width) {
    size_t tile = (size_t)hidden * (size_t)clm_lstm_tile_columns(kernel);
    size_t paddedHidden = (size_t)(hidden + 15) / 16 * 16;
    size_t column = (size_t)width + (size_t)(4 * hidden + 15) / 16 * 16 + 16 + 2 * paddedHidden;
    return tile > column ? tile : column;
}

size_t clm_lstm_transposed_count(int hidden, int width) {
    return (size_t)width * (size_t)((4 * hidden + 15) / 16 * 16);
}

void clm_lstm_transpose(const float *weights, int hidden, int width, float *transposed) {
    int rows = 4 * hidden, paddedRows = (rows + 15) / 16 * 16;
    for (int k = 0; k < width; k++)
        for (int row = 0; row < paddedRows; row++)
            transposed[(size_t)k * (size_t)paddedRows + (size_t)row] =
                row < rows ? weights[(size_t)row * (size_t)width + (size_t)k] : 0.0f;
}

void clm_lstm_pack(int kernel, const float *weights, int hidden, int width, float *packed) {
    int units = tile_units(kernel), rows = 4 * units;
    int unitTiles = (hidden + units - 1) / units;
    for (int tile = 0; tile < unitTiles; tile++)
        for (int k = 0; k < width; k++)
            for (int gate = 0; gate < 4; gate++)
                for (int u = 0; u < units; u++) {
                    int unit = tile * units + u;
                    // A unit past `hidden` (odd sizes) gets zero weights; its results are not stored.
                    float value = unit < hidden ? weights[(size_t)(gate * hidden + unit) * (size_t)width + (size_t)k] : 0.0f;
                    packed[((size_t)tile * (size_t)width + (size_t)k) * (size_t)rows + (size_t)(gate * units + u)] = value;
                }
}

#if defined(__x86_64__) || defined(__i386__)

__attribute__((target("avx512f,fma")))
static void step_avx512(const float *packed, int hidden, int width, int depth, const float *block, size_t stride,
                        float *recurrent, float *cell, float *next, int count, float cellScale, float limit,
                        float *scratch) {
    step_tiles(2, 2, packed, hidden, width, depth, block, stride, recurrent, cell, next, count, cellScale, limit, scratch);
}

__attribute__((target("avx2,fma")))
static void step_avx2(const float *packed, int hidden, int width, int depth, const float *block, size_t stride,
                      float *recurrent, float *cell, float *next, int count, float cellScale, float limit,
                      float *scratch) {
    step_tiles(1, 1, packed, hidden, width, depth, block, stride, recurrent, cell, next, count, cellScale, limit, scratch);
}

__attribute__((target("avx512f,fma")))
static void columns_avx512(const float *transposed, int hidden, int width, int depth, const float *block, size_t stride,
                           float *recurrent, float *cell, float *next, int count, float cellScale, float limit,
                           float *scratch) {
    step_columns(8, transposed, hidden, width, depth, block, stride, recurrent, cell, next, count, cellScale, limit, scratch);
}

__attribute__((target("avx2,fma")))
static void columns_avx2(const float *transposed, int hidden, int width, int depth, const float *block, size_t stride,
                         float *recurrent, float *cell, float *next, int count, float cellScale, float limit,
                         float *scratch) {
    step_columns(4, transposed, hidden, width, depth, block, stride, recurrent, cell, next, count, cellScale, limit, scratch);
}

void clm_lstm_step_columns(int kernel, const float *transposed, int hidden, int width, int depth,
                           const float *block, size_t stride, float *recurrent, float *cell, float *next,
                           int count, float cellScale, float limit, float *scratch) {
    if (kernel == CLM_LSTM_KERNEL_AVX512)
        columns_avx512(transposed, hidden, width, depth, block, stride, recurrent, cell, next, count, cellScale, limit, scratch);
    else
        columns_avx2(transposed, hidden, width, depth, block, stride, recurrent, cell, next, count, cellScale, limit, scratch);
}

void clm_lstm_step(int kernel, const float *packed, int hidden, int width, int depth,
                   const float *block, size_t stride, float *recurrent, float *cell, float *next,
                   int count, float cellScale, float limit, float *scratch) {
    if (kernel == CLM_LSTM_KERNEL_AVX512)
        step_avx512(packed, hidden, width, depth, block, stride, recurrent, cell, next, count, cellScale, limit, scratch);
    else
        step_avx2(packed, hidden, width, depth, block, stride, recurrent, cell, next, count, cellScale, limit, scratch);
}

int clm_lstm_best_kernel(void) {
    __builtin_cpu_init();
    // __builtin_cpu_supports also checks that the operating system saves the wide registers.
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("fma")) return CLM_LSTM_KERNEL_AVX512;
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return CLM_LSTM_KERNEL_AVX2;
    return CLM_LSTM_KERNEL_PORTABLE;
}

#else

// Other architectures have no version here: `InferenceLSTM` runs its portable path, and these
// are never called.
void clm_lstm_step_columns(int kernel, const float *transposed, int hidden, int width, int depth,
                           const float *block, size_t stride, float *recurrent, float *cell, float *next,
                           int count, float cellScale, float limit, float *scratch) {
    __builtin_trap();
}

void clm_lstm_step(int kernel, const float *packed, int hidden, int width, int depth,
                   const float *block, size_t stride, float *recurrent, float *cell, float *next,
                   int count, float cellScale, float limit, float *scratch) {
    __builtin_trap();
}

int clm_lstm_best_kernel(void) { return CLM_LSTM_KERNEL_PORTABLE; }

#endif
