//! Image decoding, preprocessing and datasets.

pub mod augment;
pub mod preprocess;

pub use crate::rng::Rng;
pub use augment::*;
pub use preprocess::*;
pub mod dataset;
pub mod loader;
pub use dataset::{Dataset, Sample, Source};
pub use loader::{Batch, Loader};
