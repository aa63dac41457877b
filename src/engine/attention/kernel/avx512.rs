//! The kernel's inner loops in AVX-512: the scores' dot products (four keys at a time, four
//! independent chains of fused multiply-adds, each reduced once at its end), the softmax's
//! exponentials, and the weighted sum of the values. The portable loops beside them in
//! `kernel.rs` are the reference these are tested against.

use std::arch::x86_64::*;

use super::LANES;

/// As `scores_portable`, for a query length that is a multiple of [`LANES`].
///
/// # Safety
/// The CPU must have AVX-512 F.
#[inline(always)]
pub(super) unsafe fn scores(query: &[f32], keys: &[f32], scores: &mut [f32]) {
    let dim = query.len();
    debug_assert!(dim.is_multiple_of(LANES) && keys.len() >= scores.len() * dim);
    let (q, k) = (query.as_ptr(), keys.as_ptr());
    // SAFETY: every load reads `dim` floats of the query or of a key `n < scores.len()`,
    // inside the slices (checked above); the caller vouches for the instruction set.
    unsafe {
        let mut n = 0;
        while n + LANES <= scores.len() {
            let mut acc = [_mm512_setzero_ps(); LANES];
            for d in (0..dim).step_by(LANES) {
                let qv = _mm512_loadu_ps(q.add(d));
                for (j, a) in acc.iter_mut().enumerate() {
                    *a = _mm512_fmadd_ps(qv, _mm512_loadu_ps(k.add((n + j) * dim + d)), *a);
                }
            }
            _mm512_storeu_ps(scores.as_mut_ptr().add(n), sums_of(acc));
            n += LANES;
        }
        while n + 4 <= scores.len() {
            let mut acc = [_mm512_setzero_ps(); 4];
            for d in (0..dim).step_by(LANES) {
                let qv = _mm512_loadu_ps(q.add(d));
                for (j, a) in acc.iter_mut().enumerate() {
                    *a = _mm512_fmadd_ps(qv, _mm512_loadu_ps(k.add((n + j) * dim + d)), *a);
                }
            }
            for (j, a) in acc.into_iter().enumerate() {
                scores[n + j] = _mm512_reduce_add_ps(a);
            }
            n += 4;
        }
        for (j, score) in scores.iter_mut().enumerate().skip(n) {
            let mut a = _mm512_setzero_ps();
            for d in (0..dim).step_by(LANES) {
                a = _mm512_fmadd_ps(
                    _mm512_loadu_ps(q.add(d)),
                    _mm512_loadu_ps(k.add(j * dim + d)),
                    a,
                );
            }
            *score = _mm512_reduce_add_ps(a);
        }
    }
}

/// As `exp_minus_portable`, sixteen lanes at a time (the same arithmetic as `exp_one`),
/// the last partial register masked.
///
/// # Safety
/// The CPU must have AVX-512 F.
#[inline(always)]
pub(super) unsafe fn exp_minus(xs: &mut [f32], max: f32) -> f32 {
    // SAFETY: masked loads and stores touch only `xs`; the caller vouches for the
    // instruction set.
    unsafe {
        let (m, mut total) = (_mm512_set1_ps(max), _mm512_setzero_ps());
        for at in (0..xs.len()).step_by(LANES) {
            let left = (xs.len() - at).min(LANES);
            let mask: __mmask16 = ((1u32 << left) - 1) as __mmask16;
            let p = xs.as_mut_ptr().add(at);
            let x = _mm512_max_ps(
                _mm512_sub_ps(_mm512_maskz_loadu_ps(mask, p), m),
                _mm512_set1_ps(-87.0),
            );
            let n = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
                _mm512_mul_ps(x, _mm512_set1_ps(std::f32::consts::LOG2_E)),
            );
            let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(super::LN2_HIGH), x);
            let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(super::LN2_LOW), r);
            let mut e = _mm512_set1_ps(super::EXP_TAYLOR[0]);
            for &c in &super::EXP_TAYLOR[1..] {
                e = _mm512_fmadd_ps(e, r, _mm512_set1_ps(c));
            }
            let scale = _mm512_slli_epi32::<23>(_mm512_add_epi32(
                _mm512_cvtps_epi32(n),
                _mm512_set1_epi32(127),
            ));
            let e = _mm512_maskz_mul_ps(mask, e, _mm512_castsi512_ps(scale));
            _mm512_mask_storeu_ps(p, mask, e);
            total = _mm512_add_ps(total, e);
        }
        _mm512_reduce_add_ps(total)
    }
}

