//! `LoadOptions`: the dtype, device and weight processing of a load.

use candle_core::{DType, Device};

use super::processing::ProcessingOptions;

/// How to load a checkpoint: dtype, device and weight processing.
#[derive(Clone, Debug)]
pub struct LoadOptions {
    /// The dtype of the weights and activations (f32 by default; f16 / bf16 on request).
    /// Processing is always computed in f32 first.
    pub dtype: DType,
    /// Where the weights live.
    pub device: Device,
    /// Weight processing, TransformerLens `from_pretrained`'s defaults unless changed.
    pub processing: ProcessingOptions,
    /// Load a checkpoint that holds tensors the model does not read (by default an
    /// error naming them: a config with fewer layers than the weights, say).
    pub allow_unused_tensors: bool,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            dtype: DType::F32,
            device: Device::Cpu,
            processing: ProcessingOptions::default(),
            allow_unused_tensors: false,
        }
    }
}

impl LoadOptions {
    /// TransformerLens's `from_pretrained_no_processing`: the weights as stored.
    pub fn no_processing() -> Self {
        LoadOptions {
            processing: ProcessingOptions::none(),
            ..Self::default()
        }
    }

    /// These options with `dtype`.
    pub fn with_dtype(mut self, dtype: DType) -> Self {
        self.dtype = dtype;
        self
    }

    /// These options with `device`.
    pub fn with_device(mut self, device: Device) -> Self {
        self.device = device;
        self
    }

    /// These options with `allow_unused_tensors`.
    pub fn with_allow_unused_tensors(mut self, allow: bool) -> Self {
        self.allow_unused_tensors = allow;
        self
    }

    /// These options with `processing`.
    pub fn with_processing(mut self, processing: ProcessingOptions) -> Self {
        self.processing = processing;
        self
    }
}
