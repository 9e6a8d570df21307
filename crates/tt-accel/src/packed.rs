//! The packed decode projection (see the crate docs).
