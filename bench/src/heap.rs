//! Where a bench process's resident memory goes: the heap's live bytes (a counting
//! wrapper around the system allocator, off unless `--heap-stats` turned it on) and
//! the split of the RSS from `/proc/self/smaps_rollup`, sampled while a scenario runs.
//!
//! The counter is the harness's own heap profile: the difference between anonymous
//! RSS and live heap bytes is the allocator's retained free memory (fragmentation,
//! per-thread arenas) plus the threads' stacks; file-backed RSS is the mapped binary
//! and the BPF ring buffer's pages.
//!
//! # Performance
//!
//! Off, an allocation pays one relaxed load of a flag; on, two relaxed atomic adds
//! (live bytes and, when it grew, the peak): not for the CPU tables.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

static COUNTING: AtomicBool = AtomicBool::new(false);
static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

pub struct CountingAlloc;

// SAFETY: every call is forwarded to `System` unchanged; the counters only observe.
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract, forwarded.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract, forwarded.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller's contract, forwarded.
        unsafe { System.dealloc(ptr, layout) };
        shrank(layout.size());
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: the caller's contract, forwarded.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            shrank(layout.size());
            grew(new_size);
        }
        p
    }
}

fn grew(n: usize) {
    if COUNTING.load(Ordering::Relaxed) {
        let live = LIVE.fetch_add(n, Ordering::Relaxed) + n;
        if live > PEAK.load(Ordering::Relaxed) {
            PEAK.fetch_max(live, Ordering::Relaxed);
        }
    }
}

fn shrank(n: usize) {
    if COUNTING.load(Ordering::Relaxed) {
        // Memory allocated before counting started may be freed after: saturate.
        let _ = LIVE.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |l| {
            Some(l.saturating_sub(n))
        });
    }
}

/// Starts counting (from zero: what was allocated before is not seen).
pub fn start_counting() {
    COUNTING.store(true, Ordering::Relaxed);
}

pub fn counting() -> bool {
    COUNTING.load(Ordering::Relaxed)
}

/// Live heap bytes now (allocated since counting started, not freed).
pub fn live() -> usize {
    LIVE.load(Ordering::Relaxed)
}

/// Resets the peak to the live bytes now.
pub fn reset_peak() {
    PEAK.store(LIVE.load(Ordering::Relaxed), Ordering::Relaxed);
}

pub fn peak() -> usize {
    PEAK.load(Ordering::Relaxed)
}

/// This process's resident memory, split (KiB, from `/proc/self/smaps_rollup`).
#[derive(Debug, Clone, Copy, Default)]
pub struct RssSplit {
    pub rss: u64,
    pub anonymous: u64,
    /// Mapped files and shared memory: the binary's pages, the BPF ring buffer's.
    pub file: u64,
    /// Live heap bytes at the sample (KiB), when counting.
    pub heap_live: u64,
}

impl RssSplit {
    pub fn now() -> RssSplit {
        let text = std::fs::read_to_string("/proc/self/smaps_rollup").unwrap_or_default();
        let field = |name: &str| -> u64 {
            text.lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
                .unwrap_or(0)
        };
        let rss = field("Rss:");
        let anonymous = field("Anonymous:");
        RssSplit {
            rss,
            anonymous,
            file: rss.saturating_sub(anonymous),
            heap_live: (live() / 1024) as u64,
        }
    }
}

/// Resident KiB of this process's mappings whose name contains `name` (from
/// `/proc/self/smaps`: e.g. `bpf-map`, the ring buffer's data pages, mapped twice).
pub fn mapping_rss_kib(name: &str) -> u64 {
    let text = std::fs::read_to_string("/proc/self/smaps").unwrap_or_default();
    let mut total = 0;
    let mut inside = false;
    for line in text.lines() {
        // A mapping's header starts with its address range; its fields follow.
        let header = line
            .split_once(' ')
            .is_some_and(|(range, _)| range.contains('-') && !range.ends_with(':'));
        if header {
            inside = line.contains(name);
        } else if inside && let Some(v) = line.strip_prefix("Rss:") {
            total += v
                .trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<u64>()
                .unwrap_or(0);
        }
    }
    total
}

/// One of glibc's malloc arenas (KiB, from `malloc_info`): what it took from the
/// system and what of that is free in its bins (kept, not returned).
#[derive(Debug, Clone, Copy, Default)]
pub struct Arena {
    pub from_system: u64,
    pub free: u64,
}

