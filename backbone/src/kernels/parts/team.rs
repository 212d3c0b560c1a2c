//! A team of helper threads that spin between kernel calls.
//!
//! One call runs part 0 on the calling thread and parts `1..n` on helpers
//! `0..n-1`, and returns when all are done: a scoped fork-join, so a part
//! may borrow the caller's stack. A helper that finishes keeps spinning for
//! [`SPIN`] before it parks, which covers the gaps between one frame's
//! calls; a parked helper costs an unpark (tens of microseconds on a VM),
//! once a frame rather than once a call. One call at a time: a call made
//! while another holds the team (another thread's frame) runs its parts
//! inline, in order, which gives the same results.

use std::cell::UnsafeCell;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::{self, Thread};
use std::time::{Duration, Instant};

use tract_onnx::prelude::{TractError, TractResult};

use crate::kernels::Isa;

/// How long an idle helper spins before it parks.
const SPIN: Duration = Duration::from_micros(200);

/// A part's work: `part(i)` for helper `i - 1`.
type Job<'a> = &'a (dyn Fn(usize) -> TractResult<()> + Sync);

/// Parts a call may have at most (they share a word with the generation).
pub(super) const MAX_PARTS: usize = 255;

struct Shared {
    /// The current call: its generation (bumped once per call) times 256
    /// plus its parts (helper `i` runs part `i + 1` if below). One word,
    /// so a helper that wakes late never pairs one call's generation with
    /// another's parts.
    state: AtomicUsize,
    /// Parts of the current call still running on helpers.
    pending: AtomicUsize,
    /// The current call's job, valid while `pending > 0`.
    job: UnsafeCell<Option<Job<'static>>>,
    /// The first error or panic of a helper's part in the current call.
    failed: Mutex<Option<TractError>>,
}

// SAFETY: `job` is written only by the caller holding the team's lock,
// before `generation` is bumped (SeqCst) and after `pending` reached zero,
// and read only by helpers between seeing that generation and decrementing
// `pending`: the two never overlap.
unsafe impl Sync for Shared {}

struct Helper {
    thread: Thread,
    parked: Arc<AtomicBool>,
}

struct Team {
    shared: Arc<Shared>,
    helpers: Vec<Helper>,
}

fn team() -> &'static Mutex<Team> {
    static TEAM: OnceLock<Mutex<Team>> = OnceLock::new();
    TEAM.get_or_init(|| {
        Mutex::new(Team {
            shared: Arc::new(Shared {
                state: AtomicUsize::new(0),
                pending: AtomicUsize::new(0),
                job: UnsafeCell::new(None),
                failed: Mutex::new(None),
            }),
            helpers: Vec::new(),
        })
    })
}

impl Team {
    /// Starts helpers until there are `n`; false if the system would not
    /// give a thread.
    fn grow(&mut self, n: usize) -> bool {
        while self.helpers.len() < n {
            let index = self.helpers.len();
            let (shared, parked) = (self.shared.clone(), Arc::new(AtomicBool::new(false)));
            let flag = parked.clone();
            let seen = shared.state.load(SeqCst) >> 8;
            let spawned = thread::Builder::new()
                .name(format!("gaussedge-kernel-{}", index + 1))
                .spawn(move || helper(&shared, index, &flag, seen));
            let Ok(handle) = spawned else { return false };
            self.helpers.push(Helper { thread: handle.thread().clone(), parked });
        }
        true
    }
}

fn helper(shared: &Shared, index: usize, parked: &AtomicBool, mut seen: usize) {
    loop {
        // Spin for the next call, then park until one comes.
        let mut since = Instant::now();
        let parts = loop {
            let state = shared.state.load(SeqCst);
            if state >> 8 != seen {
                seen = state >> 8;
                break state & 0xff;
            }
            if since.elapsed() < SPIN {
                for _ in 0..64 {
                    std::hint::spin_loop();
                }
                continue;
            }
            parked.store(true, SeqCst);
            if shared.state.load(SeqCst) >> 8 == seen {
                thread::park();
            }
            parked.store(false, SeqCst);
            since = Instant::now();
        };
        // Not in this call; a call this helper is in cannot finish (nor
        // its job change) before the helper's decrement below.
        if index + 1 >= parts {
            continue;
        }
        // SAFETY: the caller set `job` before this generation and keeps it
        // (and what it borrows) alive until `pending` reaches zero, which
        // this helper's decrement below is part of.
        let job = unsafe { (*shared.job.get()).expect("a job for this call") };
        let result = catch_unwind(AssertUnwindSafe(|| job(index + 1)))
            .unwrap_or_else(|_| Err(TractError::msg(format!("kernel part {} panicked", index + 1))));
        if let Err(e) = result {
            shared.failed.lock().unwrap().get_or_insert(e);
        }
        shared.pending.fetch_sub(1, SeqCst);
    }
}

/// Runs `part(0..parts)`, part 0 here and the rest on helpers, under the
/// caller's vector-width cap; the first error (or a part's panic, as an
/// error) is returned once every part has finished.
pub(super) fn run(parts: usize, part: &(dyn Fn(usize) -> TractResult<()> + Sync)) -> TractResult<()> {
    let cap = Isa::best();
    let capped = |i: usize| Isa::capped(cap, || part(i));
    let parts = parts.min(MAX_PARTS);
    let Ok(mut team) = team().try_lock() else {
        return (0..parts).try_for_each(capped);
    };
    if !team.grow(parts - 1) {
        drop(team);
        return (0..parts).try_for_each(capped);
    }
    let shared = team.shared.clone();
    let job: Job = &capped;
    // SAFETY: the lifetime is erased only for the helpers' reads, all of
    // which end before this function returns (it waits for `pending` to
    // reach zero, even when part 0 fails or panics).
    let job: Job<'static> = unsafe { std::mem::transmute::<Job<'_>, Job<'static>>(job) };
    // SAFETY: no helper reads `job` now: the last call's `pending` is zero.
    unsafe { *shared.job.get() = Some(job) };
    shared.pending.store(parts - 1, SeqCst);
    let generation = (shared.state.load(SeqCst) >> 8).wrapping_add(1) & (usize::MAX >> 8);
    shared.state.store(generation << 8 | parts, SeqCst);
    for h in &team.helpers[..parts - 1] {
        if h.parked.load(SeqCst) {
            h.thread.unpark();
        }
    }
    let mine = catch_unwind(AssertUnwindSafe(|| capped(0)));
    while shared.pending.load(SeqCst) != 0 {
        std::hint::spin_loop();
    }
    // SAFETY: every helper is done with this call's job.
    unsafe { *shared.job.get() = None };
    let theirs = shared.failed.lock().unwrap().take();
    drop(team);
    match mine {
        Ok(r) => r.and(theirs.map_or(Ok(()), Err)),
        Err(panic) => std::panic::resume_unwind(panic),
    }
}
