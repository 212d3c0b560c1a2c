//! The host side of the wire protocol: stop-and-wait requests with a
//! timeout and retries. A retry resends the same sequence number, so a
//! device that already applied the request answers from its cache instead
//! of applying it twice; answers to earlier numbers are ignored.

use gaussedge_shared::head::Label;
use gaussedge_shared::wire::{
    self, ClassEntry, DeviceInfo, DownloadSource, ErrorCode, Feed, FrameDecoder, FrameFormat, FrameUse, PredictionMsg,
    Request, Response, UploadTarget, MAX_CHUNK,
};
use gaussedge_shared::HeadSettings;
use sha2::{Digest, Sha256};
use std::io::{ErrorKind, Read, Write};
use std::time::{Duration, Instant};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("no answer after {attempts} attempts")]
    Timeout { attempts: usize },
    #[error("link: {0}")]
    Io(#[from] std::io::Error),
    #[error("serial port: {0}")]
    Port(#[from] serialport::Error),
    #[error("device refused: {code:?}: {detail}")]
    Device { code: ErrorCode, detail: String },
    #[error("unexpected answer {0:?}")]
    Unexpected(Box<Response>),
}

/// A byte link to a device (a serial port, or anything that reads with a
/// timeout).
pub trait Link: Read + Write + Send {}
impl<T: Read + Write + Send> Link for T {}

/// Link counters, for tests and `--verbose`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LinkStats {
    pub requests: u64,
    pub retries: u64,
    pub bad_frames: u64,
    pub stale: u64,
}

pub struct Client {
    link: Box<dyn Link>,
    seq: u32,
    decoder: FrameDecoder,
    pending: Vec<u8>,
    pub timeout: Duration,
    pub attempts: usize,
    pub stats: LinkStats,
}

/// Opens a serial port with the short read timeout the client polls with.
pub fn open_port(path: &str, baud: u32) -> Result<serialport::TTYPort, ClientError> {
    Ok(serialport::new(path, baud).timeout(Duration::from_millis(10)).open_native()?)
}

/// A sequence number unlikely to equal the last one a device cached from an
/// earlier session (which it would answer from cache without applying).
fn initial_seq() -> u32 {
    let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    (t.as_nanos() as u32) ^ std::process::id().rotate_left(16)
}

impl Client {
    /// Opens a serial port (or a simulator's pseudo-terminal).
    pub fn open(path: &str, baud: u32) -> Result<Self, ClientError> {
        Ok(Client::new(Box::new(open_port(path, baud)?)))
    }

    pub fn new(link: Box<dyn Link>) -> Self {
        Client {
            link,
            seq: initial_seq(),
            decoder: FrameDecoder::new(),
            pending: vec![],
            timeout: Duration::from_millis(2000),
            attempts: 8,
            stats: LinkStats::default(),
        }
    }

    /// Sends `req` and returns the device's answer; device errors become
    /// [`ClientError::Device`].
    pub fn call(&mut self, req: &Request) -> Result<Response, ClientError> {
        match self.call_raw(req)? {
            Response::Error { code, detail } => Err(ClientError::Device { code, detail: detail.to_string() }),
            r => Ok(r),
        }
    }

    /// Sends `req` and returns whatever answer carries its sequence number.
    pub fn call_raw(&mut self, req: &Request) -> Result<Response, ClientError> {
        self.seq = self.seq.wrapping_add(1);
        let seq = self.seq;
        let frame = wire::encode_vec(seq, req).map_err(|e| std::io::Error::new(ErrorKind::InvalidInput, e))?;
        self.stats.requests += 1;
        for attempt in 0..self.attempts {
            if attempt > 0 {
                self.stats.retries += 1;
            }
            self.link.write_all(&frame)?;
            self.link.flush()?;
            if let Some(r) = self.wait_for(seq)? {
                return Ok(r);
            }
        }
        Err(ClientError::Timeout { attempts: self.attempts })
    }

