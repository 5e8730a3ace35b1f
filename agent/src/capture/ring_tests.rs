//! The bulk reader against real BPF ring buffer maps on the running kernel, written by
//! a tiny XDP program run with `BPF_PROG_TEST_RUN` (no attachment, nothing else on the
//! node sees it): order, lengths, wrap-around, discarded records, a full ring. A BUSY
//! record cannot be left in a real ring (the verifier makes every program submit or
//! discard what it reserved before it exits), so that case, and a corrupt header, run
//! on memory laid out as the kernel lays out the ring.
//!
//! Need root (CAP_BPF), and fail without it unless `LOGTAP_SKIP_EBPF_TESTS=1`.

use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};

use super::*;

const PAGE: usize = 4096;

fn skip_ebpf() -> bool {
    let skip = std::env::var_os("LOGTAP_SKIP_EBPF_TESTS").is_some_and(|v| v == "1");
    if skip {
        eprintln!("LOGTAP_SKIP_EBPF_TESTS=1: skipped");
    }
    skip
}

fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> io::Result<i64> {
    // SAFETY: `attr` is a #[repr(C)] prefix of `union bpf_attr` for `cmd`; the kernel
    // reads (and for test runs writes) at most its size.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            (attr as *mut T).cast::<libc::c_void>(),
            size_of::<T>() as u32,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(r)
}

fn ring_map(size: usize) -> OwnedFd {
    #[repr(C)]
    struct MapCreate {
        map_type: u32,
        key_size: u32,
        value_size: u32,
        max_entries: u32,
    }
    const BPF_MAP_CREATE: libc::c_long = 0;
    const BPF_MAP_TYPE_RINGBUF: u32 = 27;
    let mut attr = MapCreate {
        map_type: BPF_MAP_TYPE_RINGBUF,
        key_size: 0,
        value_size: 0,
        max_entries: size as u32,
    };
    let fd = bpf(BPF_MAP_CREATE, &mut attr)
        .expect("BPF_MAP_CREATE of a ring buffer (the eBPF tests need root)");
    // SAFETY: a fresh fd nobody else owns.
    unsafe { OwnedFd::from_raw_fd(fd as i32) }
}

#[repr(C)]
#[derive(Clone, Copy)]
struct Insn {
    code: u8,
    regs: u8,
    off: i16,
    imm: i32,
}

const fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Insn {
    Insn {
        code,
        regs: dst | (src << 4),
        off,
        imm,
    }
}

/// An XDP program that writes one record of `len` bytes into a ring: the first 8 bytes
/// of its packet at the record's start and again at its end (so a record that wraps
/// around the ring's end is checked across it), then submits it, or discards it.
struct Writer {
    prog: OwnedFd,
}

