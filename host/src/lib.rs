//! The gaussedge host: datasets, the EfficientNet description and its tch
//! trainer, the ONNX writer, statistics fitting, and the serial client
//! behind the `gaussedge` CLI.

pub mod arch;
pub mod data;
#[cfg(feature = "train")]
pub mod net;
pub mod onnx;
#[cfg(feature = "train")]
pub mod parity;
