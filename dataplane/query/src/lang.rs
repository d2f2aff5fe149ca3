//! The query language: parsing, printing, matching and planning hints.