impl Writer {
    fn new(ring: &OwnedFd, len: usize, discard: bool) -> Writer {
        const BPF_PROG_LOAD: libc::c_long = 5;
        const BPF_PROG_TYPE_XDP: u32 = 6;
        const RINGBUF_RESERVE: i32 = 131;
        const RINGBUF_SUBMIT: i32 = 132;
        const RINGBUF_DISCARD: i32 = 133;
        assert!(len >= 8);
        let tail = (len - 8) as i16;
        let program = [
            insn(0xbf, 6, 1, 0, 0),                // r6 = ctx
            insn(0x61, 2, 6, 0, 0),                // r2 = ctx->data
            insn(0x61, 3, 6, 4, 0),                // r3 = ctx->data_end
            insn(0xbf, 4, 2, 0, 0),                // r4 = r2
            insn(0x07, 4, 0, 0, 8),                // r4 += 8
            insn(0x2d, 4, 3, 12, 0),               // if r4 > r3 goto out
            insn(0x79, 7, 2, 0, 0),                // r7 = *(u64 *)data
            insn(0x18, 1, 1, 0, ring.as_raw_fd()), // r1 = the ring (BPF_PSEUDO_MAP_FD)
            insn(0, 0, 0, 0, 0),
            insn(0xb7, 2, 0, 0, len as i32), // r2 = len
            insn(0xb7, 3, 0, 0, 0),          // r3 = 0
            insn(0x85, 0, 0, 0, RINGBUF_RESERVE),
            insn(0x15, 0, 0, 5, 0),    // if r0 == 0 goto out
            insn(0x7b, 0, 7, 0, 0),    // *(u64 *)r0 = r7
            insn(0x7b, 0, 7, tail, 0), // *(u64 *)(r0 + len - 8) = r7
            insn(0xbf, 1, 0, 0, 0),    // r1 = r0
            insn(0xb7, 2, 0, 0, 0),    // r2 = 0 (flags)
            insn(
                0x85,
                0,
                0,
                0,
                if discard {
                    RINGBUF_DISCARD
                } else {
                    RINGBUF_SUBMIT
                },
            ),
            insn(0xb7, 0, 0, 0, 2), // out: r0 = XDP_PASS
            insn(0x95, 0, 0, 0, 0), // exit
        ];
        #[repr(C)]
        struct ProgLoad {
            prog_type: u32,
            insn_cnt: u32,
            insns: u64,
            license: u64,
            log_level: u32,
            log_size: u32,
            log_buf: u64,
        }
        let mut log = vec![0u8; 64 * 1024];
        let mut attr = ProgLoad {
            prog_type: BPF_PROG_TYPE_XDP,
            insn_cnt: program.len() as u32,
            insns: program.as_ptr() as u64,
            license: c"GPL".as_ptr() as u64,
            log_level: 1,
            log_size: log.len() as u32,
            log_buf: log.as_mut_ptr() as u64,
        };
        let fd = bpf(BPF_PROG_LOAD, &mut attr).unwrap_or_else(|e| {
            let end = log.iter().position(|&b| b == 0).unwrap_or(log.len());
            panic!(
                "loading the ring writer: {e}\n{}",
                String::from_utf8_lossy(&log[..end])
            )
        });
        Writer {
            // SAFETY: a fresh fd nobody else owns.
            prog: unsafe { OwnedFd::from_raw_fd(fd as i32) },
        }
    }

    /// Runs the program once; the record holds `marker` (or nothing is written when
    /// the ring has no room: the kernel refuses the reservation).
    fn write(&self, marker: u64) {
        #[repr(C)]
        struct TestRun {
            prog_fd: u32,
            retval: u32,
            data_size_in: u32,
            data_size_out: u32,
            data_in: u64,
            data_out: u64,
            repeat: u32,
            duration: u32,
        }
        const BPF_PROG_TEST_RUN: libc::c_long = 10;
        // An Ethernet header's worth at least (XDP's test run wants 14 bytes).
        let mut packet = [0u8; 16];
        packet[..8].copy_from_slice(&marker.to_ne_bytes());
        let mut attr = TestRun {
            prog_fd: self.prog.as_raw_fd() as u32,
            retval: 0,
            data_size_in: packet.len() as u32,
            data_size_out: 0,
            data_in: packet.as_ptr() as u64,
            data_out: 0,
            repeat: 1,
            duration: 0,
        };
        bpf(BPF_PROG_TEST_RUN, &mut attr).expect("BPF_PROG_TEST_RUN");
        assert_eq!(attr.retval, 2, "the writer ran to its end");
    }
}

/// Each record drained: (marker at its start, its length); checks the marker at its
/// end too.
fn drain(reader: &mut RingReader) -> (Vec<(u64, usize)>, Drained) {
    let mut got = Vec::new();
    let drained = reader.drain(usize::MAX, |record| {
        let head = u64::from_ne_bytes(record[..8].try_into().unwrap());
        let tail = u64::from_ne_bytes(record[record.len() - 8..].try_into().unwrap());
        assert_eq!(head, tail, "a record reads the same at both ends");
        got.push((head, record.len()));
    });
    assert_eq!(drained.records, got.len());
    (got, drained)
}

