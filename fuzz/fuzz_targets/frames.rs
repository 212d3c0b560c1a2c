//! The frame decoder fed bytes in arbitrary pieces, and every frame it
//! yields parsed as a request and as a response: nothing panics, nothing
//! grows, and whatever parses encodes back to a frame that parses to the
//! same bytes.
#![no_main]

use gaussedge_shared::wire::{self, Feed, FrameDecoder, Request, Response, MAX_FRAME};
use libfuzzer_sys::fuzz_target;

#[path = "common.rs"]
mod common;

/// Re-encodes a parsed message, parses that and encodes again: the two
/// encodings are the same bytes (compared as bytes, since a message may
/// carry a NaN, which is not equal to itself).
fn check<T: serde::Serialize + for<'a> serde::Deserialize<'a>>(seq: u32, value: &T) {
    let mut out = [0u8; MAX_FRAME];
    let n = wire::encode(seq, value, &mut out).expect("a parsed message fits a frame");
    let first = out[..n].to_vec();
    let frame = wire::decode(&mut out[..n - 1]).expect("its own frame decodes");
    assert_eq!(frame.seq, seq);
    let again: T = frame.parse().expect("its own frame parses");
    let mut out = [0u8; MAX_FRAME];
    let m = wire::encode(seq, &again, &mut out).expect("fits again");
    assert_eq!(first, out[..m], "a message survives a round trip");
}

fuzz_target!(|data: &[u8]| {
    // The first byte picks the piece size, so splits vary with the input.
    let Some((&split, bytes)) = data.split_first() else { return };
    let piece = usize::from(split % 64) + 1;
    // Top bit: bodies sealed in valid frames, to reach the message parsers.
    let sealed;
    let bytes = if split & 0x80 != 0 {
        sealed = common::sealed_frames(bytes);
        &sealed[..]
    } else {
        bytes
    };
    let mut decoder = FrameDecoder::new();
    for chunk in bytes.chunks(piece) {
        let mut input = chunk;
        while !input.is_empty() {
            match decoder.feed(input) {
                Feed::Consumed => break,
                Feed::Error { rest, .. } => input = rest,
                Feed::Frame { frame, rest } => {
                    if let Ok(r) = frame.parse::<Request>() {
                        check(frame.seq, &r);
                    }
                    if let Ok(r) = frame.parse::<Response>() {
                        check(frame.seq, &r);
                    }
                    input = rest;
                }
            }
        }
    }
});
