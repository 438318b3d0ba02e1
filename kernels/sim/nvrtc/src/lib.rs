//! The simulated NVRTC (in progress).
