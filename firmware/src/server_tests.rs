//! The protocol server on the in-memory platform: every request kind, every
//! error code a request can earn, sequence replay, a full head, uploads cut
//! short, and a power cut at every slot write of every persisted operation.

use super::*;
use crate::mem::{Bench, MemPlatform, PowerCut};
use alloc::string::{String, ToString};
use alloc::vec;
use alloc::vec::Vec;
use gaussedge_shared::config::{Estimator, Regularizer};
use gaussedge_shared::head::{label, HeadConfig, OwnedStorage};
use gaussedge_shared::stats::Preprocess;
use gaussedge_shared::wire::{BundleFile, Chunk};
use gaussedge_shared::Transform;

const DIM: usize = 6;
const CAPACITY: usize = 3;
const FACTORY: &[u8] = b"factory backbone";
const FRAME: FrameFormat = FrameFormat { width: 4, height: 4, channels: 3 };

fn preprocess() -> Preprocess {
    Preprocess { width: 4, height: 4, channels: 3, mean: [0.5; 3], std: [0.25; 3] }
}

fn config() -> HeadConfig {
    HeadConfig {
        dim: DIM,
        capacity: CAPACITY,
        weighting: Estimator::Pooled.weighting(),
        settings: Estimator::Pooled.settings(),
        transform: Transform::IDENTITY,
    }
}

type Dev<'a> = Server<'a, OwnedStorage, MemPlatform>;

/// Base statistics for the factory backbone: classes "a" and "b" learned on
/// the host from the camera's frames, as a bundle would ship them.
fn base_stats() -> Vec<u8> {
    fitted(config(), 12)
}

fn platform() -> MemPlatform {
    MemPlatform::new(FACTORY, preprocess(), DIM, base_stats())
}

fn boot(platform: MemPlatform, bench: &mut Bench) -> Dev<'_> {
    let info = platform.backbone();
    let head = GaussianHead::with_capacity(config()).unwrap();
    let bufs = Buffers { frame: &mut bench.frame, input: &mut bench.input, features: &mut bench.features };
    Server::boot(head, platform, bufs, info, FRAME).unwrap()
}

fn new_bench() -> Bench {
    Bench::new(&platform().backbone(), FRAME)
}

/// A host: numbers its requests and decodes the answers.
struct Host {
    seq: u32,
}

impl Host {
    fn new() -> Self {
        Host { seq: 0 }
    }

    fn call(&mut self, dev: &mut Dev<'_>, req: &Request) -> Response {
        self.seq += 1;
        call_with(dev, self.seq, req)
    }

    fn ok(&mut self, dev: &mut Dev<'_>, req: &Request) {
        assert_eq!(self.call(dev, req), Response::Ok, "{req:?}");
    }

    fn error(&mut self, dev: &mut Dev<'_>, req: &Request) -> ErrorCode {
        match self.call(dev, req) {
            Response::Error { code, .. } => code,
            other => panic!("{req:?} answered {other:?}"),
        }
    }

    /// Uploads `bytes` to `target` in chunks of `chunk`.
    fn upload(&mut self, dev: &mut Dev<'_>, target: UploadTarget, bytes: &[u8], chunk: usize) -> Response {
        let sha256: [u8; 32] = Sha256::digest(bytes).into();
        self.ok(dev, &Request::BeginUpload { target, len: bytes.len() as u32, sha256 });
        for (i, part) in bytes.chunks(chunk).enumerate() {
            let data = Chunk::from_slice(part).unwrap();
            self.ok(dev, &Request::UploadChunk { offset: (i * chunk) as u32, data });
        }
        self.call(dev, &Request::FinishUpload)
    }

    fn download(&mut self, dev: &mut Dev<'_>, source: DownloadSource) -> Vec<u8> {
        let mut out = vec![];
        loop {
            match self.call(dev, &Request::Download { source: source.clone(), offset: out.len() as u32, max: 1000 }) {
                Response::Data { total, offset, data } => {
                    assert_eq!(offset as usize, out.len());
                    out.extend_from_slice(&data);
                    if out.len() == total as usize {
                        return out;
                    }
                }
                other => panic!("download answered {other:?}"),
            }
        }
    }

    fn learn(&mut self, dev: &mut Dev<'_>, name: &str, class: u16, count: u16) -> Response {
        assert_eq!(
            self.call(dev, &Request::BeginClass { label: label(name).unwrap(), extend: false }),
            Response::Staged { count: 0 }
        );
        assert_eq!(
            self.call(dev, &Request::Capture { count, source_class: Some(class) }),
            Response::Staged { count: u64::from(count) }
        );
        self.call(dev, &Request::CommitClass)
    }
}

fn call_with(dev: &mut Dev<'_>, seq: u32, req: &Request) -> Response {
    let frame = wire::encode_vec(seq, req).unwrap();
    let mut out = vec![];
    dev.receive(&frame, &mut |b| out.extend_from_slice(b));
    decode(seq, &mut out)
}

