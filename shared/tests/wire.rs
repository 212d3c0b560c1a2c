//! Frames survive arbitrary splitting, damage is detected, and no input,
//! however broken, makes a decoder panic or grow.

use gaussedge_shared::config::Estimator;
use gaussedge_shared::head::{label, MAX_LABEL};
use gaussedge_shared::stats::{self, Expect, Preprocess};
use gaussedge_shared::wire::*;
use gaussedge_shared::{GaussianHead, HeadConfig, Transform};
use proptest::prelude::*;

fn long_label() -> gaussedge_shared::Label {
    label(&"x".repeat(MAX_LABEL)).unwrap()
}

fn full_chunk(byte: u8) -> Chunk {
    let mut c = Chunk::new();
    c.resize(MAX_CHUNK, byte).unwrap();
    c
}

fn text() -> Text {
    let mut t = Text::new();
    t.push_str(&"y".repeat(64)).unwrap();
    t
}

/// Every request kind, with its largest fields.
fn requests() -> Vec<Request> {
    let format = FrameFormat { width: 64, height: 64, channels: 3 };
    vec![
        Request::Hello,
        Request::ListClasses { from: 3 },
        Request::SetSettings(Estimator::Seed.settings()),
        Request::SetNoveltyThreshold(1234.5),
        Request::Reset,
        Request::BeginUpload {
            target: UploadTarget::Frame { format, usage: FrameUse::Predict },
            len: u32::MAX,
            sha256: [0xff; 32],
        },
        Request::BeginUpload { target: UploadTarget::Bundle(BundleFile::Backbone), len: 1, sha256: [0; 32] },
        Request::UploadChunk { offset: u32::MAX, data: full_chunk(0) },
        Request::UploadChunk { offset: 0, data: full_chunk(0xff) },
        Request::FinishUpload,
        Request::Download {
            source: DownloadSource::Capture { label: long_label(), index: u32::MAX },
            offset: u32::MAX,
            max: u16::MAX,
        },
        Request::Download { source: DownloadSource::Stats, offset: 0, max: 1 },
        Request::BeginClass { label: long_label(), extend: true },
        Request::Frame { format, usage: FrameUse::Learn, data: full_chunk(7) },
        Request::Capture { count: u16::MAX, source_class: Some(u16::MAX) },
        Request::CommitClass,
        Request::AbortClass,
        Request::ForgetClass { label: long_label() },
        Request::ActivateBundle,
    ]
}

/// Every response kind, with its largest fields.
fn responses() -> Vec<Response> {
    let entry = ClassEntry { slot: u16::MAX, label: long_label(), count: u64::MAX, stored: u32::MAX };
    let mut entries = heapless::Vec::new();
    while entries.push(entry.clone()).is_ok() {}
    let mut firmware = Text::new();
    firmware.push_str("0.1.0").unwrap();
    vec![
        Response::Ok,
        Response::Info(DeviceInfo {
            protocol: PROTOCOL_VERSION,
            firmware: text(),
            dim: u32::MAX,
            capacity: u16::MAX,
            classes: u16::MAX,
            learning: Some((long_label(), u64::MAX)),
            backbone_sha256: [0xee; 32],
            preprocess: Preprocess { width: 64, height: 64, channels: 3, mean: [0.5; 3], std: [0.25; 3] },
            settings: Estimator::Pooled.settings(),
            novelty_threshold: f64::MAX,
            max_frame: FrameFormat { width: u16::MAX, height: u16::MAX, channels: 3 },
            max_chunk: MAX_CHUNK as u32,
            slot: Some(1),
            generation: u64::MAX,
            stats_len: u32::MAX,
            applied: u64::MAX,
            replayed: u64::MAX,
        }),
        Response::Classes { total: u16::MAX, entries },
        Response::Staged { count: u64::MAX },
        Response::Committed { slot: 3, count: 4000 },
        Response::Prediction(PredictionMsg { slot: 1, label: long_label(), score: -1.5, novelty: 99.0, novel: true }),
        Response::Data { total: u32::MAX, offset: u32::MAX, data: full_chunk(1) },
        Response::Error { code: ErrorCode::UploadHash, detail: detail(&"z".repeat(MAX_DETAIL)) },
    ]
}

