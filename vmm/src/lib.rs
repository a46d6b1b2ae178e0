//! A KVM virtual machine monitor built for I/O performance work.

pub mod check;
pub mod error;

pub use error::{Error, Result};
