//! The inner loops of the direct convolution, compiled once per instruction
//! set and picked at run time.
//!
//! A stride-1 convolution reads, for output position `p` of a zero-padded
//! image laid out with the padded row width, the input at `p + offset(tap)`
//! where `offset(c, ky, kx) = c·plane + ky·row + kx`. The positions of an
//! output row plus the few "virtual" positions in the padding columns after
//! it are therefore contiguous, and a block of them is one vector load per
//! tap: no im2col matrix is built or packed. The caller discards the virtual
//! columns.
//!
//! The loops are written once over a small vector trait ([`Lanes`]) and
//! instantiated for AVX-512, AVX2 (both with fused multiply-add) and plain
//! scalars; the accumulators of a block stay in registers. Every output is
//! summed over its taps (or positions) in the same sequential order in every
//! variant, so AVX-512 and AVX2 give the same bits; the portable variant
//! rounds each product separately.

use crate::isa::Isa;

/// The caller rounds its virtual positions up to a multiple of this, which
/// every variant's vector width divides. (Blocks of several vectors end in
/// a tail of single vectors, so small images waste fewer positions.)
pub(crate) const POSITION_BLOCK: usize = 16;

/// The vector operations the kernels need (also those of
/// [`crate::pooled`]).
///
/// # Safety
/// Every method runs its type's instructions: the caller's target
/// features must include them. `load` and `store` touch `WIDTH` floats
/// from `p`.
pub(crate) trait Lanes: Copy {
    const WIDTH: usize;
    unsafe fn zero() -> Self;
    unsafe fn splat(v: f32) -> Self;
    unsafe fn load(p: *const f32) -> Self;
    unsafe fn store(self, p: *mut f32);
    /// `self + a·b` (fused where the instruction set has it).
    unsafe fn multiply_add(self, a: Self, b: Self) -> Self;
    /// `self + other`, one rounding.
    unsafe fn add(self, other: Self) -> Self;
    /// `self · other`, one rounding.
    unsafe fn mul(self, other: Self) -> Self;
}

#[cfg(target_arch = "x86_64")]
pub(crate) mod x86 {
    use std::arch::x86_64::*;

    use super::Lanes;

    #[derive(Clone, Copy)]
    pub(crate) struct Avx512(__m512);

    impl Lanes for Avx512 {
        const WIDTH: usize = 16;
        #[inline(always)]
        unsafe fn zero() -> Self {
            Avx512(_mm512_setzero_ps())
        }
        #[inline(always)]
        unsafe fn splat(v: f32) -> Self {
            Avx512(_mm512_set1_ps(v))
        }
        #[inline(always)]
        unsafe fn load(p: *const f32) -> Self {
            Avx512(_mm512_loadu_ps(p))
        }
        #[inline(always)]
        unsafe fn store(self, p: *mut f32) {
            _mm512_storeu_ps(p, self.0)
        }
        #[inline(always)]
        unsafe fn multiply_add(self, a: Self, b: Self) -> Self {
            Avx512(_mm512_fmadd_ps(a.0, b.0, self.0))
        }
        #[inline(always)]
        unsafe fn add(self, other: Self) -> Self {
            Avx512(_mm512_add_ps(self.0, other.0))
        }
        #[inline(always)]
        unsafe fn mul(self, other: Self) -> Self {
            Avx512(_mm512_mul_ps(self.0, other.0))
        }
    }

    /// The first `n` of sixteen lanes (all of them from 16 on).
    pub(crate) fn lanes_below(n: usize) -> __mmask16 {
        if n >= 16 {
            0xffff
        } else {
            (1u16 << n) - 1
        }
    }

