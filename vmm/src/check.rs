//! `vmm check`: host validation (placeholder until the check helper lands).
