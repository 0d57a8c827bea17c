//! payment service (placeholder).
