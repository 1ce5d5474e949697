//! Hugging Face / timm checkpoint loading and saving.