fn decode(seq: u32, out: &mut [u8]) -> Response {
    let end = out.iter().position(|&b| b == 0).expect("one response frame");
    let frame = wire::decode(&mut out[..end]).unwrap();
    assert_eq!(frame.seq, seq);
    frame.parse::<Response>().unwrap()
}

fn frame_of(platform: &mut MemPlatform, class: u16) -> Chunk {
    let mut pixels = vec![0u8; FRAME.len()];
    platform.capture(Some(class), &mut pixels).unwrap();
    Chunk::from_slice(&pixels).unwrap()
}

fn predict(host: &mut Host, dev: &mut Dev<'_>, data: Chunk) -> PredictionMsg {
    match host.call(dev, &Request::Frame { format: FRAME, usage: FrameUse::Predict, data }) {
        Response::Prediction(p) => p,
        other => panic!("predict answered {other:?}"),
    }
}

fn info(host: &mut Host, dev: &mut Dev<'_>) -> DeviceInfo {
    match host.call(dev, &Request::Hello) {
        Response::Info(i) => i,
        other => panic!("hello answered {other:?}"),
    }
}

/// `bytes` re-encoded with "unknown" threshold `t`.
fn with_threshold(bytes: &[u8], t: f64) -> Vec<u8> {
    let (head, h) = GaussianHead::from_stats(bytes, CAPACITY, &stats::Expect::default()).unwrap();
    let meta = StatsMeta {
        backbone_sha256: h.backbone_sha256,
        preprocess: h.preprocess,
        novelty_threshold: t,
        ..Default::default()
    };
    stats::to_vec(&head, &meta).unwrap()
}

#[test]
fn the_unknown_threshold_comes_with_the_statistics_and_survives_reboots() {
    let base = with_threshold(&base_stats(), 40.0);
    let mut bench = new_bench();
    let mut dev = boot(MemPlatform::new(FACTORY, preprocess(), DIM, base), &mut bench);
    let mut host = Host::new();
    assert_eq!(info(&mut host, &mut dev).novelty_threshold, 40.0, "the bundle's threshold from boot");
    // Saved and pulled statistics carry the device's threshold.
    host.ok(&mut dev, &Request::SetNoveltyThreshold(7.5));
    let pulled = host.download(&mut dev, DownloadSource::Stats);
    assert_eq!(stats::read_header(&pulled).unwrap().novelty_threshold, 7.5);
    // A pushed head brings its own, and it outlives a reboot.
    assert_eq!(host.upload(&mut dev, UploadTarget::Stats, &with_threshold(&pulled, 12.0), 700), Response::Ok);
    assert_eq!(info(&mut host, &mut dev).novelty_threshold, 12.0);
    let platform = dev.platform.reboot();
    drop(dev);
    let mut bench = new_bench();
    let mut dev = boot(platform, &mut bench);
    assert_eq!(info(&mut host, &mut dev).novelty_threshold, 12.0);
    // A reset goes back to the bundle's statistics and their threshold.
    host.ok(&mut dev, &Request::Reset);
    assert_eq!(info(&mut host, &mut dev).novelty_threshold, 40.0);
    // Statistics that bring none (uncalibrated) mean "never unknown".
    assert_eq!(host.upload(&mut dev, UploadTarget::Stats, &base_stats(), 700), Response::Ok);
    assert_eq!(info(&mut host, &mut dev).novelty_threshold, f64::INFINITY);
    // A refused upload changes neither the head nor the threshold.
    host.ok(&mut dev, &Request::SetNoveltyThreshold(3.0));
    let mut damaged = with_threshold(&pulled, 99.0);
    let n = damaged.len();
    damaged[n - 9] ^= 1;
    assert!(matches!(host.upload(&mut dev, UploadTarget::Stats, &damaged, 700), Response::Error { .. }));
    assert_eq!(info(&mut host, &mut dev).novelty_threshold, 3.0);
}

