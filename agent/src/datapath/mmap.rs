//! The Maglev array mapped into the agent's memory (the map is BPF_F_MMAPABLE): tables are
//! written with plain 32-bit stores the programs see at once.

use std::{
    io,
    os::fd::{AsFd as _, AsRawFd as _},
    ptr::NonNull,
    sync::atomic::{AtomicU32, Ordering},
};

use aya::maps::MapData;

pub struct MappedArray {
    // Keeps the map's descriptor open for as long as the mapping exists.
    _map: MapData,
    base: NonNull<AtomicU32>,
    len: usize,
    mapped_bytes: usize,
}

// SAFETY: the mapping is plain shared memory accessed only through atomics.
unsafe impl Send for MappedArray {}
// SAFETY: as above; every access is an atomic load or store.
unsafe impl Sync for MappedArray {}

impl MappedArray {
    pub fn new(map: MapData, len: usize) -> io::Result<Self> {
        // SAFETY: sysconf has no preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(4096) as usize;
        let mapped_bytes = (len * size_of::<u32>()).div_ceil(page) * page;
        let fd = map.fd().as_fd().as_raw_fd();
        // SAFETY: a fresh shared mapping of the map's memory; the kernel checks that the
        // length fits the map and that the map allows mmap.
        let address = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                mapped_bytes,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd,
                0,
            )
        };
        if address == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let base = NonNull::new(address.cast::<AtomicU32>())
            .ok_or_else(|| io::Error::other("mmap returned a null address"))?;
        Ok(MappedArray {
            _map: map,
            base,
            len,
            mapped_bytes,
        })
    }

    fn slots(&self) -> &[AtomicU32] {
        // SAFETY: the mapping holds `len` u32 slots, is page-aligned (so aligned for
        // AtomicU32), and lives as long as self.
        unsafe { std::slice::from_raw_parts(self.base.as_ptr(), self.len) }
    }

    /// Writes `values` starting at slot `start`; values beyond the array are ignored
    /// (the caller's indices come from the same limits the array was sized with).
    pub fn write(&self, start: usize, values: &[u32]) {
        let slots = self.slots();
        let end = (start + values.len()).min(slots.len());
        if start >= end {
            return;
        }
        for (slot, value) in slots[start..end].iter().zip(values) {
            slot.store(*value, Ordering::Relaxed);
        }
    }

    pub fn read(&self, start: usize, count: usize) -> Vec<u32> {
        let slots = self.slots();
        let end = (start + count).min(slots.len());
        if start >= end {
            return Vec::new();
        }
        slots[start..end]
            .iter()
            .map(|slot| slot.load(Ordering::Relaxed))
            .collect()
    }
}

impl Drop for MappedArray {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly the region mapped in `new`; no slice outlives self.
        unsafe {
            libc::munmap(self.base.as_ptr().cast(), self.mapped_bytes);
        }
    }
}
