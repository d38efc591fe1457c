//! `y (+)= x @ w` with both operands packed, for products with many rows (AVX-512F).
//!
//! The layout of a BLIS-style sgemm: a block of `w` (`KC` rows by `NC` columns, 512
//! KiB) is copied into the micro-kernel's order, 32 columns a panel, and stays in the L2
//! cache; a block of `x` (`MC` rows by `KC`) is copied 12 rows a panel, and each panel
//! (12 KiB) stays in the L1 cache while the micro-kernel runs it against every panel of
//! `w`'s block. The micro-kernel keeps a 12 x 32 tile of `y` in 24 of the 32 zmm
//! registers and reads its operands in order, one 128-byte row of the `w` panel and 12
//! broadcasts a step. With many rows every packed value is used hundreds of times, so
//! the copies cost little; with few rows ([`super::streamed_gemm`]) the copy of `w` is
//! the whole cost and that kernel overlaps it with the arithmetic instead.
//!
//! `w` may have any strides (the tied unembedding reads `W_E` transposed): only the
//! packing reads it.

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

use half::bf16;

/// Rows of a register tile (and of an `x` panel).
const MR: usize = 12;
/// Columns of a register tile (and of a `w` panel): two zmm registers.
const NR: usize = 32;
/// Rows of `w` (columns of `x`) per packed block: a `w` panel of `KC x NR` is 32 KiB,
/// an `x` panel `MR x KC` 12 KiB.
const KC: usize = 256;
/// Columns of `w` per packed f32 block: `KC x NC` values are 512 KiB, half the L2
/// cache (bf16 blocks are twice as wide).
const NC: usize = 512;
/// Rows of `x` per packed block: 120 KiB beside `w`'s block in the L2 cache.
const MC: usize = 10 * MR;

/// Whether [`gemm`] runs on this CPU.
pub(crate) fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// A packing buffer, 64-byte aligned for whole-register loads.
struct Aligned {
    /// Backing store; `start` is its first 64-byte-aligned value.
    buf: Vec<f32>,
    start: usize,
}

impl Aligned {
    fn new(len: usize) -> Self {
        let buf = vec![0.0f32; len + 16];
        let start = buf.as_ptr().align_offset(64).min(16);
        Aligned { buf, start }
    }

    fn ptr(&mut self) -> *mut f32 {
        // The offset stays inside the buffer: `start` <= 16 and the buffer has 16 spare.
        self.buf[self.start..].as_mut_ptr()
    }
}

/// How one element type is packed and multiplied: the loops of [`blocked`] are the
/// same for f32 and bf16, the panels' layout and the micro-kernel are not.
trait Kernel {
    /// The element of `x` and `w`.
    type Elem: Copy;
    /// The element of the packed panels.
    type Packed: Copy;
    /// Columns of `x` (rows of `w`) per packed block; a multiple of 2.
    const KC: usize;
    /// Columns of `w` per packed block (a `KC x NC` block of `w` is 512 KiB, half the
    /// L2 cache). `x` is packed again for each such block, so wider is cheaper there.
    const NC: usize;
    /// The packed length of `kc` steps of one panel row (bf16 pairs round up).
    fn padded(kc: usize) -> usize;
    /// Copies `w[0..kc, 0..nc]` (strides `rs`, `cs`) into panels of `NR` columns.
    ///
    /// # Safety
    /// `w` reaches `(kc - 1) * rs + (nc - 1) * cs`; `dst` holds `padded(kc) * nc.div_ceil(NR) * NR`.
    unsafe fn pack_w(w: *const Self::Elem, rs: usize, cs: usize, kc: usize, nc: usize, dst: *mut Self::Packed);
    /// Copies `x[0..mc, 0..kc]` (row stride `k`) into panels of `MR` rows, panel `i`
    /// from `i * MR * padded(kc)`.
    ///
    /// # Safety
    /// `x` holds `mc` rows of stride `k` from which `kc` values are read; `dst` holds
    /// `mc * padded(kc)`.
    unsafe fn pack_x(x: *const Self::Elem, k: usize, mc: usize, kc: usize, dst: *mut Self::Packed);
    /// `y[0..rows, 0..32] (+)= a @ b` for one `x` panel and one `w` panel.
    ///
    /// # Safety
    /// `a` and `b` are panels packed by this kernel for `kc`; `y` has `rows` rows of
    /// stride `ldy` whose masked columns only this call writes; the CPU has the
    /// kernel's features.
    #[allow(clippy::too_many_arguments)]
    unsafe fn micro(
        rows: usize,
        a: *const Self::Packed,
        b: *const Self::Packed,
        kc: usize,
        y: *mut f32,
        ldy: usize,
        masks: Masks,
        overwrite: bool,
    );
}

