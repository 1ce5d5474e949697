//! Image decoding, preprocessing and datasets.