    /// Reads until the answer to `seq` arrives or the timeout passes.
    fn wait_for(&mut self, seq: u32) -> Result<Option<Response>, ClientError> {
        let deadline = Instant::now() + self.timeout;
        let mut buf = [0u8; 4096];
        loop {
            // Frames already read but not yet parsed come first.
            let pending = std::mem::take(&mut self.pending);
            let mut input = &pending[..];
            let mut found = None;
            while !input.is_empty() {
                match self.decoder.feed(input) {
                    Feed::Consumed => input = &[],
                    Feed::Error { rest, .. } => {
                        self.stats.bad_frames += 1;
                        input = rest;
                    }
                    Feed::Frame { frame, rest } => {
                        input = rest;
                        if frame.seq != seq {
                            self.stats.stale += 1;
                            continue;
                        }
                        match frame.parse::<Response>() {
                            Ok(r) => {
                                found = Some(r);
                                break;
                            }
                            Err(_) => self.stats.bad_frames += 1,
                        }
                    }
                }
            }
            if found.is_some() {
                self.pending = input.to_vec();
                return Ok(found);
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            match self.link.read(&mut buf) {
                Ok(0) => {}
                Ok(n) => self.pending.extend_from_slice(&buf[..n]),
                Err(e) if matches!(e.kind(), ErrorKind::TimedOut | ErrorKind::WouldBlock | ErrorKind::Interrupted) => {}
                Err(e) => return Err(e.into()),
            }
        }
    }

    fn expect<T>(
        &mut self,
        req: &Request,
        pick: impl FnOnce(Response) -> Result<T, Box<Response>>,
    ) -> Result<T, ClientError> {
        let r = self.call(req)?;
        pick(r).map_err(ClientError::Unexpected)
    }

    fn ok(&mut self, req: &Request) -> Result<(), ClientError> {
        self.expect(req, |r| match r {
            Response::Ok => Ok(()),
            other => Err(Box::new(other)),
        })
    }

    pub fn hello(&mut self) -> Result<DeviceInfo, ClientError> {
        self.expect(&Request::Hello, |r| match r {
            Response::Info(i) => Ok(i),
            other => Err(Box::new(other)),
        })
    }

    pub fn classes(&mut self) -> Result<Vec<ClassEntry>, ClientError> {
        let mut out = vec![];
        loop {
            let (total, entries) = self.expect(&Request::ListClasses { from: out.len() as u16 }, |r| match r {
                Response::Classes { total, entries } => Ok((total, entries)),
                other => Err(Box::new(other)),
            })?;
            let empty = entries.is_empty();
            out.extend(entries);
            if out.len() >= total as usize || empty {
                return Ok(out);
            }
        }
    }

    pub fn set_settings(&mut self, s: HeadSettings) -> Result<(), ClientError> {
        self.ok(&Request::SetSettings(s))
    }

    pub fn set_novelty_threshold(&mut self, t: f64) -> Result<(), ClientError> {
        self.ok(&Request::SetNoveltyThreshold(t))
    }

    pub fn reset(&mut self) -> Result<(), ClientError> {
        self.ok(&Request::Reset)
    }

    pub fn begin_class(&mut self, label: Label, extend: bool) -> Result<(), ClientError> {
        self.expect(&Request::BeginClass { label, extend }, |r| match r {
            Response::Staged { .. } => Ok(()),
            other => Err(Box::new(other)),
        })
    }

    /// Sends a frame for learning or prediction (inline when it fits in one
    /// message, else as an upload).
    pub fn frame(&mut self, format: FrameFormat, usage: FrameUse, pixels: &[u8]) -> Result<Response, ClientError> {
        if pixels.len() <= MAX_CHUNK {
            let mut data = wire::Chunk::new();
            data.extend_from_slice(pixels).map_err(|_| std::io::Error::new(ErrorKind::InvalidInput, "chunk"))?;
            self.call(&Request::Frame { format, usage, data })
        } else {
            self.upload(UploadTarget::Frame { format, usage }, pixels)
        }
    }

    /// Adds a frame to the class being learned; returns the samples staged.
    pub fn learn(&mut self, format: FrameFormat, pixels: &[u8]) -> Result<u64, ClientError> {
        match self.frame(format, FrameUse::Learn, pixels)? {
            Response::Staged { count } => Ok(count),
            other => Err(ClientError::Unexpected(Box::new(other))),
        }
    }

    pub fn predict(&mut self, format: FrameFormat, pixels: &[u8]) -> Result<PredictionMsg, ClientError> {
        match self.frame(format, FrameUse::Predict, pixels)? {
            Response::Prediction(p) => Ok(p),
            other => Err(ClientError::Unexpected(Box::new(other))),
        }
    }

    /// Captures `count` frames with the device's own camera into the class
    /// being learned, in batches so no request runs long.
    pub fn capture(&mut self, count: u32, source_class: Option<u16>) -> Result<u64, ClientError> {
        let mut staged = 0;
        let mut left = count;
        while left > 0 {
            let n = left.min(16) as u16;
            staged = self.expect(&Request::Capture { count: n, source_class }, |r| match r {
                Response::Staged { count } => Ok(count),
                other => Err(Box::new(other)),
            })?;
            left -= n as u32;
        }
        Ok(staged)
    }

    pub fn commit(&mut self) -> Result<(u16, u64), ClientError> {
        self.expect(&Request::CommitClass, |r| match r {
            Response::Committed { slot, count } => Ok((slot, count)),
            other => Err(Box::new(other)),
        })
    }

    pub fn abort(&mut self) -> Result<(), ClientError> {
        self.ok(&Request::AbortClass)
    }

    pub fn forget(&mut self, label: Label) -> Result<(), ClientError> {
        self.ok(&Request::ForgetClass { label })
    }

    /// Uploads `bytes` in chunks, verified by SHA-256 on the device.
    pub fn upload(&mut self, target: UploadTarget, bytes: &[u8]) -> Result<Response, ClientError> {
        let sha256: [u8; 32] = Sha256::digest(bytes).into();
        let len = u32::try_from(bytes.len())
            .map_err(|_| std::io::Error::new(ErrorKind::InvalidInput, "upload over 4 GiB"))?;
        self.ok(&Request::BeginUpload { target, len, sha256 })?;
        for (i, chunk) in bytes.chunks(MAX_CHUNK).enumerate() {
            let mut data = wire::Chunk::new();
            data.extend_from_slice(chunk).map_err(|_| std::io::Error::new(ErrorKind::InvalidInput, "chunk"))?;
            self.ok(&Request::UploadChunk { offset: (i * MAX_CHUNK) as u32, data })?;
        }
        self.call(&Request::FinishUpload)
    }

    pub fn push_stats(&mut self, bytes: &[u8]) -> Result<(), ClientError> {
        match self.upload(UploadTarget::Stats, bytes)? {
            Response::Ok => Ok(()),
            other => Err(ClientError::Unexpected(Box::new(other))),
        }
    }

    /// Reads a whole download.
    pub fn download(&mut self, source: DownloadSource) -> Result<Vec<u8>, ClientError> {
        let mut out = vec![];
        loop {
            let req = Request::Download { source: source.clone(), offset: out.len() as u32, max: MAX_CHUNK as u16 };
            let (total, data) = self.expect(&req, |r| match r {
                Response::Data { total, data, .. } => Ok((total, data)),
                other => Err(Box::new(other)),
            })?;
            out.extend_from_slice(&data);
            if out.len() >= total as usize || data.is_empty() {
                return Ok(out);
            }
        }
    }

    pub fn pull_stats(&mut self) -> Result<Vec<u8>, ClientError> {
        self.download(DownloadSource::Stats)
    }

    /// A stored sample: its format and pixels.
    pub fn pull_capture(&mut self, label: Label, index: u32) -> Result<(FrameFormat, Vec<u8>), ClientError> {
        let bytes = self.download(DownloadSource::Capture { label, index })?;
        if bytes.len() < 5 {
            return Err(std::io::Error::new(ErrorKind::InvalidData, "short capture").into());
        }
        let format = FrameFormat {
            width: u16::from_le_bytes([bytes[0], bytes[1]]),
            height: u16::from_le_bytes([bytes[2], bytes[3]]),
            channels: bytes[4],
        };
        if bytes.len() - 5 != format.len() {
            return Err(std::io::Error::new(ErrorKind::InvalidData, "capture size does not match its format").into());
        }
        Ok((format, bytes[5..].to_vec()))
    }

    /// Flashes a bundle: uploads its three files, then activates them.
    pub fn flash(&mut self, backbone: &[u8], manifest: &[u8], stats: &[u8]) -> Result<(), ClientError> {
        use gaussedge_shared::wire::BundleFile;
        for (file, bytes) in
            [(BundleFile::Backbone, backbone), (BundleFile::Manifest, manifest), (BundleFile::Stats, stats)]
        {
            match self.upload(UploadTarget::Bundle(file), bytes)? {
                Response::Ok => {}
                other => return Err(ClientError::Unexpected(Box::new(other))),
            }
        }
        self.ok(&Request::ActivateBundle)
    }
}

/// Fault rates of a [`FaultyLink`], each per byte or per write.
#[derive(Debug, Clone, Copy, Default)]
pub struct Faults {
    /// Probability that a write (one frame) or a read gets one byte
    /// flipped. Per frame rather than per byte: at 1% per byte no 3 KB
    /// frame would ever arrive intact, whatever the protocol.
    pub corrupt: f64,
    /// Probability that a whole write (one frame) is dropped.
    pub drop: f64,
    /// Probability that a write is sent twice.
    pub duplicate: f64,
    /// Probability that a write is delayed by up to `max_delay`.
    pub delay: f64,
    pub max_delay: Duration,
    pub seed: u64,
}

/// Counts of what a [`FaultyLink`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FaultCounts {
    pub corrupted: u64,
    pub dropped: u64,
    pub duplicated: u64,
    pub delayed: u64,
}