#[test]
fn every_request_kind_is_answered() {
    let mut bench = new_bench();
    let mut dev = boot(platform(), &mut bench);
    let mut host = Host::new();
    let mut camera = platform();

    let i = info(&mut host, &mut dev);
    assert_eq!((i.protocol, i.dim, i.capacity, i.classes, i.generation), (PROTOCOL_VERSION, DIM as u32, 3, 2, 0));
    assert_eq!(i.backbone_sha256, MemPlatform::sha256_of(FACTORY));

    // Learn a class from frames sent by the host, then from the camera.
    host.call(&mut dev, &Request::BeginClass { label: label("c").unwrap(), extend: false });
    let data = frame_of(&mut camera, 2);
    assert_eq!(
        host.call(&mut dev, &Request::Frame { format: FRAME, usage: FrameUse::Learn, data: data.clone() }),
        Response::Staged { count: 1 }
    );
    assert_eq!(
        host.call(&mut dev, &Request::Capture { count: 11, source_class: Some(2) }),
        Response::Staged { count: 12 }
    );
    assert_eq!(host.call(&mut dev, &Request::CommitClass), Response::Committed { slot: 2, count: 12 });
    assert_eq!(predict(&mut host, &mut dev, frame_of(&mut camera, 2)).label.as_str(), "c");
    assert_eq!(predict(&mut host, &mut dev, frame_of(&mut camera, 0)).label.as_str(), "a");

    match host.call(&mut dev, &Request::ListClasses { from: 1 }) {
        Response::Classes { total, entries } => {
            assert_eq!(total, 3);
            let names: Vec<&str> = entries.iter().map(|e| e.label.as_str()).collect();
            assert_eq!(names, ["b", "c"]);
            assert_eq!(entries[1].stored, 8, "the store keeps the last 8 samples");
        }
        other => panic!("{other:?}"),
    }

    // Settings and threshold persist, each as a new generation.
    let mut settings = Estimator::Pooled.settings();
    settings.regularizer = Regularizer::Shrinkage(1e-2);
    host.ok(&mut dev, &Request::SetSettings(settings));
    host.ok(&mut dev, &Request::SetNoveltyThreshold(0.0));
    assert!(predict(&mut host, &mut dev, frame_of(&mut camera, 1)).novel);
    let i = info(&mut host, &mut dev);
    assert_eq!((i.settings, i.novelty_threshold, i.generation), (settings, 0.0, 3));

    // Downloads: the committed statistics and a stored capture.
    let pulled = host.download(&mut dev, DownloadSource::Stats);
    assert_eq!(stats::read_header(&pulled).unwrap().classes, 3);
    let capture = host.download(&mut dev, DownloadSource::Capture { label: label("c").unwrap(), index: 7 });
    assert_eq!((capture.len(), &capture[..5]), (CAPTURE_HEADER + FRAME.len(), &[4, 0, 4, 0, 3][..]));

    // A stats upload, an extend, an abort, a forget, a reset.
    assert_eq!(host.upload(&mut dev, UploadTarget::Stats, &pulled, 700), Response::Ok);
    host.call(&mut dev, &Request::BeginClass { label: label("a").unwrap(), extend: true });
    assert_eq!(
        host.call(&mut dev, &Request::Capture { count: 2, source_class: Some(0) }),
        Response::Staged { count: 2 }
    );
    assert_eq!(host.call(&mut dev, &Request::CommitClass), Response::Committed { slot: 0, count: 14 });
    host.ok(&mut dev, &Request::ForgetClass { label: label("c").unwrap() });
    assert_eq!(dev.platform.stored_count("c"), 0, "forgetting drops the class's samples");
    host.call(&mut dev, &Request::BeginClass { label: label("d").unwrap(), extend: false });
    host.call(&mut dev, &Request::Capture { count: 2, source_class: Some(3) });
    host.ok(&mut dev, &Request::AbortClass);
    assert_eq!(dev.platform.stored_count("d"), 0, "an aborted class keeps no samples");
    assert_eq!(info(&mut host, &mut dev).classes, 2);
    host.ok(&mut dev, &Request::Reset);
    assert_eq!(dev.head().slots()[0].count, 12);

    // A frame larger than one chunk goes as an upload too.
    let data = frame_of(&mut camera, 1);
    let usage = FrameUse::Predict;
    match host.upload(&mut dev, UploadTarget::Frame { format: FRAME, usage }, &data, 10) {
        Response::Prediction(p) => assert_eq!(p.label.as_str(), "b"),
        other => panic!("{other:?}"),
    }

    // A bundle: backbone, manifest and statistics for it, then activation.
    let next = b"next backbone";
    let stats_for_next = {
        let (mut head, _) = GaussianHead::from_stats(&base_stats(), CAPACITY, &stats::Expect::default()).unwrap();
        head.set_settings(settings).unwrap();
        let meta =
            StatsMeta { backbone_sha256: MemPlatform::sha256_of(next), preprocess: preprocess(), ..Default::default() };
        stats::to_vec(&head, &meta).unwrap()
    };
    for (file, bytes) in
        [(BundleFile::Backbone, &next[..]), (BundleFile::Manifest, b"dim=6"), (BundleFile::Stats, &stats_for_next)]
    {
        assert_eq!(host.upload(&mut dev, UploadTarget::Bundle(file), bytes, 300), Response::Ok);
    }
    host.ok(&mut dev, &Request::ActivateBundle);
    let i = info(&mut host, &mut dev);
    assert_eq!((i.backbone_sha256, i.classes), (MemPlatform::sha256_of(next), 2));
}

