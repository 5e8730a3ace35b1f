//! The forwarder's decoded payloads, kept from one window to the next.
//!
//! Every block of a window is decompressed into a payload of up to a few MB, and the
//! records of its package are slices of it ([`Bytes`]). Allocated afresh per block,
//! those buffers came from the kernel each time (glibc maps and unmaps allocations of
//! that size): page faults were 14% of the agent's CPU with a Kafka sink. Here a
//! payload's buffer goes back to `spare` once the window is done with it, and the next
//! window decompresses into it.
//!
//! # Invariants
//!
//! - Every buffer in `spare` is empty (`len() == 0`), and together they hold at most
//!   `max_spare_bytes` of capacity: the spare memory is bounded whatever the package
//!   sizes.
//! - `lent` holds one handle per payload of the window in flight, the whole buffer
//!   (not a slice of it); it is empty between windows.
//! - [`PayloadBuffers::release`] (a forwarder idle for a while) empties `spare`: an
//!   idle sink holds no payload memory.

use bytes::Bytes;

pub(super) struct PayloadBuffers {
    spare: Vec<Vec<u8>>,
    lent: Vec<Bytes>,
    max_spare_bytes: usize,
}

impl PayloadBuffers {
    /// Keeps at most `max_spare_bytes` of capacity between windows.
    pub(super) fn new(max_spare_bytes: usize) -> PayloadBuffers {
        PayloadBuffers {
            spare: Vec::new(),
            lent: Vec::new(),
            max_spare_bytes,
        }
    }

    /// An empty buffer for a payload of `len` bytes: a spare one that holds it
    /// without growing when there is one, else the largest spare, else a new one.
    pub(super) fn take(&mut self, len: usize) -> Vec<u8> {
        let fits = self.spare.iter().position(|b| b.capacity() >= len);
        let largest = || (0..self.spare.len()).max_by_key(|&i| self.spare[i].capacity());
        match fits.or_else(largest) {
            Some(i) => self.spare.swap_remove(i),
            None => Vec::new(),
        }
    }

    /// Turns a filled buffer into the payload the package's records slice, keeping a
    /// handle to win the buffer back in [`PayloadBuffers::reclaim`].
    pub(super) fn lend(&mut self, payload: Vec<u8>) -> Bytes {
        let payload = Bytes::from(payload);
        self.lent.push(payload.clone());
        payload
    }

    /// After the window's packages were dropped: the buffers nobody else holds a
    /// slice of go back to `spare`, up to the bound; the others are let go.
    pub(super) fn reclaim(&mut self) {
        let mut spare_bytes = self.spare_bytes();
        for payload in self.lent.drain(..) {
            // `Err`: a slice is still alive somewhere; the buffer is freed with it.
            let Ok(buffer) = payload.try_into_mut() else {
                continue;
            };
            let mut buffer = Vec::from(buffer);
            if spare_bytes + buffer.capacity() > self.max_spare_bytes {
                continue;
            }
            buffer.clear();
            spare_bytes += buffer.capacity();
            self.spare.push(buffer);
        }
    }

    /// Frees the spare buffers.
    pub(super) fn release(&mut self) {
        self.spare = Vec::new();
    }

    /// Capacity held in `spare`.
    pub(super) fn spare_bytes(&self) -> usize {
        self.spare.iter().map(Vec::capacity).sum()
    }

    #[cfg(test)]
    pub(super) fn check(&self) -> Result<(), String> {
        if let Some(b) = self.spare.iter().find(|b| !b.is_empty()) {
            return Err(format!("a spare buffer holds {} bytes", b.len()));
        }
        if self.spare_bytes() > self.max_spare_bytes {
            return Err(format!(
                "{} spare bytes, over the bound of {}",
                self.spare_bytes(),
                self.max_spare_bytes
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filled(buffers: &mut PayloadBuffers, len: usize) -> Bytes {
        let mut b = buffers.take(len);
        b.resize(len, 7);
        buffers.lend(b)
    }

    #[test]
    fn a_window_s_buffers_are_reused_by_the_next_one() {
        let mut buffers = PayloadBuffers::new(1 << 20);
        let payloads: Vec<Bytes> = (0..3).map(|_| filled(&mut buffers, 100_000)).collect();
        let addresses: Vec<*const u8> = payloads.iter().map(|p| p.as_ptr()).collect();
        // The records are slices of their payload, dropped with the window.
        let records: Vec<Bytes> = payloads.iter().map(|p| p.slice(10..20)).collect();
        drop((payloads, records));
        buffers.reclaim();
        buffers.check().unwrap();
        assert_eq!(buffers.spare.len(), 3);
        let mut again: Vec<*const u8> = (0..3)
            .map(|_| filled(&mut buffers, 90_000).as_ptr())
            .collect();
        again.sort();
        let mut before = addresses;
        before.sort();
        assert_eq!(again, before, "the same buffers, no new allocation");
    }

    #[test]
    fn a_buffer_still_sliced_is_not_reused_and_spares_stay_bounded() {
        let mut buffers = PayloadBuffers::new(250_000);
        let kept = filled(&mut buffers, 100_000).slice(0..1);
        for _ in 0..3 {
            drop(filled(&mut buffers, 100_000));
        }
        buffers.reclaim();
        buffers.check().unwrap();
        // Two of the three free buffers fit the bound; the sliced one stays its slice's.
        assert_eq!(buffers.spare.len(), 2);
        assert_eq!(kept[..], [7]);
        assert!(buffers.lent.is_empty());
    }

    #[test]
    fn a_payload_takes_a_spare_it_fits_in_and_release_frees_them() {
        let mut buffers = PayloadBuffers::new(1 << 20);
        for len in [1_000, 200_000, 50_000] {
            drop(filled(&mut buffers, len));
        }
        buffers.reclaim();
        let b = buffers.take(150_000);
        assert!(b.capacity() >= 150_000 && b.is_empty());
        // None fits: the largest left grows rather than a third buffer being made.
        let b = buffers.take(300_000);
        assert!(b.capacity() >= 50_000);
        assert_eq!(buffers.spare.len(), 1);
        buffers.release();
        assert_eq!(buffers.spare_bytes(), 0);
        assert_eq!(buffers.take(10).capacity(), 0);
    }
}
