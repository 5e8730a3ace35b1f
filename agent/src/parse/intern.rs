//! Field keys as static slices, so that a field's key costs no reference count.
//!
//! A key that is a span of the body is a clone of the read chunk's `Bytes`: an atomic
//! increment on the parsing thread and a decrement wherever the package is dropped
//! (usually another thread). JSON keys repeat from line to line, so [`key`] hands out
//! one leaked copy of each instead, which `Bytes::from_static` clones and drops for
//! free.
//!
//! # Invariants
//!
//! - What is leaked is bounded for the life of the process, however many parsers,
//!   sources or configuration reloads there are: [`INTERNED`] holds at most
//!   [`MAX_INTERNED_BYTES`] of key bytes, each key at most [`MAX_KEY_LEN`]. Once full,
//!   new keys stay spans of the body (slower, never wrong).
//! - A slice handed out is byte-equal to the key asked for and is never freed or
//!   changed.
//! - Each thread's [`Cache`] only holds slices from [`INTERNED`], so it is bounded by
//!   it too; it exists so a hit takes no lock.

use std::cell::RefCell;
use std::collections::HashSet;
use std::sync::{LazyLock, Mutex};

/// Longest key interned; longer ones are rare and stay spans.
pub const MAX_KEY_LEN: usize = 64;
/// Key bytes interned in the whole process, ever.
pub const MAX_INTERNED_BYTES: usize = 64 * 1024;
/// Slots of each thread's cache.
const SLOTS: usize = 256;

/// Every key interned so far in the process.
static INTERNED: LazyLock<Mutex<Interner>> = LazyLock::new(|| Mutex::new(Interner::new()));

/// A set of leaked keys holding at most `limit` bytes of them.
struct Interner {
    keys: HashSet<&'static [u8]>,
    bytes: usize,
    limit: usize,
}

impl Interner {
    fn new() -> Interner {
        Interner {
            keys: HashSet::new(),
            bytes: 0,
            limit: MAX_INTERNED_BYTES,
        }
    }

    /// `key` from the set, added (leaked) if there is room; and whether the set is
    /// now full.
    fn get_or_insert(&mut self, key: &[u8]) -> (Option<&'static [u8]>, bool) {
        if let Some(&interned) = self.keys.get(key) {
            return (Some(interned), self.bytes >= self.limit);
        }
        if self.bytes + key.len() > self.limit {
            return (None, true);
        }
        let interned: &'static [u8] = Box::leak(key.into());
        self.keys.insert(interned);
        self.bytes += key.len();
        (Some(interned), self.bytes >= self.limit)
    }
}

/// One thread's direct-mapped table of interned keys: a hit is a short compare.
struct Cache {
    slots: [&'static [u8]; SLOTS],
    /// The process-wide set was found full: a key this table misses stays a span
    /// without asking it again (it never empties).
    full: bool,
}

thread_local! {
    static CACHE: RefCell<Cache> = const {
        RefCell::new(Cache {
            slots: [&[]; SLOTS],
            full: false,
        })
    };
}

/// The interned copy of `key`, or `None` when it is not interned (too long, empty, or
/// the process-wide bound reached).
pub fn key(key: &[u8]) -> Option<&'static [u8]> {
    let (&first, &last) = (key.first()?, key.last()?);
    if key.len() > MAX_KEY_LEN {
        return None;
    }
    // Length and end bytes tell typical keys of a log format apart.
    let slot = (key.len() * 31 + usize::from(first) * 7 + usize::from(last)) % SLOTS;
    CACHE.with(|cache| {
        let mut cache = cache.borrow_mut();
        if cache.slots[slot] == key {
            return Some(cache.slots[slot]);
        }
        if cache.full {
            return None;
        }
        let Ok(mut interner) = INTERNED.lock() else {
            return None;
        };
        let (interned, full) = interner.get_or_insert(key);
        cache.full = full;
        if let Some(interned) = interned {
            cache.slots[slot] = interned;
        }
        interned
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_keys_share_one_static_copy() {
        let a = key(b"level").unwrap();
        let copy = String::from("level");
        let b = key(copy.as_bytes()).unwrap();
        assert_eq!(a, b"level");
        assert!(std::ptr::eq(a, b));
        // From another thread (another cache), the same copy.
        let c = std::thread::spawn(|| key(b"level").unwrap())
            .join()
            .unwrap();
        assert!(std::ptr::eq(a, c));
    }

    #[test]
    fn colliding_keys_each_come_back_equal() {
        // Same length and end bytes: the same slot of the cache.
        for _ in 0..3 {
            assert_eq!(key(b"axb").unwrap(), b"axb");
            assert_eq!(key(b"ayb").unwrap(), b"ayb");
        }
    }

    #[test]
    fn empty_and_long_keys_are_not_interned() {
        assert_eq!(key(b""), None);
        assert_eq!(key(&[b'k'; MAX_KEY_LEN + 1]), None);
        assert_eq!(key(&[b'k'; MAX_KEY_LEN]).unwrap(), &[b'k'; MAX_KEY_LEN]);
    }

    #[test]
    fn the_bound_is_kept() {
        let mut interner = Interner {
            limit: 100,
            ..Interner::new()
        };
        let mut refused = 0;
        for i in 0..20 {
            let k = format!("key-{i:04}");
            match interner.get_or_insert(k.as_bytes()) {
                (Some(interned), _) => assert_eq!(interned, k.as_bytes()),
                (None, full) => {
                    assert!(full);
                    refused += 1;
                }
            }
        }
        // Eight bytes each: twelve fit in 100.
        assert_eq!((refused, interner.bytes), (8, 96));
        // Keys already in still come back once it is full.
        assert_eq!(interner.get_or_insert(b"key-0003").0.unwrap(), b"key-0003");
        assert!(interner.bytes <= interner.limit);
    }
}