/// Lane masks of the two 16-column halves of a tile (`__mmask16` is a `u16`).
pub(crate) type Masks = (u16, u16);

/// `y[:, j0..j1] (+)= x @ w[:, j0..j1]` in f32 through kernel `K`'s panels (see
/// [`gemm`] for the contract, with `y` always f32).
///
/// # Safety
/// As [`gemm`], and the CPU has `K`'s features.
#[allow(clippy::too_many_arguments)]
unsafe fn blocked<K: Kernel>(
    x: *const K::Elem,
    m: usize,
    k: usize,
    w: *const K::Elem,
    rs: usize,
    cs: usize,
    y: *mut f32,
    ldy: usize,
    j0: usize,
    j1: usize,
    accumulate: bool,
) {
    // Both buffers in f32 units; a packed bf16 block takes no more bytes than an f32
    // one (KC is twice as large, the values half the size).
    let mut b_pack = Aligned::new(K::padded(K::KC) * K::NC * size_of::<K::Packed>() / 4);
    let mut a_pack = Aligned::new(MC * K::padded(K::KC) * size_of::<K::Packed>() / 4);
    let (bp, ap) = (b_pack.ptr().cast::<K::Packed>(), a_pack.ptr().cast::<K::Packed>());
    // SAFETY: the caller upholds this function's contract; each block below stays inside
    // x's m x k values, w's k x (j0..j1) view, y's columns j0..j1 of m rows and the two
    // packing buffers (sized for the largest blocks).
    unsafe {
        let mut jc = j0;
        while jc < j1 {
            let nc = K::NC.min(j1 - jc);
            let mut pc = 0;
            while pc < k {
                let kc = K::KC.min(k - pc);
                let kp = K::padded(kc);
                K::pack_w(w.add(pc * rs + jc * cs), rs, cs, kc, nc, bp);
                let overwrite = pc == 0 && !accumulate;
                let mut ic = 0;
                while ic < m {
                    let mc = MC.min(m - ic);
                    K::pack_x(x.add(ic * k + pc), k, mc, kc, ap);
                    let mut ir = 0;
                    while ir < mc {
                        let rows = MR.min(mc - ir);
                        let a = ap.add(ir * kp);
                        let mut jr = 0;
                        while jr < nc {
                            let masks = column_masks(NR.min(nc - jr));
                            let (b, out) = (bp.add(jr * kp), y.add((ic + ir) * ldy + jc + jr));
                            K::micro(rows, a, b, kc, out, ldy, masks, overwrite);
                            jr += NR;
                        }
                        ir += MR;
                    }
                    ic += mc;
                }
                pc += kc;
            }
            jc += nc;
        }
    }
}

/// `y[:, j0..j1] = x @ w[:, j0..j1]`, or `+=` with `accumulate`, for `x` `[m, k]`
/// row-major, `w` `[k, ..]` with row stride `rs` and column stride `cs`, and `y` `[m,
/// ldy]` row-major, `y` and `w` seen from their first column.
///
/// # Safety
/// [`available`] is true; `x` holds `m * k` values; `w` reaches `(k - 1) * rs +
/// (j1 - 1) * cs` values; `y` reaches `(m - 1) * ldy + j1` values, which may be
/// uninitialised unless `accumulate` (then every value of `y[:, j0..j1]` is written
/// before it is read), and no other thread writes those columns.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn gemm(
    x: *const f32,
    m: usize,
    k: usize,
    w: *const f32,
    rs: usize,
    cs: usize,
    y: *mut f32,
    ldy: usize,
    j0: usize,
    j1: usize,
    accumulate: bool,
) {
    // SAFETY: forwarded contract; `available` is true, F32's only feature.
    unsafe { blocked::<F32>(x, m, k, w, rs, cs, y, ldy, j0, j1, accumulate) }
}

