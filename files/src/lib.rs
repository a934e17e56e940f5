//! Files only their owner may read (0600, in 0700 directories), replaced whole or not at
//! all: what the control plane and the agent keep on disk holds keys, tokens and the
//! state they start from, and a crash or a full disk halfway through a write must leave
//! the previous version readable rather than a torn or empty file.
//!
//! [`write_private`] is the one way both write such a file: a temporary file beside the
//! target, created 0600 before any byte goes in, fsynced, renamed over the target, and
//! the directory fsynced so the rename itself survives a power cut.

use std::{
    ffi::OsString,
    fs::{self, File, OpenOptions, Permissions},
    io::{self, Write as _},
    os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
    sync::atomic::{AtomicU64, Ordering},
};

/// Read and write for the owner, nothing for anyone else.
pub const FILE_MODE: u32 = 0o600;
/// Only the owner may list or enter.
pub const DIR_MODE: u32 = 0o700;

/// Replaces `path` with `data`, mode 0600, atomically: readers (and the next start after
/// a crash) see the old content or the new, never part of either. On error the old file
/// is untouched and no temporary file is left behind.
pub fn write_private(path: &Path, data: &[u8]) -> io::Result<()> {
    let temporary = temporary_path(path)?;
    let written = write_new(&temporary, data).and_then(|()| fs::rename(&temporary, path));
    if let Err(error) = written {
        let _ = fs::remove_file(&temporary);
        return Err(error);
    }
    sync_directory(directory_of(path))
}

/// Renames `from` to `to` and makes the rename durable (fsyncs the directories): for
/// protocols that put several files written with [`write_private`] in place one by one.
pub fn replace(from: &Path, to: &Path) -> io::Result<()> {
    fs::rename(from, to)?;
    let (from_dir, to_dir) = (directory_of(from), directory_of(to));
    sync_directory(to_dir)?;
    if from_dir != to_dir {
        sync_directory(from_dir)?;
    }
    Ok(())
}

/// Creates `path` and its missing parents, and makes `path` 0700 whether it was there
/// already or not (a directory an older version made with the default umask included).
pub fn private_dir(path: &Path) -> io::Result<()> {
    fs::create_dir_all(path)?;
    fs::set_permissions(path, Permissions::from_mode(DIR_MODE))
}

/// Makes `path` a 0600 file in a 0700 directory without touching its content: creates it
/// empty when missing, narrows the mode of one that exists. For files another library
/// writes in place (the store's database), so they are never readable by others, not
/// even between their creation and a later chmod.
pub fn create_private(path: &Path) -> io::Result<()> {
    let directory = path.parent().filter(|d| !d.as_os_str().is_empty());
    if let Some(directory) = directory {
        private_dir(directory)?;
    }
    let file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(FILE_MODE)
        .open(path)?;
    file.set_permissions(Permissions::from_mode(FILE_MODE))?;
    sync_directory(directory_of(path))
}

/// Creates `temporary` (it must not exist) 0600 and writes `data` through to the disk.
fn write_new(temporary: &Path, data: &[u8]) -> io::Result<()> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(FILE_MODE)
        .open(temporary)?;
    // The umask can only take bits away; this makes the mode exactly 0600 either way.
    file.set_permissions(Permissions::from_mode(FILE_MODE))?;
    file.write_all(data)?;
    file.sync_all()
}

