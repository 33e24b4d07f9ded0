#include "CTrainingKernels.h"

#include <string.h>

// The 16-float vectors never cross a call: every helper is inlined into a function built for
// one instruction set, so the ABI note clang gives for them does not apply.
#pragma clang diagnostic ignored "-Wpsabi"
// Every product rounded on its own, as in the Swift loops (baseline x86-64 has no FMA): each
// lane then does the loops' operations in their order, and training gives the same bits with
// either path (ElementwiseKernelTests), so runs stay comparable across machines.
#pragma clang fp contract(off)

typedef float v16f __attribute__((ext_vector_type(16)));
typedef int v16i __attribute__((ext_vector_type(16)));

#define INLINE static inline __attribute__((always_inline, unused))

enum { KERNEL_AVX2 = 1, KERNEL_AVX512 = 2 };

static const v16i laneIndex = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15};

// Lanes [0, n) of the 16 floats at p (the rest zero), and the matching store, which leaves the
// floats past lane n as they were. Whole vectors, so no call to a variable-length memcpy: every
// buffer these kernels touch is a `Tensor`, which keeps 16 floats of slack past its end, and the
// floats past a row's last unit are either rewritten with their own values here or written
// later in the same step.
INLINE v16f load_lanes(const float *p, int n) {
    v16f v;
    memcpy(&v, p, sizeof v);
    return n == 16 ? v : (laneIndex < n ? v : (v16f)0.0f);
}

INLINE void store_lanes(float *p, v16f v, int n) {
    if (n < 16) {
        v16f old;
        memcpy(&old, p, sizeof old);
        v = laneIndex < n ? v : old;
    }
    memcpy(p, &v, sizeof v);
}

// e^x as `Kernels.exp` computes it (same reduction, polynomial and clamp), 16 lanes at once.
INLINE v16f exp16(v16f x) {
    const v16f low = -87.3f, high = 88.3f;
    v16f clamped = x < low ? low : x;
    clamped = clamped > high ? high : clamped;
    v16f shifted = clamped * 1.44269504f + 12582912.0f;
    v16f n = shifted - 12582912.0f;
    v16i nBits = __builtin_bit_cast(v16i, shifted) - 0x4B400000;
    v16f r = (clamped - n * 0.693359375f) - n * -2.1219444e-4f;
    v16f p = 1.98756915e-4f;
    p = p * r + 1.39819995e-3f;
    p = p * r + 8.3334519e-3f;
    p = p * r + 4.16657959e-2f;
    p = p * r + 1.66666655e-1f;
    p = p * r + 5.00000012e-1f;
    v16f y = p * r * r + r + 1.0f;
    return y * __builtin_bit_cast(v16f, (nBits + 127) << 23);
}

INLINE v16f sigmoid16(v16f x) { return 1.0f / (1.0f + exp16(-x)); }

// tanh as `Kernels.tanh`: the quotient of exponentials, and an odd polynomial near zero.
INLINE v16f tanh16(v16f x) {
    v16f magnitude = __builtin_bit_cast(v16f, __builtin_bit_cast(v16i, x) & 0x7FFFFFFF);
    v16f e = exp16(-2.0f * magnitude);
    v16f quotient = (1.0f - e) / (1.0f + e);
    v16f x2 = magnitude * magnitude;
    v16f series = magnitude * (1.0f + x2 * (-1.0f / 3.0f + x2 * (2.0f / 15.0f + x2 * (-17.0f / 315.0f))));
    v16f value = magnitude < 0.0625f ? series : quotient;
    return x < 0.0f ? -value : value;
}

