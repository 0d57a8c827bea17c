//! Orchestrator (placeholder).