#[test]
fn records_come_in_order_and_wrap_around_the_ring_s_end() {
    if skip_ebpf() {
        return;
    }
    let ring = ring_map(PAGE);
    let mut reader = RingReader::new(ring.as_fd(), PAGE).unwrap();
    // 1000 bytes take 1008 of ring, 100 take 112 (8-byte header, padded to 8): the
    // records start at ever other places relative to the ring's end, and some cross it.
    let big = Writer::new(&ring, 1000, false);
    let line = Writer::new(&ring, 100, false);
    let mut marker = 0u64;
    let mut crossed = 0;
    let mut pos = 0usize;
    for round in 0..12 {
        let mut expected = Vec::new();
        for i in 0..3 {
            let (writer, len) = if (round + i) % 2 == 0 {
                (&big, 1000)
            } else {
                (&line, 100)
            };
            writer.write(marker);
            expected.push((marker, len));
            let total = (HEADER_BYTES + len).next_multiple_of(8);
            if pos % PAGE + total > PAGE {
                crossed += 1;
            }
            pos += total;
            marker += 1;
        }
        let (got, drained) = drain(&mut reader);
        assert_eq!(got, expected, "round {round}");
        assert_eq!(drained.malformed_bytes, 0);
    }
    assert!(pos > 4 * PAGE, "the ring wrapped around several times");
    assert!(crossed >= 3, "records crossed the ring's end: {crossed}");
    assert_eq!(drain(&mut reader).0, [], "nothing twice");
}

#[test]
fn discarded_records_are_skipped_and_their_room_given_back() {
    if skip_ebpf() {
        return;
    }
    let ring = ring_map(PAGE);
    let mut reader = RingReader::new(ring.as_fd(), PAGE).unwrap();
    let kept = Writer::new(&ring, 1000, false);
    let dropped = Writer::new(&ring, 1000, true);
    kept.write(1);
    dropped.write(2);
    kept.write(3);
    dropped.write(4);
    assert_eq!(drain(&mut reader).0, [(1, 1000), (3, 1000)]);
    // The ring takes four 1008-byte records: all the room came back, the discarded
    // records' too.
    for m in 10..14 {
        kept.write(m);
    }
    assert_eq!(
        drain(&mut reader).0,
        [(10, 1000), (11, 1000), (12, 1000), (13, 1000)]
    );
}

#[test]
fn a_full_ring_refuses_writes_until_a_drain_gives_its_room_back() {
    if skip_ebpf() {
        return;
    }
    let ring = ring_map(PAGE);
    let mut reader = RingReader::new(ring.as_fd(), PAGE).unwrap();
    let writer = Writer::new(&ring, 1000, false);
    for m in 0..6 {
        writer.write(m);
    }
    // Four fit (4 × 1008 of 4096); the kernel refused the other two.
    let four: Vec<_> = (0..4).map(|m| (m, 1000)).collect();
    assert_eq!(drain(&mut reader).0, four);
    for m in 6..10 {
        writer.write(m);
    }
    let four: Vec<_> = (6..10).map(|m| (m, 1000)).collect();
    assert_eq!(drain(&mut reader).0, four);

    // A reader mapped later (an agent taking pinned probes over) starts at the
    // position the last one published: nothing again, nothing skipped.
    writer.write(20);
    drop(reader);
    let mut reader = RingReader::new(ring.as_fd(), PAGE).unwrap();
    assert_eq!(drain(&mut reader).0, [(20, 1000)]);
}

#[test]
fn a_long_drain_gives_room_back_while_it_runs() {
    if skip_ebpf() {
        return;
    }
    let ring = ring_map(PAGE);
    let mut reader = RingReader::new(ring.as_fd(), PAGE).unwrap();
    // A quarter of the ring: published after every second 1008-byte record.
    assert_eq!(reader.publish_every, PAGE / 4);
    let writer = Writer::new(&ring, 1000, false);
    for m in 0..4 {
        writer.write(m);
    }
    let mut got = Vec::new();
    reader.drain(usize::MAX, |record| {
        let m = u64::from_ne_bytes(record[..8].try_into().unwrap());
        got.push(m);
        if m == 3 {
            // The ring is full but for what this drain published so far.
            writer.write(99);
        }
    });
    assert_eq!(got, [0, 1, 2, 3, 99]);
}

