//! The protocol server: a sans-IO state machine. Bytes come in through
//! [`Server::receive`], response frames go out through a callback; the
//! backbone, storage and camera are the [`Platform`]'s. It needs no
//! allocator: the head's storage and the frame, input and feature buffers
//! are handed in at boot.
//!
//! Every request is answered with a response carrying its sequence number.
//! The last response is cached: a request that repeats the last sequence
//! number (the host retrying after a lost or damaged answer) gets the cached
//! bytes again and is not applied twice.

use crate::persist::{self, Loaded, Persisted};
use crate::platform::{BackboneInfo, Fault, Platform};
use gaussedge_shared::frame::{frame_to_input, input_len};
use gaussedge_shared::head::{GaussianHead, HeadError, Label, Storage};
use gaussedge_shared::stats::{self, StatsError, StatsMeta};
use gaussedge_shared::wire::{
    self, ClassEntry, DeviceInfo, DownloadSource, ErrorCode, Feed, FrameFormat, FrameUse, PredictionMsg, Request,
    Response, Text, UploadTarget, CLASSES_PER_PAGE, MAX_CHUNK, MAX_FRAME, PROTOCOL_VERSION,
};
use sha2::{Digest, Sha256};

/// Firmware version reported in [`DeviceInfo`].
pub const FIRMWARE: &str = env!("CARGO_PKG_VERSION");
/// Novelty threshold of statistics that bring none (files before version 4,
/// heads fitted without calibration): never answer "unknown".
pub const DEFAULT_NOVELTY_THRESHOLD: f64 = f64::INFINITY;
/// Size of the header of a capture download: width, height (u16 LE), channels.
pub const CAPTURE_HEADER: usize = 5;

/// Working buffers, sized at boot.
pub struct Buffers<'a> {
    /// Raw frame bytes; its length is the largest frame accepted.
    pub frame: &'a mut [u8],
    /// One preprocessed input.
    pub input: &'a mut [f32],
    /// One feature vector.
    pub features: &'a mut [f32],
}

struct Upload {
    target: UploadTarget,
    len: u32,
    received: u32,
    sha256: [u8; 32],
    hasher: Sha256,
}

/// Counters for tests and diagnostics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Frames received whole and intact.
    pub frames_in: u64,
    /// Frames dropped: damaged, oversize, or not a frame.
    pub bad_frames: u64,
    /// Requests carried out.
    pub applied: u64,
    /// Repeated requests answered from the cache instead.
    pub replayed: u64,
}

/// The protocol server: a device's whole state machine (see the module docs).
pub struct Server<'a, S: Storage, P: Platform> {
    head: GaussianHead<S>,
    /// The hardware it runs on.
    pub platform: P,
    bufs: Buffers<'a>,
    backbone: BackboneInfo,
    max_frame: FrameFormat,
    decoder: wire::FrameDecoder,
    out: [u8; MAX_FRAME],
    /// Sequence number and length of the cached last response in `out`.
    last: Option<(u32, usize)>,
    upload: Option<Upload>,
    persisted: Persisted,
    current: Option<Loaded>,
    counters: Stats,
}

fn error(code: ErrorCode, detail: &str) -> Response {
    Response::Error { code, detail: wire::detail(&detail) }
}

fn fault(f: Fault) -> Response {
    Response::Error { code: f.code, detail: f.wire_detail() }
}

fn head_error(e: HeadError) -> Response {
    let code = match e {
        HeadError::DimMismatch { .. } => ErrorCode::DimMismatch,
        HeadError::NonFinite => ErrorCode::BadFrame,
        HeadError::Full { .. } => ErrorCode::Full,
        HeadError::DuplicateLabel(_) => ErrorCode::DuplicateLabel,
        HeadError::UnknownClass(_) => ErrorCode::UnknownClass,
        HeadError::Busy(_) | HeadError::NotEmpty => ErrorCode::Busy,
        HeadError::NotLearning => ErrorCode::NotLearning,
        HeadError::EmptyClass => ErrorCode::EmptyClass,
        HeadError::ExtendUnsupported => ErrorCode::Unsupported,
        HeadError::NoClasses => ErrorCode::NoClasses,
        HeadError::NotPositiveDefinite { .. } => ErrorCode::NotPositiveDefinite,
        HeadError::StorageSize { .. } | HeadError::TooLarge { .. } => ErrorCode::Storage,
        HeadError::InvalidSetting(_) => ErrorCode::BadRequest,
        HeadError::CountOverflow => ErrorCode::Full,
    };
    Response::Error { code, detail: wire::detail(&e) }
}

