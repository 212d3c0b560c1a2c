//! The host-device wire protocol: messages and their framing.
//!
//! A frame on the wire is
//!
//! ```text
//! COBS( seq: u32 LE | postcard(message) | CRC-32 LE of both ) 0x00
//! ```
//!
//! COBS removes every zero byte from the payload, so `0x00` delimits frames
//! and a receiver that joins mid-stream or loses bytes resynchronises at the
//! next zero. The sequence number sits before the postcard body, outside its
//! variable encoding, so a receiver can answer a frame whose CRC is good but
//! whose body it cannot parse with an error carrying the right number.
//!
//! The host sends one [`Request`] at a time and waits for the [`Response`]
//! with the same sequence number (stop-and-wait); on a timeout or a bad frame
//! it sends the same request again with the same number, and the device
//! answers a repeated number from its cache instead of applying it twice.
//!
//! Every buffer is fixed at compile time: no message exceeds [`MAX_BODY`]
//! bytes, no frame [`MAX_FRAME`]. Anything larger (statistics, bundles,
//! large images) moves in chunks of at most [`MAX_CHUNK`] bytes.

use crate::config::HeadSettings;
pub use crate::frame::{FrameFormat, Preprocess};
use crate::head::Label;
use serde::{Deserialize, Serialize};

/// Bumped on any incompatible change to the messages below.
/// Version 3 carries error details of up to [`MAX_DETAIL`] bytes (was 64);
/// version 4 carries [`HeadSettings::novelty`] in settings.
pub const PROTOCOL_VERSION: u16 = 4;
/// Largest data chunk in one message. 4 KiB holds a CIFAR (3 KiB) or
/// Fashion-MNIST (784 B) frame in a single message.
pub const MAX_CHUNK: usize = 4096;
/// Largest encoded message body (chunk plus its envelope).
pub const MAX_BODY: usize = MAX_CHUNK + 96;
/// Sequence number plus body plus CRC, before COBS.
pub const MAX_PAYLOAD: usize = 4 + MAX_BODY + 4;
/// Largest frame on the wire, delimiter included.
pub const MAX_FRAME: usize = cobs::max_encoding_length(MAX_PAYLOAD) + 1;
/// Class entries per [`Response::Classes`] page.
pub const CLASSES_PER_PAGE: usize = 16;

/// Bytes of one chunk.
pub type Chunk = heapless::Vec<u8, MAX_CHUNK>;
/// Short human-readable text: version strings.
pub type Text = heapless::String<64>;
/// Longest error detail, in bytes: room for the longest message the device
/// sends whole (a backbone mismatch names two SHA-256 digests).
pub const MAX_DETAIL: usize = 256;
/// The human-readable detail of an error response.
pub type Detail = heapless::String<MAX_DETAIL>;

/// `value`'s text as a [`Detail`]. One that does not fit is cut at a word
/// boundary and marked with `...`, never inside a word or number: a cut
/// "1808" read as "18" once and misled.
pub fn detail(value: &dyn core::fmt::Display) -> Detail {
    cut_text(value)
}

/// [`detail`] into a string of any capacity `N` (at least 4).
pub fn cut_text<const N: usize>(value: &dyn core::fmt::Display) -> heapless::String<N> {
    use core::fmt::Write;
    struct Cut<const N: usize> {
        text: heapless::String<N>,
        overflow: bool,
    }
    impl<const N: usize> Write for Cut<N> {
        fn write_str(&mut self, s: &str) -> core::fmt::Result {
            for c in s.chars() {
                if self.text.push(c).is_err() {
                    self.overflow = true;
                    return Err(core::fmt::Error);
                }
            }
            Ok(())
        }
    }
    let mut cut = Cut { text: heapless::String::<N>::new(), overflow: false };
    let _ = write!(cut, "{value}");
    let mut text = cut.text;
    if cut.overflow {
        const MARK: &str = " ...";
        while text.len() > N - MARK.len() {
            text.pop();
        }
        // Back to the end of the last whole word.
        while text.chars().last().is_some_and(|c| !c.is_whitespace()) {
            text.pop();
        }
        while text.chars().last().is_some_and(char::is_whitespace) {
            text.pop();
        }
        let _ = text.push_str(MARK);
    }
    text
}

const CRC: crc::Crc<u32> = crc::Crc::<u32>::new(&crc::CRC_32_ISO_HDLC);

/// What the device does with a frame once it has all of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum FrameUse {
    /// Add it to the class being learned.
    Learn,
    /// Classify it.
    Predict,
}

