//! Read backends: io_uring (many files per syscall) or plain `pread`.
//!
//! The tracker hands over a batch of reads — at most one per file, so chunks of a file
//! stay in order — and gets back one completion per read. Each read gets its own
//! buffer, sized to the bytes known to be there (`fstat` size minus offset, capped at
//! `read_buffer_bytes`), so a frozen chunk held downstream pins no slack memory.
//!
//! # Safety
//!
//! With io_uring the kernel writes into a buffer after `submit` returns. Buffers are
//! owned by the in-flight table until their completion arrives; the batch call does not
//! return before every submitted read completed. If the ring fails mid-batch, the
//! buffers still owned by the kernel are leaked rather than freed, and the reader falls
//! back to `pread` for good.

use std::io;
use std::os::fd::RawFd;

use bytes::{Bytes, BytesMut};

/// One read: `len` bytes of `fd` at `offset`. `slot` is the caller's file handle.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ReadRequest {
    pub slot: usize,
    pub fd: RawFd,
    pub offset: u64,
    pub len: usize,
}

/// The bytes read (possibly fewer than asked; empty at EOF) or the error.
#[derive(Debug)]
pub(crate) struct ReadCompletion {
    pub slot: usize,
    pub offset: u64,
    pub result: io::Result<Bytes>,
}

/// Submission queue entries per `io_uring_enter`.
const RING_ENTRIES: u32 = 64;

pub(crate) struct UringReader {
    ring: io_uring::IoUring,
    in_flight: Vec<Option<(ReadRequest, BytesMut)>>,
}

pub(crate) enum Reader {
    Uring(Box<UringReader>),
    Pread,
}

impl Reader {
    /// io_uring when `want_uring` and the kernel (and seccomp policy) allow it.
    pub fn new(want_uring: bool) -> Reader {
        let reader = if want_uring {
            match io_uring::IoUring::new(RING_ENTRIES) {
                Ok(ring) => Reader::Uring(Box::new(UringReader {
                    ring,
                    in_flight: (0..RING_ENTRIES).map(|_| None).collect(),
                })),
                Err(e) => {
                    tracing::warn!(error = %e, "io_uring unavailable, reading files with pread");
                    Reader::Pread
                }
            }
        } else {
            Reader::Pread
        };
        tracing::info!(backend = reader.name(), "file read backend");
        metrics::gauge!("logtap_read_backend", "backend" => reader.name()).set(1.0);
        reader
    }

    pub fn name(&self) -> &'static str {
        match self {
            Reader::Uring(_) => "io_uring",
            Reader::Pread => "pread",
        }
    }

    /// Performs every read of `requests`, appending one completion per request to
    /// `out` (in completion order).
    pub fn read_batch(&mut self, requests: &[ReadRequest], out: &mut Vec<ReadCompletion>) {
        let mut done = 0;
        if let Reader::Uring(uring) = self {
            while done < requests.len() {
                let end = (done + RING_ENTRIES as usize).min(requests.len());
                let submitted = uring.submit(&requests[done..end], out);
                done = end;
                match submitted {
                    Ok(()) => {}
                    Err(e) => {
                        tracing::warn!(error = %e, "io_uring failed, switching to pread");
                        metrics::gauge!("logtap_read_backend", "backend" => "io_uring").set(0.0);
                        metrics::gauge!("logtap_read_backend", "backend" => "pread").set(1.0);
                        *self = Reader::Pread;
                        break;
                    }
                }
            }
        }
        for req in &requests[done..] {
            out.push(pread(req));
        }
    }
}

fn pread(req: &ReadRequest) -> ReadCompletion {
    let mut buf = BytesMut::with_capacity(req.len);
    let result = loop {
        // SAFETY: the spare capacity is `req.len` writable bytes owned by `buf`.
        let n = unsafe {
            libc::pread(
                req.fd,
                buf.spare_capacity_mut().as_mut_ptr().cast(),
                req.len,
                req.offset as libc::off_t,
            )
        };
        if n >= 0 {
            // SAFETY: the kernel initialised the first `n` bytes.
            unsafe { buf.set_len(n as usize) };
            break Ok(buf.freeze());
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            break Err(e);
        }
    };
    ReadCompletion {
        slot: req.slot,
        offset: req.offset,
        result,
    }
}

impl UringReader {
    /// Submits up to `RING_ENTRIES` reads and waits for all of them. Every request is
    /// answered in `out` even on `Err` (then the ring is unusable).
    fn submit(
        &mut self,
        requests: &[ReadRequest],
        out: &mut Vec<ReadCompletion>,
    ) -> io::Result<()> {
        debug_assert!(requests.len() <= RING_ENTRIES as usize);
        let mut pushed = 0;
        for (i, req) in requests.iter().enumerate() {
            let mut buf = BytesMut::with_capacity(req.len);
            let ptr: *mut u8 = buf.spare_capacity_mut().as_mut_ptr().cast();
            let sqe = io_uring::opcode::Read::new(io_uring::types::Fd(req.fd), ptr, req.len as u32)
                .offset(req.offset)
                .build()
                .user_data(i as u64);
            // SAFETY: `buf` moves into `in_flight` below and its heap allocation (where
            // `ptr` points) neither moves nor is freed until the completion arrives.
            if unsafe { self.ring.submission().push(&sqe) }.is_err() {
                break;
            }
            self.in_flight[i] = Some((*req, buf));
            pushed += 1;
        }
        let mut remaining = pushed;
        let mut result = Ok(());
        while remaining > 0 {
            match self.ring.submit_and_wait(remaining) {
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => {}
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {}
                Err(e) => {
                    result = Err(e);
                    break;
                }
            }
            for cqe in self.ring.completion() {
                let idx = cqe.user_data() as usize;
                let Some((req, mut buf)) = self.in_flight.get_mut(idx).and_then(Option::take)
                else {
                    continue;
                };
                remaining -= 1;
                let res = cqe.result();
                let result = if res >= 0 {
                    // SAFETY: the kernel wrote `res` bytes into the spare capacity.
                    unsafe { buf.set_len(res as usize) };
                    Ok(buf.freeze())
                } else {
                    Err(io::Error::from_raw_os_error(-res))
                };
                out.push(ReadCompletion {
                    slot: req.slot,
                    offset: req.offset,
                    result,
                });
            }
        }
        // Reads still owned by the kernel after a ring failure: leak their buffers (see
        // `# Safety`) and answer them, and any never pushed, with `pread`.
        for entry in self.in_flight.iter_mut() {
            if let Some((req, buf)) = entry.take() {
                std::mem::forget(buf);
                out.push(pread(&req));
            }
        }
        for req in &requests[pushed..] {
            out.push(pread(req));
        }
        result
    }
}