fn stats_error(e: StatsError) -> Response {
    match e {
        StatsError::Head(h) => head_error(h),
        StatsError::BackboneMismatch { .. } => {
            Response::Error { code: ErrorCode::BackboneMismatch, detail: wire::detail(&e) }
        }
        StatsError::DimMismatch { .. } => Response::Error { code: ErrorCode::DimMismatch, detail: wire::detail(&e) },
        other => Response::Error { code: ErrorCode::BadStats, detail: wire::detail(&other) },
    }
}

impl<'a, S: Storage, P: Platform> Server<'a, S, P> {
    /// Boots: loads the newest valid slot, or else the bundle's base
    /// statistics. `head` must have the backbone's feature dimension.
    pub fn boot(
        mut head: GaussianHead<S>,
        mut platform: P,
        bufs: Buffers<'a>,
        backbone: BackboneInfo,
        max_frame: FrameFormat,
    ) -> Result<Self, Fault> {
        if head.dim() != backbone.dim || bufs.features.len() != backbone.dim {
            return Err(Fault::new(ErrorCode::DimMismatch, "head and backbone feature sizes differ"));
        }
        if bufs.input.len() != input_len(&backbone.preprocess) || bufs.frame.len() < max_frame.len() {
            return Err(Fault::new(ErrorCode::Storage, "buffers do not match the backbone input or frame size"));
        }
        let mut persisted = Persisted { novelty_threshold: DEFAULT_NOVELTY_THRESHOLD };
        let mut current = None;
        match persist::load_newest(&mut platform, &mut head, backbone.sha256)? {
            Some((loaded, p)) => {
                current = Some(loaded);
                persisted = p;
            }
            None => {
                let base = platform.base_stats()?;
                let expect = stats::Expect { backbone_sha256: Some(backbone.sha256) };
                if !base.is_empty() {
                    let h = stats::load(&mut head, base, &expect)
                        .map_err(|e| Fault { code: ErrorCode::BadStats, detail: wire::cut_text(&e) })?;
                    persisted.novelty_threshold = h.novelty_threshold;
                }
            }
        }
        Ok(Server {
            head,
            platform,
            bufs,
            backbone,
            max_frame,
            decoder: wire::FrameDecoder::new(),
            out: [0; MAX_FRAME],
            last: None,
            upload: None,
            persisted,
            current,
            counters: Stats::default(),
        })
    }

    /// The head, as last committed or loaded.
    pub fn head(&self) -> &GaussianHead<S> {
        &self.head
    }
    /// The slot the current state was loaded from or saved to, if any.
    pub fn loaded_from(&self) -> Option<Loaded> {
        self.current
    }
    /// What the server has seen since boot.
    pub fn counters(&self) -> Stats {
        self.counters
    }

    /// Feeds received bytes; calls `send` with each response frame.
    pub fn receive(&mut self, mut input: &[u8], send: &mut dyn FnMut(&[u8])) {
        while !input.is_empty() {
            // The decoder's frame borrows it; copy the request out first.
            let (request, rest) = match self.decoder.feed(input) {
                Feed::Consumed => return,
                Feed::Error { rest, .. } => {
                    self.counters.bad_frames += 1;
                    input = rest;
                    continue;
                }
                Feed::Frame { frame, rest } => {
                    self.counters.frames_in += 1;
                    (frame.parse::<Request>().map(|r| (frame.seq, r)).map_err(|_| frame.seq), rest)
                }
            };
            input = rest;
            match request {
                Ok((seq, req)) => self.dispatch(seq, req, send),
                Err(seq) => self.respond(seq, &error(ErrorCode::BadRequest, "request does not parse"), send),
            }
        }
    }