/// glibc's arenas (the main thread's first; each thread that allocated got one of
/// its own, up to `M_ARENA_MAX`) and the KiB of chunks it mapped on their own (at or
/// above its mmap threshold), now. Takes every arena's lock: `--heap-stats` only.
#[derive(Debug, Clone, Default)]
pub struct Arenas {
    pub arenas: Vec<Arena>,
    pub mmapped: u64,
}

impl Arenas {
    pub fn now() -> Arenas {
        let mut buf: *mut libc::c_char = std::ptr::null_mut();
        let mut len: libc::size_t = 0;
        // SAFETY: open_memstream writes the buffer's address and length to the two
        // locals; the buffer is read after fclose and freed with free, as its manual says.
        let text = unsafe {
            let f = libc::open_memstream(&mut buf, &mut len);
            if f.is_null() {
                return Arenas::default();
            }
            libc::malloc_info(0, f);
            libc::fclose(f);
            let text = String::from_utf8_lossy(std::slice::from_raw_parts(buf.cast::<u8>(), len))
                .into_owned();
            libc::free(buf.cast());
            text
        };
        Arenas::parse(&text)
    }

    fn parse(xml: &str) -> Arenas {
        // The size="…" after `tag` in `text`, in KiB.
        let size = |text: &str, tag: &str| -> u64 {
            text.find(tag)
                .and_then(|at| text[at..].find("size=\"").map(|s| at + s + 6))
                .and_then(|at| text[at..].split('"').next()?.parse::<u64>().ok())
                .map_or(0, |b| b / 1024)
        };
        let mut parts = xml.split("<heap nr=");
        parts.next();
        let mut arenas = Vec::new();
        let mut rest = "";
        for part in parts {
            let (heap, after) = part.split_once("</heap>").unwrap_or((part, ""));
            arenas.push(Arena {
                from_system: size(heap, "<system type=\"current\""),
                free: size(heap, "<total type=\"fast\"") + size(heap, "<total type=\"rest\""),
            });
            rest = after;
        }
        Arenas {
            arenas,
            mmapped: size(rest, "<total type=\"mmap\""),
        }
    }
}

/// Where this process's anonymous RSS is, by kind of mapping (KiB, from
/// `/proc/self/smaps`), told apart by how glibc maps them: the main arena is
/// `[heap]`; another arena is a read-write mapping at a 64 MiB boundary (its
/// `HEAP_MAX_SIZE` alignment) with its unused, inaccessible rest right after it; a
/// thread's stack is a read-write mapping right after its inaccessible guard page;
/// the rest is chunks mapped on their own (at or above the mmap threshold) and what
/// other code mapped. A heuristic of layout, not a record of who allocated: for
/// `--heap-stats` runs, to tell the allocator's share from the threads'.
#[derive(Debug, Clone, Copy, Default)]
pub struct AnonSplit {
    pub main_arena: u64,
    pub arenas: u64,
    pub stacks: u64,
    /// Thread stacks with any resident page.
    pub stack_count: u32,
    pub other: u64,
}

impl AnonSplit {
    pub fn now() -> AnonSplit {
        AnonSplit::parse(&std::fs::read_to_string("/proc/self/smaps").unwrap_or_default())
    }

    fn parse(smaps: &str) -> AnonSplit {
        struct Vma<'a> {
            start: u64,
            end: u64,
            perms: &'a str,
            name: &'a str,
            anonymous: u64,
        }
        let mut vmas: Vec<Vma> = Vec::new();
        for line in smaps.lines() {
            let mut fields = line.split_whitespace();
            let first = fields.next().unwrap_or("");
            if let Some((lo, hi)) = first.split_once('-')
                && let (Ok(start), Ok(end)) =
                    (u64::from_str_radix(lo, 16), u64::from_str_radix(hi, 16))
            {
                let perms = fields.next().unwrap_or("");
                // offset, device, inode, then the name if any.
                let name = fields.nth(3).unwrap_or("");
                vmas.push(Vma {
                    start,
                    end,
                    perms,
                    name,
                    anonymous: 0,
                });
            } else if first == "Anonymous:"
                && let Some(vma) = vmas.last_mut()
            {
                vma.anonymous = fields.next().and_then(|v| v.parse().ok()).unwrap_or(0);
            }
        }
        let mut split = AnonSplit::default();
        const ARENA_ALIGN: u64 = 64 << 20;
        for (i, vma) in vmas.iter().enumerate() {
            if vma.anonymous == 0 {
                continue;
            }
            let inaccessible = |v: Option<&Vma>| v.is_some_and(|v| v.perms.starts_with("---p"));
            let before = i.checked_sub(1).and_then(|j| vmas.get(j));
            let after = vmas.get(i + 1);
            if vma.name == "[heap]" {
                split.main_arena += vma.anonymous;
            } else if vma.start % ARENA_ALIGN == 0
                && inaccessible(after)
                && after.is_some_and(|a| a.start == vma.end)
            {
                split.arenas += vma.anonymous;
            } else if inaccessible(before) && before.is_some_and(|b| b.end == vma.start) {
                split.stacks += vma.anonymous;
                split.stack_count += 1;
            } else {
                split.other += vma.anonymous;
            }
        }
        split
    }
}

