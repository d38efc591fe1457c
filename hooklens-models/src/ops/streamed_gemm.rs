//! `y = x @ w` for a row-major weight `w`, with the weight's stream from memory
//! overlapped with the arithmetic.
//!
//! A general sgemm (matrixmultiply's) copies ("packs") a large block of `w` into its
//! kernel's order, then multiplies it. With 64 rows each weight is used only 64 times,
//! so the copy is where the weights stream in from memory: perf put a third of a
//! 1 x 64 forward's product time in packing, during which the FMA units idle, and the
//! multiplying after it, during which memory idles. This kernel takes `w` 32 columns
//! by 128 rows at a time (16 KiB, copied into an aligned buffer that stays in the L1
//! cache) and, while it multiplies every row of `x` by that chunk, asks for the next
//! chunk's cache lines: they arrive during the arithmetic. Rows of `x` go in bands of
//! about 1 MiB, which stay in the L2 cache while all the columns go over them. With
//! more rows the weights are used more often and the overlap matters less: at 2048
//! rows this is as fast as sgemm. AVX-512F only; elsewhere sgemm does the product.

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

#[cfg(target_arch = "x86_64")]
use super::packed_gemm::column_masks;

/// Rows of `x` per register tile: 8 rows x 32 columns take 16 of the 32 zmm
/// registers as accumulators.
const TILE_ROWS: usize = 8;
/// Columns per block: two zmm registers.
const BLOCK_COLS: usize = 32;

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

/// `y[:, j0..j1] = x @ w[:, j0..j1]` for `x` `[m, k]` row-major, `w` `[k, ldw]`
/// row-major and `y` `[m, ldy]` row-major, both seen from their first column.
///
/// # Safety
/// [`available`] is true; `x` holds `m * k` values; `w` reaches `(k - 1) * ldw + j1`
/// values; `y` reaches `(m - 1) * ldy + j1`, which may be uninitialised (every value
/// of `y[:, j0..j1]` is written before it is read), and no other thread writes those
/// columns.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn gemm(
    x: *const f32,
    m: usize,
    k: usize,
    w: *const f32,
    ldw: usize,
    y: *mut f32,
    ldy: usize,
    j0: usize,
    j1: usize,
) {
    // SAFETY: the caller upholds this function's contract (above): every pointer offset
    // below stays inside x, w (prefetches excepted: they never fault) and y's columns
    // j0..j1, and avx512f is available for the intrinsics.
    unsafe {
        // Rows of x in bands of at most about 1 MiB, which stay in the L2 cache while
        // every block of columns goes over them; w is read once per band.
        let band = (X_BAND_BYTES / (k.max(1) * 4)).max(TILE_ROWS) / TILE_ROWS * TILE_ROWS;
        let mut chunk = Chunk([0.0; CHUNK_ROWS * BLOCK_COLS]);
        let buf = chunk.0.as_mut_ptr();
        let mut i0 = 0;
        while i0 < m {
            // From here on x, m and y are this band's.
            let (x, m, y) = (x.add(i0 * k), band.min(m - i0), y.add(i0 * ldy));
            let mut j = j0;
            while j < j1 {
                let cols = BLOCK_COLS.min(j1 - j);
                let masks = column_masks(cols);
                let next_block = (j + cols < j1).then(|| w.add(j + cols));
                let mut p0 = 0;
                while p0 < k {
                    let rows = CHUNK_ROWS.min(k - p0);
                    // The chunk after this one (this block's next rows, or the next block's
                    // first ones) is requested now and arrives while this one is multiplied.
                    let (ahead, ahead_rows) = if p0 + rows < k {
                        (Some(w.add((p0 + rows) * ldw + j)), CHUNK_ROWS.min(k - p0 - rows))
                    } else {
                        (next_block, CHUNK_ROWS.min(k))
                    };
                    for p in 0..rows {
                        let src = w.add((p0 + p) * ldw + j);
                        let dst = buf.add(p * BLOCK_COLS);
                        _mm512_store_ps(dst, _mm512_maskz_loadu_ps(masks.0, src));
                        _mm512_store_ps(dst.add(16), _mm512_maskz_loadu_ps(masks.1, src.add(16)));
                        if let Some(a) = ahead {
                            if p < ahead_rows {
                                // A prefetch never faults; wrapping arithmetic, because the
                                // second line may lie past the weight's end.
                                let line = a.wrapping_add(p * ldw) as *const i8;
                                _mm_prefetch::<_MM_HINT_T0>(line);
                                _mm_prefetch::<_MM_HINT_T0>(line.wrapping_add(64));
                            }
                        }
                    }
                    let first = p0 == 0;
                    let mut i = 0;
                    while i < m {
                        let tile = TILE_ROWS.min(m - i);
                        let (xi, yij) = (x.add(i * k + p0), y.add(i * ldy + j));
                        match tile {
                            8 => tile_kernel::<8>(xi, k, buf, rows, yij, ldy, masks, first),
                            7 => tile_kernel::<7>(xi, k, buf, rows, yij, ldy, masks, first),
                            6 => tile_kernel::<6>(xi, k, buf, rows, yij, ldy, masks, first),
                            5 => tile_kernel::<5>(xi, k, buf, rows, yij, ldy, masks, first),
                            4 => tile_kernel::<4>(xi, k, buf, rows, yij, ldy, masks, first),
                            3 => tile_kernel::<3>(xi, k, buf, rows, yij, ldy, masks, first),
                            2 => tile_kernel::<2>(xi, k, buf, rows, yij, ldy, masks, first),
                            _ => tile_kernel::<1>(xi, k, buf, rows, yij, ldy, masks, first),
                        }
                        i += tile;
                    }
                    p0 += rows;
                }
                j += cols;
            }
            i0 += m;
        }
    }
}

