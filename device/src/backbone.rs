//! The feature extractor: a bundle's ONNX graph, optimised by tract for a
//! fixed input shape, turning preprocessed images into feature vectors.

use std::sync::Mutex;
use tract_onnx::prelude::*;

#[derive(Debug, thiserror::Error)]
pub enum BackboneError {
    #[error("cannot load the backbone ONNX: {0}")]
    Load(String),
    #[error("backbone output `features` has shape {0:?}, expected [batch, D]")]
    OutputShape(Vec<usize>),
    #[error("input holds {got} values, a batch of {batch} needs {expected}")]
    InputLength { batch: usize, expected: usize, got: usize },
    #[error("running the backbone: {0}")]
    Run(String),
}

/// A loaded, optimised backbone for batches of exactly `batch` images.
pub struct Backbone {
    /// The plan's run state, kept between images so its buffers are reused
    /// rather than allocated per run.
    state: Mutex<TypedSimpleState>,
    batch: usize,
    input_shape: [usize; 4],
    dim: usize,
    outputs: usize,
}

impl Backbone {
    /// Loads `onnx` for input `[batch, channels, height, width]`.
    pub fn load(
        onnx: &[u8],
        batch: usize,
        channels: usize,
        height: usize,
        width: usize,
    ) -> Result<Self, BackboneError> {
        let load = |e: TractError| BackboneError::Load(format!("{e:#}"));
        let input_shape = [batch, channels, height, width];
        let model = tract_onnx::onnx()
            .model_for_read(&mut &onnx[..])
            .map_err(load)?
            .with_input_fact(0, f32::fact(input_shape).into())
            .map_err(load)?
            .into_optimized()
            .map_err(load)?;
        let outputs = model.outputs.len();
        let fact = model.output_fact(0).map_err(load)?;
        let shape: Vec<usize> = fact.shape.as_concrete().map(|s| s.to_vec()).unwrap_or_default();
        if shape.len() != 2 || shape[0] != batch || shape[1] == 0 {
            return Err(BackboneError::OutputShape(shape));
        }
        let dim = shape[1];
        let plan = model.into_runnable().map_err(load)?;
        let state = Mutex::new(plan.spawn().map_err(load)?);
        Ok(Backbone { state, batch, input_shape, dim, outputs })
    }

    pub fn dim(&self) -> usize {
        self.dim
    }
    pub fn batch(&self) -> usize {
        self.batch
    }
    pub fn input_len(&self) -> usize {
        self.input_shape[1] * self.input_shape[2] * self.input_shape[3]
    }

    /// Runs one batch; returns every output of the graph flattened (the
    /// first is `features`, `[batch, D]`).
    pub fn run_all(&self, input: &[f32]) -> Result<Vec<Vec<f32>>, BackboneError> {
        let expected = self.batch * self.input_len();
        if input.len() != expected {
            return Err(BackboneError::InputLength { batch: self.batch, expected, got: input.len() });
        }
        let run = |e: TractError| BackboneError::Run(format!("{e:#}"));
        let tensor = Tensor::from_shape(&self.input_shape, input).map_err(run)?;
        let mut state = self.state.lock().map_err(|_| BackboneError::Run("backbone state poisoned".into()))?;
        let result = state.run(tvec!(tensor.into())).map_err(run)?;
        result
            .iter()
            .take(self.outputs)
            .map(|t| t.try_as_plain_ram().and_then(|v| v.as_slice::<f32>().map(|s| s.to_vec())).map_err(run))
            .collect()
    }

    /// Features of one batch, `batch * D` values.
    pub fn features(&self, input: &[f32]) -> Result<Vec<f32>, BackboneError> {
        Ok(self.run_all(input)?.swap_remove(0))
    }
}