/// The f32 panels and micro-kernel (AVX-512F).
struct F32;

impl Kernel for F32 {
    type Elem = f32;
    type Packed = f32;
    const KC: usize = KC;
    const NC: usize = NC;

    fn padded(kc: usize) -> usize {
        kc
    }

    unsafe fn pack_w(w: *const f32, rs: usize, cs: usize, kc: usize, nc: usize, dst: *mut f32) {
        // SAFETY: forwarded contract.
        unsafe { pack_w_f32(w, rs, cs, kc, nc, dst, |v| v) }
    }

    unsafe fn pack_x(x: *const f32, k: usize, mc: usize, kc: usize, dst: *mut f32) {
        // SAFETY: forwarded contract.
        unsafe { pack_x_f32(x, k, mc, kc, dst, |v| v) }
    }

    unsafe fn micro(
        rows: usize,
        a: *const f32,
        b: *const f32,
        kc: usize,
        y: *mut f32,
        ldy: usize,
        masks: Masks,
        overwrite: bool,
    ) {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: forwarded contract (avx512f is F32's feature).
        unsafe {
            micro_f32(rows, a, b, kc, y, ldy, masks, overwrite)
        }
        #[cfg(not(target_arch = "x86_64"))]
        unreachable!(
            "packed_gemm::available() is false off x86-64: {rows} {a:?} {b:?} {kc} {y:?} {ldy} {masks:?} {overwrite}"
        );
    }
}

/// Copies `w[0..kc, 0..nc]` (strides `rs`, `cs`) into f32 panels of `NR` columns, each
/// `kc` rows of `NR` values, zero past column `nc`, each value through `f`.
///
/// # Safety
/// As [`Kernel::pack_w`].
unsafe fn pack_w_f32<E: Copy>(
    w: *const E,
    rs: usize,
    cs: usize,
    kc: usize,
    nc: usize,
    dst: *mut f32,
    f: impl Fn(E) -> f32,
) {
    // SAFETY: every read is w[p * rs + j * cs] with p < kc and j < nc, and every write
    // lies in panel j / NR, row p, of dst's size (see the contract).
    unsafe {
        if cs == 1 {
            // Row by row, each read from start to end (the order the prefetcher
            // follows; panel by panel would jump a whole weight row every 128 bytes).
            for p in 0..kc {
                let src = w.add(p * rs);
                for (panel, j) in (0..nc).step_by(NR).enumerate() {
                    let (cols, row) = (NR.min(nc - j), dst.add(panel * kc * NR + p * NR));
                    for c in 0..cols {
                        *row.add(c) = f(*src.add(j + c));
                    }
                    std::ptr::write_bytes(row.add(cols), 0, NR - cols);
                }
            }
            return;
        }
        for (panel, j) in (0..nc).step_by(NR).enumerate() {
            let cols = NR.min(nc - j);
            let out = dst.add(panel * kc * NR);
            {
                // A transposed weight: read along its rows (w's columns), which are
                // contiguous when rs == 1.
                for c in 0..NR {
                    for p in 0..kc {
                        *out.add(p * NR + c) = if c < cols {
                            f(*w.add(p * rs + (j + c) * cs))
                        } else {
                            0.0
                        };
                    }
                }
            }
        }
    }
}

/// Copies `x[0..mc, 0..kc]` (row stride `k`) into f32 panels of `MR` rows: panel `i`,
/// step `p` holds `x[i * MR + r, p]` for its `r < rows` at `p * rows + r`, where `rows`
/// is the panel's row count (`MR`, or fewer in the last), each value through `f`.
///
/// # Safety
/// As [`Kernel::pack_x`].
unsafe fn pack_x_f32<E: Copy>(x: *const E, k: usize, mc: usize, kc: usize, dst: *mut f32, f: impl Fn(E) -> f32) {
    // SAFETY: reads x[r * k + p] for r < mc, p < kc; writes inside dst's mc * kc.
    unsafe {
        for i0 in (0..mc).step_by(MR) {
            let rows = MR.min(mc - i0);
            let out = dst.add(i0 * kc);
            for r in 0..rows {
                let src = x.add((i0 + r) * k);
                for p in 0..kc {
                    *out.add(p * rows + r) = f(*src.add(p));
                }
            }
        }
    }
}

/// Whether [`gemm_bf16`] runs on this CPU, and whether with the bf16 dot products
/// (`vdpbf16ps`) rather than panels converted to f32.
pub(crate) fn bf16_support() -> Option<bool> {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            let dot =
                std::arch::is_x86_feature_detected!("avx512bf16") && std::arch::is_x86_feature_detected!("avx512bw");
            return Some(dot);
        }
    }
    None
}

