//! Image store: OCI layouts and docker archives imported into verified
//! layers, each kept once as a read-only erofs disk keyed by chain ID.
//!
//! `layout` says where things live; `store` reads and commits images and
//! layers; `digest` holds IDs and the chain ID formula; `reference` image
//! names.

pub mod digest;
mod fsutil;
pub mod layout;
mod lock;
pub mod reference;
pub mod store;

pub use store::{ResolvedImage, ResolvedLayer, Store, StoreError};

#[cfg(test)]
mod tests;