#[test]
fn every_refusal_carries_its_code_and_changes_nothing() {
    let mut bench = new_bench();
    let mut dev = boot(platform(), &mut bench);
    let mut host = Host::new();
    let mut camera = platform();
    let learn = |data| Request::Frame { format: FRAME, usage: FrameUse::Learn, data };
    let lbl = |s| label(s).unwrap();

    assert_eq!(host.error(&mut dev, &learn(frame_of(&mut camera, 0))), ErrorCode::NotLearning);
    assert_eq!(host.error(&mut dev, &Request::CommitClass), ErrorCode::NotLearning);
    assert_eq!(host.error(&mut dev, &Request::Capture { count: 1, source_class: None }), ErrorCode::NotLearning);
    assert_eq!(
        host.error(&mut dev, &Request::BeginClass { label: lbl("a"), extend: false }),
        ErrorCode::DuplicateLabel
    );
    assert_eq!(host.error(&mut dev, &Request::BeginClass { label: lbl("zz"), extend: true }), ErrorCode::UnknownClass);
    assert_eq!(host.error(&mut dev, &Request::ForgetClass { label: lbl("zz") }), ErrorCode::UnknownClass);
    assert_eq!(host.error(&mut dev, &Request::SetNoveltyThreshold(f64::NAN)), ErrorCode::BadRequest);
    assert_eq!(
        host.error(&mut dev, &Request::Download { source: DownloadSource::Stats, offset: 0, max: 10 }),
        ErrorCode::NotFound
    );
    let mut bad = Estimator::Pooled.settings();
    bad.regularizer = Regularizer::Shrinkage(f64::NAN);
    assert_eq!(host.error(&mut dev, &Request::SetSettings(bad)), ErrorCode::BadRequest);
    bad.regularizer = Regularizer::Ridge(0.0);
    bad.debias = false;
    // A ridge of 0 on 6 dimensions learned from 24 samples still factors;
    // a head with one sample per class would not (below).
    assert_eq!(host.call(&mut dev, &Request::SetSettings(bad)), Response::Ok);
    host.ok(&mut dev, &Request::SetSettings(Estimator::Pooled.settings()));

    // Frames: wrong length, too large, wrong format.
    let short = Chunk::from_slice(&[1, 2, 3]).unwrap();
    assert_eq!(
        host.error(&mut dev, &Request::Frame { format: FRAME, usage: FrameUse::Predict, data: short }),
        ErrorCode::BadFrame
    );
    let big = FrameFormat { width: 8, height: 8, channels: 3 };
    let data = Chunk::from_slice(&[7; 192]).unwrap();
    assert_eq!(
        host.error(&mut dev, &Request::Frame { format: big, usage: FrameUse::Predict, data }),
        ErrorCode::BadFrame
    );
    let sha256 = [0; 32];
    assert_eq!(
        host.error(
            &mut dev,
            &Request::BeginUpload {
                target: UploadTarget::Frame { format: big, usage: FrameUse::Predict },
                len: 192,
                sha256
            }
        ),
        ErrorCode::BadFrame
    );

    // Busy while learning; an empty class; a download of what is not there.
    host.call(&mut dev, &Request::BeginClass { label: lbl("n"), extend: false });
    assert_eq!(host.error(&mut dev, &Request::CommitClass), ErrorCode::EmptyClass);
    assert_eq!(host.error(&mut dev, &Request::BeginClass { label: lbl("m"), extend: false }), ErrorCode::Busy);
    assert_eq!(host.error(&mut dev, &Request::Reset), ErrorCode::Busy);
    assert_eq!(host.error(&mut dev, &Request::ActivateBundle), ErrorCode::Busy);
    host.ok(&mut dev, &Request::AbortClass);
    assert_eq!(host.error(&mut dev, &Request::AbortClass), ErrorCode::NotLearning);
    assert_eq!(
        host.error(&mut dev, &Request::Download { source: DownloadSource::Stats, offset: 99_999, max: 10 }),
        ErrorCode::UploadOrder
    );
    assert_eq!(
        host.error(
            &mut dev,
            &Request::Download { source: DownloadSource::Capture { label: lbl("a"), index: 0 }, offset: 0, max: 10 }
        ),
        ErrorCode::NotFound
    );

    // Uploads out of order, past their length, with the wrong hash, none.
    assert_eq!(host.error(&mut dev, &Request::FinishUpload), ErrorCode::NoUpload);
    assert_eq!(host.error(&mut dev, &Request::UploadChunk { offset: 0, data: Chunk::new() }), ErrorCode::NoUpload);
    let bytes = base_stats();
    host.ok(&mut dev, &Request::BeginUpload { target: UploadTarget::Stats, len: 10, sha256: [1; 32] });
    let data = Chunk::from_slice(&bytes[..10]).unwrap();
    assert_eq!(host.error(&mut dev, &Request::UploadChunk { offset: 3, data: data.clone() }), ErrorCode::UploadOrder);
    assert_eq!(
        host.error(&mut dev, &Request::UploadChunk { offset: 0, data: Chunk::from_slice(&bytes[..11]).unwrap() }),
        ErrorCode::UploadOrder
    );
    host.ok(&mut dev, &Request::UploadChunk { offset: 0, data });
    assert_eq!(host.error(&mut dev, &Request::FinishUpload), ErrorCode::UploadHash);
    assert_eq!(
        host.error(&mut dev, &Request::BeginUpload { target: UploadTarget::Stats, len: u32::MAX, sha256 }),
        ErrorCode::Storage
    );

    // Statistics that are damaged, of another backbone, of another size.
    let mut damaged = bytes.clone();
    damaged[100] ^= 1;
    assert!(matches!(
        host.upload(&mut dev, UploadTarget::Stats, &damaged, 900),
        Response::Error { code: ErrorCode::BadStats, .. }
    ));
    let other = {
        let (head, _) = GaussianHead::from_stats(&bytes, CAPACITY, &stats::Expect::default()).unwrap();
        stats::to_vec(&head, &StatsMeta { backbone_sha256: MemPlatform::sha256_of(b"other"), ..Default::default() })
            .unwrap()
    };
    match host.upload(&mut dev, UploadTarget::Stats, &other, 900) {
        Response::Error { code: ErrorCode::BackboneMismatch, detail } => {
            // Both digests arrive whole (they once were cut at 64 bytes).
            assert!(detail.contains(&gaussedge_shared::stats::Hex(&MemPlatform::sha256_of(FACTORY)).to_string()));
        }
        other => panic!("{other:?}"),
    }
    let wide = {
        let mut c = config();
        c.dim = DIM + 1;
        let mut head = GaussianHead::with_capacity(c).unwrap();
        head.begin(lbl("w")).unwrap();
        head.learn(&[0.5; DIM + 1]).unwrap();
        head.learn(&[0.25; DIM + 1]).unwrap();
        head.commit().unwrap();
        let meta = StatsMeta { backbone_sha256: MemPlatform::sha256_of(FACTORY), ..Default::default() };
        stats::to_vec(&head, &meta).unwrap()
    };
    match host.upload(&mut dev, UploadTarget::Stats, &wide, 900) {
        Response::Error { code: ErrorCode::DimMismatch, detail } => {
            assert_eq!(detail.as_str(), "statistics are for feature dimension 7, the head has 6")
        }
        other => panic!("{other:?}"),
    }

    // A bundle with a backbone of another feature size, or none staged.
    assert_eq!(host.error(&mut dev, &Request::ActivateBundle), ErrorCode::NoUpload);
    host.upload(&mut dev, UploadTarget::Bundle(BundleFile::Backbone), b"x", 10);
    host.upload(&mut dev, UploadTarget::Bundle(BundleFile::Manifest), b"dim=7", 10);
    host.upload(&mut dev, UploadTarget::Bundle(BundleFile::Stats), &bytes, 900);
    assert_eq!(host.error(&mut dev, &Request::ActivateBundle), ErrorCode::DimMismatch);
    host.upload(&mut dev, UploadTarget::Bundle(BundleFile::Manifest), b"dim=6", 10);
    assert_eq!(host.error(&mut dev, &Request::ActivateBundle), ErrorCode::BackboneMismatch);

    // A request that does not parse.
    let frame = wire::encode_vec(999, &Response::Staged { count: 5 }).unwrap();
    let mut out = vec![];
    dev.receive(&frame, &mut |b| out.extend_from_slice(b));
    assert!(matches!(decode(999, &mut out), Response::Error { code: ErrorCode::BadRequest, .. }));

    // Nothing of this reached the slots: no state was saved.
    assert_eq!(info(&mut host, &mut dev).generation, 2, "only the two settings changes were saved");
    assert_eq!(info(&mut host, &mut dev).classes, 2);
}