/// `y[:, j0..j1] = x @ w[:, j0..j1]` for bf16 `x` `[m, k]` row-major, `w` `[k, ..]`
/// with strides `rs`, `cs` and `y` `[m, ldy]` row-major: products and sums in f32 (as
/// torch's bf16 gemm), rounded to bf16 once at the end. With `dot`, AVX512-BF16's
/// `vdpbf16ps` multiplies pairs of bf16 values straight from the packed panels (two
/// products per lane and instruction, twice the f32 rate); without, the panels are
/// converted to f32 as they are packed and the f32 micro-kernel runs.
///
/// # Safety
/// [`bf16_support`] is `Some(true)` with `dot`, `Some(_)` without; the operands as in
/// [`gemm`] (`y` may be uninitialised); no other thread writes `y[:, j0..j1]`.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn gemm_bf16(
    x: *const bf16,
    m: usize,
    k: usize,
    w: *const bf16,
    rs: usize,
    cs: usize,
    y: *mut bf16,
    ldy: usize,
    (j0, j1): (usize, usize),
    dot: bool,
) {
    // One block of columns at a time in f32, rounded when its whole sum is done.
    let block = if dot { Bf16Dot::NC } else { Bf16ViaF32::NC };
    let mut scratch = vec![0f32; m * block.min(j1 - j0)];
    let mut jc = j0;
    while jc < j1 {
        let nc = block.min(j1 - jc);
        let (wj, acc) = (w.wrapping_add(jc * cs), scratch.as_mut_ptr());
        // SAFETY: the caller's contract; the scratch holds m rows of nc values.
        unsafe {
            if dot {
                blocked::<Bf16Dot>(x, m, k, wj, rs, cs, acc, nc, 0, nc, false);
            } else {
                blocked::<Bf16ViaF32>(x, m, k, wj, rs, cs, acc, nc, 0, nc, false);
            }
            for i in 0..m {
                let (src, dst) = (&scratch[i * nc..(i + 1) * nc], y.add(i * ldy + jc));
                #[cfg(target_arch = "x86_64")]
                if dot {
                    round_to_bf16(src, dst);
                    continue;
                }
                for (c, v) in src.iter().enumerate() {
                    *dst.add(c) = bf16::from_f32(*v);
                }
            }
        }
        jc += nc;
    }
}

/// bf16 panels of pairs and AVX512-BF16's dot-product micro-kernel (with AVX512BW for
/// the packing): a `w` panel holds,
/// for each pair of rows `(2q, 2q + 1)`, the 32 columns' two values side by side (128
/// bytes); an `x` panel the rows' pairs of values, broadcast as one 32-bit lane.
struct Bf16Dot;

impl Kernel for Bf16Dot {
    type Elem = bf16;
    type Packed = bf16;
    const KC: usize = KC;
    const NC: usize = 2 * NC;

    fn padded(kc: usize) -> usize {
        kc.next_multiple_of(2)
    }

