//! Parsing. (stub: being implemented)
