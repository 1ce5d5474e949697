//! GPU context, tensors, pipeline cache and kernel launch.