    unsafe fn pack_w(w: *const bf16, rs: usize, cs: usize, kc: usize, nc: usize, dst: *mut bf16) {
        let kp = Self::padded(kc);
        // SAFETY: reads w[p * rs + j * cs] for p < kc, j < nc; writes panel j / NR,
        // pair q, column c, half t, inside dst's kp * NR per panel.
        unsafe {
            // The whole panels of a row-major weight, pair of rows by pair of rows, each
            // read from start to end (the order the prefetcher follows; panel by panel
            // would jump a whole weight row every 64 bytes): their contiguous runs
            // interleaved (odd kc: the last pair's second row is zero).
            let whole = if cs == 1 { nc / NR } else { 0 };
            for q in 0..kp / 2 {
                let row0 = w.add(2 * q * rs);
                let row1 = (2 * q + 1 < kc).then(|| row0.add(rs));
                for panel in 0..whole {
                    let o = dst.add(panel * kp * NR + q * NR * 2);
                    #[cfg(target_arch = "x86_64")]
                    interleave_32(row0.add(panel * NR), row1.map(|r| r.add(panel * NR)), o);
                    #[cfg(not(target_arch = "x86_64"))]
                    unreachable!("bf16_support() is None off x86-64: {row0:?} {row1:?} {o:?}");
                }
            }
            // The rest (a last short panel, a transposed weight), value by value.
            for (panel, j) in (0..nc).step_by(NR).enumerate().skip(whole) {
                let cols = NR.min(nc - j);
                let out = dst.add(panel * kp * NR);
                for p in 0..kp {
                    let (q, t) = (p / 2, p % 2);
                    for c in 0..NR {
                        let v = if p < kc && c < cols {
                            *w.add(p * rs + (j + c) * cs)
                        } else {
                            bf16::ZERO
                        };
                        *out.add((q * NR + c) * 2 + t) = v;
                    }
                }
            }
        }
    }

    unsafe fn pack_x(x: *const bf16, k: usize, mc: usize, kc: usize, dst: *mut bf16) {
        let kp = Self::padded(kc);
        // SAFETY: reads x[r * k + p] for r < mc, p < kc; writes inside dst's mc * kp.
        unsafe {
            for i0 in (0..mc).step_by(MR) {
                let rows = MR.min(mc - i0);
                let out = dst.add(i0 * kp);
                for r in 0..rows {
                    let src = x.add((i0 + r) * k);
                    // A pair of values is one 32-bit unit: the panel is the rows'
                    // pairs transposed (read unaligned: k may be odd).
                    for q in 0..kc / 2 {
                        let pair = src.add(2 * q).cast::<u32>().read_unaligned();
                        out.add((q * rows + r) * 2).cast::<u32>().write_unaligned(pair);
                    }
                    if kc % 2 == 1 {
                        let q = kc / 2;
                        *out.add((q * rows + r) * 2) = *src.add(kc - 1);
                        *out.add((q * rows + r) * 2 + 1) = bf16::ZERO;
                    }
                }
            }
        }
    }

    unsafe fn micro(
        rows: usize,
        a: *const bf16,
        b: *const bf16,
        kc: usize,
        y: *mut f32,
        ldy: usize,
        masks: Masks,
        overwrite: bool,
    ) {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: forwarded contract (avx512f, avx512bw and avx512bf16 are Bf16Dot's
        // features).
        unsafe {
            micro_bf16(rows, a, b, Self::padded(kc) / 2, y, ldy, masks, overwrite)
        }
        #[cfg(not(target_arch = "x86_64"))]
        unreachable!("bf16_support() is None off x86-64: {rows} {a:?} {b:?} {kc} {y:?} {ldy} {masks:?} {overwrite}");
    }
}

/// `dst[c] = src[c]` rounded to bf16 (to nearest, ties to even, as `bf16::from_f32`
/// for every finite value), 16 at a time with `vcvtneps2bf16`.
///
/// # Safety
/// `dst` holds `src.len()` values; avx512f and avx512bf16 are available.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn round_to_bf16(src: &[f32], dst: *mut bf16) {
    let whole = src.len() / 16 * 16;
    // SAFETY: see the contract; 16 values read and written at each step below `whole`.
    unsafe {
        for c in (0..whole).step_by(16) {
            let v: __m256i = std::mem::transmute(_mm512_cvtneps_pbh(_mm512_loadu_ps(src.as_ptr().add(c))));
            _mm256_storeu_si256(dst.add(c).cast(), v);
        }
        for (c, v) in src.iter().enumerate().skip(whole) {
            *dst.add(c) = bf16::from_f32(*v);
        }
    }
}

