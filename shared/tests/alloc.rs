//! After construction the head never touches the heap: learning, committing,
//! predicting, novelty, forgetting, saving, loading and framing all run in
//! the storage and stack buffers they were given. A counting global
//! allocator proves it at the real feature size.

mod common;

use common::gaussian_classes;
use gaussedge_shared::config::{Estimator, Weighting};
use gaussedge_shared::head::{GaussianHead, HeadConfig};
use gaussedge_shared::stats::{self, Expect, StatsMeta};
use gaussedge_shared::wire::{self, Feed, FrameDecoder, Request, MAX_FRAME};
use gaussedge_shared::{label, Transform};
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

struct Counting;

thread_local! {
    // Per thread, so the test harness's own threads do not count.
    static ALLOCATIONS: Cell<usize> = const { Cell::new(0) };
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.with(|c| c.set(c.get() + 1));
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.with(|c| c.set(c.get() + 1));
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocations_in<R>(f: impl FnOnce() -> R) -> (usize, R) {
    let before = ALLOCATIONS.with(Cell::get);
    let r = f();
    (ALLOCATIONS.with(Cell::get) - before, r)
}

#[test]
fn no_allocation_after_construction_at_d1280() {
    let dim = 1280;
    let data = gaussian_classes(dim, &[40, 30, 25], 3);
    let labels = [label("a").unwrap(), label("b").unwrap(), label("c").unwrap()];
    let config = HeadConfig {
        dim,
        capacity: 16,
        weighting: Weighting::Count,
        settings: Estimator::Pooled.settings(),
        transform: Transform::IDENTITY,
    };
    let mut head = GaussianHead::with_capacity(config).unwrap();
    let mut scores = vec![0.0; 16];
    let mut scratch = vec![0.0; 2 * dim];
    let mut file = Vec::with_capacity(64 << 20);

    let (n, ()) = allocations_in(|| {
        for (c, samples) in data.iter().enumerate() {
            head.begin(labels[c].clone()).unwrap();
            for x in samples {
                head.learn(x).unwrap();
            }
            head.commit().unwrap();
        }
        for x in data.iter().flatten() {
            let p = head.predict(x, Some(&mut scores)).unwrap();
            let q = head.predict_with(x, None, &mut scratch).unwrap();
            assert_eq!(p, q);
            assert!(p.novelty.is_finite());
        }
        head.begin(labels[0].clone()).unwrap_err();
        head.begin(label("d").unwrap()).unwrap();
        head.learn(&data[0][0]).unwrap();
        head.abort().unwrap();
        head.set_settings(Estimator::Pooled.settings()).unwrap();
        head.forget("b").unwrap();
        stats::write(&head, &StatsMeta::default(), |b| {
            file.extend_from_slice(b);
            Ok::<(), ()>(())
        })
        .unwrap();
        stats::load(&mut head, &file, &Expect::default()).unwrap();
    });
    assert_eq!(n, 0, "the head allocated {n} times");
    assert_eq!(head.class_count(), 2);
}

#[test]
fn framing_does_not_allocate() {
    let mut decoder = FrameDecoder::new();
    let mut out = [0u8; MAX_FRAME];
    let request = Request::BeginClass { label: label("cat").unwrap(), extend: false };
    let (n, ()) = allocations_in(|| {
        let len = wire::encode(41, &request, &mut out).unwrap();
        // Fed one byte at a time.
        let mut seen = None;
        for b in &out[..len] {
            if let Feed::Frame { frame, .. } = decoder.feed(core::slice::from_ref(b)) {
                seen = Some((frame.seq, frame.parse::<Request>().unwrap()));
            }
        }
        assert_eq!(seen, Some((41, request.clone())));
    });
    assert_eq!(n, 0);
}

#[test]
fn the_counter_sees_allocations() {
    let (n, v) = allocations_in(|| vec![1u8; 100]);
    assert_eq!((n, v.len()), (1, 100));
}