/// Statistics of classes "a" and "b", `per_class` camera frames each, for
/// a head made with `config`.
fn fitted(config: HeadConfig, per_class: usize) -> Vec<u8> {
    let mut p = MemPlatform::new(FACTORY, preprocess(), DIM, vec![]);
    let mut head = GaussianHead::with_capacity(config).unwrap();
    let (mut frame, mut input, mut features) = (vec![0u8; FRAME.len()], vec![0f32; 48], vec![0f32; DIM]);
    for (c, name) in ["a", "b"].iter().enumerate() {
        head.begin(label(name).unwrap()).unwrap();
        for _ in 0..per_class {
            let f = p.capture(Some(c as u16), &mut frame).unwrap();
            frame_to_input(&frame, f, &preprocess(), &mut input).unwrap();
            p.extract(&input, &mut features).unwrap();
            head.learn(&features).unwrap();
        }
        head.commit().unwrap();
    }
    let meta = StatsMeta { backbone_sha256: p.backbone().sha256, preprocess: preprocess(), ..Default::default() };
    stats::to_vec(&head, &meta).unwrap()
}

/// The codes the main refusal test cannot reach on the default device:
/// a camera that fails, a head with no class, settings under which the
/// covariance does not factor, a request the estimator cannot serve.
#[test]
fn the_rarer_refusals_carry_their_codes_and_change_nothing() {
    let lbl = |s| label(s).unwrap();

    // A camera that stops answering: the class stays open with no samples.
    let mut bench = new_bench();
    let mut broken = platform();
    broken.break_camera();
    let mut dev = boot(broken, &mut bench);
    let mut host = Host::new();
    host.call(&mut dev, &Request::BeginClass { label: lbl("c"), extend: false });
    assert_eq!(host.error(&mut dev, &Request::Capture { count: 3, source_class: Some(2) }), ErrorCode::Capture);
    assert_eq!(info(&mut host, &mut dev).learning, Some((lbl("c"), 0)));
    host.ok(&mut dev, &Request::AbortClass);
    drop(dev);

    // No class left to answer with.
    let mut bench = new_bench();
    let mut camera = platform();
    let mut dev = boot(platform(), &mut bench);
    for name in ["a", "b"] {
        host.ok(&mut dev, &Request::ForgetClass { label: lbl(name) });
    }
    let data = frame_of(&mut camera, 0);
    assert_eq!(
        host.error(&mut dev, &Request::Frame { format: FRAME, usage: FrameUse::Predict, data }),
        ErrorCode::NoClasses
    );
    drop(dev);

    // Two samples per class in six dimensions: the pooled scatter has rank
    // two, so only the shrinkage keeps it invertible. Without a regulariser
    // it does not factor, and the head keeps the settings it had.
    let mut bench = new_bench();
    let mut dev = boot(platform(), &mut bench);
    let thin = fitted(config(), 2);
    assert_eq!(host.upload(&mut dev, UploadTarget::Stats, &thin, 900), Response::Ok);
    let probe = frame_of(&mut camera, 1);
    let before = predict(&mut host, &mut dev, probe.clone());
    let mut bare = Estimator::Pooled.settings();
    bare.regularizer = Regularizer::Ridge(0.0);
    assert_eq!(host.error(&mut dev, &Request::SetSettings(bare)), ErrorCode::NotPositiveDefinite);
    assert_eq!(info(&mut host, &mut dev).settings, Estimator::Pooled.settings());
    assert_eq!(predict(&mut host, &mut dev, probe), before);

    // The seed estimator keeps no per-class scatter: a class cannot grow.
    let mut seed = config();
    seed.weighting = Estimator::Seed.weighting();
    seed.settings = Estimator::Seed.settings();
    assert_eq!(host.upload(&mut dev, UploadTarget::Stats, &fitted(seed, 12), 900), Response::Ok);
    assert_eq!(host.error(&mut dev, &Request::BeginClass { label: lbl("a"), extend: true }), ErrorCode::Unsupported);
    assert_eq!(info(&mut host, &mut dev).learning, None);
}