/// `out[2c] = row0[c]`, `out[2c + 1] = row1[c]` (0 without `row1`) for 32 columns `c`:
/// two rows of a weight as the pairs `vdpbf16ps` reads, with two permutes.
///
/// # Safety
/// `row0` (and `row1`) hold 32 values, `out` 64; avx512f and avx512bw are available.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn interleave_32(row0: *const bf16, row1: Option<*const bf16>, out: *mut bf16) {
    const LOW: [u16; 32] = pairs_index(0);
    const HIGH: [u16; 32] = pairs_index(16);
    // SAFETY: see the contract; unaligned loads and stores of 64 bytes each.
    unsafe {
        let a = _mm512_loadu_si512(row0.cast());
        let b = match row1 {
            Some(r) => _mm512_loadu_si512(r.cast()),
            None => _mm512_setzero_si512(),
        };
        let (lo, hi) = (
            _mm512_loadu_si512(LOW.as_ptr().cast()),
            _mm512_loadu_si512(HIGH.as_ptr().cast()),
        );
        _mm512_storeu_si512(out.cast(), _mm512_permutex2var_epi16(a, lo, b));
        _mm512_storeu_si512(out.add(32).cast(), _mm512_permutex2var_epi16(a, hi, b));
    }
}

/// The `vpermt2w` index that takes columns `from..from + 16` of two 32-value rows `a`
/// (indices 0..32) and `b` (32..64) as pairs `a[c], b[c]`.
const fn pairs_index(from: u16) -> [u16; 32] {
    let mut idx = [0u16; 32];
    let mut c = 0;
    while c < 16 {
        idx[2 * c] = from + c as u16;
        idx[2 * c + 1] = 32 + from + c as u16;
        c += 1;
    }
    idx
}

/// bf16 operands converted to f32 as they are packed, for CPUs with AVX-512F but not
/// AVX512-BF16.
struct Bf16ViaF32;

impl Kernel for Bf16ViaF32 {
    type Elem = bf16;
    type Packed = f32;
    const KC: usize = KC;
    const NC: usize = NC;

    fn padded(kc: usize) -> usize {
        kc
    }

    unsafe fn pack_w(w: *const bf16, rs: usize, cs: usize, kc: usize, nc: usize, dst: *mut f32) {
        // SAFETY: forwarded contract.
        unsafe { pack_w_f32(w, rs, cs, kc, nc, dst, bf16::to_f32) }
    }

    unsafe fn pack_x(x: *const bf16, k: usize, mc: usize, kc: usize, dst: *mut f32) {
        // SAFETY: forwarded contract.
        unsafe { pack_x_f32(x, k, mc, kc, dst, bf16::to_f32) }
    }

    unsafe fn micro(
        rows: usize,
        a: *const f32,
        b: *const f32,
        kc: usize,
        y: *mut f32,
        ldy: usize,
        masks: Masks,
        overwrite: bool,
    ) {
        // SAFETY: forwarded contract.
        unsafe { F32::micro(rows, a, b, kc, y, ldy, masks, overwrite) }
    }
}

/// The bf16 dot-product micro-kernel for a tile of `rows` (1..=`MR`) rows over `pairs`
/// pairs of steps.
///
/// # Safety
/// As [`tile_bf16`].
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16")]
#[allow(clippy::too_many_arguments)]
unsafe fn micro_bf16(
    rows: usize,
    a: *const bf16,
    b: *const bf16,
    pairs: usize,
    y: *mut f32,
    ldy: usize,
    masks: Masks,
    overwrite: bool,
) {
    // SAFETY: forwarded contract.
    unsafe { by_rows!(rows, tile_bf16(a, b, pairs, y, ldy, masks, overwrite)) }
}