    fn dispatch(&mut self, seq: u32, req: Request, send: &mut dyn FnMut(&[u8])) {
        if let Some((last, len)) = self.last {
            if last == seq {
                self.counters.replayed += 1;
                send(&self.out[..len]);
                return;
            }
        }
        self.counters.applied += 1;
        let response = self.handle(req);
        self.respond(seq, &response, send);
    }

    fn respond(&mut self, seq: u32, response: &Response, send: &mut dyn FnMut(&[u8])) {
        match wire::encode(seq, response, &mut self.out) {
            Ok(n) => {
                self.last = Some((seq, n));
                send(&self.out[..n]);
            }
            Err(_) => {
                let n = wire::encode(seq, &error(ErrorCode::Storage, "response too large"), &mut self.out).unwrap_or(0);
                self.last = Some((seq, n));
                send(&self.out[..n]);
            }
        }
    }

    fn meta(&self) -> StatsMeta {
        StatsMeta {
            backbone_sha256: self.backbone.sha256,
            preprocess: self.backbone.preprocess,
            novelty_threshold: self.persisted.novelty_threshold,
            ..Default::default()
        }
    }

    /// Makes the head's state durable. On failure the head is reloaded from
    /// the last durable state, so RAM never runs ahead of the slots.
    fn persist(&mut self) -> Result<(), Fault> {
        let meta = self.meta();
        match persist::save(&mut self.platform, &self.head, &meta, &self.persisted, self.current) {
            Ok(loaded) => {
                self.current = Some(loaded);
                Ok(())
            }
            Err(f) => {
                // Back to the last durable state: the newest slot, or the
                // bundle's base statistics when nothing was saved yet.
                let sha = self.backbone.sha256;
                match persist::load_newest(&mut self.platform, &mut self.head, sha) {
                    Ok(Some((_, p))) => self.persisted = p,
                    _ => {
                        if let Ok(base) = self.platform.base_stats() {
                            let expect = stats::Expect { backbone_sha256: Some(sha) };
                            if let Ok(h) = stats::load(&mut self.head, base, &expect) {
                                self.persisted.novelty_threshold = h.novelty_threshold;
                            }
                        }
                    }
                }
                Err(f)
            }
        }
    }

    /// Takes the threshold that came with newly loaded statistics, then
    /// persists (a failed save puts back the old threshold with the old head).
    fn persist_with_threshold(&mut self, t: f64) -> Response {
        self.persisted.novelty_threshold = t;
        self.persist_ok()
    }

    /// Persists and answers `Ok`, or the storage fault.
    fn persist_ok(&mut self) -> Response {
        match self.persist() {
            Ok(()) => Response::Ok,
            Err(f) => fault(f),
        }
    }

    fn info(&self) -> DeviceInfo {
        let mut firmware = Text::new();
        let _ = firmware.push_str(FIRMWARE);
        DeviceInfo {
            protocol: PROTOCOL_VERSION,
            firmware,
            dim: self.head.dim() as u32,
            capacity: self.head.capacity() as u16,
            classes: self.head.class_count() as u16,
            learning: self.head.learning().and_then(|(l, n)| gaussedge_shared::label(l).map(|l| (l, n))),
            backbone_sha256: self.backbone.sha256,
            preprocess: self.backbone.preprocess,
            settings: self.head.settings(),
            novelty_threshold: self.persisted.novelty_threshold,
            max_frame: self.max_frame,
            max_chunk: MAX_CHUNK as u32,
            slot: self.current.map(|c| c.slot),
            generation: self.current.map_or(0, |c| c.generation),
            stats_len: stats::encoded_len(&self.head, &self.meta()) as u32,
            applied: self.counters.applied,
            replayed: self.counters.replayed,
        }
    }

