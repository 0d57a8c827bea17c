//! Atomic commit protocol cores (placeholder).