/// A ring laid out in memory as the reader maps it (positions, the data pages once),
/// for the cases a real ring cannot be made to show.
struct FakeRing {
    consumer: Box<AtomicUsize>,
    producer: Box<AtomicUsize>,
    data: Vec<u64>,
    size: usize,
}

impl FakeRing {
    fn new(size: usize) -> FakeRing {
        FakeRing {
            consumer: Box::new(AtomicUsize::new(0)),
            producer: Box::new(AtomicUsize::new(0)),
            data: vec![0; size / 8],
            size,
        }
    }

    fn reader(&self) -> RingReader {
        RingReader {
            _consumer_map: None,
            _producer_map: None,
            consumer: &*self.consumer,
            producer: &*self.producer,
            data: self.data.as_ptr().cast(),
            size: self.size,
            cons: self.consumer.load(Ordering::Relaxed),
            publish_every: self.size / 4,
            scratch: Vec::new(),
        }
    }

    /// Writes bytes at a position (wrapping around the data pages' end).
    fn put(&mut self, pos: usize, bytes: &[u8]) {
        let size = self.size;
        // SAFETY: the Vec's own bytes.
        let data: &mut [u8] =
            unsafe { std::slice::from_raw_parts_mut(self.data.as_mut_ptr().cast(), size) };
        for (i, b) in bytes.iter().enumerate() {
            data[(pos + i) & (size - 1)] = *b;
        }
    }

    /// Reserves and writes a record at the producer position; returns its position.
    fn record(&mut self, payload: &[u8], flags: u32) -> usize {
        let pos = self.producer.load(Ordering::Relaxed);
        let header = (payload.len() as u32 | flags).to_ne_bytes();
        self.put(pos, &header);
        self.put(pos + HEADER_BYTES, payload);
        let total = (HEADER_BYTES + payload.len()).next_multiple_of(8);
        self.producer.store(pos + total, Ordering::Release);
        pos
    }
}

#[test]
fn a_busy_record_ends_the_drain_until_it_is_committed() {
    let mut ring = FakeRing::new(PAGE);
    let mut reader = ring.reader();
    ring.record(b"first", 0);
    let busy = ring.record(b"second", BUSY_BIT);
    ring.record(b"third", 0);
    let mut got: Vec<Vec<u8>> = Vec::new();
    let drained = reader.drain(usize::MAX, |r| got.push(r.to_vec()));
    assert_eq!(got, [b"first".to_vec()]);
    assert_eq!(drained.records, 1);
    // Published up to the busy record, not past it.
    assert_eq!(ring.consumer.load(Ordering::Relaxed), busy);

    // Committed (BUSY cleared): the rest comes, in order.
    ring.put(busy, &(6u32).to_ne_bytes());
    got.clear();
    reader.drain(usize::MAX, |r| got.push(r.to_vec()));
    assert_eq!(got, [b"second".to_vec(), b"third".to_vec()]);
    assert_eq!(
        ring.consumer.load(Ordering::Relaxed),
        ring.producer.load(Ordering::Relaxed)
    );
}

#[test]
fn a_header_past_the_producer_position_ends_the_drain_counted_without_a_panic() {
    let mut ring = FakeRing::new(PAGE);
    let mut reader = ring.reader();
    ring.record(b"good", 0);
    let bad = ring.record(b"short", 0);
    // The header claims more bytes than the producer has reserved.
    ring.put(bad, &(3000u32).to_ne_bytes());
    let mut got: Vec<Vec<u8>> = Vec::new();
    let drained = reader.drain(usize::MAX, |r| got.push(r.to_vec()));
    assert_eq!(got, [b"good".to_vec()]);
    assert_eq!(drained.malformed_bytes, 16);
    // The reader went on past it: the next record is read.
    ring.record(b"after", 0);
    got.clear();
    reader.drain(usize::MAX, |r| got.push(r.to_vec()));
    assert_eq!(got, [b"after".to_vec()]);
}