    fn handle(&mut self, req: Request) -> Response {
        match req {
            Request::Hello => Response::Info(self.info()),
            Request::ListClasses { from } => {
                let mut entries = heapless::Vec::new();
                let total = self.head.class_count() as u16;
                for (slot, c) in self.head.classes().skip(from as usize).take(CLASSES_PER_PAGE) {
                    let stored = self.platform.stored_count(c.label.as_str());
                    let _ =
                        entries.push(ClassEntry { slot: slot as u16, label: c.label.clone(), count: c.count, stored });
                }
                Response::Classes { total, entries }
            }
            Request::SetSettings(settings) => {
                if let Err(e) = self.head.set_settings(settings) {
                    return head_error(e);
                }
                self.persist_ok()
            }
            Request::SetNoveltyThreshold(t) => {
                if !stats::valid_threshold(t) {
                    return error(ErrorCode::BadRequest, "threshold must be >= 0");
                }
                let old = self.persisted.novelty_threshold;
                self.persisted.novelty_threshold = t;
                match self.persist() {
                    Ok(()) => Response::Ok,
                    Err(f) => {
                        self.persisted.novelty_threshold = old;
                        fault(f)
                    }
                }
            }
            Request::Reset => {
                if self.head.learning().is_some() {
                    return error(ErrorCode::Busy, "a class is being learned");
                }
                let expect = stats::Expect { backbone_sha256: Some(self.backbone.sha256) };
                let base = match self.platform.base_stats() {
                    Ok(b) => b,
                    Err(f) => return fault(f),
                };
                match stats::load(&mut self.head, base, &expect) {
                    Ok(h) => self.persist_with_threshold(h.novelty_threshold),
                    Err(e) => stats_error(e),
                }
            }
            Request::BeginUpload { target, len, sha256 } => self.begin_upload(target, len, sha256),
            Request::UploadChunk { offset, data } => self.upload_chunk(offset, &data),
            Request::FinishUpload => self.finish_upload(),
            Request::Download { source, offset, max } => self.download(source, offset, max),
            Request::BeginClass { label, extend } => {
                let r = if extend { self.head.begin_extend(label) } else { self.head.begin(label) };
                match r {
                    Ok(()) => Response::Staged { count: 0 },
                    Err(e) => head_error(e),
                }
            }
            Request::Frame { format, usage, data } => {
                if data.len() != format.len() || format.len() > self.bufs.frame.len() {
                    return error(ErrorCode::BadFrame, "frame length does not match its format or the frame buffer");
                }
                self.bufs.frame[..data.len()].copy_from_slice(&data);
                self.use_frame(format, usage)
            }
            Request::Capture { count, source_class } => {
                if self.head.learning().is_none() {
                    return error(ErrorCode::NotLearning, "begin a class first");
                }
                let mut staged = 0;
                for _ in 0..count {
                    let format = match self.platform.capture(source_class, self.bufs.frame) {
                        Ok(f) => f,
                        Err(f) => return fault(f),
                    };
                    match self.use_frame(format, FrameUse::Learn) {
                        Response::Staged { count } => staged = count,
                        other => return other,
                    }
                }
                Response::Staged { count: staged }
            }
            Request::CommitClass => {
                let committed = match self.head.commit() {
                    Ok(c) => c,
                    Err(e) => return head_error(e),
                };
                match self.persist() {
                    Ok(()) => Response::Committed { slot: committed.class as u16, count: committed.count },
                    Err(f) => fault(f),
                }
            }
            Request::AbortClass => {
                let learning = self.head.learning().and_then(|(l, _)| gaussedge_shared::label(l));
                match self.head.abort() {
                    Ok(()) => {
                        if let Some(l) = learning {
                            if self.head.find(&l).is_none() {
                                self.platform.drop_samples(&l);
                            }
                        }
                        Response::Ok
                    }
                    Err(e) => head_error(e),
                }
            }
            Request::ForgetClass { label } => {
                if let Err(e) = self.head.forget(&label) {
                    return head_error(e);
                }
                self.platform.drop_samples(&label);
                self.persist_ok()
            }
            Request::ActivateBundle => self.activate_bundle(),
        }
    }

