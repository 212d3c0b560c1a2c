//! Splitting one kernel call across threads.
//!
//! The project's kernels (the 1x1 convolutions, the depthwise convolutions)
//! do most of a frame's work, so `--threads N` (`Backbone::set_threads`)
//! splits theirs here; a count of one (the default) runs every kernel
//! inline. tract's own thread pool is not linked: on EfficientNet-b0 at
//! 64x64 its matrix products were too small to gain from it, and its rayon
//! pool was 2.5 MB of a 16.8 MB firmware. tract's remaining operators run
//! on the calling thread, and so do the channel-last ops' sums and scales
//! (`ops::channel_last`): split by rows like the convolutions, those 64
//! calls of a few microseconds each made a two-thread frame slower, the
//! hand-off costing more than the halves saved (six interleaved rounds, a
//! 2-core EPYC VM: 0.71-0.94x of the frame without the split). The SiLU
//! after a depthwise convolution runs inside it
//! (`ops::depthwise::fuse_silu`), on each part's rows.
//!
//! The parts run on a team of threads (the private `team` module) that spin between calls rather
//! than on a sleeping pool: a frame is some eighty kernel calls a few
//! tens of microseconds each, and waking a sleeping pool thread for each
//! cost about 50 µs on a 2-core VM (two threads measured 0.75x of one).
//!
//! A part is a contiguous range of a kernel's work units (output rows,
//! register tiles), and each unit's arithmetic is the same whichever part
//! runs it, so the results are bit-identical at every thread count (a test
//! holds the backbone's features to that).

use std::cell::Cell;
use std::ops::Range;
use std::sync::atomic::{AtomicUsize, Ordering};

use tract_onnx::prelude::TractResult;

mod team;

/// Multiply-adds below which a call stays on the calling thread: handing
/// parts to the helpers costs a few microseconds, what about 6x10^4
/// multiply-adds take. The squeeze-excitation's 48x1152 products of a
/// two-view frame (1.1x10^5) stream their weights and gain from the split.
pub const MIN_WORK: usize = 1 << 16;

/// The process-wide thread count ([`set_threads`]).
static THREADS: AtomicUsize = AtomicUsize::new(1);

thread_local! {
    /// This thread's count inside [`with_threads`], over the process's.
    static SCOPED: Cell<Option<usize>> = const { Cell::new(None) };
}

/// Sets the threads every kernel call may split over, process-wide (0 is
/// taken as 1).
pub fn set_threads(threads: usize) {
    THREADS.store(threads.max(1), Ordering::Relaxed);
}

/// Runs `f` with this thread's kernel calls split over `threads`, whatever
/// the process-wide count: how tests compare thread counts side by side.
pub fn with_threads<R>(threads: usize, f: impl FnOnce() -> R) -> R {
    struct Restore(Option<usize>);
    impl Drop for Restore {
        fn drop(&mut self) {
            SCOPED.with(|s| s.set(self.0));
        }
    }
    let _restore = Restore(SCOPED.with(|s| s.replace(Some(threads.max(1)))));
    f()
}

/// The threads a kernel call may split over now.
pub fn threads() -> usize {
    SCOPED.with(Cell::get).unwrap_or_else(|| THREADS.load(Ordering::Relaxed))
}

/// The threads a kernel call of `work` multiply-adds should split over:
/// one below [`MIN_WORK`], else [`threads`].
pub fn threads_for(work: usize) -> usize {
    if work < MIN_WORK {
        1
    } else {
        threads()
    }
}

/// Runs `f` on `parts` contiguous, near-equal ranges that cover `0..units`,
/// on the team (`team`) where the executor has more than one thread, else
/// inline as one range. Each part runs under the caller's [`Isa`](super::Isa) cap (the
/// cap is per thread, and the team's threads have their own), so a test
/// that limits the vector width limits every part.
pub fn for_each_part(
    units: usize,
    parts: usize,
    f: impl Fn(Range<usize>) -> TractResult<()> + Sync + Send,
) -> TractResult<()> {
    let parts = parts.clamp(1, units.max(1)).min(threads());
    if parts < 2 {
        return f(0..units);
    }
    let range = |i: usize| i * units / parts..(i + 1) * units / parts;
    team::run(parts, &|i| f(range(i)))
}

/// Runs `f(units, chunk)` on `parts` near-equal ranges of `out`'s rows
/// of `row` values, `chunk` holding exactly the rows `units` names, as
/// [`for_each_part`] runs its ranges.
pub fn for_each_rows(
    out: &mut [f32],
    row: usize,
    parts: usize,
    f: impl Fn(Range<usize>, &mut [f32]) -> TractResult<()> + Sync + Send,
) -> TractResult<()> {
    let units = out.len().checked_div(row).unwrap_or(0);
    let out = Disjoint::new(out);
    for_each_part(units, parts, |units| {
        // SAFETY: the ranges of `for_each_part` are disjoint, so this part
        // is the only one that touches rows `units`, and the slice ends
        // with the borrow `out` holds.
        let chunk = unsafe { out.rows(units.start * row..units.end * row) };
        f(units, chunk)
    })
}