#[test]
fn records_that_wrap_around_the_single_mapping_come_whole() {
    let mut ring = FakeRing::new(PAGE);
    let mut reader = ring.reader();
    let pattern =
        |n: usize, seed: u8| -> Vec<u8> { (0..n).map(|i| seed.wrapping_add(i as u8)).collect() };
    // 8 + 4080 = 4088: the next header is in the ring's last 8 bytes, its record's
    // bytes at the ring's start.
    let filler = pattern(4080, 1);
    ring.record(&filler, 0);
    let mut got: Vec<Vec<u8>> = Vec::new();
    reader.drain(usize::MAX, |r| got.push(r.to_vec()));
    assert!(got == [filler]);
    let after_header = pattern(20, 2);
    assert_eq!(ring.record(&after_header, 0) % PAGE, PAGE - HEADER_BYTES);
    got.clear();
    reader.drain(usize::MAX, |r| got.push(r.to_vec()));
    assert!(got == [after_header], "{:?}", got.first());
    // Its header at 24 of the next lap: 4080 bytes from 32 on cross the ring's end.
    let across = pattern(4080, 3);
    ring.record(&across, 0);
    got.clear();
    let drained = reader.drain(usize::MAX, |r| got.push(r.to_vec()));
    assert!(
        got == [across],
        "lengths {:?}",
        got.iter().map(Vec::len).collect::<Vec<_>>()
    );
    assert_eq!(
        drained,
        Drained {
            records: 1,
            ring_bytes: 4088,
            ..Default::default()
        }
    );
    assert!(reader.scratch.is_empty(), "the scratch copy is not kept");
}

#[test]
fn the_ring_s_data_pages_are_mapped_once() {
    if skip_ebpf() {
        return;
    }
    let size = 64 * 1024;
    let ring = ring_map(size);
    let reader = RingReader::new(ring.as_fd(), size).unwrap();
    let map = reader._producer_map.as_ref().unwrap();
    assert_eq!(map.len(), PAGE + size);
    // The kernel maps every page at mmap time: all of it is resident, once.
    let start = format!("{:x}-", map.as_ptr() as usize);
    let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
    // The first `Rss:` after the mapping's own line is its.
    let entry = smaps
        .lines()
        .skip_while(|l| !l.starts_with(&start))
        .find_map(|l| l.strip_prefix("Rss:"))
        .expect("the mapping is in smaps");
    let rss_kib: usize = entry.trim().trim_end_matches("kB").trim().parse().unwrap();
    assert_eq!(rss_kib * 1024, PAGE + size, "resident: {rss_kib} KiB");
}

#[test]
fn a_drain_stops_at_its_byte_cap_and_the_next_one_takes_the_rest() {
    if skip_ebpf() {
        return;
    }
    let ring = ring_map(PAGE);
    let mut reader = RingReader::new(ring.as_fd(), PAGE).unwrap();
    let writer = Writer::new(&ring, 1000, false);
    for m in 0..4 {
        writer.write(m);
    }
    assert_eq!(reader.unread_bytes(), 4 * 1008);
    let mut got = Vec::new();
    // Two 1008-byte records fit in 2100 bytes, a third would not.
    let first = reader.drain(2100, |r| got.push(r[0]));
    assert_eq!(got, [0, 1]);
    assert_eq!((first.ring_bytes, first.capped), (2016, true));
    // The room of what was read is given back at once.
    writer.write(4);
    // A record larger than the cap still comes, alone: a drain always moves on.
    let one = reader.drain(10, |r| got.push(r[0]));
    assert_eq!((one.records, one.capped), (1, true));
    let rest = reader.drain(usize::MAX, |r| got.push(r[0]));
    assert_eq!(got, [0, 1, 2, 3, 4]);
    assert!(!rest.capped);
    assert_eq!(reader.unread_bytes(), 0);
}
