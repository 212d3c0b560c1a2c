//! The ops the project adds to tract's graph, one file per op family, each
//! with the rewrite that puts it in place of what tract made.
//!
//! Every rewrite matches the pattern it knows (EfficientNet's convolutions
//! and squeeze-excitation, as `host/src/onnx.rs` writes them or as another
//! exporter writes the same arithmetic) and leaves every other node as
//! tract made it, so a foreign backbone still loads and runs on tract's own
//! ops. Their element loops dispatch on the CPU in one place,
//! [`crate::kernels`].

pub mod channel_last;
pub mod depthwise;
pub(crate) mod flat;
pub mod im2col;
pub mod matvec;
pub mod pointwise;
