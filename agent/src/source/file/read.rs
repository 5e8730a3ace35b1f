//! Read backends: io_uring (many files per syscall) or plain `pread`.
//!
//! The tracker hands over a batch of reads — at most one per file, so chunks of a file
//! stay in order — and gets back one completion per read. Each read gets its own
//! buffer, sized to the bytes known to be there (`fstat` size minus offset, capped at
//! `read_buffer_bytes`), so a frozen chunk held downstream pins little slack memory.
//!
//! # Buffer reuse
//!
//! A chunk lives until the sink has written the last package holding a slice of it, on
//! the sink's thread. Freeing it there and allocating a fresh one for the next read
//! costs a page fault and a kernel page clear per 4 KiB: a few percent of the CPU of a
//! bulk read. So large buffers (at least [`POOLED_MIN_BYTES`]) go back to a small
//! [`BufferPool`] when their last slice is dropped, and the next large read takes one
//! from there if it is at least as large and at most twice as large as the read (the
//! slack a chunk may pin stays bounded). The pool keeps at most
//! [`POOL_IDLE_BUFFERS`] buffers; more are freed, so an idle agent holds at most that
//! many (4 MiB with the default 256 KiB reads). Small reads (a followed file's new
//! lines) are allocated exactly, as before.
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

use std::sync::{Arc, Mutex, PoisonError};

use crate::metrics::catalogue::READ_BACKEND;
use bytes::Bytes;

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

/// Reads smaller than this get an exactly sized buffer of their own, never pooled.
pub(crate) const POOLED_MIN_BYTES: usize = 64 * 1024;
/// Most buffers the pool keeps for reuse.
pub(crate) const POOL_IDLE_BUFFERS: usize = 16;

/// Large read buffers, returned by the last drop of their chunk (on any thread) and
/// taken by the next large read. See `# Buffer reuse`.
///
/// A stack, not a queue: the buffer returned last is the one most likely still in
/// the CPU caches. One lock per read of hundreds of KiB costs nothing measurable.
#[derive(Clone, Default)]
pub(crate) struct BufferPool {
    idle: Arc<Mutex<Vec<Vec<u8>>>>,
}

impl BufferPool {
    pub fn new() -> BufferPool {
        BufferPool::default()
    }

    /// An empty buffer with room for at least `len` bytes.
    fn take(&self, len: usize) -> Vec<u8> {
        if len >= POOLED_MIN_BYTES
            && let Some(mut buf) = lock(&self.idle).pop()
        {
            // A buffer far larger than the read would pin its slack downstream; one
            // too small cannot serve. Either is freed, the next one may fit.
            if (len..=len.saturating_mul(2)).contains(&buf.capacity()) {
                buf.clear();
                return buf;
            }
        }
        Vec::with_capacity(len)
    }

    /// The read bytes as a chunk; a large buffer comes back here when the chunk's
    /// last slice is dropped.
    fn freeze(&self, buf: Vec<u8>) -> Bytes {
        if buf.capacity() >= POOLED_MIN_BYTES {
            Bytes::from_owner(PooledBuffer {
                buf,
                home: Arc::clone(&self.idle),
            })
        } else {
            Bytes::from(buf)
        }
    }

    /// Buffers waiting for reuse (tests).
    #[cfg(test)]
    fn idle(&self) -> usize {
        lock(&self.idle).len()
    }
}

/// The pool's lock; a panic elsewhere while holding it leaves a valid list behind.
fn lock(idle: &Mutex<Vec<Vec<u8>>>) -> std::sync::MutexGuard<'_, Vec<Vec<u8>>> {
    idle.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The owner of a pooled chunk's memory.
struct PooledBuffer {
    buf: Vec<u8>,
    home: Arc<Mutex<Vec<Vec<u8>>>>,
}

impl AsRef<[u8]> for PooledBuffer {
    fn as_ref(&self) -> &[u8] {
        &self.buf
    }
}

impl Drop for PooledBuffer {
    fn drop(&mut self) {
        let mut idle = lock(&self.home);
        // A full pool frees the buffer instead.
        if idle.len() < POOL_IDLE_BUFFERS {
            idle.push(std::mem::take(&mut self.buf));
        }
    }
}

pub(crate) struct UringReader {
    ring: io_uring::IoUring,
    in_flight: Vec<Option<(ReadRequest, Vec<u8>)>>,
}

enum Backend {
    Uring(Box<UringReader>),
    Pread,
}

pub(crate) struct Reader {
    backend: Backend,
    pool: BufferPool,
}

impl Reader {
    /// io_uring when `want_uring` and the kernel (and seccomp policy) allow it.
    pub fn new(want_uring: bool) -> Reader {
        let backend = if want_uring {
            match io_uring::IoUring::new(RING_ENTRIES) {
                Ok(ring) => Backend::Uring(Box::new(UringReader {
                    ring,
                    in_flight: (0..RING_ENTRIES).map(|_| None).collect(),
                })),
                Err(e) => {
                    tracing::warn!(error = %e, "io_uring unavailable, reading files with pread");
                    Backend::Pread
                }
            }
        } else {
            Backend::Pread
        };
        let reader = Reader {
            backend,
            pool: BufferPool::new(),
        };
        tracing::info!(backend = reader.name(), "file read backend");
        metrics::gauge!(READ_BACKEND, "backend" => reader.name()).set(1.0);
        reader
    }

