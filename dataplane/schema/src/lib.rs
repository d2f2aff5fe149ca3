//! LogSchema resources: parsing, compiling and validating entries against them.