#[test]
fn a_full_head_refuses_the_next_class() {
    let mut bench = new_bench();
    let mut dev = boot(platform(), &mut bench);
    let mut host = Host::new();
    assert_eq!(host.learn(&mut dev, "c", 2, 5), Response::Committed { slot: 2, count: 5 });
    assert_eq!(
        host.error(&mut dev, &Request::BeginClass { label: label("d").unwrap(), extend: false }),
        ErrorCode::Full
    );
    // Room again after a forget.
    host.ok(&mut dev, &Request::ForgetClass { label: label("b").unwrap() });
    assert_eq!(host.learn(&mut dev, "d", 3, 5), Response::Committed { slot: 1, count: 5 });
}

#[test]
fn a_repeated_sequence_number_is_answered_from_the_cache_not_applied_again() {
    let mut bench = new_bench();
    let mut dev = boot(platform(), &mut bench);
    let begin = Request::BeginClass { label: label("c").unwrap(), extend: false };
    assert_eq!(call_with(&mut dev, 1, &begin), Response::Staged { count: 0 });
    let capture = Request::Capture { count: 3, source_class: Some(2) };
    assert_eq!(call_with(&mut dev, 2, &capture), Response::Staged { count: 3 });
    // The host lost the answer and retries: the same bytes, nothing applied.
    assert_eq!(call_with(&mut dev, 2, &capture), Response::Staged { count: 3 });
    assert_eq!(call_with(&mut dev, 3, &Request::CommitClass), Response::Committed { slot: 2, count: 3 });
    assert_eq!(call_with(&mut dev, 3, &Request::CommitClass), Response::Committed { slot: 2, count: 3 });
    assert_eq!(dev.counters().replayed, 2);
    assert_eq!(dev.head().class_count(), 3);
    // Garbage between frames is dropped, and the next frame still works.
    let mut bytes = vec![0x55; 40];
    bytes.push(0);
    bytes.extend(wire::encode_vec(4, &Request::Hello).unwrap());
    let mut out = vec![];
    dev.receive(&bytes, &mut |b| out.extend_from_slice(b));
    assert!(matches!(decode(4, &mut out), Response::Info(_)));
    assert_eq!(dev.counters().bad_frames, 1);
}

