//! Helpers shared by the end-to-end tests: locating binaries, kernels and fixtures.
