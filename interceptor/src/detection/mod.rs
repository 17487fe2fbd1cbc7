//! Secret detection and masking: rules from `policies/rules/*.yaml` compiled into one
//! Hyperscan database, confirmed by the `regex` crate, applied to streams by a masker that
//! holds back only a bounded tail.
//!
//! The HTTP layer and the raw TCP relay use it like this:
//! ```ignore
//! let engine = Arc::new(Engine::compile(&load_dir(dir)?)?);   // once, shared
//! let mut masker = Masker::new(engine.clone(), hasher.clone())?; // per direction or body
//! masker.push(chunk, &mut out)?;    // forward `out`, record masker.take_findings()
//! masker.finish(&mut out)?;         // at end of stream
//! let (masked, found) = mask_buffer(&engine, &hasher, header_value)?; // whole values
//! ```

mod base64_runs;
pub mod check;
pub mod compression;
mod databases;
mod db_cache;
pub mod decode;
mod end_check;
pub mod engine;
pub mod finding;
pub mod masker;
pub mod openings;
pub mod rules;
mod scratch;
pub mod selection;
mod stream;
mod tolerant;
mod view;

pub use db_cache::DatabaseCache;
pub use engine::{Detection, Engine, EngineError, ScanError};
pub use finding::{Encoding, Finding, SecretHasher};
pub use masker::{Masker, mask_buffer, mask_buffer_selected};
pub use rules::{Rule, RuleSources, RulesError, builtin, load_dir};
pub use selection::{Handling, Selection};

#[cfg(test)]
mod boundary_tests;
#[cfg(test)]
pub(crate) mod split_tests;
#[cfg(test)]
pub(crate) mod tests;