INLINE void forward_cells(
    float *gates, const float *previousCells, const float *previousOutputs, float *cells, float *tanhCells,
    float *outputs, const int32_t *lengths, int t, int batch, int hidden) {
    const size_t width = 4 * (size_t)hidden;
    for (int b = 0; b < batch; b++) {
        float *c = cells + (size_t)b * (size_t)hidden, *tc = tanhCells + (size_t)b * (size_t)hidden;
        float *h = outputs + (size_t)b * (size_t)hidden;
        if (t >= lengths[b]) {
            // Past the end: carry the state (zero before the first step). tanh(c) of an ended
            // sequence is never read; zeroed so the buffer holds no stale values.
            if (t == 0) {
                memset(c, 0, (size_t)hidden * sizeof(float));
                memset(h, 0, (size_t)hidden * sizeof(float));
            } else {
                memcpy(c, previousCells + (size_t)b * (size_t)hidden, (size_t)hidden * sizeof(float));
                memcpy(h, previousOutputs + (size_t)b * (size_t)hidden, (size_t)hidden * sizeof(float));
            }
            memset(tc, 0, (size_t)hidden * sizeof(float));
            continue;
        }
        float *g = gates + (size_t)b * width;
        const float *cp = previousCells ? previousCells + (size_t)b * (size_t)hidden : NULL;
        for (int unit = 0; unit < hidden; unit += 16) {
            int n = hidden - unit < 16 ? hidden - unit : 16;
            v16f i = sigmoid16(load_lanes(g + unit, n));
            v16f f = sigmoid16(load_lanes(g + hidden + unit, n));
            v16f candidate = tanh16(load_lanes(g + 2 * hidden + unit, n));
            v16f o = sigmoid16(load_lanes(g + 3 * hidden + unit, n));
            store_lanes(g + unit, i, n);
            store_lanes(g + hidden + unit, f, n);
            store_lanes(g + 2 * hidden + unit, candidate, n);
            store_lanes(g + 3 * hidden + unit, o, n);
            v16f previous = cp ? load_lanes(cp + unit, n) : (v16f)0.0f;
            v16f cell = f * previous + i * candidate;
            v16f tanhCell = tanh16(cell);
            store_lanes(c + unit, cell, n);
            store_lanes(tc + unit, tanhCell, n);
            store_lanes(h + unit, o * tanhCell, n);
        }
    }
}

INLINE void backward_cells(
    const float *gates, const float *tanhCells, const float *previousCells, const float *outputGradients,
    float *hiddenCarry, float *cellCarry, float *gateGradients, const int32_t *lengths, int t, int batch, int hidden) {
    const size_t width = 4 * (size_t)hidden;
    for (int b = 0; b < batch; b++) {
        float *dh = hiddenCarry + (size_t)b * (size_t)hidden, *dc = cellCarry + (size_t)b * (size_t)hidden;
        const float *above = outputGradients + (size_t)b * (size_t)hidden;
        float *dGates = gateGradients + (size_t)b * width;
        if (t >= lengths[b]) {
            // A carried step passes dh and dc through untouched.
            for (int unit = 0; unit < hidden; unit++) dh[unit] += above[unit];
            memset(dGates, 0, width * sizeof(float));
            continue;
        }
        const float *g = gates + (size_t)b * width, *tc = tanhCells + (size_t)b * (size_t)hidden;
        const float *cp = previousCells ? previousCells + (size_t)b * (size_t)hidden : NULL;
        for (int unit = 0; unit < hidden; unit += 16) {
            int n = hidden - unit < 16 ? hidden - unit : 16;
            v16f i = load_lanes(g + unit, n), f = load_lanes(g + hidden + unit, n);
            v16f candidate = load_lanes(g + 2 * hidden + unit, n), o = load_lanes(g + 3 * hidden + unit, n);
            v16f tanhCell = load_lanes(tc + unit, n);
            v16f hiddenGradient = load_lanes(dh + unit, n) + load_lanes(above + unit, n);
            v16f previous = cp ? load_lanes(cp + unit, n) : (v16f)0.0f;
            v16f cellGradient = load_lanes(dc + unit, n) + hiddenGradient * o * (1.0f - tanhCell * tanhCell);
            store_lanes(dGates + unit, cellGradient * candidate * i * (1.0f - i), n);
            store_lanes(dGates + hidden + unit, cellGradient * previous * f * (1.0f - f), n);
            store_lanes(dGates + 2 * hidden + unit, cellGradient * i * (1.0f - candidate * candidate), n);
            store_lanes(dGates + 3 * hidden + unit, hiddenGradient * tanhCell * o * (1.0f - o), n);
            store_lanes(dc + unit, cellGradient * f, n);
            // Consumed: the recurrent product adds this step's share back.
            store_lanes(dh + unit, (v16f)0.0f, n);
        }
    }
}


