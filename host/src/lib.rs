//! The gaussedge host: datasets, the EfficientNet description and its tch
//! trainer, the ONNX writer, statistics fitting, and the serial client
//! behind the `gaussedge` CLI.

pub mod arch;
pub mod build;
pub mod calibrate;
pub use gaussedge_data as data;
pub mod cli;
pub mod client;
pub mod demo;
pub mod eval;
pub mod fit;
pub mod fleet;
#[cfg(feature = "train")]
pub mod layout;
pub mod merge;
#[cfg(feature = "train")]
pub mod net;
pub mod onnx;
#[cfg(feature = "train")]
pub mod parity;
pub mod prep;
#[cfg(feature = "train")]
pub mod randaugment;
pub mod rng;
pub mod split;
#[cfg(feature = "train")]
pub mod train;
pub mod util;
pub mod views;
