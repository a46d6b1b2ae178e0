//! Per-queue state the driver programs through the common configuration,
//! with every guest-supplied value validated on the way in.

use super::NO_VECTOR;

/// One virtqueue as the driver configured it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueueState {
    /// Largest size the device accepts (a power of two).
    pub max_size: u16,
    /// Size chosen by the driver (a power of two, at most `max_size`).
    pub size: u16,
    /// The driver enabled the queue.
    pub ready: bool,
    /// MSI-X vector for used-buffer notifications, or [`NO_VECTOR`].
    pub msix_vector: u16,
    /// Guest-physical address of the descriptor table.
    pub desc: u64,
    /// Guest-physical address of the driver (available) ring.
    pub avail: u64,
    /// Guest-physical address of the device (used) ring.
    pub used: u64,
}

impl QueueState {
    /// A queue in its reset state.
    pub fn new(max_size: u16) -> Self {
        Self {
            max_size,
            size: max_size,
            ready: false,
            msix_vector: NO_VECTOR,
            desc: 0,
            avail: 0,
            used: 0,
        }
    }

    /// Back to the reset state.
    pub fn reset(&mut self) {
        *self = Self::new(self.max_size);
    }

    /// Accepts `size` only if it is a non-zero power of two no larger than
    /// the maximum; returns whether it was accepted.
    pub fn set_size(&mut self, size: u16) -> bool {
        let ok = size != 0 && size.is_power_of_two() && size <= self.max_size;
        if ok {
            self.size = size;
        }
        ok
    }

    /// Byte lengths of the descriptor table, driver ring and device ring
    /// (split virtqueue layout, with the event-index fields).
    pub fn ring_lengths(&self) -> (u64, u64, u64) {
        let n = u64::from(self.size);
        (16 * n, 6 + 2 * n, 6 + 8 * n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_are_validated() {
        let mut q = QueueState::new(256);
        assert!(!q.set_size(0));
        assert!(!q.set_size(100));
        assert!(!q.set_size(512));
        assert!(!q.set_size(u16::MAX));
        assert_eq!(q.size, 256);
        assert!(q.set_size(64));
        assert_eq!(q.size, 64);
        assert_eq!(q.ring_lengths(), (1024, 134, 518));
        q.ready = true;
        q.reset();
        assert_eq!(q, QueueState::new(256));
    }
}
