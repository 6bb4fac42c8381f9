//! cwfs: mount CoreWeave AI Object Storage (or any S3-compatible bucket) as a
//! local directory tree.
//!
//! Layers, top to bottom (data flows down, never back up):
//! - [`fuse`]: thin glue between the kernel and [`fs`];
//! - [`fs`]: filesystem semantics, handles, errno decisions;
//! - [`read`] and [`meta`]: block cache; inode table and naming rules;
//! - [`store`]: the object store trait, S3 and in-memory implementations;
//! - [`creds`]: where credentials come from.
//!
//! [`config`] holds the one configuration struct; [`mount`] runs a mount;
//! [`daemon`] and [`logging`] are process plumbing.
#![deny(clippy::undocumented_unsafe_blocks)]

pub mod config;
pub mod creds;
pub mod daemon;
pub mod fs;
pub mod fstab;
pub mod fuse;
pub mod logging;
pub mod meta;
pub mod mount;
pub mod read;
pub mod store;

#[cfg(test)]
mod proptests;