/// The sum of each register's lanes: lane `j` of the result is the sum of `v[j]`'s,
/// by halving sixteen registers together (45 shuffles and adds, where sixteen separate
/// reductions take about 130).
#[inline(always)]
unsafe fn sums_of(v: [__m512; LANES]) -> __m512 {
    // SAFETY: register arithmetic only; the caller vouches for the instruction set.
    unsafe {
        // Pairs: per 128-bit chunk, [a, b, a, b] partial sums of registers a and b.
        let pairs: [__m512; 8] = std::array::from_fn(|i| {
            let (a, b) = (v[2 * i], v[2 * i + 1]);
            _mm512_add_ps(_mm512_unpacklo_ps(a, b), _mm512_unpackhi_ps(a, b))
        });
        // Quads: per 128-bit chunk, [a, b, c, d].
        let quads: [__m512; 4] = std::array::from_fn(|i| {
            let (x, y) = (pairs[2 * i], pairs[2 * i + 1]);
            _mm512_add_ps(
                _mm512_shuffle_ps::<0b01_00_01_00>(x, y),
                _mm512_shuffle_ps::<0b11_10_11_10>(x, y),
            )
        });
        // Then the four chunks of each quad: [q0 (c0+c1), q0 (c2+c3), q1 .., q1 ..].
        let halves: [__m512; 2] = std::array::from_fn(|i| {
            let (x, y) = (quads[2 * i], quads[2 * i + 1]);
            _mm512_add_ps(
                _mm512_shuffle_f32x4::<0b10_00_10_00>(x, y),
                _mm512_shuffle_f32x4::<0b11_01_11_01>(x, y),
            )
        });
        _mm512_add_ps(
            _mm512_shuffle_f32x4::<0b10_00_10_00>(halves[0], halves[1]),
            _mm512_shuffle_f32x4::<0b11_01_11_01>(halves[0], halves[1]),
        )
    }
}

/// As `accumulate_portable`, for a length that is a multiple of [`LANES`]: up to four
/// registers of the sum stay in registers over all the values.
///
/// # Safety
/// The CPU must have AVX-512 F.
#[inline(always)]
pub(super) unsafe fn accumulate(acc: &mut [f32], weights: &[f32], values: &[f32]) {
    let dim = acc.len();
    debug_assert!(dim.is_multiple_of(LANES) && values.len() >= weights.len() * dim);
    let v = values.as_ptr();
    // SAFETY: loads and stores stay inside `acc` and the first `weights.len()` values
    // (checked above); the caller vouches for the instruction set.
    unsafe {
        let a = acc.as_mut_ptr();
        // Four registers at a time, then one: fixed counts the compiler unrolls.
        let mut part = 0;
        while part + 4 * LANES <= dim {
            // Even and odd values into separate sums: eight chains of fused
            // multiply-adds in flight, not four (each waits for its last result).
            let mut even = [0, 1, 2, 3].map(|r| _mm512_loadu_ps(a.add(part + r * LANES)));
            let mut odd = [_mm512_setzero_ps(); 4];
            let pairs = weights.len() / 2;
            for n in 0..pairs {
                let (p0, p1) = (
                    _mm512_set1_ps(weights[2 * n]),
                    _mm512_set1_ps(weights[2 * n + 1]),
                );
                let at = v.add(2 * n * dim + part);
                for r in 0..4 {
                    even[r] = _mm512_fmadd_ps(p0, _mm512_loadu_ps(at.add(r * LANES)), even[r]);
                    odd[r] = _mm512_fmadd_ps(p1, _mm512_loadu_ps(at.add(dim + r * LANES)), odd[r]);
                }
            }
            if weights.len() % 2 == 1 {
                let n = weights.len() - 1;
                let (p, at) = (_mm512_set1_ps(weights[n]), v.add(n * dim + part));
                for (r, s) in even.iter_mut().enumerate() {
                    *s = _mm512_fmadd_ps(p, _mm512_loadu_ps(at.add(r * LANES)), *s);
                }
            }
            for r in 0..4 {
                _mm512_storeu_ps(a.add(part + r * LANES), _mm512_add_ps(even[r], odd[r]));
            }
            part += 4 * LANES;
        }
        for part in (part..dim).step_by(LANES) {
            let mut s = _mm512_loadu_ps(a.add(part));
            for (n, &p) in weights.iter().enumerate() {
                s = _mm512_fmadd_ps(_mm512_set1_ps(p), _mm512_loadu_ps(v.add(n * dim + part)), s);
            }
            _mm512_storeu_ps(a.add(part), s);
        }
    }
}