/// A name beside `path` that no other writer uses: hidden, with this process's id and a
/// counter, so two writers of one file (threads or processes) never share a temporary.
fn temporary_path(path: &Path) -> io::Result<PathBuf> {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let name = path.file_name().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{}: not a file name", path.display()),
        )
    })?;
    let mut temporary = OsString::from(".");
    temporary.push(name);
    temporary.push(format!(
        ".{}.{}.tmp",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    Ok(path.with_file_name(temporary))
}

fn directory_of(path: &Path) -> &Path {
    match path.parent() {
        Some(directory) if !directory.as_os_str().is_empty() => directory,
        _ => Path::new("."),
    }
}

/// Makes the directory's entries (a rename, a new file) durable.
fn sync_directory(directory: &Path) -> io::Result<()> {
    File::open(directory)?.sync_all()
}

#[cfg(test)]
mod tests {
    use berth_testkit::smallfs::SmallFs;

    use super::*;

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).expect("metadata").permissions().mode() & 0o7777
    }

    /// The names in `dir`, sorted.
    fn names(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .expect("read_dir")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn writes_0600_and_replaces_the_whole_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("admin.conf");
        write_private(&path, b"first, and longer than the second").expect("write");
        assert_eq!(mode(&path), 0o600);
        write_private(&path, b"second").expect("write again");
        assert_eq!(fs::read(&path).expect("read"), b"second");
        assert_eq!(mode(&path), 0o600);
        assert_eq!(names(dir.path()), ["admin.conf"], "no temporary left");
    }

    #[test]
    fn a_file_made_readable_by_others_is_replaced_by_a_private_one() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("pods.json");
        fs::write(&path, "[]").expect("write");
        fs::set_permissions(&path, Permissions::from_mode(0o644)).expect("chmod");
        write_private(&path, b"[1]").expect("write");
        assert_eq!(mode(&path), 0o600);
    }

    #[test]
    fn a_failed_rename_leaves_the_target_and_no_temporary() {
        let dir = tempfile::tempdir().expect("tempdir");
        // A directory with something in it cannot be renamed over.
        let path = dir.path().join("node.key");
        fs::create_dir(&path).expect("mkdir");
        fs::write(path.join("inside"), "kept").expect("write");
        assert!(write_private(&path, b"new").is_err());
        assert_eq!(fs::read(path.join("inside")).expect("read"), b"kept");
        assert_eq!(names(dir.path()), ["node.key"], "no temporary left");
    }

    #[test]
    fn a_path_without_a_file_name_is_refused() {
        let error = write_private(Path::new("/"), b"x").expect_err("no file name");
        assert_eq!(error.kind(), io::ErrorKind::InvalidInput);
    }

    #[test]
    fn a_full_disk_leaves_the_old_content_and_no_temporary() {
        let fs = SmallFs::mount("files", 64 * 1024);
        let dir = fs.path();
        let path = dir.join("state.json");
        write_private(&path, b"old").expect("first write");
        fs.fill("filler");

        let error = write_private(&path, &[7u8; 16 * 1024]).expect_err("no space");
        assert_eq!(error.raw_os_error(), Some(libc::ENOSPC), "{error}");
        assert_eq!(fs::read(&path).expect("read"), b"old");
        assert_eq!(names(dir), ["filler", "state.json"], "no temporary left");

        // Space freed: the next write goes through.
        fs::remove_file(dir.join("filler")).expect("free space");
        write_private(&path, &[7u8; 16 * 1024]).expect("write after freeing");
        assert_eq!(fs::read(&path).expect("read").len(), 16 * 1024);
    }

    #[test]
    fn private_dir_and_create_private_narrow_existing_modes_and_keep_content() {
        let dir = tempfile::tempdir().expect("tempdir");
        let data = dir.path().join("data");
        fs::create_dir(&data).expect("mkdir");
        fs::set_permissions(&data, Permissions::from_mode(0o755)).expect("chmod");
        let store = data.join("state.redb");
        fs::write(&store, "database").expect("write");
        fs::set_permissions(&store, Permissions::from_mode(0o644)).expect("chmod");

        create_private(&store).expect("create_private");
        assert_eq!((mode(&data), mode(&store)), (0o700, 0o600));
        assert_eq!(fs::read(&store).expect("read"), b"database");

        let fresh = dir.path().join("new").join("deeper").join("state.redb");
        create_private(&fresh).expect("create_private");
        assert_eq!(mode(&fresh), 0o600);
        assert_eq!(mode(fresh.parent().expect("parent")), 0o700);
        assert_eq!(fs::read(&fresh).expect("read"), b"");
    }

    #[test]
    fn replace_moves_a_file_into_place() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (new, old) = (dir.path().join("node.crt.new"), dir.path().join("node.crt"));
        write_private(&old, b"old").expect("write");
        write_private(&new, b"new").expect("write");
        replace(&new, &old).expect("replace");
        assert_eq!(fs::read(&old).expect("read"), b"new");
        assert_eq!(names(dir.path()), ["node.crt"]);
    }
}
