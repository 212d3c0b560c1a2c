//! Everything the gaussedge host and device share: the Gaussian head's math,
//! its statistics file format, and the wire protocol between them.
//!
//! The crate is `no_std`. Without any feature it needs no allocator: the
//! head lives in caller-provided buffers ([`head::BorrowedStorage`]), the
//! statistics format streams to a sink and parses from a slice, and frames
//! are built in fixed buffers. `alloc` adds owned storage and conveniences;
//! `std` (default) adds `std::error::Error` impls through `thiserror`.
//!
//! Modules:
//! * [`linalg`]: packed symmetric kernels (Cholesky, solves, rank-one updates),
//! * [`moments`]: Welford, Chan merge and removal, pooling of class scatters,
//! * [`config`]: regularisers, priors, feature transforms, estimator presets,
//! * [`head`]: the fixed-capacity head (learn, commit, abort, forget, predict),
//! * [`frame`]: frame formats, the backbone's preprocessing, raw frames to
//!   normalised backbone input (beneath the file format and the protocol,
//!   which both record them),
//! * [`stats`]: the versioned, CRC-protected statistics file,
//! * [`wire`]: protocol messages and COBS/CRC framing.
#![no_std]
// The exceptions are in `linalg`, each with an `allow`: its dispatch, which
// calls the AVX2 and AVX-512 builds of its kernels after asking the CPU,
// and the f32 view of f64 storage the head keeps its scoring factor in.
#![deny(unsafe_code)]
#![warn(missing_docs)]

#[cfg(feature = "alloc")]
extern crate alloc;
#[cfg(feature = "std")]
extern crate std;

pub mod config;
pub mod frame;
pub mod head;
pub mod linalg;
pub mod moments;
pub mod stats;
pub mod wire;

pub use config::{Estimator, HeadSettings, NoveltyScore, Power, Prior, Regularizer, Transform, Weighting};
pub use head::{label, ClassSlot, GaussianHead, HeadConfig, HeadError, Label, Layout, Prediction};