/// Never called: [`available`] is false off x86-64.
#[cfg(not(target_arch = "x86_64"))]
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn gemm(
    _: *const f32,
    _: usize,
    _: usize,
    _: *const f32,
    _: usize,
    _: *mut f32,
    _: usize,
    _: usize,
    _: usize,
) {
    unreachable!("streamed_gemm::available() is false off x86-64");
}

/// Rows of `w` copied at a time: 128 rows of a block, 16 KiB, stay in the L1 cache
/// while every tile of `x` goes over them. They are copied (not read in place)
/// because rows of `w` lie a whole weight row apart: at GPT-2's widths their cache
/// sets collide, so that only a few dozen of them would stay cached at once.
const CHUNK_ROWS: usize = 128;

/// The most bytes of `x` multiplied by each chunk of `w` in turn (half the L2 cache).
const X_BAND_BYTES: usize = 1 << 20;

/// One chunk of a block, 64-byte aligned for whole-register loads.
#[repr(align(64))]
struct Chunk([f32; CHUNK_ROWS * BLOCK_COLS]);

/// `y[0..R, 0..32] (+)= x[0..R, 0..rows] @ chunk[0..rows, 0..32]`: `x` with row stride
/// `k`, `chunk` 32 values a row; `first` overwrites `y`, otherwise adds to it. Columns
/// past the masks are neither read nor written.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
#[allow(clippy::too_many_arguments)]
unsafe fn tile_kernel<const R: usize>(
    x: *const f32,
    k: usize,
    chunk: *const f32,
    rows: usize,
    y: *mut f32,
    ldy: usize,
    (m0, m1): (__mmask16, __mmask16),
    first: bool,
) {
    // SAFETY: the caller (gemm) passes x with R rows of stride k and `rows` columns from
    // here, a chunk of `rows` x 32 aligned values, and y with R rows of stride ldy whose
    // masked columns are its own; avx512f is enabled for this function.
    unsafe {
        let mut acc0 = [_mm512_setzero_ps(); R];
        let mut acc1 = [_mm512_setzero_ps(); R];
        if !first {
            for r in 0..R {
                acc0[r] = _mm512_maskz_loadu_ps(m0, y.add(r * ldy));
                acc1[r] = _mm512_maskz_loadu_ps(m1, y.add(r * ldy + 16));
            }
        }
        for p in 0..rows {
            let b0 = _mm512_load_ps(chunk.add(p * BLOCK_COLS));
            let b1 = _mm512_load_ps(chunk.add(p * BLOCK_COLS + 16));
            for r in 0..R {
                let a = _mm512_set1_ps(*x.add(r * k + p));
                acc0[r] = _mm512_fmadd_ps(a, b0, acc0[r]);
                acc1[r] = _mm512_fmadd_ps(a, b1, acc1[r]);
            }
        }
        for r in 0..R {
            let out = y.add(r * ldy);
            _mm512_mask_storeu_ps(out, m0, acc0[r]);
            _mm512_mask_storeu_ps(out.add(16), m1, acc1[r]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every row remainder (1..=8 rows in the last tile) and column remainder (a last
    /// block of 1..=32 columns), one chunk of `w`'s rows and several, one band of `x`'s
    /// rows and two, a column range
    /// that starts inside the weight, and a weight wider than the range: against a
    /// plain triple loop in f64.
    #[test]
    fn equals_a_plain_product_at_every_edge() {
        if !available() {
            return;
        }
        // k 300: two whole chunks of rows and a short third; with 881 rows, x comes in
        // two bands (of 872 rows and 9).
        let cases = [37, 300].into_iter().flat_map(|k| [1, 5, 8, 9, 16, 23].map(|m| (k, m)));
        for (k, m) in cases.chain([(300, 881)]) {
            for (j0, j1, ldw) in [(0, 32, 32), (0, 33, 40), (3, 50, 70), (0, 95, 95), (64, 65, 65)] {
                let x: Vec<f32> = (0..m * k).map(|i| ((i * 37 % 101) as f32 - 50.0) / 25.0).collect();
                let w: Vec<f32> = (0..k * ldw).map(|i| ((i * 53 % 97) as f32 - 48.0) / 24.0).collect();
                let sentinel = -12345.0f32;
                let mut y = vec![sentinel; m * ldw];
                // SAFETY: sizes as documented; nothing else touches y.
                unsafe { gemm(x.as_ptr(), m, k, w.as_ptr(), ldw, y.as_mut_ptr(), ldw, j0, j1) };
                for i in 0..m {
                    for j in 0..ldw {
                        let got = y[i * ldw + j];
                        if (j0..j1).contains(&j) {
                            let want: f64 = (0..k).map(|p| x[i * k + p] as f64 * w[p * ldw + j] as f64).sum();
                            assert!(
                                (got as f64 - want).abs() < 1e-4 * (1.0 + want.abs()),
                                "k {k} m {m} cols {j0}..{j1}: y[{i}, {j}] = {got}, want {want}"
                            );
                        } else {
                            assert_eq!(got, sentinel, "k {k} m {m} cols {j0}..{j1}: y[{i}, {j}] written");
                        }
                    }
                }
            }
        }
    }
}