#[test]
fn an_upload_cut_midway_changes_nothing_and_the_next_one_starts_clean() {
    let mut bench = new_bench();
    let mut dev = boot(platform(), &mut bench);
    let mut host = Host::new();
    assert_eq!(host.learn(&mut dev, "c", 2, 6), Response::Committed { slot: 2, count: 6 });
    let state = host.download(&mut dev, DownloadSource::Stats);
    let bytes = base_stats();
    let sha256: [u8; 32] = Sha256::digest(&bytes).into();
    host.ok(&mut dev, &Request::BeginUpload { target: UploadTarget::Stats, len: bytes.len() as u32, sha256 });
    host.ok(&mut dev, &Request::UploadChunk { offset: 0, data: Chunk::from_slice(&bytes[..200]).unwrap() });
    // The host gives up: finishing early is refused, the head is untouched.
    assert_eq!(host.error(&mut dev, &Request::FinishUpload), ErrorCode::UploadOrder);
    assert_eq!(host.download(&mut dev, DownloadSource::Stats), state);
    // An upload begun over a half-finished one replaces it.
    host.ok(&mut dev, &Request::BeginUpload { target: UploadTarget::Stats, len: bytes.len() as u32, sha256 });
    host.ok(&mut dev, &Request::UploadChunk { offset: 0, data: Chunk::from_slice(&bytes[..200]).unwrap() });
    assert_eq!(host.upload(&mut dev, UploadTarget::Stats, &bytes, 1000), Response::Ok);
    assert_eq!(dev.head().class_count(), 2);
}

