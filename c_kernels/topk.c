/* Exact Top-K of |x| by bracketing the k-th largest key with counts.
 *
 * The reference (lr_topk_impl, kernels.c) builds a histogram, gathers the cut bucket's keys and
 * writes the indices, each a scalar pass with a dependency from one key to the next (a histogram
 * bucket, an output position): 18.5 us for 8960 keys on Zen 4. Here the k-th largest key T is
 * found by counting the keys above trial values, a pass that vectorizes (one compare and a
 * popcount per 16 keys): each count moves one end of a bracket (lo, hi] that holds T, the next
 * trial value interpolated from the two counts (the keys' bit patterns spread about evenly over
 * a few octaves), until the bracket holds few keys; those are gathered and sorted. The indices
 * are then taken in one pass (ties at the cut: the lowest indices, as the reference).
 * The same set, in the same ascending order, as lr_topk_impl (tests/test_kernels.py).
 * The passes are vector code of each SIMD level (simd_x86.c, simd_neon.c); the scalar level keeps
 * the reference. Zen 4, one thread, 576 / 1536 / 8960 keys, 60 % kept: 1.26 / 3.15 / 18.2 us ->
 * AVX-512 0.60 / 1.23 / 6.65 us, AVX2 0.51 / 1.12 / 6.81 us; the counts (8-12 a call) are then
 * half the time, bound by reading the keys from L2. */
#include <stdint.h>

#include "kernels.h"

/* ---- the search ---------------------------------------------------------------------------- */

#define FEW 48   /* keys left in the bracket when it is gathered and sorted */

int32_t lr_topk_bracket(const float *x, int32_t n, int32_t k, int32_t *idx, uint32_t *scratch,
                        const lr_topk_ops *ops) {
    if (k >= n) {
        for (int32_t i = 0; i < n; i++) idx[i] = i;
        return n;
    }
    uint32_t *u = scratch, *cand = scratch + n;
    uint32_t lo = 0, hi = ops->keys(x, n, u), t;
    int32_t clo = ops->count_gt(u, n, 0), chi = 0;   /* count_gt(lo) >= k > count_gt(hi) */
    if (clo < k) {
        t = 0;                                        /* fewer than k non-zero keys */
    } else {
        while (hi - lo > 1 && clo - chi > FEW) {
            /* where the k-th key would sit if the bracket's keys were spread evenly, kept a
             * sixteenth of the span from either end so that the bracket shrinks every pass */
            const uint32_t span = hi - lo, guard = span / 16 ? span / 16 : 1;
            uint32_t step = (uint32_t)((double)(clo - k) / (double)(clo - chi) * (double)span);
            step = step < guard ? guard : step > span - guard ? span - guard : step;
            const uint32_t mid = lo + step;
            const int32_t c = ops->count_gt(u, n, mid);
            if (c >= k) lo = mid, clo = c;
            else hi = mid, chi = c;
        }
        if (hi - lo == 1) {
            t = hi;
        } else {   /* the (k - chi)-th largest of the few keys in (lo, hi]: an insertion sort */
            const int32_t m = ops->gather(u, n, lo, hi, cand);
            for (int32_t i = 1; i < m; i++) {
                const uint32_t v = cand[i];
                int32_t j = i;
                for (; j > 0 && cand[j - 1] < v; j--) cand[j] = cand[j - 1];
                cand[j] = v;
            }
            t = cand[k - chi - 1];
        }
    }
    /* t is the k-th largest key: every key above it is taken, and `need` of those equal to it */
    const int32_t above = ops->count_gt(u, n, t), need = k - above;
    const int32_t equal = (t ? ops->count_gt(u, n, t - 1) : n) - above;
    if (need == equal) return ops->take(u, n, t, idx);   /* no tie cut: every key >= t */
    int32_t out = 0, eq_left = need;                       /* a tie at the cut: lowest indices first */
    for (int32_t i = 0; i < n && out < k; i++) {
        const int32_t eq = u[i] == t, take = (u[i] > t) | (eq & (eq_left > 0));
        eq_left -= eq & take;
        idx[out] = i;
        out += take;
    }
    return out;
}