    /// Preprocess, backbone, then learn or predict.
    fn use_frame(&mut self, format: FrameFormat, usage: FrameUse) -> Response {
        if format.width > self.max_frame.width
            || format.height > self.max_frame.height
            || format.len() > self.bufs.frame.len()
        {
            return error(ErrorCode::BadFrame, "frame larger than the device accepts");
        }
        if usage == FrameUse::Learn && self.head.learning().is_none() {
            return error(ErrorCode::NotLearning, "begin a class first");
        }
        let frame = &self.bufs.frame[..format.len()];
        if let Err(e) = frame_to_input(frame, format, &self.backbone.preprocess, self.bufs.input) {
            return Response::Error { code: ErrorCode::BadFrame, detail: wire::detail(&e) };
        }
        if let Err(f) = self.platform.extract(self.bufs.input, self.bufs.features) {
            return fault(f);
        }
        match usage {
            FrameUse::Learn => match self.head.learn(self.bufs.features) {
                Ok(count) => {
                    if let Some((l, _)) = self.head.learning() {
                        let mut label = Label::new();
                        let _ = label.push_str(l);
                        self.platform.store_sample(&label, format, &self.bufs.frame[..format.len()]);
                    }
                    Response::Staged { count }
                }
                Err(e) => head_error(e),
            },
            FrameUse::Predict => match self.head.predict(self.bufs.features, None) {
                Ok(p) => Response::Prediction(PredictionMsg {
                    slot: p.class as u16,
                    label: self.head.slots()[p.class].label.clone(),
                    score: p.score,
                    novelty: p.novelty,
                    novel: p.novelty > self.persisted.novelty_threshold,
                }),
                Err(e) => head_error(e),
            },
        }
    }

    fn begin_upload(&mut self, target: UploadTarget, len: u32, sha256: [u8; 32]) -> Response {
        if let Some(u) = self.upload.take() {
            if !matches!(u.target, UploadTarget::Frame { .. }) {
                self.platform.upload_discard();
            }
        }
        match target {
            UploadTarget::Frame { format, .. } => {
                if format.len() != len as usize || format.len() > self.bufs.frame.len() {
                    return error(ErrorCode::BadFrame, "frame larger than the frame buffer or not matching its length");
                }
            }
            _ => {
                if let Err(f) = self.platform.upload_begin(target, len) {
                    return fault(f);
                }
            }
        }
        self.upload = Some(Upload { target, len, received: 0, sha256, hasher: Sha256::new() });
        Response::Ok
    }

    fn upload_chunk(&mut self, offset: u32, data: &[u8]) -> Response {
        let Some(u) = self.upload.as_mut() else {
            return error(ErrorCode::NoUpload, "no upload in progress");
        };
        if offset != u.received || u.received as u64 + data.len() as u64 > u.len as u64 {
            return error(ErrorCode::UploadOrder, "chunk out of order or past the announced length");
        }
        match u.target {
            UploadTarget::Frame { .. } => {
                self.bufs.frame[offset as usize..offset as usize + data.len()].copy_from_slice(data)
            }
            _ => {
                if let Err(f) = self.platform.upload_write(offset, data) {
                    return fault(f);
                }
            }
        }
        u.hasher.update(data);
        u.received += data.len() as u32;
        Response::Ok
    }

    fn finish_upload(&mut self) -> Response {
        let Some(u) = self.upload.take() else {
            return error(ErrorCode::NoUpload, "no upload in progress");
        };
        let is_frame = matches!(u.target, UploadTarget::Frame { .. });
        if u.received != u.len {
            if !is_frame {
                self.platform.upload_discard();
            }
            return error(ErrorCode::UploadOrder, "upload incomplete");
        }
        let digest: [u8; 32] = u.hasher.finalize().into();
        if digest != u.sha256 {
            if !is_frame {
                self.platform.upload_discard();
            }
            return error(ErrorCode::UploadHash, "SHA-256 of the received bytes differs");
        }
        match u.target {
            UploadTarget::Frame { format, usage } => self.use_frame(format, usage),
            UploadTarget::Stats => {
                if self.head.learning().is_some() {
                    self.platform.upload_discard();
                    return error(ErrorCode::Busy, "a class is being learned");
                }
                let expect = stats::Expect { backbone_sha256: Some(self.backbone.sha256) };
                let result = match self.platform.upload_bytes() {
                    Ok(bytes) => stats::load(&mut self.head, bytes, &expect),
                    Err(f) => return fault(f),
                };
                self.platform.upload_discard();
                match result {
                    // A pushed head brings its own "unknown" threshold.
                    Ok(h) => self.persist_with_threshold(h.novelty_threshold),
                    Err(e) => stats_error(e),
                }
            }
            UploadTarget::Bundle(file) => match self.platform.bundle_stage(file) {
                Ok(()) => Response::Ok,
                Err(f) => fault(f),
            },
        }
    }

