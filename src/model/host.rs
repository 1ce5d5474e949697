//! Host-side tensors: dense row-major f32 arrays, the form parameters take between files and
//! the GPU (shared by `checkpoint`, which reads and writes them, and `model`, which uploads them).

use anyhow::{bail, Result};

/// A dense row-major f32 tensor in host memory.
#[derive(Clone, Debug, PartialEq)]
pub struct HostTensor {
    /// Dimensions, outermost first.
    pub shape: Vec<usize>,
    /// The elements, row-major.
    pub data: Vec<f32>,
}

impl HostTensor {
    /// A tensor from its shape and data; errors if the element count does not match.
    pub fn new(shape: Vec<usize>, data: Vec<f32>) -> Result<Self> {
        let n: usize = shape.iter().product();
        if n != data.len() {
            bail!(
                "tensor of shape {shape:?} needs {n} values, got {}",
                data.len()
            );
        }
        Ok(HostTensor { shape, data })
    }

    /// A zero-filled tensor.
    pub fn zeros(shape: Vec<usize>) -> Self {
        let n = shape.iter().product();
        HostTensor {
            shape,
            data: vec![0.0; n],
        }
    }

    /// Number of elements implied by the shape.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}
