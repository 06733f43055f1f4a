//! Image store: OCI layouts and docker archives imported into verified
//! layers, each kept once as a read-only erofs disk keyed by chain ID.
//!
//! `layout` says where things live; `store` reads and commits images and
//! layers; `digest` holds IDs and the chain ID formula; `reference` image
//! names.

pub mod archive;
pub mod digest;
pub mod erofs;
mod external;
mod fsutil;
pub mod import;
pub mod layout;
pub mod limits;
pub(crate) mod lock;
pub mod media;
mod progress;
pub mod reference;
pub mod registry;
pub mod store;
pub mod unpack;

// The API `husk run` builds on.
#[allow(unused_imports)]
pub use store::{ResolvedImage, ResolvedLayer, Store, StoreError};

#[cfg(test)]
mod tests;