    /// See [`super::pool_row`]: sixteen windows per step, the even and odd
    /// columns of both rows split apart with permutes.
    ///
    /// # Safety
    /// The CPU must run the features enabled here: callers hold the `Isa` token
    /// that detection makes only where it does.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn pool_row_avx512(
        top: &[f32],
        bottom: &[f32],
        row_width: u32,
        first: u32,
        out: &mut [f32],
        arg: &mut [u32],
    ) {
        let even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
        let odd = _mm512_add_epi32(even, _mm512_set1_epi32(1));
        let lane = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
        let windows = out.len();
        for start in (0..windows).step_by(16) {
            let n = (windows - start).min(16);
            let (low, high) = (lanes_below(2 * n), lanes_below((2 * n).saturating_sub(16)));
            let split = |row: &[f32]| {
                let p = row.as_ptr().add(2 * start);
                let (lo, hi) = (_mm512_maskz_loadu_ps(low, p), _mm512_maskz_loadu_ps(high, p.add(16)));
                (_mm512_permutex2var_ps(lo, even, hi), _mm512_permutex2var_ps(lo, odd, hi))
            };
            let ((a, b), (c, d)) = (split(top), split(bottom));
            let largest = _mm512_max_ps(_mm512_max_ps(a, b), _mm512_max_ps(c, d));
            // The first corner equal to the maximum: later corners first, so
            // earlier ones overwrite them.
            let mut best = _mm512_set1_epi32(3);
            best = _mm512_mask_mov_epi32(best, _mm512_cmp_ps_mask::<_CMP_EQ_OQ>(c, largest), _mm512_set1_epi32(2));
            best = _mm512_mask_mov_epi32(best, _mm512_cmp_ps_mask::<_CMP_EQ_OQ>(b, largest), _mm512_set1_epi32(1));
            best = _mm512_mask_mov_epi32(best, _mm512_cmp_ps_mask::<_CMP_EQ_OQ>(a, largest), _mm512_setzero_si512());
            let mut value = largest;
            // The last NaN corner where there is one.
            let nan = |v: __m512| _mm512_cmp_ps_mask::<_CMP_UNORD_Q>(v, v);
            let (nan_a, nan_b, nan_c, nan_d) = (nan(a), nan(b), nan(c), nan(d));
            value = _mm512_mask_mov_ps(value, nan_a, a);
            best = _mm512_mask_mov_epi32(best, nan_a, _mm512_setzero_si512());
            for (mask, corner, index) in [(nan_b, b, 1), (nan_c, c, 2), (nan_d, d, 3)] {
                value = _mm512_mask_mov_ps(value, mask, corner);
                best = _mm512_mask_mov_epi32(best, mask, _mm512_set1_epi32(index));
            }
            let column = _mm512_add_epi32(_mm512_set1_epi32((first + 2 * start as u32) as i32), _mm512_add_epi32(lane, lane));
            let dx = _mm512_and_si512(best, _mm512_set1_epi32(1));
            let lower_row = _mm512_cmpge_epi32_mask(best, _mm512_set1_epi32(2));
            let dy = _mm512_maskz_mov_epi32(lower_row, _mm512_set1_epi32(row_width as i32));
            let index = _mm512_add_epi32(column, _mm512_add_epi32(dx, dy));
            let store = lanes_below(n);
            _mm512_mask_storeu_ps(out.as_mut_ptr().add(start), store, value);
            _mm512_mask_storeu_epi32(arg.as_mut_ptr().add(start).cast(), store, index);
        }
    }

    /// See [`super::unpool_row`]: sixteen windows per step, the corners of
    /// both rows interleaved back with permutes.
    ///
    /// # Safety
    /// The CPU must run the features enabled here: callers hold the `Isa` token
    /// that detection makes only where it does.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn unpool_row_avx512(
        dout: &[f32],
        activated: Option<&[f32]>,
        arg: &[u32],
        (first, row_width): (u32, u32),
        top: &mut [f32],
        bottom: &mut [f32],
    ) {
        let lane = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
        let low = _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
        let high = _mm512_add_epi32(low, _mm512_set1_epi32(8));
        let windows = dout.len();
        for start in (0..windows).step_by(16) {
            let n = (windows - start).min(16);
            let load = lanes_below(n);
            // `+ 0` as in the scatter it replaces, which adds to zero: a
            // -0 gradient becomes +0.
            let d = _mm512_add_ps(_mm512_maskz_loadu_ps(load, dout.as_ptr().add(start)), _mm512_setzero_ps());
            let kept = match activated {
                Some(y) => {
                    _mm512_cmp_ps_mask::<_CMP_GT_OQ>(_mm512_maskz_loadu_ps(load, y.as_ptr().add(start)), _mm512_setzero_ps())
                }
                None => load,
            };
            let window = _mm512_add_epi32(_mm512_set1_epi32((first + 2 * start as u32) as i32), _mm512_add_epi32(lane, lane));
            let corner = _mm512_sub_epi32(_mm512_maskz_loadu_epi32(load, arg.as_ptr().add(start).cast()), window);
            let at =
                |offset: u32| _mm512_maskz_mov_ps(kept & _mm512_cmpeq_epi32_mask(corner, _mm512_set1_epi32(offset as i32)), d);
            let (stores_low, stores_high) = (lanes_below(2 * n), lanes_below((2 * n).saturating_sub(16)));
            for (row, even, odd) in [(&mut *top, at(0), at(1)), (&mut *bottom, at(row_width), at(row_width + 1))] {
                let p = row.as_mut_ptr().add(2 * start);
                _mm512_mask_storeu_ps(p, stores_low, _mm512_permutex2var_ps(even, low, odd));
                _mm512_mask_storeu_ps(p.add(16), stores_high, _mm512_permutex2var_ps(even, high, odd));
            }
        }
    }

    /// The mask of AVX's masked loads that reads the first `n` of eight
    /// floats (all of them from 8 on).
    ///
    /// # Safety
    /// AVX2 must run on this CPU: these helpers inline into AVX2 kernels,
    /// whose callers hold the `Isa` token that proves it.
    #[inline(always)]
    pub(crate) unsafe fn floats_below(n: usize) -> __m256i {
        _mm256_cmpgt_epi32(_mm256_set1_epi32(n.min(8) as i32), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7))
    }

    /// The even (`ODD = false`) or odd lanes of `lo` then of `hi`: the
    /// in-lane shuffle leaves them as `lo lo hi hi | lo lo hi hi` by 64-bit
    /// quarters, and a cross-lane permute puts the quarters in order.
    ///
    /// # Safety
    /// As for [`floats_below`].
    #[inline(always)]
    pub(crate) unsafe fn deinterleave<const ODD: bool>(lo: __m256, hi: __m256) -> __m256 {
        let shuffled = if ODD { _mm256_shuffle_ps::<0b11_01_11_01>(lo, hi) } else { _mm256_shuffle_ps::<0b10_00_10_00>(lo, hi) };
        _mm256_castpd_ps(_mm256_permute4x64_pd::<0b11_01_10_00>(_mm256_castps_pd(shuffled)))
    }

    /// The inverse of [`deinterleave`]: `(e0 o0 e1 o1 ... e3 o3)` and
    /// `(e4 o4 ... e7 o7)`.
    ///
    /// # Safety
    /// As for [`floats_below`].
    #[inline(always)]
    pub(crate) unsafe fn interleave(even: __m256, odd: __m256) -> (__m256, __m256) {
        // (e0 o0 e1 o1 | e4 o4 e5 o5) and (e2 o2 e3 o3 | e6 o6 e7 o7).
        let (low, high) = (_mm256_unpacklo_ps(even, odd), _mm256_unpackhi_ps(even, odd));
        (_mm256_permute2f128_ps::<0x20>(low, high), _mm256_permute2f128_ps::<0x31>(low, high))
    }

    /// Stores the first `n` lanes of `v` at `at`: whole when `n` is 8 or
    /// more; otherwise as two overlapping stores of 4, 2 or 1 lanes, the
    /// second of the last lanes brought down by a permute. AVX2's masked
    /// store is slow on some AMD cores, and a copy through memory called
    /// `memcpy` for every tail: on 14-wide planes, whose rows of 7 tiles
    /// are all tails, that was 4% of a training step.
    ///
    /// # Safety
    /// `at..at + min(n, 8)` must be writable; AVX2 as for [`floats_below`].
    #[inline(always)]
    pub(crate) unsafe fn store_first(at: *mut f32, n: usize, v: __m256) {
        // The lanes `n - width..n` in the low lanes.
        let last = |width: usize| {
            let first = (n - width) as i32;
            let index = _mm256_add_epi32(_mm256_set1_epi32(first), _mm256_setr_epi32(0, 1, 2, 3, 0, 0, 0, 0));
            _mm256_castps256_ps128(_mm256_permutevar8x32_ps(v, index))
        };
        let low = _mm256_castps256_ps128(v);
        match n {
            0 => {}
            1 => _mm_store_ss(at, low),
            2 | 3 => {
                _mm_storel_epi64(at.cast(), _mm_castps_si128(low));
                _mm_storel_epi64(at.add(n - 2).cast(), _mm_castps_si128(last(2)));
            }
            4..=7 => {
                _mm_storeu_ps(at, low);
                _mm_storeu_ps(at.add(n - 4), last(4));
            }
            _ => _mm256_storeu_ps(at, v),
        }
    }

    /// See [`super::pool_row`]: eight windows per step, the even and odd
    /// columns of both rows split apart with shuffles; the same selection
    /// as the AVX-512 variant.
    ///
    /// # Safety
    /// The CPU must run the features enabled here: callers hold the `Isa` token
    /// that detection makes only where it does; the caller checks the lengths.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn pool_row_avx2(
        top: &[f32],
        bottom: &[f32],
        row_width: u32,
        first: u32,
        out: &mut [f32],
        arg: &mut [u32],
    ) {
        let lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
        let windows = out.len();
        for start in (0..windows).step_by(8) {
            let n = (windows - start).min(8);
            let (low, high) = (floats_below(2 * n), floats_below((2 * n).saturating_sub(8)));
            let split = |row: &[f32]| {
                // Masked-off lanes are not read: the second pointer may
                // run past the row (wrapping, never dereferenced there).
                let p = row.as_ptr().add(2 * start);
                let (lo, hi) = (_mm256_maskload_ps(p, low), _mm256_maskload_ps(p.wrapping_add(8), high));
                (deinterleave::<false>(lo, hi), deinterleave::<true>(lo, hi))
            };
            let ((a, b), (c, d)) = (split(top), split(bottom));
            let largest = _mm256_max_ps(_mm256_max_ps(a, b), _mm256_max_ps(c, d));
            let pick = |best: __m256i, mask: __m256, index: i32| {
                _mm256_blendv_epi8(best, _mm256_set1_epi32(index), _mm256_castps_si256(mask))
            };
            // The first corner equal to the maximum: later corners first, so
            // earlier ones overwrite them.
            let mut best = _mm256_set1_epi32(3);
            for (corner, index) in [(c, 2), (b, 1), (a, 0)] {
                best = pick(best, _mm256_cmp_ps::<_CMP_EQ_OQ>(corner, largest), index);
            }
            // The last NaN corner where there is one.
            let mut value = largest;
            for (corner, index) in [(a, 0), (b, 1), (c, 2), (d, 3)] {
                let nan = _mm256_cmp_ps::<_CMP_UNORD_Q>(corner, corner);
                value = _mm256_blendv_ps(value, corner, nan);
                best = pick(best, nan, index);
            }
            let column = _mm256_add_epi32(_mm256_set1_epi32((first + 2 * start as u32) as i32), _mm256_add_epi32(lane, lane));
            let dx = _mm256_and_si256(best, _mm256_set1_epi32(1));
            let dy = _mm256_and_si256(_mm256_cmpgt_epi32(best, _mm256_set1_epi32(1)), _mm256_set1_epi32(row_width as i32));
            let index = _mm256_add_epi32(column, _mm256_add_epi32(dx, dy));
            store_first(out.as_mut_ptr().add(start), n, value);
            store_first(arg.as_mut_ptr().add(start).cast(), n, _mm256_castsi256_ps(index));
        }
    }

    /// See [`super::unpool_row`]: eight windows per step, the corners of
    /// both rows interleaved back with unpacks; the same values as the
    /// AVX-512 variant.
    ///
    /// # Safety
    /// The CPU must run the features enabled here: callers hold the `Isa` token
    /// that detection makes only where it does; the caller checks the lengths.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn unpool_row_avx2(
        dout: &[f32],
        activated: Option<&[f32]>,
        arg: &[u32],
        (first, row_width): (u32, u32),
        top: &mut [f32],
        bottom: &mut [f32],
    ) {
        let lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
        let windows = dout.len();
        for start in (0..windows).step_by(8) {
            let n = (windows - start).min(8);
            let load = floats_below(n);
            // `+ 0` as in the scatter it replaces, which adds to zero: a
            // -0 gradient becomes +0.
            let d = _mm256_add_ps(_mm256_maskload_ps(dout.as_ptr().add(start), load), _mm256_setzero_ps());
            let kept = match activated {
                Some(y) => _mm256_cmp_ps::<_CMP_GT_OQ>(_mm256_maskload_ps(y.as_ptr().add(start), load), _mm256_setzero_ps()),
                None => _mm256_castsi256_ps(load),
            };
            let window = _mm256_add_epi32(_mm256_set1_epi32((first + 2 * start as u32) as i32), _mm256_add_epi32(lane, lane));
            let corner = _mm256_sub_epi32(_mm256_maskload_epi32(arg.as_ptr().add(start).cast(), load), window);
            let at = |offset: u32| {
                let here = _mm256_castsi256_ps(_mm256_cmpeq_epi32(corner, _mm256_set1_epi32(offset as i32)));
                _mm256_and_ps(d, _mm256_and_ps(kept, here))
            };
            for (row, even, odd) in [(&mut *top, at(0), at(1)), (&mut *bottom, at(row_width), at(row_width + 1))] {
                let p = row.as_mut_ptr().add(2 * start);
                let (first_half, second_half) = interleave(even, odd);
                store_first(p, 2 * n, first_half);
                if n > 4 {
                    store_first(p.add(8), 2 * n - 8, second_half);
                }
            }
        }
    }

    /// See [`super::relu_gradient`]: sixteen values per step, masked to
    /// the row.
    ///
    /// # Safety
    /// The CPU must run the features enabled here: callers hold the `Isa` token
    /// that detection makes only where it does.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn relu_gradient_avx512(gradient: &mut [f32], output: &[f32]) {
        let n = gradient.len();
        for start in (0..n).step_by(16) {
            let lanes = lanes_below(n - start);
            let d = _mm512_maskz_loadu_ps(lanes, gradient.as_ptr().add(start));
            let y = _mm512_maskz_loadu_ps(lanes, output.as_ptr().add(start));
            let kept = _mm512_cmp_ps_mask::<_CMP_GT_OQ>(y, _mm512_setzero_ps());
            _mm512_mask_storeu_ps(gradient.as_mut_ptr().add(start), lanes, _mm512_maskz_mov_ps(kept, d));
        }
    }

    /// See [`super::transpose`]: blocks of eight rows by eight columns
    /// transposed in registers (unpack, shuffle, then swap the 128-bit
    /// halves); the columns after the last whole eight and the rows after
    /// the last whole eight are copied one at a time.
    ///
    /// # Safety
    /// The CPU must run the features enabled here: callers hold the `Isa` token
    /// that detection makes only where it does. The caller checks that the
    /// rows lie within `src` and their transpose within `dst`.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn transpose_avx2(
        src: &[f32],
        (channels, plane): (usize, usize),
        width: usize,
        dst: &mut [f32],
        stride: usize,
    ) {
        let (src, out) = (src.as_ptr(), dst.as_mut_ptr());
        let (whole_channels, whole_width) = (channels / 8 * 8, width / 8 * 8);
        for first in (0..whole_channels).step_by(8) {
            for x in (0..whole_width).step_by(8) {
                let mut rows = [_mm256_setzero_ps(); 8];
                for (i, row) in rows.iter_mut().enumerate() {
                    *row = _mm256_loadu_ps(src.add((first + i) * plane + x));
                }
                for (i, column) in transpose8(rows).into_iter().enumerate() {
                    _mm256_storeu_ps(out.add((x + i) * stride + first), column);
                }
            }
            for x in whole_width..width {
                for i in 0..8 {
                    *out.add(x * stride + first + i) = *src.add((first + i) * plane + x);
                }
            }
        }
        for c in whole_channels..channels {
            for x in 0..width {
                *out.add(x * stride + c) = *src.add(c * plane + x);
            }
        }
    }

    /// The columns of the 8x8 matrix whose rows are `r`. Written out
    /// without closures, so that every intrinsic is inlined into the AVX2
    /// caller.
    #[inline(always)]
    unsafe fn transpose8(r: [__m256; 8]) -> [__m256; 8] {
        // Pairs of rows interleaved: for rows a, b, lo = (a0 b0 a1 b1 | a4 b4 a5 b5)
        // and hi = (a2 b2 a3 b3 | a6 b6 a7 b7).
        let (t0, t1) = (_mm256_unpacklo_ps(r[0], r[1]), _mm256_unpackhi_ps(r[0], r[1]));
        let (t2, t3) = (_mm256_unpacklo_ps(r[2], r[3]), _mm256_unpackhi_ps(r[2], r[3]));
        let (t4, t5) = (_mm256_unpacklo_ps(r[4], r[5]), _mm256_unpackhi_ps(r[4], r[5]));
        let (t6, t7) = (_mm256_unpacklo_ps(r[6], r[7]), _mm256_unpackhi_ps(r[6], r[7]));
        // Element j of four rows in the low half, element j + 4 in the high
        // half: u0..u3 for rows 0-3, u4..u7 for rows 4-7.
        let (u0, u1) = (_mm256_shuffle_ps::<0x44>(t0, t2), _mm256_shuffle_ps::<0xEE>(t0, t2));
        let (u2, u3) = (_mm256_shuffle_ps::<0x44>(t1, t3), _mm256_shuffle_ps::<0xEE>(t1, t3));
        let (u4, u5) = (_mm256_shuffle_ps::<0x44>(t4, t6), _mm256_shuffle_ps::<0xEE>(t4, t6));
        let (u6, u7) = (_mm256_shuffle_ps::<0x44>(t5, t7), _mm256_shuffle_ps::<0xEE>(t5, t7));
        [
            _mm256_permute2f128_ps::<0x20>(u0, u4),
            _mm256_permute2f128_ps::<0x20>(u1, u5),
            _mm256_permute2f128_ps::<0x20>(u2, u6),
            _mm256_permute2f128_ps::<0x20>(u3, u7),
            _mm256_permute2f128_ps::<0x31>(u0, u4),
            _mm256_permute2f128_ps::<0x31>(u1, u5),
            _mm256_permute2f128_ps::<0x31>(u2, u6),
            _mm256_permute2f128_ps::<0x31>(u3, u7),
        ]
    }

    #[derive(Clone, Copy)]
    pub(crate) struct Avx2(__m256);

    impl Lanes for Avx2 {
        const WIDTH: usize = 8;
        #[inline(always)]
        unsafe fn zero() -> Self {
            Avx2(_mm256_setzero_ps())
        }
        #[inline(always)]
        unsafe fn splat(v: f32) -> Self {
            Avx2(_mm256_set1_ps(v))
        }
        #[inline(always)]
        unsafe fn load(p: *const f32) -> Self {
            Avx2(_mm256_loadu_ps(p))
        }
        #[inline(always)]
        unsafe fn store(self, p: *mut f32) {
            _mm256_storeu_ps(p, self.0)
        }
        #[inline(always)]
        unsafe fn multiply_add(self, a: Self, b: Self) -> Self {
            Avx2(_mm256_fmadd_ps(a.0, b.0, self.0))
        }
        #[inline(always)]
        unsafe fn add(self, other: Self) -> Self {
            Avx2(_mm256_add_ps(self.0, other.0))
        }
        #[inline(always)]
        unsafe fn mul(self, other: Self) -> Self {
            Avx2(_mm256_mul_ps(self.0, other.0))
        }
    }
}