/// Files of a model bundle, each uploaded on its own and activated together.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum BundleFile {
    /// `backbone.onnx`.
    Backbone,
    /// `manifest.json`.
    Manifest,
    /// `head.stats`, the base statistics.
    Stats,
}

/// Where an upload goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum UploadTarget {
    /// Replace the head's statistics (verified, then applied atomically).
    Stats,
    /// A frame larger than one chunk.
    #[allow(missing_docs)]
    Frame { format: FrameFormat, usage: FrameUse },
    /// One file of a new bundle, staged until [`Request::ActivateBundle`].
    Bundle(BundleFile),
}

/// What a download reads.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum DownloadSource {
    /// The head's committed statistics file.
    Stats,
    /// Sample `index` of the captures stored for `label`.
    #[allow(missing_docs)]
    Capture { label: Label, index: u32 },
}

/// Requests, host to device. Fields are named for what they hold; each
/// variant says what the device does.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[allow(missing_docs)]
pub enum Request {
    /// Who are you? Answered with [`Response::Info`].
    Hello,
    /// Classes from index `from` on, answered with [`Response::Classes`].
    ListClasses { from: u16 },
    /// Change regulariser and prior (refactors; atomic).
    SetSettings(HeadSettings),
    /// Squared Mahalanobis distance above which a prediction is flagged novel.
    SetNoveltyThreshold(f64),
    /// Forget every learned class: reload the last pushed or flashed
    /// statistics.
    Reset,
    /// Start an upload of `len` bytes whose SHA-256 is `sha256`.
    BeginUpload { target: UploadTarget, len: u32, sha256: [u8; 32] },
    /// The bytes at `offset` of the current upload; chunks arrive in order.
    UploadChunk { offset: u32, data: Chunk },
    /// Verify and apply the upload.
    FinishUpload,
    /// Read up to `max` bytes at `offset` of `source`.
    Download { source: DownloadSource, offset: u32, max: u16 },
    /// Start learning class `label`: a new class, or more samples for an
    /// existing one with `extend`.
    BeginClass { label: Label, extend: bool },
    /// A frame that fits in one message.
    Frame { format: FrameFormat, usage: FrameUse, data: Chunk },
    /// Capture `count` frames from the device's own source (camera) into the
    /// class being learned. `source_class` steers a simulated camera.
    Capture { count: u16, source_class: Option<u16> },
    /// Make the class being learned part of the head (atomic, persisted).
    CommitClass,
    /// Drop the class being learned.
    AbortClass,
    /// Remove a class.
    ForgetClass { label: Label },
    /// Swap in the uploaded bundle files (all verified) atomically.
    ActivateBundle,
}

/// Description of a device, answered to [`Request::Hello`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeviceInfo {
    /// [`PROTOCOL_VERSION`] of the firmware.
    pub protocol: u16,
    /// The firmware's name and version.
    pub firmware: Text,
    /// Feature dimension of the head (the backbone's output).
    pub dim: u32,
    /// Classes the head has room for.
    pub capacity: u16,
    /// Classes committed.
    pub classes: u16,
    /// Class being learned and samples staged.
    pub learning: Option<(Label, u64)>,
    /// SHA-256 of the backbone the device runs.
    pub backbone_sha256: [u8; 32],
    /// How it turns frames into backbone input.
    pub preprocess: Preprocess,
    /// The head's regulariser, prior, debias and novelty score.
    pub settings: HeadSettings,
    /// Novelty above which a prediction is answered "unknown".
    pub novelty_threshold: f64,
    /// Largest frame the device accepts.
    pub max_frame: FrameFormat,
    /// Largest upload chunk it accepts.
    pub max_chunk: u32,
    /// Persistence slot the head was loaded from, and its generation.
    pub slot: Option<u8>,
    /// Generation of the persisted state (0 before the first commit).
    pub generation: u64,
    /// Size of the committed statistics file.
    pub stats_len: u32,
    /// Requests applied since boot, and repeated requests answered from the
    /// response cache instead (a host retry after a lost answer).
    pub applied: u64,
    /// Repeated requests answered from the cache.
    pub replayed: u64,
}

/// One class in a [`Response::Classes`] page.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClassEntry {
    /// Slot of the class in the head.
    pub slot: u16,
    /// Its label.
    pub label: Label,
    /// Samples it was learned from.
    pub count: u64,
    /// Captured samples stored on the device for this class.
    pub stored: u32,
}