    fn download(&mut self, source: DownloadSource, offset: u32, max: u16) -> Response {
        let max = (max as usize).min(MAX_CHUNK);
        let mut header = [0u8; CAPTURE_HEADER];
        let (total, head, body): (usize, &[u8], &[u8]) = match &source {
            DownloadSource::Stats => {
                let Some(current) = self.current else {
                    return error(ErrorCode::NotFound, "no statistics saved yet");
                };
                match persist::stats_bytes(&mut self.platform, current) {
                    Ok(b) => (b.len(), &[], b),
                    Err(f) => return fault(f),
                }
            }
            DownloadSource::Capture { label, index } => match self.platform.stored_sample(label, *index) {
                Some((format, pixels)) => {
                    header[0..2].copy_from_slice(&format.width.to_le_bytes());
                    header[2..4].copy_from_slice(&format.height.to_le_bytes());
                    header[4] = format.channels;
                    (CAPTURE_HEADER + pixels.len(), &header[..], pixels)
                }
                None => return error(ErrorCode::NotFound, "no such stored sample"),
            },
        };
        let start = offset as usize;
        if start > total {
            return error(ErrorCode::UploadOrder, "offset past the end");
        }
        let end = (start + max).min(total);
        let mut data = wire::Chunk::new();
        for i in start..end {
            let b = if i < head.len() { head[i] } else { body[i - head.len()] };
            let _ = data.push(b);
        }
        Response::Data { total: total as u32, offset, data }
    }

    fn activate_bundle(&mut self) -> Response {
        if self.head.learning().is_some() {
            return error(ErrorCode::Busy, "a class is being learned");
        }
        // Vet the staged pair before touching anything.
        let (next, stats_bytes) = match self.platform.bundle_staged() {
            Ok(x) => x,
            Err(f) => return fault(f),
        };
        if next.dim != self.head.dim() {
            return error(ErrorCode::DimMismatch, "new backbone has another feature size than the head");
        }
        if input_len(&next.preprocess) != self.bufs.input.len() {
            return error(ErrorCode::Unsupported, "new backbone needs another input size; reboot with it");
        }
        match stats::read_header(stats_bytes) {
            Ok(h) if h.backbone_sha256 == next.sha256 && h.dim as usize == next.dim => {}
            Ok(_) => return error(ErrorCode::BackboneMismatch, "staged statistics belong to another backbone"),
            Err(e) => return stats_error(e),
        }
        let info = match self.platform.bundle_activate() {
            Ok(i) => i,
            Err(f) => return fault(f),
        };
        let expect = stats::Expect { backbone_sha256: Some(info.sha256) };
        let loaded = match self.platform.base_stats() {
            Ok(bytes) => stats::load(&mut self.head, bytes, &expect),
            Err(f) => Err(StatsError::Malformed(if f.code == ErrorCode::Storage { "storage" } else { "bundle" })),
        };
        let header = match loaded {
            Ok(h) => h,
            Err(e) => {
                // Put the old bundle back; the head was not changed.
                if let Ok(old) = self.platform.bundle_rollback() {
                    self.backbone = old;
                }
                return stats_error(e);
            }
        };
        self.backbone = info;
        self.persist_with_threshold(header.novelty_threshold)
    }
}

#[cfg(test)]
#[path = "server_tests.rs"]
mod tests;