/// One float: the portable fallback, multiply and add rounded separately.
#[derive(Clone, Copy)]
struct Scalar(f32);

impl Lanes for Scalar {
    const WIDTH: usize = 1;
    #[inline(always)]
    unsafe fn zero() -> Self {
        Scalar(0.0)
    }
    #[inline(always)]
    unsafe fn splat(v: f32) -> Self {
        Scalar(v)
    }
    #[inline(always)]
    unsafe fn load(p: *const f32) -> Self {
        Scalar(*p)
    }
    #[inline(always)]
    unsafe fn store(self, p: *mut f32) {
        *p = self.0
    }
    #[inline(always)]
    unsafe fn multiply_add(self, a: Self, b: Self) -> Self {
        Scalar(a.0 * b.0 + self.0)
    }
    #[inline(always)]
    unsafe fn add(self, other: Self) -> Self {
        Scalar(self.0 + other.0)
    }
    #[inline(always)]
    unsafe fn mul(self, other: Self) -> Self {
        Scalar(self.0 * other.0)
    }
}

/// Eight floats as a plain array: the portable variant of code whose
/// vector variants are eight or sixteen lanes wide, which the compiler
/// vectorises for the target it builds (SSE, NEON). Multiply and add
/// round separately.
#[derive(Clone, Copy)]
pub(crate) struct Portable8([f32; 8]);