#if defined(__x86_64__) || defined(__i386__)

__attribute__((target("avx512f,fma")))
static void forward_avx512(float *gates, const float *previousCells, const float *previousOutputs, float *cells,
                           float *tanhCells, float *outputs, const int32_t *lengths, int t, int batch, int hidden) {
    forward_cells(gates, previousCells, previousOutputs, cells, tanhCells, outputs, lengths, t, batch, hidden);
}

__attribute__((target("avx2,fma")))
static void forward_avx2(float *gates, const float *previousCells, const float *previousOutputs, float *cells,
                         float *tanhCells, float *outputs, const int32_t *lengths, int t, int batch, int hidden) {
    forward_cells(gates, previousCells, previousOutputs, cells, tanhCells, outputs, lengths, t, batch, hidden);
}

__attribute__((target("avx512f,fma")))
static void backward_avx512(const float *gates, const float *tanhCells, const float *previousCells,
                            const float *outputGradients, float *hiddenCarry, float *cellCarry, float *gateGradients,
                            const int32_t *lengths, int t, int batch, int hidden) {
    backward_cells(gates, tanhCells, previousCells, outputGradients, hiddenCarry, cellCarry, gateGradients, lengths, t,
                   batch, hidden);
}

__attribute__((target("avx2,fma")))
static void backward_avx2(const float *gates, const float *tanhCells, const float *previousCells,
                          const float *outputGradients, float *hiddenCarry, float *cellCarry, float *gateGradients,
                          const int32_t *lengths, int t, int batch, int hidden) {
    backward_cells(gates, tanhCells, previousCells, outputGradients, hiddenCarry, cellCarry, gateGradients, lengths, t,
                   batch, hidden);
}

void clm_lstm_train_forward_cells(int kernel, float *gates, const float *previousCells, const float *previousOutputs,
                                  float *cells, float *tanhCells, float *outputs, const int32_t *lengths, int t,
                                  int batch, int hidden) {
    if (kernel == KERNEL_AVX512)
        forward_avx512(gates, previousCells, previousOutputs, cells, tanhCells, outputs, lengths, t, batch, hidden);
    else
        forward_avx2(gates, previousCells, previousOutputs, cells, tanhCells, outputs, lengths, t, batch, hidden);
}

void clm_lstm_train_backward_cells(int kernel, const float *gates, const float *tanhCells, const float *previousCells,
                                   const float *outputGradients, float *hiddenCarry, float *cellCarry,
                                   float *gateGradients, const int32_t *lengths, int t, int batch, int hidden) {
    if (kernel == KERNEL_AVX512)
        backward_avx512(gates, tanhCells, previousCells, outputGradients, hiddenCarry, cellCarry, gateGradients,
                        lengths, t, batch, hidden);
    else
        backward_avx2(gates, tanhCells, previousCells, outputGradients, hiddenCarry, cellCarry, gateGradients,
                      lengths, t, batch, hidden);
}

#else

// Other architectures run the Swift path (`LSTMModel` asks for these only with an x86 kernel).
void clm_lstm_train_forward_cells(int kernel, float *gates, const float *previousCells, const float *previousOutputs,
                                  float *cells, float *tanhCells, float *outputs, const int32_t *lengths, int t,
                                  int batch, int hidden) {
    __builtin_trap();
}

void clm_lstm_train_backward_cells(int kernel, const float *gates, const float *tanhCells, const float *previousCells,
                                   const float *outputGradients, float *hiddenCarry, float *cellCarry,
                                   float *gateGradients, const int32_t *lengths, int t, int batch, int hidden) {
    __builtin_trap();
}

#endif
