//! Capture: container stdout/stderr taken from the kernel by the eBPF probes, put
//! back into ordered streams, repaired from the runtime's CRI log where the kernel
//! could not deliver, and fed into the pipeline like any other source.

mod claims;
mod cri_log;
mod event;
mod stage;
mod stream;

pub use claims::{Claim, Claims};
pub use event::ProbeEvent;
pub use stage::{CaptureStage, CapturedContainer, ContainerResolver, EventFeed};
