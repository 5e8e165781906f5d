//! Room kept on the store's disk for the store itself.
//!
//! sled applies a write in memory before it reaches the disk, and once a
//! write to its log failed (a full disk) it refuses every later flush and its
//! drop waits for one forever; what it holds in memory is then more than the
//! disk holds. So the store closes its database for good
//! (`Store::close_after_failure`) and its process starts again, opening
//! exactly what is on disk, which is everything that was acknowledged.
//! Opening needs some room (sled writes a snapshot and a new log segment),
//! so the store keeps a reserve file of [`RESERVE_BYTES`] allocated in its
//! database directory: on the failure it deletes the reserve, the next open
//! has that room, finds no room for a new reserve, and refuses writes itself
//! (`StoreError::DiskFull`, before sled sees them) until the disk has
//! [`RESUME_BYTES`] free; then it allocates the reserve again and takes
//! writes. Reads go on all along.

use std::path::Path;

/// The room held back for reopening the database.
pub(crate) const RESERVE_BYTES: u64 = 8 << 20;
/// Writes are taken again once this much is free: the reserve allocated
/// again, and still twice as much left.
pub(crate) const RESUME_BYTES: u64 = 3 * RESERVE_BYTES;

const FILE_NAME: &str = "reserve";

/// Bytes an unprivileged writer may still use on the filesystem of `dir`
/// (`None`: unknown, as on a filesystem that does not say).
pub(crate) fn free_bytes(dir: &Path) -> Option<u64> {
    let stat = nix::sys::statvfs::statvfs(dir).ok()?;
    #[allow(clippy::useless_conversion)] // u64 here; other platforms' C types are narrower
    Some(u64::from(stat.blocks_available()).saturating_mul(u64::from(stat.fragment_size())))
}

/// Whether writes may go on: the reserve is in place, or it could be put
/// back with [`RESUME_BYTES`] free before.
pub(crate) fn ensure(dir: &Path) -> bool {
    let path = dir.join(FILE_NAME);
    if std::fs::metadata(&path).is_ok_and(|meta| meta.len() >= RESERVE_BYTES) {
        return true;
    }
    free_bytes(dir).is_none_or(|free| free >= RESUME_BYTES) && allocate(&path).is_ok()
}

/// Allocates the reserve file at `path`.
fn allocate(path: &Path) -> std::io::Result<()> {
    let file = std::fs::OpenOptions::new().create(true).write(true).truncate(false).open(path)?;
    let allocated = nix::fcntl::posix_fallocate(&file, 0, RESERVE_BYTES as i64)
        .map_err(std::io::Error::from)
        .and_then(|()| file.sync_all());
    if allocated.is_err() {
        drop(file);
        let _ = std::fs::remove_file(path);
    }
    allocated
}

/// Gives the reserve's room back to the filesystem.
pub(crate) fn release(dir: &Path) {
    let _ = std::fs::remove_file(dir.join(FILE_NAME));
}