impl Portable8 {
    #[inline(always)]
    fn map(self, other: Self, f: impl Fn(f32, f32) -> f32) -> Self {
        Portable8(std::array::from_fn(|i| f(self.0[i], other.0[i])))
    }
}

impl Lanes for Portable8 {
    const WIDTH: usize = 8;
    #[inline(always)]
    unsafe fn zero() -> Self {
        Portable8([0.0; 8])
    }
    #[inline(always)]
    unsafe fn splat(v: f32) -> Self {
        Portable8([v; 8])
    }
    #[inline(always)]
    unsafe fn load(p: *const f32) -> Self {
        Portable8(p.cast::<[f32; 8]>().read_unaligned())
    }
    #[inline(always)]
    unsafe fn store(self, p: *mut f32) {
        p.cast::<[f32; 8]>().write_unaligned(self.0)
    }
    #[inline(always)]
    unsafe fn multiply_add(self, a: Self, b: Self) -> Self {
        self.add(a.mul(b))
    }
    #[inline(always)]
    unsafe fn add(self, other: Self) -> Self {
        self.map(other, |a, b| a + b)
    }
    #[inline(always)]
    unsafe fn mul(self, other: Self) -> Self {
        self.map(other, |a, b| a * b)
    }
}

/// For OCB channels and the NV vectors of positions from `starts[v]` on:
/// `out[j][l] = Σ_t weights[t·OCB + j] · input[offsets[t] + l]`, stored at
/// `out + j·stride + l`.
///
/// # Safety
/// `input` must hold `max(offsets) + max(starts) + WIDTH` floats, `weights`
/// `offsets.len()·OCB`, and `out` rows of `max(starts) + WIDTH` at each
/// `j·stride`.
#[inline(always)]
unsafe fn tap_block<V: Lanes, const OCB: usize, const NV: usize>(
    input: *const f32,
    offsets: &[usize],
    weights: *const f32,
    out: *mut f32,
    (stride, starts): (usize, [usize; NV]),
) {
    let mut acc = [[V::zero(); NV]; OCB];
    for (t, &offset) in offsets.iter().enumerate() {
        let x: [V; NV] = std::array::from_fn(|v| V::load(input.add(offset + starts[v])));
        let w = weights.add(t * OCB);
        for (j, row) in acc.iter_mut().enumerate() {
            let wj = V::splat(*w.add(j));
            for (a, &xv) in row.iter_mut().zip(&x) {
                *a = a.multiply_add(wj, xv);
            }
        }
    }
    for (j, row) in acc.iter().enumerate() {
        for (a, &start) in row.iter().zip(&starts) {
            a.store(out.add(j * stride + start));
        }
    }
}

/// Consecutive vectors from position 0 on.
fn consecutive<V: Lanes, const NV: usize>() -> [usize; NV] {
    std::array::from_fn(|v| v * V::WIDTH)
}

/// The products of the first `positions` positions, each output channel's
/// row `stride` floats after the one before.
///
/// # Safety
/// `V`'s instructions must run on this CPU (the caller's target features);
/// the bounds are asserted before any load or store.
#[inline(always)]
unsafe fn tap_products_generic<V: Lanes, const OCB: usize, const NV: usize>(
    padded: &[f32],
    offsets: &[usize],
    packed: &[f32],
    (positions, stride): (usize, usize),
    out: &mut [f32],
) {
    let p_block = NV * V::WIDTH;
    let taps = offsets.len();
    let blocks = packed.len() / (taps * OCB).max(1);
    assert_eq!(positions % V::WIDTH, 0, "positions must be whole vectors");
    assert!(positions <= stride, "tap product rows overlap");
    assert_eq!(packed.len(), blocks * taps * OCB, "packed weights are not whole channel blocks");
    assert!(offsets.iter().all(|&o| o + positions <= padded.len()), "padded input too short for its taps");
    assert!(out.len() >= blocks * OCB * stride, "tap product output too short");
    for block in 0..blocks {
        let weights = packed.as_ptr().add(block * taps * OCB);
        let whole_blocks = positions / p_block * p_block;
        for p in (0..whole_blocks).step_by(p_block) {
            let dst = out.as_mut_ptr().add(block * OCB * stride + p);
            tap_block::<V, OCB, NV>(padded.as_ptr().add(p), offsets, weights, dst, (stride, consecutive::<V, NV>()));
        }
        // The positions after the last whole block, a vector at a time (the
        // same sums in the same order).
        for p in (whole_blocks..positions).step_by(V::WIDTH) {
            let dst = out.as_mut_ptr().add(block * OCB * stride + p);
            tap_block::<V, OCB, 1>(padded.as_ptr().add(p), offsets, weights, dst, (stride, [0]));
        }
    }
}

