//! A KVM virtual machine monitor built for I/O performance work.

pub mod check;