/// One persisted operation, from a host's side.
type Operation = fn(&mut Host, &mut Dev<'_>) -> Response;

fn operations() -> Vec<(&'static str, Operation)> {
    vec![
        ("commit", |h, d| {
            h.call(d, &Request::BeginClass { label: label("c").unwrap(), extend: false });
            h.call(d, &Request::Capture { count: 4, source_class: Some(2) });
            h.call(d, &Request::CommitClass)
        }),
        ("extend", |h, d| {
            h.call(d, &Request::BeginClass { label: label("a").unwrap(), extend: true });
            h.call(d, &Request::Capture { count: 3, source_class: Some(0) });
            h.call(d, &Request::CommitClass)
        }),
        ("forget", |h, d| h.call(d, &Request::ForgetClass { label: label("b").unwrap() })),
        ("threshold", |h, d| h.call(d, &Request::SetNoveltyThreshold(42.0))),
        ("settings", |h, d| {
            let mut s = Estimator::Pooled.settings();
            s.regularizer = Regularizer::Shrinkage(0.05);
            h.call(d, &Request::SetSettings(s))
        }),
        ("stats upload", |h, d| {
            let (mut head, _) = GaussianHead::from_stats(&base_stats(), CAPACITY, &stats::Expect::default()).unwrap();
            head.forget("a").unwrap();
            let meta = StatsMeta {
                backbone_sha256: MemPlatform::sha256_of(FACTORY),
                preprocess: preprocess(),
                ..Default::default()
            };
            h.upload(d, UploadTarget::Stats, &stats::to_vec(&head, &meta).unwrap(), 4000)
        }),
        ("reset", |h, d| h.call(d, &Request::Reset)),
    ]
}

/// What a host can see of a device's durable state.
fn observe(dev: &mut Dev<'_>) -> (Vec<u8>, f64) {
    let mut host = Host { seq: 1000 };
    let state = match dev.loaded_from() {
        Some(_) => host.download(dev, DownloadSource::Stats),
        None => vec![],
    };
    (state, info(&mut host, dev).novelty_threshold)
}

#[test]
fn a_power_cut_at_every_slot_write_boots_the_old_state_or_the_new_one() {
    let mut cut_points = 0;
    for (name, op) in operations() {
        // A device with some history, so both slots hold a state.
        let mut bench = new_bench();
        let mut dev = boot(platform(), &mut bench);
        let mut host = Host::new();
        host.learn(&mut dev, "x", 3, 4);
        host.ok(&mut dev, &Request::ForgetClass { label: label("x").unwrap() });
        let before_platform = dev.platform.clone();
        let old = observe(&mut dev);

        // The operation run through with full power: the new state, and
        // the number of slot writes it makes.
        let mut p = before_platform.clone();
        p.cut_power(PowerCut { at_write: u64::MAX, torn_at: 0, keep_unsynced: false });
        let mut bench2 = new_bench();
        let mut dev = boot(p, &mut bench2);
        let response = op(&mut Host::new(), &mut dev);
        assert!(!matches!(response, Response::Error { .. }), "{name}: {response:?}");
        let writes = dev.platform.writes();
        assert!(writes >= 4, "{name}: {writes} writes");
        let new = observe(&mut dev);
        assert_ne!(old, new, "{name} changes the durable state");

        for at_write in 0..writes {
            for keep_unsynced in [false, true] {
                for torn_at in [0, 1, 17, usize::MAX] {
                    let mut p = before_platform.clone();
                    p.cut_power(PowerCut { at_write, torn_at, keep_unsynced });
                    let mut b = new_bench();
                    let mut dev = boot(p, &mut b);
                    let response = op(&mut Host::new(), &mut dev);
                    assert!(dev.platform.power_lost(), "{name}: cut {at_write} did not happen");
                    assert!(
                        matches!(response, Response::Error { code: ErrorCode::Storage, .. }),
                        "{name}: {response:?}"
                    );
                    let mut b = new_bench();
                    let mut rebooted = boot(dev.platform.reboot(), &mut b);
                    let got = observe(&mut rebooted);
                    assert!(
                        got == old || got == new,
                        "{name}: cut at write {at_write} (torn at {torn_at}, unsynced kept: {keep_unsynced}) booted a third state"
                    );
                    cut_points += 1;
                }
            }
        }
    }
    std::eprintln!("power cuts tried: {cut_points}");
    assert!(cut_points > 100);
}

#[test]
fn a_frame_buffer_too_small_for_the_backbone_is_refused_at_boot() {
    let p = platform();
    let info = p.backbone();
    let mut frame = vec![0u8; 10];
    let (mut input, mut features) = (vec![0f32; 48], vec![0f32; DIM]);
    let bufs = Buffers { frame: &mut frame, input: &mut input, features: &mut features };
    let head = GaussianHead::with_capacity(config()).unwrap();
    assert!(Server::boot(head, p, bufs, info, FRAME).is_err());
}

/// The fuzz targets' seed corpora are what these tests send: a session of
/// requests for the server, frames for the decoder, a small statistics
/// file and a manifest. Kept in `fuzz/corpus/` and checked here so they
/// follow the protocol; `GAUSSEDGE_BLESS=1` rewrites them.
#[test]
fn fuzz_seed_corpora_are_current() {
    let session: Vec<Request> = vec![
        Request::Hello,
        Request::BeginClass { label: label("c").unwrap(), extend: false },
        Request::Capture { count: 4, source_class: Some(2) },
        Request::CommitClass,
        Request::Frame { format: FRAME, usage: FrameUse::Predict, data: Chunk::from_slice(&[90; 48]).unwrap() },
        Request::SetNoveltyThreshold(3.5),
        Request::Download { source: DownloadSource::Stats, offset: 0, max: 512 },
        Request::ListClasses { from: 0 },
        Request::ForgetClass { label: label("c").unwrap() },
        Request::Reset,
    ];
    // As link bytes (whole frames), or as the fuzz targets' sealed records
    // (`[length][request body]`, each wrapped in a valid frame there).
    let frames = |first: u8| {
        let mut out = vec![first];
        for (i, r) in session.iter().enumerate() {
            out.extend(wire::encode_vec(i as u32 + 1, r).unwrap());
        }
        out
    };
    let records = |first: u8| {
        let mut out = vec![first];
        for (i, r) in session.iter().enumerate() {
            let mut frame = wire::encode_vec(i as u32 + 1, r).unwrap();
            let n = frame.len() - 1;
            let body = wire::decode(&mut frame[..n]).unwrap().body.to_vec();
            out.push(body.len() as u8);
            out.extend(body);
        }
        out
    };
    let head = {
        let mut c = config();
        c.dim = 4;
        let mut h = GaussianHead::with_capacity(c).unwrap();
        for (name, offset) in [("a", 0.0), ("b", 3.0)] {
            h.begin(label(name).unwrap()).unwrap();
            for k in 0..5 {
                let k = k as f32;
                h.learn(&[offset + k * 0.1, 1.0 - k * 0.2, offset * k * 0.05, 0.3 * k]).unwrap();
            }
            h.commit().unwrap();
        }
        h
    };
    let manifest = gaussedge_bundle::Manifest {
        format: gaussedge_bundle::MANIFEST_FORMAT,
        dataset: "cifar10".into(),
        labels: ["a", "b", "c"].map(String::from).to_vec(),
        base_classes: vec![0, 1],
        preprocess: preprocess(),
        feature_dim: DIM,
        layers: gaussedge_bundle::default_layers(),
        backbone_sha256: gaussedge_shared::stats::Hex(&MemPlatform::sha256_of(FACTORY)).to_string(),
        head: gaussedge_bundle::HeadDefaults {
            weighting: Estimator::Pooled.weighting(),
            settings: Estimator::Pooled.settings(),
            transform: Transform::IDENTITY,
        },
        calibration: None,
        extra: serde_json::Value::Null,
    };
    let seeds: Vec<(&str, Vec<u8>)> = vec![
        ("server/session", records(0)),
        ("server/session-power-cut", records(0x85)),
        ("server/session-link-bytes", frames(0x20)),
        ("frames/requests", frames(7)),
        ("frames/request-bodies", records(0x87)),
        (
            "frames/responses",
            [vec![13], wire::encode_vec(1, &Response::Staged { count: 4 }).unwrap(), {
                wire::encode_vec(
                    2,
                    &Response::Error { code: ErrorCode::Full, detail: wire::detail(&"the head is full") },
                )
                .unwrap()
            }]
            .concat(),
        ),
        ("stats/two-classes", stats::to_vec(&head, &StatsMeta::default()).unwrap()),
        ("manifest/valid", serde_json::to_vec_pretty(&manifest).unwrap()),
    ];
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus");
    let bless = std::env::var_os("GAUSSEDGE_BLESS").is_some();
    for (name, bytes) in seeds {
        let path = root.join(name);
        if bless {
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, &bytes).unwrap();
        }
        let committed = std::fs::read(&path).unwrap_or_default();
        assert!(committed == bytes, "{} is stale: rerun this test with GAUSSEDGE_BLESS=1", path.display());
    }
}