/// The products at the real positions of `rows` alone (each row a whole
/// number of vectors), each output channel's row `stride` floats after the
/// one before: the virtual positions between rows (a padded layout's
/// columns past the output) are not computed, and their outputs are left
/// as they were. Blocks of NV vectors run across rows; the last vectors
/// go in blocks of two and one (with NV = 3, a last single vector and the
/// block before it as two blocks of two: one vector alone has too few
/// accumulators to keep the multiply-adds busy).
///
/// # Safety
/// `V`'s instructions must run on this CPU (the caller's target features);
/// the bounds are asserted before any load or store.
#[inline(always)]
unsafe fn tap_products_rows_generic<V: Lanes, const OCB: usize, const NV: usize>(
    padded: &[f32],
    offsets: &[usize],
    packed: &[f32],
    (rows, stride): (Rows, usize),
    out: &mut [f32],
) {
    let taps = offsets.len();
    let blocks = packed.len() / (taps * OCB).max(1);
    assert_eq!(rows.width % V::WIDTH, 0, "rows must be whole vectors");
    assert!(rows.width <= rows.pitch && rows.end() <= stride, "tap product rows overlap");
    assert_eq!(packed.len(), blocks * taps * OCB, "packed weights are not whole channel blocks");
    assert!(offsets.iter().all(|&o| o + rows.end() <= padded.len()), "padded input too short for its taps");
    assert!(out.len() >= blocks * OCB * stride, "tap product output too short");
    let per_row = rows.width / V::WIDTH;
    let vectors = rows.count * per_row;
    let start = |i: usize| (i / per_row) * rows.pitch + (i % per_row) * V::WIDTH;
    let whole = if NV == 3 && vectors % 3 == 1 && vectors >= 4 { vectors - 4 } else { vectors / NV * NV };
    for block in 0..blocks {
        let (input, weights) = (padded.as_ptr(), packed.as_ptr().add(block * taps * OCB));
        let dst = out.as_mut_ptr().add(block * OCB * stride);
        for i in (0..whole).step_by(NV) {
            tap_block::<V, OCB, NV>(input, offsets, weights, dst, (stride, std::array::from_fn(|v| start(i + v))));
        }
        let mut i = whole;
        while i + 2 <= vectors {
            tap_block::<V, OCB, 2>(input, offsets, weights, dst, (stride, [start(i), start(i + 1)]));
            i += 2;
        }
        if i < vectors {
            tap_block::<V, OCB, 1>(input, offsets, weights, dst, (stride, [start(i)]));
        }
    }
}

/// [`tap_products`] at the real positions of `rows` alone (see
/// [`tap_products_rows_generic`]), for the vector variants: `rows.width`
/// must be a multiple of [`Isa::vector_width`]. The portable variant
/// computes every position.
pub(crate) fn tap_products_rows(
    isa: Isa,
    block: usize,
    padded: &[f32],
    offsets: &[usize],
    packed: &[f32],
    (rows, positions): (Rows, usize),
    out: &mut [f32],
) {
    // SAFETY: the generic kernels assert their bounds before reading; a
    // vector variant runs only under its `Isa` variant, whose token only
    // detection of its features makes.
    unsafe {
        match isa {
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512(_) => tap_products_rows_avx512(block, padded, offsets, packed, (rows, positions), out),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2(_) => tap_products_rows_avx2(padded, offsets, packed, (rows, positions), out),
            Isa::Portable => tap_products(isa, block, padded, offsets, packed, positions, out),
        }
    }
}

/// The blocks of [`tap_products`]'s AVX-512 variants: 12 channels by one
/// vector, 8 by three (two for fewer than six vectors), 4 by two.
///
/// # Safety
/// The CPU must run the features enabled here: callers hold the `Isa` token
/// that detection makes only where it does.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,fma")]
unsafe fn tap_products_rows_avx512(
    block: usize,
    padded: &[f32],
    offsets: &[usize],
    packed: &[f32],
    layout: (Rows, usize),
    out: &mut [f32],
) {
    let vectors = layout.0.count * layout.0.width / 16;
    match block {
        12 => tap_products_rows_generic::<x86::Avx512, 12, 1>(padded, offsets, packed, layout, out),
        8 if vectors >= 6 => tap_products_rows_generic::<x86::Avx512, 8, 3>(padded, offsets, packed, layout, out),
        8 => tap_products_rows_generic::<x86::Avx512, 8, 2>(padded, offsets, packed, layout, out),
        _ => tap_products_rows_generic::<x86::Avx512, 4, 2>(padded, offsets, packed, layout, out),
    }
}

/// # Safety
/// The CPU must run the features enabled here: callers hold the `Isa` token
/// that detection makes only where it does.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn tap_products_rows_avx2(padded: &[f32], offsets: &[usize], packed: &[f32], layout: (Rows, usize), out: &mut [f32]) {
    tap_products_rows_generic::<x86::Avx2, 4, 2>(padded, offsets, packed, layout, out)
}

/// The products of `T` positions from `first` on, with the block's `WIDTH`
/// output channels in the lanes and a position per accumulator: for a few
/// positions past the last whole vector, instead of a vector of positions
/// that are mostly padding. The sums are those of [`tap_block`], in the
/// same order.
///
/// # Safety
/// As for [`tap_products_generic`], with `first + T <= stride`.
#[inline(always)]
unsafe fn tail_products<V: Lanes, const T: usize>(
    padded: &[f32],
    offsets: &[usize],
    packed: &[f32],
    (first, stride): (usize, usize),
    out: &mut [f32],
) {
    let taps = offsets.len();
    let blocks = packed.len() / (taps * V::WIDTH).max(1);
    assert!(first + T <= stride && packed.len() == blocks * taps * V::WIDTH, "tail products layout");
    assert!(offsets.iter().all(|&o| o + first + T <= padded.len()), "padded input too short for its taps");
    assert!(out.len() >= blocks * V::WIDTH * stride, "tap product output too short");
    let mut lanes = [0.0f32; 16];
    for block in 0..blocks {
        let weights = packed.as_ptr().add(block * taps * V::WIDTH);
        let mut acc = [V::zero(); T];
        for (t, &offset) in offsets.iter().enumerate() {
            let w = V::load(weights.add(t * V::WIDTH));
            for (k, a) in acc.iter_mut().enumerate() {
                *a = a.multiply_add(w, V::splat(*padded.get_unchecked(offset + first + k)));
            }
        }
        for (k, a) in acc.iter().enumerate() {
            a.store(lanes.as_mut_ptr());
            for (j, &value) in lanes[..V::WIDTH].iter().enumerate() {
                out[(block * V::WIDTH + j) * stride + first + k] = value;
            }
        }
    }
}