/// `y[0..R, 0..32] (+)= a @ b` in f32 from bf16 pair panels: `a` `pairs` steps of `R`
/// pairs, `b` `pairs` steps of 32 pairs (64-byte aligned).
///
/// # Safety
/// `a` holds `2 * R * pairs` values, `b` `64 * pairs` (aligned), `y` `R` rows of stride
/// `ldy` whose masked columns only this call writes; avx512f and avx512bf16 are
/// available.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16")]
#[inline]
unsafe fn tile_bf16<const R: usize>(
    a: *const bf16,
    b: *const bf16,
    pairs: usize,
    y: *mut f32,
    ldy: usize,
    (m0, m1): Masks,
    overwrite: bool,
) {
    // SAFETY: see the contract; every offset stays inside a, b and y's R rows. The
    // transmutes reinterpret 512 bits as 32 bf16 values, as vdpbf16ps reads them.
    unsafe {
        let mut acc0 = [_mm512_setzero_ps(); R];
        let mut acc1 = [_mm512_setzero_ps(); R];
        let a = a.cast::<i32>();
        let b = b.cast::<f32>();
        for q in 0..pairs {
            let b0: __m512bh = std::mem::transmute(_mm512_load_ps(b.add(q * NR)));
            let b1: __m512bh = std::mem::transmute(_mm512_load_ps(b.add(q * NR + 16)));
            let aq = a.add(q * R);
            for r in 0..R {
                let av: __m512bh = std::mem::transmute(_mm512_set1_epi32(*aq.add(r)));
                acc0[r] = _mm512_dpbf16_ps(acc0[r], av, b0);
                acc1[r] = _mm512_dpbf16_ps(acc1[r], av, b1);
            }
        }
        store_tile(&acc0, &acc1, y, ldy, (m0, m1), overwrite);
    }
}

/// Calls `$tile::<R>(..)` with `R` = `$rows` (1..=`MR`): each row count compiles its
/// own register tile.
macro_rules! by_rows {
    ($rows:expr, $tile:ident($($arg:expr),*)) => {
        match $rows {
            12 => $tile::<12>($($arg),*),
            11 => $tile::<11>($($arg),*),
            10 => $tile::<10>($($arg),*),
            9 => $tile::<9>($($arg),*),
            8 => $tile::<8>($($arg),*),
            7 => $tile::<7>($($arg),*),
            6 => $tile::<6>($($arg),*),
            5 => $tile::<5>($($arg),*),
            4 => $tile::<4>($($arg),*),
            3 => $tile::<3>($($arg),*),
            2 => $tile::<2>($($arg),*),
            _ => $tile::<1>($($arg),*),
        }
    };
}
use by_rows;

/// Writes a register tile `y[0..R, 0..32] (+)= (acc0 | acc1)`: stores it with
/// `overwrite`, else adds it to what `y` holds; columns past the masks untouched.
///
/// # Safety
/// `y` has `R` rows of stride `ldy` whose masked columns only this call writes;
/// avx512f is available.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn store_tile<const R: usize>(
    acc0: &[__m512; R],
    acc1: &[__m512; R],
    y: *mut f32,
    ldy: usize,
    (m0, m1): Masks,
    overwrite: bool,
) {
    // SAFETY: see the contract.
    unsafe {
        for r in 0..R {
            let out = y.add(r * ldy);
            let (mut a0, mut a1) = (acc0[r], acc1[r]);
            if !overwrite {
                a0 = _mm512_add_ps(a0, _mm512_maskz_loadu_ps(m0, out));
                a1 = _mm512_add_ps(a1, _mm512_maskz_loadu_ps(m1, out.add(16)));
            }
            _mm512_mask_storeu_ps(out, m0, a0);
            _mm512_mask_storeu_ps(out.add(16), m1, a1);
        }
    }
}

/// Lane masks of the two 16-column halves of a tile of `cols` (1..=32) columns (also
/// the streamed kernel's blocks).
pub(crate) fn column_masks(cols: usize) -> Masks {
    let lanes = |n: usize| -> u16 {
        if n >= 16 {
            0xFFFF
        } else {
            ((1u32 << n) - 1) as u16
        }
    };
    (lanes(cols), lanes(cols.saturating_sub(16)))
}

/// The f32 micro-kernel for a tile of `rows` (1..=`MR`) rows.
///
/// # Safety
/// As [`tile`].
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
unsafe fn micro_f32(
    rows: usize,
    a: *const f32,
    b: *const f32,
    kc: usize,
    y: *mut f32,
    ldy: usize,
    masks: Masks,
    overwrite: bool,
) {
    // SAFETY: forwarded contract.
    unsafe { by_rows!(rows, tile(a, b, kc, y, ldy, masks, overwrite)) }
}

