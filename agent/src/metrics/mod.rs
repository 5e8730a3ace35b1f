//! Metrics: names and the Prometheus endpoint. (stub: being implemented)