/// [`tap_products`] where only the first `real` of the `positions` are
/// read later (the rest are padding tiles, zero in `padded`): with AVX-512
/// and blocks of 8 channels, up to four positions past the last whole
/// vector are summed by [`tail_products`] (49 tiles of a 14-wide plane
/// cost 48 and one instead of 64); with AVX2 the products end with the
/// 8-position vector that holds the last real one (49 tiles cost 56). The
/// outputs at the other padding positions are left as they were.
pub(crate) fn tap_products_of_real(
    isa: Isa,
    block: usize,
    padded: &[f32],
    offsets: &[usize],
    packed: &[f32],
    (real, positions): (usize, usize),
    out: &mut [f32],
) {
    assert!(real <= positions, "more real positions than positions");
    let whole = real / 16 * 16;
    #[cfg(target_arch = "x86_64")]
    if matches!(isa, Isa::Avx512(_)) && block == 8 && (1..=4).contains(&(real - whole)) {
        // SAFETY: `Isa::Avx512` holds a token that only detection of AVX-512F
        // and FMA makes; the kernels check their bounds before reading or
        // writing.
        unsafe { tap_products_avx512_with_tail(padded, offsets, packed, (whole, real - whole, positions), out) };
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if let Isa::Avx2(_) = isa {
        // SAFETY: `Isa::Avx2` holds a token that only detection of AVX2 and
        // FMA makes; the kernel checks its bounds before reading or writing.
        unsafe { tap_products_avx2(padded, offsets, packed, (real.next_multiple_of(8), positions), out) };
        return;
    }
    tap_products(isa, block, padded, offsets, packed, positions, out)
}

/// # Safety
/// The CPU must run the features enabled here: callers hold the `Isa` token
/// that detection makes only where it does.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,fma")]
unsafe fn tap_products_avx512_with_tail(
    padded: &[f32],
    offsets: &[usize],
    packed: &[f32],
    (whole, tail, stride): (usize, usize, usize),
    out: &mut [f32],
) {
    if whole.is_multiple_of(48) {
        tap_products_generic::<x86::Avx512, 8, 3>(padded, offsets, packed, (whole, stride), out);
    } else {
        tap_products_generic::<x86::Avx512, 8, 2>(padded, offsets, packed, (whole, stride), out);
    }
    let layout = (whole, stride);
    match tail {
        1 => tail_products::<x86::Avx2, 1>(padded, offsets, packed, layout, out),
        2 => tail_products::<x86::Avx2, 2>(padded, offsets, packed, layout, out),
        3 => tail_products::<x86::Avx2, 3>(padded, offsets, packed, layout, out),
        _ => tail_products::<x86::Avx2, 4>(padded, offsets, packed, layout, out),
    }
}

/// For one padded image: `out[o·positions + p] = Σ_t w[o][t] · padded[offsets[t] + p]`
/// for every output channel `o` of the packed weights (`[block][tap][channel
/// in block]`, `block` channels from [`Isa::channel_block`]) and every
/// position `p < positions`.
pub(crate) fn tap_products(
    isa: Isa,
    block: usize,
    padded: &[f32],
    offsets: &[usize],
    packed: &[f32],
    positions: usize,
    out: &mut [f32],
) {
    // SAFETY: the generic kernel asserts its bounds before reading; a vector
    // variant runs only under its `Isa` variant, whose token only detection of
    // its features makes.
    unsafe {
        match isa {
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512(_) if block == 12 => tap_products_avx512_tall(padded, offsets, packed, positions, out),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512(_) if block == 8 && positions >= 96 => tap_products_avx512_wide(padded, offsets, packed, positions, out),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512(_) if block == 8 => tap_products_avx512(padded, offsets, packed, positions, out),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512(_) => tap_products_avx512_narrow(padded, offsets, packed, positions, out),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2(_) => tap_products_avx2(padded, offsets, packed, (positions, positions), out),
            Isa::Portable => tap_products_generic::<Scalar, 4, 16>(padded, offsets, packed, (positions, positions), out),
        }
    }
}

/// Blocks of 48 positions: 24 accumulators in registers need fewer loads
/// per multiply-add than 16 do (measured about 15% faster on a direct
/// convolution's few hundred positions per image). Where an image has only
/// a few vectors of positions (the 64 Winograd tiles of a 14- or 16-wide
/// plane), 48 and a tail of 16 are slower than two blocks of 32.
///
/// # Safety
/// The CPU must run the features enabled here: callers hold the `Isa` token
/// that detection makes only where it does.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,fma")]
unsafe fn tap_products_avx512_wide(padded: &[f32], offsets: &[usize], packed: &[f32], positions: usize, out: &mut [f32]) {
    tap_products_generic::<x86::Avx512, 8, 3>(padded, offsets, packed, (positions, positions), out)
}

/// # Safety
/// The CPU must run the features enabled here: callers hold the `Isa` token
/// that detection makes only where it does.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,fma")]
unsafe fn tap_products_avx512_tall(padded: &[f32], offsets: &[usize], packed: &[f32], positions: usize, out: &mut [f32]) {
    tap_products_generic::<x86::Avx512, 12, 1>(padded, offsets, packed, (positions, positions), out)
}

/// # Safety
/// The CPU must run the features enabled here: callers hold the `Isa` token
/// that detection makes only where it does.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,fma")]
unsafe fn tap_products_avx512(padded: &[f32], offsets: &[usize], packed: &[f32], positions: usize, out: &mut [f32]) {
    tap_products_generic::<x86::Avx512, 8, 2>(padded, offsets, packed, (positions, positions), out)
}

/// # Safety
/// The CPU must run the features enabled here: callers hold the `Isa` token
/// that detection makes only where it does.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,fma")]
unsafe fn tap_products_avx512_narrow(padded: &[f32], offsets: &[usize], packed: &[f32], positions: usize, out: &mut [f32]) {
    tap_products_generic::<x86::Avx512, 4, 2>(padded, offsets, packed, (positions, positions), out)
}

/// The first `computed` positions of each output channel's row of `stride`.
///
/// # Safety
/// The CPU must run the features enabled here: callers hold the `Isa` token
/// that detection makes only where it does.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn tap_products_avx2(
    padded: &[f32],
    offsets: &[usize],
    packed: &[f32],
    (computed, stride): (usize, usize),
    out: &mut [f32],
) {
    tap_products_generic::<x86::Avx2, 4, 2>(padded, offsets, packed, (computed, stride), out)
}

/// Positions that are `count` rows of `width` real ones, each row `pitch`
/// positions after the one before; the positions between rows are virtual
/// (a padded layout's columns past the output's width).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Rows {
    pub count: usize,
    pub pitch: usize,
    pub width: usize,
}

impl Rows {
    /// `positions` real positions one after the other.
    pub(crate) fn flat(positions: usize) -> Rows {
        Rows { count: 1, pitch: positions, width: positions }
    }

    /// One past the last real position.
    fn end(&self) -> usize {
        if self.count == 0 {
            return 0;
        }
        (self.count - 1) * self.pitch + self.width
    }

    /// The pieces [`weight_gradient`] sums in one pass over the taps, each
    /// as its first position and its rows: about [`GRADIENT_CHUNK`]
    /// positions, whole rows where there are several.
    fn pieces(self) -> Vec<(usize, Rows)> {
        if self.count == 1 {
            let piece = |first: usize| (first, Rows::flat(GRADIENT_CHUNK.min(self.width - first)));
            return (0..self.width).step_by(GRADIENT_CHUNK).map(piece).collect();
        }
        let per_piece = (GRADIENT_CHUNK / self.pitch.max(1)).max(1);
        let piece = |row: usize| (row * self.pitch, Rows { count: per_piece.min(self.count - row), ..self });
        (0..self.count).step_by(per_piece).map(piece).collect()
    }
}

