//! Shared pieces of the attribution-trends pipeline.
//!
//! The four stages (trainer, explainer, summarizer, analyzer) share nothing at
//! run time but files; this crate is what they share at compile time: the
//! config schema, the data readers, the network and its kernels, and the
//! artifact layout with its fingerprints and atomic writes.

pub mod allocator;
pub mod artifacts;
pub mod cli;
pub mod config;
pub mod data;
pub mod model;
pub mod provenance;
pub mod rng;
