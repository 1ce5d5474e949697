//! Autograd tape: records coarse ops and runs their backward kernels in reverse.