/// `acc[i][v] += Σ_t padded[offsets[i] + t] · gradient[t·stride + v·WIDTH ..]`
/// over the real positions t of `rows` (in order), the accumulators loaded
/// from `out` when `load` is set and zero otherwise.
///
/// # Safety
/// `padded` must hold `max(offsets) + rows.end()` floats and `gradient`
/// `(rows.end() - 1)·stride + NV·WIDTH`.
#[inline(always)]
unsafe fn position_block<V: Lanes, const KB: usize, const NV: usize>(
    padded: *const f32,
    offsets: &[usize; KB],
    gradient: *const f32,
    stride: usize,
    rows: Rows,
    out: *mut f32,
    out_stride: usize,
    taps: usize,
    load: bool,
) {
    let mut acc = [[V::zero(); NV]; KB];
    if load {
        for (i, row) in acc.iter_mut().enumerate().take(taps) {
            for (v, a) in row.iter_mut().enumerate() {
                *a = V::load(out.add(i * out_stride + v * V::WIDTH));
            }
        }
    }
    for first in (0..rows.count).map(|r| r * rows.pitch) {
        for t in first..first + rows.width {
            let g: [V; NV] = std::array::from_fn(|v| V::load(gradient.add(t * stride + v * V::WIDTH)));
            for (i, row) in acc.iter_mut().enumerate() {
                let x = V::splat(*padded.add(offsets[i] + t));
                for (a, &gv) in row.iter_mut().zip(&g) {
                    *a = a.multiply_add(x, gv);
                }
            }
        }
    }
    for (i, row) in acc.iter().enumerate().take(taps) {
        for (v, a) in row.iter().enumerate() {
            a.store(out.add(i * out_stride + v * V::WIDTH));
        }
    }
}

/// # Safety
/// `V`'s instructions must run on this CPU (the caller's target features);
/// the bounds are asserted before any load or store.
#[inline(always)]
unsafe fn weight_gradient_generic<V: Lanes, const KB: usize, const NV: usize>(
    padded: &[f32],
    offsets: &[usize],
    gradient: &[f32],
    (positions, rows): (usize, Rows),
    out: &mut [f32],
    accumulate: bool,
) {
    let width = NV * V::WIDTH;
    let channels = gradient.len() / positions.max(1);
    assert_eq!(gradient.len(), positions * channels, "gradient is not positions x channels");
    assert!(rows.end() <= positions && rows.width <= rows.pitch, "rows outside the gradient's positions");
    assert_eq!(channels % width, 0, "gradient channels must be whole vectors");
    assert_eq!(out.len(), offsets.len() * channels, "weight gradient is not taps x channels");
    assert!(offsets.iter().all(|&o| o + rows.end() <= padded.len()), "padded input too short for its taps");
    // Positions in pieces whose slice of the gradient stays in the L1 cache
    // while every tap reads it. Each sum still runs over the positions in
    // order (the accumulators are stored between pieces and loaded again).
    for (piece, (start, rows)) in rows.pieces().into_iter().enumerate() {
        for first in (0..offsets.len()).step_by(KB) {
            // Taps past the end read offset 0 and are not stored.
            let block: [usize; KB] = std::array::from_fn(|i| offsets.get(first + i).copied().unwrap_or(0));
            let taps = (offsets.len() - first).min(KB);
            for c in (0..channels).step_by(width) {
                position_block::<V, KB, NV>(
                    padded.as_ptr().add(start),
                    &block,
                    gradient.as_ptr().add(start * channels + c),
                    channels,
                    rows,
                    out.as_mut_ptr().add(first * channels + c),
                    channels,
                    taps,
                    accumulate || piece > 0,
                );
            }
        }
    }
}

/// Positions per pass of [`weight_gradient`] over the taps.
const GRADIENT_CHUNK: usize = 128;

/// For one padded image and its output gradient transposed to
/// `[position][channel]` (channels padded to
/// [`Isa::gradient_channel_width`], zero at virtual positions), adds
/// `Σ_p padded[offsets[t] + p] · gradient[p][o]` to `out[t][o]` when
/// `accumulate` is set, or stores it there (the old contents unread).
/// `positions` is the gradient's number of positions and, of those, the
/// rows of real ones the sums run over (the virtual positions between
/// them, whose gradient is zero, add nothing and are skipped).
pub(crate) fn weight_gradient(
    isa: Isa,
    padded: &[f32],
    offsets: &[usize],
    gradient: &[f32],
    positions: (usize, Rows),
    out: &mut [f32],
    accumulate: bool,
) {
    let channels = gradient.len() / positions.0.max(1);
    // SAFETY: the generic kernel asserts its bounds before reading; a vector
    // variant runs only under its `Isa` variant, whose token only detection of
    // its features makes.
    unsafe {
        match (isa, isa.gradient_channel_width(channels)) {
            #[cfg(target_arch = "x86_64")]
            (Isa::Avx512(_), 32) => weight_gradient_avx512_32(padded, offsets, gradient, positions, out, accumulate),
            #[cfg(target_arch = "x86_64")]
            (Isa::Avx512(_), _) => weight_gradient_avx512_16(padded, offsets, gradient, positions, out, accumulate),
            #[cfg(target_arch = "x86_64")]
            (Isa::Avx2(_), _) => weight_gradient_avx2(padded, offsets, gradient, positions, out, accumulate),
            _ => weight_gradient_generic::<Scalar, 4, 16>(padded, offsets, gradient, positions, out, accumulate),
        }
    }
}

/// # Safety
/// The CPU must run the features enabled here: callers hold the `Isa` token
/// that detection makes only where it does.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,fma")]
unsafe fn weight_gradient_avx512_32(
    padded: &[f32],
    offsets: &[usize],
    gradient: &[f32],
    positions: (usize, Rows),
    out: &mut [f32],
    accumulate: bool,
) {
    weight_gradient_generic::<x86::Avx512, 8, 2>(padded, offsets, gradient, positions, out, accumulate)
}

/// # Safety
/// The CPU must run the features enabled here: callers hold the `Isa` token
/// that detection makes only where it does.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,fma")]
unsafe fn weight_gradient_avx512_16(
    padded: &[f32],
    offsets: &[usize],
    gradient: &[f32],
    positions: (usize, Rows),
    out: &mut [f32],
    accumulate: bool,
) {
    weight_gradient_generic::<x86::Avx512, 12, 1>(padded, offsets, gradient, positions, out, accumulate)
}

/// # Safety
/// The CPU must run the features enabled here: callers hold the `Isa` token
/// that detection makes only where it does.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn weight_gradient_avx2(
    padded: &[f32],
    offsets: &[usize],
    gradient: &[f32],
    positions: (usize, Rows),
    out: &mut [f32],
    accumulate: bool,
) {
    weight_gradient_generic::<x86::Avx2, 4, 2>(padded, offsets, gradient, positions, out, accumulate)
}

/// The inverse of [`pool_row`] for the gradient: each window's gradient
/// `dout[ox]` to the corner `arg[ox]` names (in `top[2ox..2ox+2]` or
/// `bottom[2ox..2ox+2]`, as `first + 2ox + dx + dy·row_width`) and zero to
/// the other three, and zero to all four where `activated` (the pooled
/// output of a ReLU) is not positive. Returns false, having written nothing,
/// where the caller must do the row itself.
pub(crate) fn unpool_row(
    isa: Isa,
    dout: &[f32],
    activated: Option<&[f32]>,
    arg: &[u32],
    (first, row_width): (u32, u32),
    top: &mut [f32],
    bottom: &mut [f32],
) -> bool {
    let windows = dout.len();
    assert!(
        arg.len() == windows
            && activated.is_none_or(|y| y.len() == windows)
            && top.len() >= 2 * windows
            && bottom.len() >= 2 * windows,
        "unpool row lengths"
    );
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `Isa::Avx512` holds a token that only detection of AVX-512F
        // and FMA makes; the lengths are checked above and every load and store
        // is masked to them.
        Isa::Avx512(_) => unsafe {
            x86::unpool_row_avx512(dout, activated, arg, (first, row_width), top, bottom);
            true
        },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as in `pool_row`.
        Isa::Avx2(_) => unsafe {
            x86::unpool_row_avx2(dout, activated, arg, (first, row_width), top, bottom);
            true
        },
        _ => false,
    }
}