/// Samples [`RssSplit`] every 50 ms on its own thread; keeps the sample with the
/// largest RSS, and when the heap is counted, glibc's arenas at that sample.
pub struct RssSampler {
    sampling: std::sync::Arc<AtomicBool>,
    thread: std::thread::JoinHandle<(RssSplit, Option<(Arenas, AnonSplit)>)>,
}

impl RssSampler {
    pub fn start() -> RssSampler {
        let sampling = std::sync::Arc::new(AtomicBool::new(true));
        let thread = {
            let sampling = sampling.clone();
            std::thread::spawn(move || {
                let mut top = (RssSplit::default(), None);
                while sampling.load(Ordering::Relaxed) {
                    let s = RssSplit::now();
                    if s.rss > top.0.rss {
                        top = (s, counting().then(|| (Arenas::now(), AnonSplit::now())));
                    }
                    std::thread::sleep(std::time::Duration::from_millis(50));
                }
                top
            })
        };
        RssSampler { sampling, thread }
    }

    /// The sample with the largest RSS, and the arenas and the anonymous RSS's split
    /// then (`--heap-stats`).
    pub fn stop(self) -> (RssSplit, Option<(Arenas, AnonSplit)>) {
        self.sampling.store(false, Ordering::Relaxed);
        self.thread.join().unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn malloc_info_is_read_per_arena() {
        let xml = r#"<malloc version="1">
<heap nr="0">
<sizes>
</sizes>
<total type="fast" count="2" size="2048"/>
<total type="rest" count="3" size="10240"/>
<system type="current" size="1048576"/>
<system type="max" size="2097152"/>
</heap>
<heap nr="1">
<total type="fast" count="0" size="0"/>
<total type="rest" count="1" size="4096"/>
<system type="current" size="135168"/>
</heap>
<total type="fast" count="2" size="2048"/>
<total type="mmap" count="4" size="1048576"/>
<system type="current" size="1183744"/>
</malloc>
"#;
        let a = Arenas::parse(xml);
        let sizes: Vec<_> = a.arenas.iter().map(|a| (a.from_system, a.free)).collect();
        assert_eq!(sizes, [(1024, 12), (132, 4)]);
        assert_eq!(a.mmapped, 1024);
        assert!(!Arenas::now().arenas.is_empty(), "this process's own");
    }

    #[test]
    fn anonymous_memory_is_split_by_the_kind_of_mapping() {
        let smaps = "\
55d0a0000000-55d0a0400000 rw-p 00000000 00:00 0                          [heap]
Rss:                4096 kB
Anonymous:          4000 kB
7f0004000000-7f0004800000 rw-p 00000000 00:00 0 
Anonymous:          8192 kB
7f0004800000-7f0008000000 ---p 00000000 00:00 0 
Anonymous:             0 kB
7f1000000000-7f1000001000 ---p 00000000 00:00 0 
Anonymous:             0 kB
7f1000001000-7f1000200000 rw-p 00000000 00:00 0 
Anonymous:            24 kB
7f2000000000-7f2000100000 rw-p 00000000 00:00 0 
Anonymous:           512 kB
7f3000000000-7f3000100000 r--p 00000000 08:01 1234                       /usr/bin/x
Anonymous:             4 kB
";
        let s = AnonSplit::parse(smaps);
        assert_eq!(
            (s.main_arena, s.arenas, s.stacks, s.stack_count, s.other),
            (4000, 8192, 24, 1, 516)
        );
        let own = AnonSplit::now();
        assert!(own.main_arena + own.arenas + own.stacks + own.other > 0);
    }
}
