//! The probes' ring buffer read in bulk: every committed record handed to a callback
//! in place, the consumer position published once per drain (and every
//! [`PUBLISH_BYTES`] within a long one) instead of once per record.
//!
//! Why not aya's `RingBuf` (0.14, the same in 0.16 and on aya's main branch):
//! `RingBuf::next` hands out one record per call, and dropping the item stores the
//! consumer position with a release store, a million times per 100 MB of 100-byte
//! lines, into the cache line the kernel's producer reads on every
//! `bpf_ringbuf_reserve`; and it panics on a header that makes no sense. Measured
//! (`docs/capture.md`, "the ring read in bulk"): the ring reads went from 17% to 12%
//! of the capture thread while it streams; the capture CPU per GB did not move
//! beyond the noise, and a small ring dropped less in most runs.
//!
//! # Layout (`kernel/bpf/ringbuf.c`, `include/uapi/linux/bpf.h`)
//!
//! The map's fd is mapped at two offsets: page 0 is the consumer page (the consumer
//! position, an `unsigned long`, is the only field userspace writes); from page 1 on,
//! read-only, the producer page (the producer position) and then the data pages. The
//! kernel lays the data pages out twice in a row (so a record that wraps around the
//! end of the ring is one contiguous slice), and lets a mapping take less than all of
//! that (`ringbuf_map_mmap_kern`: only the consumer page may be writable;
//! `remap_vmalloc_range` checks that the range lies inside the area). This reader maps
//! the data pages **once**: every mapped page counts in the agent's RSS (a 16 MiB ring
//! mapped twice is 32 MiB), and the few records that wrap are copied into a scratch
//! buffer instead. Positions only grow; a position's byte is at `pos & (size - 1)`.
//! Each record is an 8-byte header (`u32 len` with [`BUSY_BIT`] while the producer
//! still writes it and [`DISCARD_BIT`] when it was given up, then `u32 pg_off`, the
//! kernel's own) followed by `len` bytes, the whole padded to 8 bytes. The producer
//! publishes its position (release) once it has reserved, and clears BUSY (a fully
//! ordered `xchg`) when it commits; records commit out of order, so the reader stops
//! at the first BUSY one.
//!
//! # Safety
//!
//! The kernel writes a byte of the data pages only after reserving it, and it
//! reserves only between the producer position and the consumer position plus the
//! ring's size. So the bytes between the consumer position userspace published and a
//! producer position it read (acquire) hold committed records (or BUSY ones) that
//! nobody writes until the consumer position passes them; a record's bytes are
//! handed out only before that. The reader checks every header against the producer
//! position and the ring's size before it makes a slice, so a corrupt header ends the
//! drain (counted) instead of reading outside the mapping.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering, fence};

use memmap2::{MmapOptions, MmapRaw};

/// Set in a header while the producer writes the record.
pub(crate) const BUSY_BIT: u32 = 1 << 31;
/// Set in a header when the producer gave the record up (`bpf_ringbuf_discard`).
pub(crate) const DISCARD_BIT: u32 = 1 << 30;
/// Bytes of a record's header (`BPF_RINGBUF_HDR_SZ`).
pub(crate) const HEADER_BYTES: usize = 8;
/// Within one drain the consumer position is published after this many bytes, so
/// that a drain of a full ring gives room back to the writers while it runs (a 100-byte
/// line takes 112 bytes of ring: about 580 records per store).
pub(crate) const PUBLISH_BYTES: usize = 64 * 1024;

/// What one [`RingReader::drain`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Drained {
    /// Committed records handed to the callback.
    pub records: usize,
    /// Bytes of ring the drain moved past (headers, padding and discarded records
    /// included): at most the drain's `max_bytes`, unless its first record alone is
    /// larger.
    pub ring_bytes: usize,
    /// The drain stopped at `max_bytes` with committed records left in the ring.
    pub capped: bool,
    /// Bytes of ring skipped because a header made no sense (a length past the
    /// producer position or the ring's size): the kernel broke its layout. Never seen;
    /// the records in them are holes in their streams, repaired like any other.
    pub malformed_bytes: usize,
}

/// The reader of one BPF ring buffer map. Invariant: it is the map's only consumer
/// (one agent holds the pin directory's lock), so `cons` is the consumer position
/// in the kernel's page whenever no drain runs.
pub(crate) struct RingReader {
    /// The consumer page, read-write; `None` for memory a test laid out.
    _consumer_map: Option<MmapRaw>,
    /// The producer page and the data pages once, read-only.
    _producer_map: Option<MmapRaw>,
    consumer: *const AtomicUsize,
    producer: *const AtomicUsize,
    /// `size` bytes: the data pages, mapped once.
    data: *const u8,
    size: usize,
    /// Our consumer position: the next record's header is at `cons & (size - 1)`.
    cons: usize,
    publish_every: usize,
    /// A record that wraps around the ring's end, made contiguous. Invariant: holds
    /// nothing between two callbacks; its capacity is the longest record that
    /// wrapped (a data record is at most 4 KiB).
    scratch: Vec<u8>,
}

// SAFETY: the pointers are into mappings this value owns (or, in tests, memory that
// outlives it); the kernel is the only other party, and it synchronises through the
// atomics. `drain` takes `&mut self`, so one thread reads at a time.
unsafe impl Send for RingReader {}

