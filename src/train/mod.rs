//! Fine-tuning loop, optimizer and schedules.