#[test]
fn every_message_round_trips_within_the_fixed_frame() {
    let mut out = [0u8; MAX_FRAME];
    for (i, r) in requests().iter().enumerate() {
        let n = encode(i as u32, r, &mut out).unwrap();
        assert!(n <= MAX_FRAME);
        assert_eq!(out[n - 1], 0);
        assert!(!out[..n - 1].contains(&0), "COBS leaves no zero inside a frame");
        let frame = decode(&mut out[..n - 1]).unwrap();
        assert_eq!(frame.seq, i as u32);
        assert_eq!(&frame.parse::<Request>().unwrap(), r);
    }
    for (i, r) in responses().iter().enumerate() {
        let n = encode(u32::MAX - i as u32, r, &mut out).unwrap();
        let frame = decode(&mut out[..n - 1]).unwrap();
        assert_eq!(frame.seq, u32::MAX - i as u32);
        assert_eq!(&frame.parse::<Response>().unwrap(), r);
    }
}

#[test]
fn a_good_frame_with_a_bad_body_keeps_its_sequence_number() {
    // A Response parsed as a Request, or trailing garbage: CRC fine, body not.
    let mut out = [0u8; MAX_FRAME];
    let n = encode(77, &Response::Staged { count: 5 }, &mut out).unwrap();
    let frame = decode(&mut out[..n - 1]).unwrap();
    assert_eq!(frame.parse::<Request>(), Err(FrameError::Body { seq: 77 }));
}

#[test]
fn damage_is_detected_and_the_stream_resynchronises() {
    let mut out = [0u8; MAX_FRAME];
    let request = Request::ForgetClass { label: label("dog").unwrap() };
    let n = encode(9, &request, &mut out).unwrap();
    let good = out[..n].to_vec();
    for bit in 0..(n - 1) * 8 {
        let mut bad = good.clone();
        bad[bit / 8] ^= 1 << (bit % 8);
        let mut d = FrameDecoder::new();
        // A flipped bit may create a zero (splitting the frame) or break
        // COBS; whatever happens, no damaged frame is ever accepted, and the
        // good frame after it decodes.
        let mut stream = bad.clone();
        stream.extend_from_slice(&good);
        let mut input = &stream[..];
        let mut accepted = vec![];
        loop {
            match d.feed(input) {
                Feed::Consumed => break,
                Feed::Frame { frame, rest } => {
                    accepted.push((frame.seq, frame.parse::<Request>().unwrap()));
                    input = rest;
                }
                Feed::Error { rest, .. } => input = rest,
            }
        }
        assert_eq!(accepted, vec![(9, request.clone())], "bit {bit}");
    }
}

#[test]
fn oversize_frames_are_dropped_without_growing() {
    let mut d = FrameDecoder::new();
    let junk = vec![0x55u8; 3 * MAX_FRAME];
    assert_eq!(d.feed(&junk), Feed::Consumed);
    assert!(matches!(d.feed(&[0]), Feed::Error { error: FrameError::Oversize, .. }));
    let mut out = [0u8; MAX_FRAME];
    let n = encode(1, &Request::Hello, &mut out).unwrap();
    assert!(matches!(d.feed(&out[..n]), Feed::Frame { frame: RawFrame { seq: 1, .. }, .. }));
    assert!(std::mem::size_of::<FrameDecoder>() <= MAX_FRAME + 16, "the decoder is one fixed buffer");
}

