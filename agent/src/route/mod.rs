//! Routing. (stub: being implemented)
