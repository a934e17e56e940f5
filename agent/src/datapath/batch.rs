//! Many entries of one map in one `bpf()` call: `BPF_MAP_LOOKUP_BATCH` and
//! `BPF_MAP_UPDATE_BATCH` (Linux 5.6), which aya does not expose. One call per few
//! thousand entries instead of one per entry: reading 100,000 backends' counters, or
//! writing a resync's frontends and backends. A kernel or map type that refuses a batch
//! answers `EINVAL`/`ENOTSUPP`; callers then fall back to one call per entry.

use std::{io, mem::size_of, os::fd::AsRawFd as _, os::fd::BorrowedFd};

use aya::Pod;

const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
const BPF_MAP_UPDATE_BATCH: libc::c_long = 26;

/// The `batch` member of the kernel's `union bpf_attr` (include/uapi/linux/bpf.h).
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

/// Whether an error means the kernel or the map type has no batch operations (then one
/// call per entry does the same work).
pub fn unsupported(error: &io::Error) -> bool {
    // ENOTSUPP (524) is the kernel's own code for a map without batch operations.
    matches!(
        error.raw_os_error(),
        Some(libc::EINVAL | libc::ENOTSUP | libc::ENOSYS | 524)
    )
}

fn bpf_batch(command: libc::c_long, attr: &mut BatchAttr) -> io::Result<()> {
    // SAFETY: `attr` is a valid `bpf_attr.batch` for the duration of the call, of the size
    // passed; the buffers it points to are owned by the caller and sized for `count`
    // entries (checked by the callers); the kernel writes `count` back into `attr`.
    let result = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            command,
            std::ptr::from_mut(attr),
            size_of::<BatchAttr>(),
        )
    };
    if result < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Writes `keys[i] → values[i]` into the map behind `fd` (whose key and value types must
/// be `K` and `V`) with `BPF_ANY`. Returns how many entries were written before an error.
pub fn update<K: Pod, V: Pod>(
    fd: BorrowedFd<'_>,
    keys: &[K],
    values: &[V],
) -> Result<(), (usize, io::Error)> {
    assert_eq!(keys.len(), values.len(), "one value per key");
    let Ok(count) = u32::try_from(keys.len()) else {
        return Err((0, io::Error::from_raw_os_error(libc::E2BIG)));
    };
    if count == 0 {
        return Ok(());
    }
    let mut attr = BatchAttr {
        keys: keys.as_ptr() as u64,
        values: values.as_ptr() as u64,
        count,
        map_fd: fd.as_raw_fd() as u32,
        ..BatchAttr::default()
    };
    bpf_batch(BPF_MAP_UPDATE_BATCH, &mut attr).map_err(|error| (attr.count as usize, error))
}

/// Reads the entries `first..first + count` of the array map behind `fd` (whose value
/// type must be `V`) into `values`, `per_key` values a key: 1, or for a per-CPU map the
/// number of possible CPUs (then `V`'s size must be a multiple of 8, as the kernel lays
/// each CPU's value out on 8 bytes). Returns how many keys were read: fewer than `count`
/// at the end of the array.
pub fn lookup_array<V: Pod + Default>(
    fd: BorrowedFd<'_>,
    first: u32,
    count: u32,
    per_key: usize,
    values: &mut Vec<V>,
) -> io::Result<u32> {
    assert!(
        per_key == 1 || size_of::<V>().is_multiple_of(8),
        "per-CPU values are laid out on 8 bytes"
    );
    let mut keys = vec![0u32; count as usize];
    values.clear();
    values.resize(count as usize * per_key, V::default());
    // The kernel starts after the key `in_batch` points to, or at the first key.
    let mut before = first.wrapping_sub(1);
    let mut out_batch = 0u32;
    let mut attr = BatchAttr {
        in_batch: if first == 0 {
            0
        } else {
            std::ptr::from_mut(&mut before) as u64
        },
        out_batch: std::ptr::from_mut(&mut out_batch) as u64,
        keys: keys.as_mut_ptr() as u64,
        values: values.as_mut_ptr() as u64,
        count,
        map_fd: fd.as_raw_fd() as u32,
        ..BatchAttr::default()
    };
    let read = match bpf_batch(BPF_MAP_LOOKUP_BATCH, &mut attr) {
        Ok(()) => attr.count,
        // The end of the array: what was read is in `count`.
        Err(error) if error.raw_os_error() == Some(libc::ENOENT) => attr.count,
        Err(error) => return Err(error),
    };
    values.truncate(read as usize * per_key);
    Ok(read)
}