proptest! {
    #[test]
    fn frames_survive_any_split(
        picks in proptest::collection::vec(0usize..19, 1..12),
        cuts in proptest::collection::vec(1usize..600, 0..40),
    ) {
        let all = requests();
        let mut stream = vec![];
        let mut out = [0u8; MAX_FRAME];
        for (seq, &p) in picks.iter().enumerate() {
            let n = encode(seq as u32, &all[p], &mut out).unwrap();
            stream.extend_from_slice(&out[..n]);
        }
        let mut d = FrameDecoder::new();
        let mut got = vec![];
        let mut rest = &stream[..];
        let mut cuts = cuts.into_iter();
        while !rest.is_empty() {
            let take = cuts.next().unwrap_or(rest.len()).min(rest.len());
            let (piece, after) = rest.split_at(take);
            rest = after;
            let mut input = piece;
            loop {
                match d.feed(input) {
                    Feed::Consumed => break,
                    Feed::Frame { frame, rest } => {
                        got.push((frame.seq, frame.parse::<Request>().unwrap()));
                        input = rest;
                    }
                    Feed::Error { error, .. } => panic!("{error}"),
                }
            }
        }
        let want: Vec<(u32, Request)> = picks.iter().enumerate().map(|(s, &p)| (s as u32, all[p].clone())).collect();
        prop_assert_eq!(got, want);
    }

    #[test]
    fn random_bytes_never_panic_any_decoder(bytes in proptest::collection::vec(any::<u8>(), 0..12000)) {
        let mut d = FrameDecoder::new();
        let mut input = &bytes[..];
        loop {
            match d.feed(input) {
                Feed::Consumed => break,
                Feed::Frame { frame, rest } => {
                    let _ = frame.parse::<Request>();
                    let _ = frame.parse::<Response>();
                    input = rest;
                }
                Feed::Error { rest, .. } => input = rest,
            }
        }
        let mut copy = bytes.clone();
        let _ = decode(&mut copy);
        let _ = RawFrame { seq: 0, body: &bytes }.parse::<Request>();
        let _ = RawFrame { seq: 0, body: &bytes }.parse::<Response>();
        let config = HeadConfig { dim: 4, capacity: 2, weighting: Estimator::Pooled.weighting(), settings: Estimator::Pooled.settings(), transform: Transform::IDENTITY };
        let mut head = GaussianHead::with_capacity(config).unwrap();
        let _ = stats::read_header(&bytes);
        prop_assert!(stats::load(&mut head, &bytes, &Expect::default()).is_err());
    }
}

#[test]
fn long_error_details_are_cut_between_words_and_marked() {
    // Short details travel whole.
    let short = "statistics are for feature dimension 1280, the head has 1808";
    assert_eq!(detail(&short).as_str(), short);
    // The longest message the device sends, a backbone mismatch naming two
    // SHA-256 digests, fits whole.
    let sha = "ab".repeat(32);
    let mismatch = format!("statistics belong to backbone {sha}, not the loaded backbone {sha}");
    assert_eq!(detail(&mismatch).as_str(), mismatch);
    // A longer one is cut at a word and says so; no number is split.
    let numbers: String = (0..100).map(|i| format!("{} ", 1_000_000 + i)).collect();
    let cut = detail(&numbers);
    assert!(cut.len() <= MAX_DETAIL);
    let body = cut.as_str().strip_suffix(" ...").expect("marked as cut");
    for word in body.split(' ') {
        assert_eq!(word.len(), 7, "{word:?} is a split number");
    }
    assert!(numbers.starts_with(body));
    // One word longer than the limit leaves only the mark rather than a
    // fragment that reads as something else.
    assert_eq!(detail(&"x".repeat(400)).as_str(), " ...");
    // The longest detail round-trips in a frame.
    let r = Response::Error { code: ErrorCode::BackboneMismatch, detail: detail(&numbers) };
    let mut out = [0u8; MAX_FRAME];
    let n = encode(7, &r, &mut out).unwrap();
    let frame = decode(&mut out[..n - 1]).unwrap();
    assert_eq!(frame.parse::<Response>().unwrap(), r);
}
