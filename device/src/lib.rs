//! The gaussedge device.
//!
//! Without features this is the `no_std` core a microcontroller would run:
//! the sans-IO protocol [`server`], the A/B slot [`persist`]ence, and the
//! [`platform`] trait that hides the backbone, storage and camera. With
//! `std` (default) it adds the simulator's adapters: tract for the backbone
//! ([`backbone`]), bundles on disk ([`bundle`]), files for the slots and a
//! dataset for the camera ([`sim`]), and a serial-port or PTY transport
//! ([`link`]).
#![cfg_attr(not(feature = "std"), no_std)]

#[cfg(any(test, feature = "mem"))]
extern crate alloc;

/// The in-memory platform (unit tests, fuzzing, power-loss testing).
#[cfg(any(test, feature = "mem"))]
pub mod mem;
pub mod persist;
pub mod platform;
pub mod server;

#[cfg(feature = "std")]
pub mod backbone;
/// The bundle format, re-exported from its own crate.
#[cfg(feature = "std")]
pub use gaussedge_bundle as bundle;
#[cfg(feature = "std")]
pub mod channel_last;
#[cfg(feature = "std")]
pub mod cli;
#[cfg(feature = "std")]
pub mod cpu;
#[cfg(feature = "std")]
pub mod depthwise;
#[cfg(feature = "std")]
mod flat;
#[cfg(feature = "std")]
pub mod im2col;
#[cfg(feature = "std")]
pub mod link;
#[cfg(feature = "std")]
pub mod matvec;
#[cfg(feature = "std")]
pub mod pointwise;
#[cfg(feature = "std")]
pub mod sim;
#[cfg(feature = "std")]
pub mod simd;