/// An output buffer that parts write at disjoint indices: the one place
/// the kernels share a `&mut` across threads.
pub struct Disjoint<'a> {
    ptr: *mut f32,
    len: usize,
    _borrow: std::marker::PhantomData<&'a mut [f32]>,
}

// SAFETY: a `Disjoint` is only reached through `write` and `rows`, whose
// contracts (each index touched by one part only) rule out data races; it
// holds the exclusive borrow of its buffer for its lifetime.
unsafe impl Send for Disjoint<'_> {}
// SAFETY: as above.
unsafe impl Sync for Disjoint<'_> {}

impl<'a> Disjoint<'a> {
    pub fn new(out: &'a mut [f32]) -> Self {
        Disjoint { ptr: out.as_mut_ptr(), len: out.len(), _borrow: std::marker::PhantomData }
    }

    /// The values `r`, for one part to own.
    ///
    /// # Safety
    /// No other part may touch `r` while the slice lives.
    #[allow(clippy::mut_from_ref)]
    pub unsafe fn rows(&self, r: Range<usize>) -> &mut [f32] {
        assert!(r.start <= r.end && r.end <= self.len, "rows {r:?} past {}", self.len);
        // SAFETY: in bounds (checked above), and the caller owns `r`.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.add(r.start), r.len()) }
    }

    /// Stores `v` at `i`; panics past the end.
    ///
    /// # Safety
    /// No other part may read or write index `i` while the buffer is
    /// shared.
    #[inline]
    pub unsafe fn write(&self, i: usize, v: f32) {
        assert!(i < self.len, "index {i} past {}", self.len);
        // SAFETY: in bounds (checked above), and the caller owns index `i`.
        unsafe { self.ptr.add(i).write(v) }
    }
}

/// Whether a `[batch, pixel, channel]` view with these extents and strides
/// gives every value its own index (no two overlap), the condition for
/// parts to write it at once.
pub fn injective(extents: [usize; 3], strides: [usize; 3]) -> bool {
    let mut axes: Vec<(usize, usize)> =
        extents.into_iter().zip(strides).filter(|&(e, _)| e > 1).map(|(e, s)| (s, e)).collect();
    axes.sort_unstable();
    let mut span = 1;
    for (stride, extent) in axes {
        if stride < span {
            return false;
        }
        span = stride * extent;
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::Isa;

    #[test]
    fn parts_cover_every_unit_once_on_a_pool_and_inline() {
        for (units, parts) in [(0, 2), (1, 4), (7, 2), (10, 3), (170, 4), (5, 8)] {
            for threads in [1, 2] {
                let seen: Vec<AtomicUsize> = (0..units).map(|_| AtomicUsize::new(0)).collect();
                with_threads(threads, || {
                    for_each_part(units, parts, |r| {
                        for u in r {
                            seen[u].fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(())
                    })
                })
                .unwrap();
                assert!(seen.iter().all(|s| s.load(Ordering::Relaxed) == 1), "{units} units in {parts} parts");
            }
        }
    }

    #[test]
    fn row_chunks_are_the_rows_their_units_name() {
        for (rows, parts) in [(0, 2), (1, 3), (9, 2), (64, 4), (3, 8)] {
            for threads in [1, 2] {
                let mut out = vec![0f32; rows * 5];
                with_threads(threads, || {
                    for_each_rows(&mut out, 5, parts, |units, chunk| {
                        assert_eq!(chunk.len(), units.len() * 5);
                        for (u, row) in units.zip(chunk.chunks_exact_mut(5)) {
                            row.fill(u as f32 + 1.0);
                        }
                        Ok(())
                    })
                })
                .unwrap();
                let want: Vec<f32> = (0..rows * 5).map(|i| (i / 5) as f32 + 1.0).collect();
                assert_eq!(out, want, "{rows} rows in {parts} parts");
            }
        }
    }

    #[test]
    fn parts_keep_the_callers_vector_width_and_report_errors() {
        let widths = std::sync::Mutex::new(Vec::new());
        with_threads(2, || {
            Isa::capped(Isa::Portable, || {
                for_each_part(4, 4, |_| {
                    widths.lock().unwrap().push(Isa::best());
                    Ok(())
                })
            })
        })
        .unwrap();
        // Four parts asked, two threads: two parts.
        assert_eq!(*widths.lock().unwrap(), vec![Isa::Portable; 2]);
        let failed = with_threads(2, || {
            for_each_part(4, 2, |r| {
                if r.start == 0 {
                    Ok(())
                } else {
                    Err(tract_onnx::prelude::TractError::msg(format!("part {r:?}")))
                }
            })
        });
        assert!(failed.is_err());
    }

    #[test]
    fn overlapping_layouts_are_not_injective() {
        assert!(injective([1, 16, 8], [0, 8, 1]));
        assert!(injective([2, 16, 8], [128, 1, 16]));
        assert!(!injective([2, 16, 8], [64, 8, 1]));
        assert!(!injective([1, 16, 8], [0, 4, 1]));
        assert!(!injective([1, 4, 4], [0, 0, 1]));
    }
}
