//! The Maglev slot pool's allocator: a buddy allocator over power-of-two blocks. Each
//! service's table (a prime number of slots) takes the smallest block that holds it, so
//! small services cost little and large ones get the table size Maglev needs, from one
//! preallocated map. Blocks are aligned to their size, which keeps every table on whole
//! map entries (two slots each).

use std::collections::BTreeSet;

/// The smallest block: 256 slots.
const MIN_ORDER: u32 = 8;

#[derive(Clone, Debug)]
pub struct SlotPool {
    /// Free block offsets by order (block size `1 << order`).
    free: Vec<BTreeSet<u32>>,
    max_order: u32,
    used: u64,
}

impl SlotPool {
    /// A pool of `slots` slots (rounded down to a power of two, at least 256).
    pub fn new(slots: u32) -> SlotPool {
        let max_order = (31 - slots.max(1 << MIN_ORDER).leading_zeros()).max(MIN_ORDER);
        let mut free = vec![BTreeSet::new(); max_order as usize + 1];
        free[max_order as usize].insert(0);
        SlotPool {
            free,
            max_order,
            used: 0,
        }
    }

    /// Slots in the pool.
    pub fn capacity(&self) -> u64 {
        1 << self.max_order
    }

    pub fn used(&self) -> u64 {
        self.used
    }

    /// The order of the block that holds `slots`.
    pub fn order_for(slots: u32) -> u32 {
        (32 - slots.saturating_sub(1).leading_zeros()).max(MIN_ORDER)
    }

    /// Takes a block for `slots` slots; None when the pool has no block that large.
    pub fn alloc(&mut self, slots: u32) -> Option<u32> {
        let order = Self::order_for(slots);
        if order > self.max_order {
            return None;
        }
        let mut from = order;
        while self.free[from as usize].is_empty() {
            from += 1;
            if from > self.max_order {
                return None;
            }
        }
        let offset = self.free[from as usize].pop_first()?;
        // Split down to the wanted order, keeping the upper halves free.
        while from > order {
            from -= 1;
            self.free[from as usize].insert(offset + (1 << from));
        }
        self.used += 1 << order;
        Some(offset)
    }

    /// Returns the block at `offset` that was taken for `slots` slots.
    pub fn release(&mut self, offset: u32, slots: u32) {
        let mut order = Self::order_for(slots);
        let mut offset = offset;
        self.used = self.used.saturating_sub(1 << order);
        // Merge with the buddy while it is free too.
        while order < self.max_order {
            let buddy = offset ^ (1 << order);
            if !self.free[order as usize].remove(&buddy) {
                break;
            }
            offset = offset.min(buddy);
            order += 1;
        }
        self.free[order as usize].insert(offset);
    }

    /// Marks the block at `offset` for `slots` slots as taken (tables found in the pinned
    /// maps after a restart). False when that block is not free.
    pub fn reserve(&mut self, offset: u32, slots: u32) -> bool {
        let order = Self::order_for(slots);
        if order > self.max_order || offset & ((1 << order) - 1) != 0 {
            return false;
        }
        // Find the free block containing it and split around it.
        let mut containing = order;
        let mut start = offset;
        while !self.free[containing as usize].contains(&start) {
            containing += 1;
            if containing > self.max_order {
                return false;
            }
            start = offset & !((1 << containing) - 1);
        }
        self.free[containing as usize].remove(&start);
        while containing > order {
            containing -= 1;
            let half = 1 << containing;
            // Keep the half that does not hold `offset` free.
            if offset & half != 0 {
                self.free[containing as usize].insert(start);
                start += half;
            } else {
                self.free[containing as usize].insert(start + half);
            }
        }
        self.used += 1 << order;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_are_aligned_and_do_not_overlap() {
        let mut pool = SlotPool::new(1 << 14);
        let mut taken = Vec::new();
        for size in [1021u32, 251, 4093, 1021, 509, 2039] {
            let offset = pool.alloc(size).expect("room");
            let block = 1u32 << SlotPool::order_for(size);
            assert_eq!(offset % block, 0);
            for (other, other_block) in &taken {
                assert!(offset + block <= *other || other + other_block <= offset);
            }
            taken.push((offset, block));
        }
    }

    #[test]
    fn released_blocks_merge_back() {
        let mut pool = SlotPool::new(1 << 12);
        let a = pool.alloc(1021).expect("room");
        let b = pool.alloc(1021).expect("room");
        assert!(pool.alloc(4093).is_none(), "pool is partly used");
        pool.release(a, 1021);
        pool.release(b, 1021);
        assert_eq!(pool.used(), 0);
        assert_eq!(pool.alloc(4093), Some(0), "whole pool is one block again");
    }

    #[test]
    fn reserve_rebuilds_the_state_after_a_restart() {
        let mut before = SlotPool::new(1 << 14);
        let a = before.alloc(1021).expect("room");
        let b = before.alloc(4093).expect("room");
        let mut after = SlotPool::new(1 << 14);
        assert!(after.reserve(b, 4093));
        assert!(after.reserve(a, 1021));
        assert!(!after.reserve(a, 1021), "already taken");
        assert_eq!(after.used(), before.used());
        let next = after.alloc(1021).expect("room");
        assert!(next != a && next != b);
    }

    #[test]
    fn a_full_pool_says_so() {
        let mut pool = SlotPool::new(1 << 10);
        assert!(pool.alloc(1021).is_some());
        assert!(pool.alloc(251).is_none());
        assert!(pool.alloc(1 << 11).is_none());
    }
}