/// The gradient through a ReLU whose output was `output`: each value of
/// `gradient` kept where the output is positive, +0 elsewhere (where the
/// output is NaN too).
pub(crate) fn relu_gradient(isa: Isa, gradient: &mut [f32], output: &[f32]) {
    assert_eq!(gradient.len(), output.len(), "ReLU gradient and output lengths");
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `Isa::Avx512` holds a token that only detection of AVX-512F
        // and FMA makes; every load and store is masked to the lengths checked
        // above.
        Isa::Avx512(_) => unsafe { x86::relu_gradient_avx512(gradient, output) },
        // A mask on the bits, not a select: the compiler turned the select
        // into a branch, which random signs mispredict.
        _ => {
            for (d, &y) in gradient.iter_mut().zip(output) {
                let keep = ((y > 0.0) as u32).wrapping_neg();
                *d = f32::from_bits(d.to_bits() & keep);
            }
        }
    }
}

/// One output row of a 2x2 max-pool with the vector unit, where the CPU has
/// one: for each window `ox`, the maximum of `top[2ox..2ox+2]` and
/// `bottom[2ox..2ox+2]` into `out[ox]` and the winner's index into
/// `arg[ox]` as `first + 2ox + dx + dy·row_width`, with the tie and NaN
/// rules of the scalar `window_max`. Returns false, having written nothing,
/// where the caller must pool the row itself.
pub(crate) fn pool_row(
    isa: Isa,
    top: &[f32],
    bottom: &[f32],
    row_width: usize,
    first: u32,
    out: &mut [f32],
    arg: &mut [u32],
) -> bool {
    let windows = out.len();
    assert!(top.len() >= 2 * windows && bottom.len() >= 2 * windows && arg.len() == windows, "pool row lengths");
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `Isa::Avx512` holds a token that only detection of AVX-512F
        // and FMA makes; the lengths are checked above and every load and store
        // is masked to them.
        Isa::Avx512(_) => unsafe {
            x86::pool_row_avx512(top, bottom, row_width as u32, first, out, arg);
            true
        },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `Isa::Avx2` holds a token that only detection of AVX2 and
        // FMA makes; the lengths are checked above, every load is masked to
        // them and every store is cut to them.
        Isa::Avx2(_) => unsafe {
            x86::pool_row_avx2(top, bottom, row_width as u32, first, out, arg);
            true
        },
        _ => false,
    }
}

/// A gradient laid out `[channel][y][x]` (`channels` planes of `height x
/// width`) as `[y·row + x][channel]`: `positions` rows of `stride` floats,
/// zero where the gradient has no entry. The buffer is filled with zeros
/// only when it is new (or of another length): the gradient's own entries
/// are all that is written, so a buffer reused for the next image of the
/// same layer needs no clearing.
pub(crate) fn transpose_planes(
    isa: Isa,
    dy: &[f32],
    (channels, height, width): (usize, usize, usize),
    row: usize,
    positions: usize,
    stride: usize,
    out: &mut Vec<f32>,
) {
    assert_eq!(dy.len(), channels * height * width, "gradient is not channels x height x width");
    assert!(width <= row && height * row <= positions && channels <= stride, "transposed gradient layout too small");
    if out.len() != positions * stride {
        out.clear();
        out.resize(positions * stride, 0.0);
    }
    let plane = height * width;
    for y in 0..height {
        let dst = &mut out[y * row * stride..];
        transpose(isa, &dy[y * width..], (channels, plane), width, (dst, stride));
    }
}

/// `dst[x·dst_stride + r] = src[r·src_stride + x]` for the `rows` rows
/// and the first `columns` columns of `src` (e.g. a row of every channel
/// plane into pixels of consecutive channels, or back): in 8x8 register
/// blocks on AVX2 and AVX-512, one float at a time elsewhere.
pub(crate) fn transpose(
    isa: Isa,
    src: &[f32],
    (rows, src_stride): (usize, usize),
    columns: usize,
    (dst, dst_stride): (&mut [f32], usize),
) {
    if rows == 0 || columns == 0 {
        return;
    }
    assert!(columns <= src_stride && (rows - 1) * src_stride + columns <= src.len(), "rows to transpose outside their buffer");
    assert!(rows <= dst_stride && (columns - 1) * dst_stride + rows <= dst.len(), "transposed rows outside their buffer");
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `Isa::Avx512` and `Isa::Avx2` hold tokens that only
        // detection of AVX2 (with AVX-512F, or alone) and FMA makes; the bounds
        // are checked above. AVX-512 has no faster transpose: its gathers
        // measured 6% of a training step of the simple model on 3x32x32 (AMD
        // Zen 4), the AVX2 register blocks about half that.
        Isa::Avx512(_) | Isa::Avx2(_) => unsafe { x86::transpose_avx2(src, (rows, src_stride), columns, dst, dst_stride) },
        _ => {
            for x in 0..columns {
                for (r, d) in dst[x * dst_stride..][..rows].iter_mut().enumerate() {
                    *d = src[r * src_stride + x];
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "x86_64")]
    use std::arch::x86_64::*;

    use super::{Rows, GRADIENT_CHUNK};
    #[cfg(target_arch = "x86_64")]
    use crate::isa::{Isa, TestedIsas};

    /// The weight gradient's pieces cover every real position once, in
    /// order, and no virtual one: a flat run in chunks, rows in whole rows.
    #[test]
    fn gradient_pieces_cover_the_real_positions_in_order() {
        let positions = |rows: Rows| -> Vec<usize> {
            rows.pieces()
                .into_iter()
                .flat_map(|(first, piece)| {
                    (0..piece.count).flat_map(move |r| (0..piece.width).map(move |x| first + r * piece.pitch + x))
                })
                .collect()
        };
        assert_eq!(positions(Rows::flat(300)), (0..300).collect::<Vec<_>>());
        assert_eq!(Rows::flat(300).pieces().len(), 300usize.div_ceil(GRADIENT_CHUNK));
        let rows = Rows { count: 16, pitch: 18, width: 16 };
        let expected: Vec<usize> = (0..16).flat_map(|r| (0..16).map(move |x| r * 18 + x)).collect();
        assert_eq!(positions(rows), expected);
        assert!(rows.pieces().iter().all(|(_, piece)| piece.count * piece.pitch <= GRADIENT_CHUNK));
        let wide = Rows { count: 3, pitch: 200, width: 190 };
        assert_eq!(positions(wide).len(), 3 * 190);
        assert_eq!(wide.end(), 2 * 200 + 190);
    }

    /// Every tail length stores exactly the first `n` lanes, in order, and
    /// leaves the floats after them as they were.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn a_partial_store_writes_the_first_lanes_only() {
        let isas = TestedIsas::new("microkernels: partial AVX2 stores");
        isas.each(|isa| {
            if matches!(isa, Isa::Portable) {
                return;
            }
            for n in 0..=9 {
                let mut out = [-1.0f32; 12];
                let lanes = [1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0];
                // SAFETY: `isa` is a vector variant, whose token only detection
                // of AVX2 makes; `out` has room for eight floats.
                unsafe { super::x86::store_first(out.as_mut_ptr(), n, _mm256_loadu_ps(lanes.as_ptr())) };
                let stored = n.min(8);
                assert_eq!(out[..stored], lanes[..stored], "{n} lanes");
                assert!(out[stored..].iter().all(|&v| v == -1.0), "{n} lanes: wrote past them: {out:?}");
            }
        });
    }
}
