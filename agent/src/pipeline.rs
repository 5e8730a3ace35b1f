//! Wiring of the stages. (stub: being implemented)
