//! Shared pieces of the attribution-trends pipeline.
//!
//! The four stages (trainer, explainer, summarizer, analyzer) share nothing at
//! run time but files; this crate is what they share at compile time: the
//! config and its validated form, the architectures as data, the data
//! readers, the artifact layout with its tables, fingerprints and atomic
//! writes, and the one stage runner. The network engine is the crate
//! `engine` (in `common/engine`), linked only by the stages that compute
//! with networks. See docs/DESIGN.md, "Code structure".

pub mod architecture;
pub mod artifacts;
pub mod benchmarks;
pub mod cli;
pub mod config;
pub mod content;
pub mod data;
pub mod external;
pub mod image;
pub mod measures;
pub mod provenance;
pub mod ranks;
pub mod rng;
pub mod scratch;
pub mod stage;