    pub fn name(&self) -> &'static str {
        match self.backend {
            Backend::Uring(_) => "io_uring",
            Backend::Pread => "pread",
        }
    }

    /// Performs every read of `requests`, appending one completion per request to
    /// `out` (in completion order).
    pub fn read_batch(&mut self, requests: &[ReadRequest], out: &mut Vec<ReadCompletion>) {
        let mut done = 0;
        if let Backend::Uring(uring) = &mut self.backend {
            while done < requests.len() {
                let end = (done + RING_ENTRIES as usize).min(requests.len());
                let submitted = uring.submit(&requests[done..end], out, &self.pool);
                done = end;
                match submitted {
                    Ok(()) => {}
                    Err(e) => {
                        tracing::warn!(error = %e, "io_uring failed, switching to pread");
                        metrics::gauge!(READ_BACKEND, "backend" => "io_uring").set(0.0);
                        metrics::gauge!(READ_BACKEND, "backend" => "pread").set(1.0);
                        self.backend = Backend::Pread;
                        break;
                    }
                }
            }
        }
        for req in &requests[done..] {
            out.push(pread(req, &self.pool));
        }
    }
}

fn pread(req: &ReadRequest, pool: &BufferPool) -> ReadCompletion {
    let mut buf = pool.take(req.len);
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
            break Ok(pool.freeze(buf));
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
        pool: &BufferPool,
    ) -> io::Result<()> {
        debug_assert!(requests.len() <= RING_ENTRIES as usize);
        let mut pushed = 0;
        for (i, req) in requests.iter().enumerate() {
            let mut buf = pool.take(req.len);
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
                    Ok(pool.freeze(buf))
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
                out.push(pread(&req, pool));
            }
        }
        for req in &requests[pushed..] {
            out.push(pread(req, pool));
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::os::fd::AsRawFd;

    use super::*;

    fn file_of(bytes: &[u8]) -> std::fs::File {
        let mut f = tempfile::tempfile().unwrap();
        f.write_all(bytes).unwrap();
        f
    }

    fn read_all(reader: &mut Reader, file: &std::fs::File, len: usize) -> Bytes {
        let mut out = Vec::new();
        let req = ReadRequest {
            slot: 0,
            fd: file.as_raw_fd(),
            offset: 0,
            len,
        };
        reader.read_batch(&[req], &mut out);
        assert_eq!(out.len(), 1);
        out.pop().unwrap().result.unwrap()
    }

    #[test]
    fn large_buffers_are_reused_after_the_last_slice_is_dropped() {
        for uring in [false, true] {
            let mut reader = Reader::new(uring);
            let a = file_of(&vec![b'a'; 200_000]);
            let b = file_of(&vec![b'b'; 150_000]);
            let chunk = read_all(&mut reader, &a, 200_000);
            let line = chunk.slice(10..20);
            let first_ptr = chunk.as_ptr();
            drop(chunk);
            assert_eq!(reader.pool.idle(), 0, "a slice still holds the buffer");
            drop(line);
            assert_eq!(reader.pool.idle(), 1);

            // The old contents past the new read's length stay invisible.
            let chunk = read_all(&mut reader, &b, 200_000);
            assert_eq!(chunk.as_ptr(), first_ptr, "reused ({})", reader.name());
            assert_eq!(&chunk[..], &vec![b'b'; 150_000][..]);
            assert_eq!(reader.pool.idle(), 0);
        }
    }

    #[test]
    fn small_reads_are_not_pooled_and_the_pool_is_bounded() {
        let pool = BufferPool::new();
        let small = pool.take(100);
        assert_eq!(small.capacity(), 100);
        drop(pool.freeze(small));
        assert_eq!(pool.idle(), 0);

        let chunks: Vec<Bytes> = (0..POOL_IDLE_BUFFERS + 4)
            .map(|_| {
                let mut buf = pool.take(POOLED_MIN_BYTES);
                buf.resize(POOLED_MIN_BYTES, 7);
                pool.freeze(buf)
            })
            .collect();
        drop(chunks);
        assert_eq!(pool.idle(), POOL_IDLE_BUFFERS);
    }

    #[test]
    fn pooled_buffers_only_serve_reads_of_a_fitting_size() {
        let pool = BufferPool::new();
        let big = pool.take(4 * POOLED_MIN_BYTES);
        drop(pool.freeze(big));
        assert_eq!(pool.idle(), 1);
        // Four times the read: would pin too much slack, so it is freed, not used.
        let small = pool.take(POOLED_MIN_BYTES);
        assert_eq!(small.capacity(), POOLED_MIN_BYTES);
        assert_eq!(pool.idle(), 0);

        drop(pool.freeze(small));
        // Too small for a larger read.
        assert!(pool.take(2 * POOLED_MIN_BYTES).capacity() >= 2 * POOLED_MIN_BYTES);
    }
}
