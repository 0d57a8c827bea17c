//! shipping service (placeholder).
