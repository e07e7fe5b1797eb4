//! The library part of `whittle-device`: what the fuzzer drives besides the binary (the
//! install's stream reader).

pub mod stream;
