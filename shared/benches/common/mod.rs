//! What the head's benchmarks share.

use std::hint::black_box;

/// Writes one byte of every cache line of `evict`, so that the next call
/// starts with its data out of the caches: what a frame through the
/// backbone does to them between two head operations on a device.
pub fn flush(evict: &mut [u8]) {
    let mut s = 0u64;
    for c in evict.chunks_mut(64) {
        c[0] = c[0].wrapping_add(1);
        s += c[0] as u64;
    }
    black_box(s);
}