/// A link that damages traffic at set rates, in both directions, for tests
/// of the protocol's recovery.
pub struct FaultyLink<L> {
    inner: L,
    faults: Faults,
    rng: crate::rng::Rng,
    pub counts: std::sync::Arc<std::sync::Mutex<FaultCounts>>,
}

impl<L> FaultyLink<L> {
    pub fn new(inner: L, faults: Faults) -> Self {
        FaultyLink { inner, faults, rng: crate::rng::Rng::new(faults.seed), counts: Default::default() }
    }

    fn chance(&mut self, p: f64) -> bool {
        p > 0.0 && (self.rng.next_u64() as f64 / u64::MAX as f64) < p
    }

    fn damage(&mut self, bytes: &mut [u8]) {
        if !bytes.is_empty() && self.chance(self.faults.corrupt) {
            let i = self.rng.below(bytes.len() as u64) as usize;
            bytes[i] ^= 1 << self.rng.below(8);
            self.counts.lock().expect("counts").corrupted += 1;
        }
    }
}

impl<L: Read> Read for FaultyLink<L> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.damage(&mut buf[..n]);
        Ok(n)
    }
}

impl<L: Write> Write for FaultyLink<L> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.chance(self.faults.drop) {
            self.counts.lock().expect("counts").dropped += 1;
            return Ok(buf.len());
        }
        if self.chance(self.faults.delay) {
            let us = self.rng.below(self.faults.max_delay.as_micros().max(1) as u64);
            std::thread::sleep(Duration::from_micros(us));
            self.counts.lock().expect("counts").delayed += 1;
        }
        let mut bytes = buf.to_vec();
        self.damage(&mut bytes);
        self.inner.write_all(&bytes)?;
        if self.chance(self.faults.duplicate) {
            self.counts.lock().expect("counts").duplicated += 1;
            let mut again = buf.to_vec();
            self.damage(&mut again);
            self.inner.write_all(&again)?;
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}
