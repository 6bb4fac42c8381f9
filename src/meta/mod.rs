//! Metadata: the inode table and the rules that turn object keys into names.
//!
//! Owns: which names are representable as paths ([`names`]), the table of
//! known nodes with stable inode numbers and the time each was last
//! validated against the store ([`inode`]), and negative entries.

pub mod inode;
pub mod names;

pub use inode::{InodeTable, Kind, Node, MAX_IDLE_NODES, ROOT_INO};
