//! The eBPF programs. Built for `bpfel-unknown-none` by `interceptor/build.rs` (aya-build);
//! on the host this file compiles to an empty binary so that workspace-wide checks work.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

#[cfg(not(target_arch = "bpf"))]
fn main() {}
