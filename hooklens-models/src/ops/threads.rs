//! How many threads the CPU kernels split their work over.

/// candle's thread count (`RAYON_NUM_THREADS`, else the physical cores), looked up
/// once: `candle_core::utils::get_num_threads` parses `/proc/cpuinfo` on every call
/// (about 65 µs here), which cost a decoding step more than a dozen milliseconds.
pub(crate) fn num_threads() -> usize {
    static THREADS: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *THREADS.get_or_init(|| candle_core::utils::get_num_threads().max(1))
}