/// A classification, answered to a predict frame.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PredictionMsg {
    /// Slot of the closest class.
    pub slot: u16,
    /// Its label.
    pub label: Label,
    /// Its discriminant score (higher is closer).
    pub score: f64,
    /// The novelty score (the head's `NoveltyScore`).
    pub novelty: f64,
    /// Whether `novelty` is above the device's threshold: "unknown".
    pub novel: bool,
}

/// Error kinds a device reports; `detail` in [`Response::Error`] says more.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ErrorCode {
    /// The frame's CRC was good but its body did not parse.
    BadRequest,
    /// Not allowed in the current state (for example learning in progress).
    Busy,
    /// A learn frame, commit or abort without a class being learned.
    NotLearning,
    /// The head has no free class slot.
    Full,
    /// A new class under a label the head already has.
    DuplicateLabel,
    /// No class has that label.
    UnknownClass,
    /// Commit of a class with no samples.
    EmptyClass,
    /// Predict with no class learned.
    NoClasses,
    /// Statistics or features of another dimension than the head's.
    DimMismatch,
    /// A frame whose format or length the device cannot take.
    BadFrame,
    /// The shared covariance lost positive definiteness; nothing changed.
    NotPositiveDefinite,
    /// A statistics file that does not verify; nothing changed.
    BadStats,
    /// Statistics or a bundle made for another backbone.
    BackboneMismatch,
    /// Upload chunk out of order or beyond the announced length.
    UploadOrder,
    /// Uploaded bytes do not match the announced SHA-256.
    UploadHash,
    /// A chunk or finish without an upload begun.
    NoUpload,
    /// A download of something the device does not hold.
    NotFound,
    /// The device's camera failed.
    Capture,
    /// Writing to flash failed; the previous state stands.
    Storage,
    /// The device does not do this (no camera, no bundle slots).
    Unsupported,
}

/// Responses, device to host. Variants differ in size on purpose: every
/// message lives in a fixed buffer, never behind a pointer.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[allow(missing_docs)]
pub enum Response {
    /// Done.
    Ok,
    /// Answer to [`Request::Hello`].
    Info(DeviceInfo),
    /// A page of classes from the asked index: `total` in all.
    Classes { total: u16, entries: heapless::Vec<ClassEntry, CLASSES_PER_PAGE> },
    /// Samples staged for the class being learned.
    Staged { count: u64 },
    /// The class is in the head at `slot`, learned from `count` samples.
    Committed { slot: u16, count: u64 },
    /// Answer to a predict frame.
    Prediction(PredictionMsg),
    /// Bytes at `offset` of a download `total` long.
    Data { total: u32, offset: u32, data: Chunk },
    /// The request failed and changed nothing.
    Error { code: ErrorCode, detail: Detail },
}

/// Framing failures. None of them is fatal to a link: the receiver drops the
/// frame and the sender's retry covers it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// More than [`MAX_FRAME`] bytes before a delimiter.
    #[error("frame longer than {MAX_FRAME} bytes, dropped")]
    Oversize,
    /// The bytes are not COBS.
    #[error("frame is not valid COBS")]
    Cobs,
    /// Fewer bytes than a sequence number and a CRC.
    #[error("frame too short to hold a sequence number and CRC")]
    TooShort,
    /// Corrupted on the way.
    #[error("frame CRC mismatch")]
    Crc,
    /// Intact, but not a message of this protocol (its sequence number
    /// lets the device answer it with an error).
    #[error("frame body does not parse as a message (sequence {seq})")]
    Body {
        /// The frame's sequence number.
        seq: u32,
    },
    /// Encoding: the message is larger than a frame's body.
    #[error("message does not fit in a frame")]
    TooLarge,
}

/// Encodes `message` with sequence number `seq` into `out`, delimiter
/// included. Returns the frame's length.
pub fn encode<T: Serialize>(seq: u32, message: &T, out: &mut [u8; MAX_FRAME]) -> Result<usize, FrameError> {
    let mut raw = [0u8; MAX_PAYLOAD];
    raw[..4].copy_from_slice(&seq.to_le_bytes());
    let body = postcard::to_slice(message, &mut raw[4..4 + MAX_BODY]).map_err(|_| FrameError::TooLarge)?.len();
    let crc = CRC.checksum(&raw[..4 + body]);
    raw[4 + body..8 + body].copy_from_slice(&crc.to_le_bytes());
    let n = cobs::try_encode(&raw[..8 + body], &mut out[..MAX_FRAME - 1]).map_err(|_| FrameError::TooLarge)?;
    out[n] = 0;
    Ok(n + 1)
}

