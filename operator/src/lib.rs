//! The Stead operator.
