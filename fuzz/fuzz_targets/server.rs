//! The protocol server on the in-memory platform, receiving arbitrary
//! bytes or request bodies in valid frames (the seed corpus holds a real
//! session): it answers or
//! drops, never panics, never loses its state, and a power cut drawn from
//! the input leaves a device that boots.
#![no_main]

use gaussedge_firmware::mem::{Bench, MemPlatform, PowerCut};
use gaussedge_firmware::server::{Buffers, Server};
use gaussedge_shared::stats::Preprocess;
use gaussedge_shared::wire::FrameFormat;
use gaussedge_shared::{Estimator, GaussianHead, HeadConfig, Transform};
use libfuzzer_sys::fuzz_target;

#[path = "common.rs"]
mod common;

const FRAME: FrameFormat = FrameFormat { width: 4, height: 4, channels: 3 };

fn config() -> HeadConfig {
    HeadConfig {
        dim: 6,
        capacity: 3,
        weighting: Estimator::Pooled.weighting(),
        settings: Estimator::Pooled.settings(),
        transform: Transform::IDENTITY,
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&cut, bytes)) = data.split_first() else { return };
    let preprocess = Preprocess { width: 4, height: 4, channels: 3, mean: [0.5; 3], std: [0.25; 3] };
    let mut platform = MemPlatform::new(b"fuzz backbone", preprocess, 6, vec![]);
    if cut & 0x80 != 0 {
        platform.cut_power(PowerCut { at_write: u64::from(cut & 0x3f), torn_at: 7, keep_unsynced: cut & 0x40 != 0 });
    }
    let info = platform.backbone();
    let mut bench = Bench::new(&info, FRAME);
    let bufs = Buffers { frame: &mut bench.frame, input: &mut bench.input, features: &mut bench.features };
    let head = GaussianHead::with_capacity(config()).expect("head");
    let mut server = Server::boot(head, platform, bufs, info, FRAME).expect("boot");
    // Bit 5 of the first byte: the rest as raw link bytes, or as request
    // bodies each sealed in a valid frame (to reach the request handlers).
    let bytes = if cut & 0x20 != 0 { bytes.to_vec() } else { common::sealed_frames(bytes) };
    for piece in bytes.chunks(97) {
        server.receive(piece, &mut |frame| assert!(frame.len() <= gaussedge_shared::wire::MAX_FRAME));
    }
    // Whatever happened, the device boots again from what storage kept.
    let rebooted = server.platform.reboot();
    let mut bench = Bench::new(&info, FRAME);
    let bufs = Buffers { frame: &mut bench.frame, input: &mut bench.input, features: &mut bench.features };
    let head = GaussianHead::with_capacity(config()).expect("head");
    Server::boot(head, rebooted, bufs, info, FRAME).expect("a device boots after any session");
});