/// Encodes into a new `Vec` (host side).
#[cfg(feature = "alloc")]
pub fn encode_vec<T: Serialize>(seq: u32, message: &T) -> Result<alloc::vec::Vec<u8>, FrameError> {
    let mut out = [0u8; MAX_FRAME];
    let n = encode(seq, message, &mut out)?;
    Ok(out[..n].to_vec())
}

/// A checked frame: its sequence number and the postcard body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RawFrame<'a> {
    /// The sender's sequence number (a repeat is a retry).
    pub seq: u32,
    /// The postcard-encoded message.
    pub body: &'a [u8],
}

impl<'a> RawFrame<'a> {
    /// Parses the body as a message.
    pub fn parse<T: Deserialize<'a>>(&self) -> Result<T, FrameError> {
        match postcard::take_from_bytes::<T>(self.body) {
            Ok((msg, [])) => Ok(msg),
            _ => Err(FrameError::Body { seq: self.seq }),
        }
    }
}

/// Checks a decoded (un-COBSed) payload: length, CRC, sequence number.
fn check(payload: &[u8]) -> Result<RawFrame<'_>, FrameError> {
    if payload.len() < 8 {
        return Err(FrameError::TooShort);
    }
    let (data, crc) = payload.split_at(payload.len() - 4);
    let stored = u32::from_le_bytes([crc[0], crc[1], crc[2], crc[3]]);
    if CRC.checksum(data) != stored {
        return Err(FrameError::Crc);
    }
    let seq = u32::from_le_bytes([data[0], data[1], data[2], data[3]]);
    Ok(RawFrame { seq, body: &data[4..] })
}

/// Decodes one COBS frame in place (without its delimiter).
pub fn decode(frame: &mut [u8]) -> Result<RawFrame<'_>, FrameError> {
    let n = cobs::decode_in_place(frame).map_err(|_| FrameError::Cobs)?;
    check(&frame[..n])
}

/// What [`FrameDecoder::feed`] found.
#[derive(Debug, PartialEq, Eq)]
#[allow(missing_docs)]
pub enum Feed<'a, 'b> {
    /// All input consumed, no frame complete yet.
    Consumed,
    /// A complete, checked frame; `rest` is the unconsumed input.
    Frame { frame: RawFrame<'a>, rest: &'b [u8] },
    /// A complete frame that failed its checks; `rest` is the unconsumed input.
    Error { error: FrameError, rest: &'b [u8] },
}

/// Reassembles frames from bytes that arrive in arbitrary pieces, in one
/// fixed buffer. A frame that outgrows the buffer is dropped whole (up to
/// its delimiter) and reported as [`FrameError::Oversize`]; memory never
/// grows.
pub struct FrameDecoder {
    buf: [u8; MAX_FRAME],
    len: usize,
    overflow: bool,
}

impl Default for FrameDecoder {
    fn default() -> Self {
        Self::new()
    }
}

impl FrameDecoder {
    /// An empty decoder (`const`, so firmware can keep it in a static).
    pub const fn new() -> Self {
        FrameDecoder { buf: [0; MAX_FRAME], len: 0, overflow: false }
    }

    /// Drops any partial frame.
    pub fn clear(&mut self) {
        self.len = 0;
        self.overflow = false;
    }

    /// Consumes input up to and including the first delimiter. Call again
    /// with `rest` until it returns [`Feed::Consumed`].
    pub fn feed<'a, 'b>(&'a mut self, input: &'b [u8]) -> Feed<'a, 'b> {
        let Some(end) = input.iter().position(|&b| b == 0) else {
            self.push(input);
            return Feed::Consumed;
        };
        self.push(&input[..end]);
        let rest = &input[end + 1..];
        let (len, overflow) = (self.len, self.overflow);
        self.len = 0;
        self.overflow = false;
        if overflow {
            return Feed::Error { error: FrameError::Oversize, rest };
        }
        if len == 0 {
            // Back-to-back delimiters: an empty frame, used to flush a line.
            return Feed::Error { error: FrameError::TooShort, rest };
        }
        match decode(&mut self.buf[..len]) {
            Ok(frame) => Feed::Frame { frame, rest },
            Err(error) => Feed::Error { error, rest },
        }
    }

    fn push(&mut self, data: &[u8]) {
        if self.overflow {
            return;
        }
        if self.len + data.len() > self.buf.len() {
            self.overflow = true;
            return;
        }
        self.buf[self.len..self.len + data.len()].copy_from_slice(data);
        self.len += data.len();
    }
}