/// `y[0..R, 0..32] (+)= a @ b`: `a` a packed `x` panel (`kc` steps of `R` values), `b`
/// a packed `w` panel (`kc` rows of 32, 64-byte aligned); `overwrite` stores the
/// product, otherwise it is added to `y`. Columns past the masks are neither read nor
/// written.
///
/// # Safety
/// `a` holds `R * kc` values, `b` `32 * kc` (aligned), `y` `R` rows of stride `ldy`
/// whose masked columns only this call writes; avx512f is available.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn tile<const R: usize>(
    a: *const f32,
    b: *const f32,
    kc: usize,
    y: *mut f32,
    ldy: usize,
    (m0, m1): (__mmask16, __mmask16),
    overwrite: bool,
) {
    // SAFETY: see the contract; every offset stays inside a, b and y's R rows.
    unsafe {
        let mut acc0 = [_mm512_setzero_ps(); R];
        let mut acc1 = [_mm512_setzero_ps(); R];
        for p in 0..kc {
            let b0 = _mm512_load_ps(b.add(p * NR));
            let b1 = _mm512_load_ps(b.add(p * NR + 16));
            let ap = a.add(p * R);
            for r in 0..R {
                let av = _mm512_set1_ps(*ap.add(r));
                acc0[r] = _mm512_fmadd_ps(av, b0, acc0[r]);
                acc1[r] = _mm512_fmadd_ps(av, b1, acc1[r]);
            }
        }
        store_tile(&acc0, &acc1, y, ldy, (m0, m1), overwrite);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every row remainder of a tile (1..=12), column remainders of a panel and of a
    /// block (`NC`), several `KC` blocks of `k` and a short last one, several `MC`
    /// blocks of rows, a column range inside a wider weight, a transposed weight and
    /// accumulation: against a plain triple loop in f64.
    #[test]
    fn equals_a_plain_product_at_every_edge() {
        if !available() {
            return;
        }
        let cases = [
            (1, 7, 40),
            (7, 300, 33),
            (13, 37, 95),
            (1023, 29, 37),
            (63, 513, 70),
            (65, 256, 600),
            (131, 600, 1100),
        ];
        for (m, k, width) in cases {
            for (j0, j1) in [(0, width), (3, width.min(50)), (width - 1, width)] {
                for transposed in [false, true] {
                    for accumulate in [false, true] {
                        check(m, k, width, j0, j1, transposed, accumulate);
                    }
                }
            }
        }
    }

    fn check(m: usize, k: usize, width: usize, j0: usize, j1: usize, transposed: bool, accumulate: bool) {
        let x: Vec<f32> = (0..m * k).map(|i| ((i * 37 % 101) as f32 - 50.0) / 25.0).collect();
        let w: Vec<f32> = (0..k * width).map(|i| ((i * 53 % 97) as f32 - 48.0) / 24.0).collect();
        // w[p, j] at p * rs + j * cs.
        let (rs, cs) = if transposed { (1, k) } else { (width, 1) };
        let sentinel = -12345.0f32;
        let start = |i: usize, j: usize| if accumulate { ((i + 2 * j) % 7) as f32 } else { sentinel };
        let mut y: Vec<f32> = (0..m * width).map(|v| start(v / width, v % width)).collect();
        // SAFETY: sizes as documented; nothing else touches y.
        unsafe {
            gemm(
                x.as_ptr(),
                m,
                k,
                w.as_ptr(),
                rs,
                cs,
                y.as_mut_ptr(),
                width,
                j0,
                j1,
                accumulate,
            )
        };
        for i in 0..m {
            for j in 0..width {
                let got = y[i * width + j];
                if (j0..j1).contains(&j) {
                    let base = if accumulate { start(i, j) as f64 } else { 0.0 };
                    let want: f64 = base
                        + (0..k)
                            .map(|p| x[i * k + p] as f64 * w[p * rs + j * cs] as f64)
                            .sum::<f64>();
                    assert!(
                        (got as f64 - want).abs() < 1e-4 * (1.0 + want.abs()),
                        "m {m} k {k} cols {j0}..{j1} transposed {transposed} acc {accumulate}: y[{i}, {j}] = {got}, want {want}"
                    );
                } else {
                    assert_eq!(got, start(i, j), "m {m} k {k} cols {j0}..{j1}: y[{i}, {j}] written");
                }
            }
        }
    }
}
