//! inventory service (placeholder).
