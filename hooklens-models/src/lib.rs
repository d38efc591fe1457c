//! Hooked transformer models.