impl RingReader {
    /// Maps the ring buffer map `fd` of `size` data bytes (a power of two, a multiple
    /// of the page size, as the kernel requires of `max_entries`).
    pub fn new(fd: BorrowedFd<'_>, size: usize) -> io::Result<RingReader> {
        let page = page_size();
        if !size.is_power_of_two() || size < page {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("ring buffer size {size} is not a power of two of at least a page"),
            ));
        }
        let raw = fd.as_raw_fd();
        let consumer_map = MmapOptions::new().len(page).map_raw(raw)?;
        // The data pages once, not the kernel's two copies (see the module docs).
        let producer_map = MmapOptions::new()
            .offset(page as u64)
            .len(page + size)
            .map_raw_read_only(raw)?;
        let consumer = consumer_map.as_ptr().cast::<AtomicUsize>();
        let producer = producer_map.as_ptr().cast::<AtomicUsize>();
        // SAFETY: `page + size` bytes are mapped.
        let data = unsafe { producer_map.as_ptr().add(page) };
        // SAFETY: page-aligned, mapped, and the kernel's consumer position (acquire:
        // an earlier consumer of a pinned ring may have published it).
        let cons = unsafe { &*consumer }.load(Ordering::Acquire);
        Ok(RingReader {
            _consumer_map: Some(consumer_map),
            _producer_map: Some(producer_map),
            consumer,
            producer,
            data,
            size,
            cons,
            publish_every: PUBLISH_BYTES.min(size / 4),
            scratch: Vec::new(),
        })
    }

    /// Bytes of ring the producer has reserved and the reader not passed yet
    /// (committed records or ones still being written): one load, no system call.
    pub fn unread_bytes(&self) -> usize {
        // SAFETY: see `drain`.
        let prod = unsafe { &*self.producer }.load(Ordering::Acquire);
        prod.wrapping_sub(self.cons).min(self.size)
    }

    /// Hands every committed record to `on_record`, in ring order, until the ring is
    /// empty, the next record is still being written, or the next record would take
    /// the drain past `max_bytes` of ring (the first record is always handed on);
    /// skips discarded ones. Publishes the consumer position at the end (and every
    /// [`PUBLISH_BYTES`]), after the records it passes were handed over.
    ///
    /// Without `max_bytes`, writers that refill the ring as fast as it is read keep
    /// one drain going, and whatever the callback gathers grows with it.
    pub fn drain(&mut self, max_bytes: usize, mut on_record: impl FnMut(&[u8])) -> Drained {
        let mut drained = Drained::default();
        let mut cons = self.cons;
        let mut published = cons;
        let mask = self.size - 1;
        'drain: loop {
            // SAFETY (here and below): the pointers are valid for the reader's life
            // (see the type), the positions are aligned `unsigned long`s.
            let prod = unsafe { &*self.producer }.load(Ordering::Acquire);
            while cons != prod {
                let available = prod.wrapping_sub(cons);
                let header = self.header(cons);
                if header & BUSY_BIT != 0 {
                    break;
                }
                let len = (header & !(BUSY_BIT | DISCARD_BIT)) as usize;
                let total = (HEADER_BYTES + len).next_multiple_of(8);
                if available > self.size || total > available {
                    drained.malformed_bytes += available;
                    cons = prod;
                    break;
                }
                if drained.ring_bytes > 0 && drained.ring_bytes + total > max_bytes {
                    drained.capped = true;
                    break 'drain;
                }
                if header & DISCARD_BIT == 0 {
                    // The header never wraps (8 bytes, 8-aligned, in a ring of a
                    // multiple of 8); the record's bytes may.
                    let at = ((cons & mask) + HEADER_BYTES) & mask;
                    let first = len.min(self.size - at);
                    // SAFETY: at + first ≤ size and len - first < size, inside the
                    // mapping; committed, and not written again before `cons` passes
                    // it.
                    let record = unsafe { std::slice::from_raw_parts(self.data.add(at), first) };
                    if first == len {
                        on_record(record);
                    } else {
                        // SAFETY: the rest of the same record, at the data pages'
                        // start (len - first < size).
                        let rest = unsafe { std::slice::from_raw_parts(self.data, len - first) };
                        self.scratch.extend_from_slice(record);
                        self.scratch.extend_from_slice(rest);
                        on_record(&self.scratch);
                        self.scratch.clear();
                    }
                    drained.records += 1;
                }
                drained.ring_bytes += total;
                cons = cons.wrapping_add(total);
                if cons.wrapping_sub(published) >= self.publish_every {
                    self.publish(cons);
                    published = cons;
                }
            }
            if cons != published {
                self.publish(cons);
                published = cons;
            }
            // The store of the consumer position above and the loads below must not
            // be reordered: a producer that commits meanwhile either is seen here, or
            // sees our position and wakes the poller (a record submitted with the
            // default wakeup). Once per drain, not per record.
            fence(Ordering::SeqCst);
            let more = unsafe { &*self.producer }.load(Ordering::Acquire) != cons;
            if !more || self.header(cons) & BUSY_BIT != 0 {
                break;
            }
        }
        if cons != published {
            self.publish(cons);
        }
        self.cons = cons;
        drained
    }

    /// The header of the record at `pos` (acquire: pairs with the kernel's commit).
    fn header(&self, pos: usize) -> u32 {
        let at = pos & (self.size - 1);
        // SAFETY: `at` < size and records are 8-aligned, so the header lies inside
        // the data pages, aligned.
        unsafe { &*self.data.add(at).cast::<AtomicU32>() }.load(Ordering::Acquire)
    }

    fn publish(&self, cons: usize) {
        // Release: the records' bytes were read before the kernel may reuse them.
        // SAFETY: see `drain`.
        unsafe { &*self.consumer }.store(cons, Ordering::Release);
    }
}

fn page_size() -> usize {
    // SAFETY: no arguments beyond the constant.
    unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(4096) as usize
}

#[cfg(test)]
#[path = "ring_tests.rs"]
mod tests;
