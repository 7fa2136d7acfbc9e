//! Files written to a path the user named (`speak -o`, `quantize`, `convert`): checked before
//! the work starts, and replaced only once complete.

use anyhow::{anyhow, bail, Result};
use std::fs::File;
use std::path::{Path, PathBuf};

/// A file being written to the user's path. A regular file (or a new path) is written beside it
/// as `NAME.partial.EXT` and renamed over it by [`OutputFile::commit`], so that a failed run
/// leaves no half-written file and keeps the previous one. Anything else (a device, a FIFO, a
/// symlink such as `/dev/stdout`) is written straight into: a rename would replace it with a
/// regular file.
pub struct OutputFile {
    path: PathBuf,
    /// The sibling written first; removed unless committed.
    partial: Option<PathBuf>,
}

impl OutputFile {
    /// Checks `path` before the work, so that a directory, or a parent directory that is missing
    /// or not ours to write in, fails at once, naming `path`: creates the `.partial` sibling of
    /// a regular file.
    pub fn new(path: &Path) -> Result<Self> {
        // `is_dir` follows symlinks (a link to a directory is one too); a trailing `/` names a
        // directory even where none exists.
        let names_dir = path
            .as_os_str()
            .as_encoded_bytes()
            .last()
            .is_some_and(|&b| std::path::is_separator(b.into()));
        if path.is_dir() || names_dir {
            bail!("cannot write {}: it is a directory", path.display());
        }
        if path.file_name().is_none() {
            bail!("cannot write {}: not a file name", path.display());
        }
        let regular = match std::fs::symlink_metadata(path) {
            Ok(meta) => meta.is_file(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => true,
            Err(e) => bail!("cannot write {}: {e}", path.display()),
        };
        let mut output = Self {
            path: path.to_owned(),
            partial: None,
        };
        if regular {
            let partial = partial_path(path);
            File::create(&partial).map_err(|e| output.error(e))?;
            output.partial = Some(partial);
        }
        Ok(output)
    }

    /// Where the bytes go: the `.partial` sibling or the user's path itself. Keeps the
    /// extension, which picks the format of `convert`'s files.
    pub fn write_path(&self) -> &Path {
        self.partial.as_deref().unwrap_or(&self.path)
    }

    /// Opens [`Self::write_path`] for writing, truncated (a FIFO waits here for its reader).
    pub fn open(&self) -> Result<File> {
        File::create(self.write_path()).map_err(|e| self.error(e))
    }

    /// `cannot write PATH: REASON`, naming the user's path whichever file failed.
    pub fn error(&self, reason: impl std::fmt::Display) -> anyhow::Error {
        anyhow!("cannot write {}: {reason}", self.path.display())
    }

    /// Puts the finished file in place.
    pub fn commit(mut self) -> Result<()> {
        if let Some(partial) = &self.partial {
            std::fs::rename(partial, &self.path).map_err(|e| self.error(e))?;
            self.partial = None;
        }
        Ok(())
    }
}

impl Drop for OutputFile {
    fn drop(&mut self) {
        if let Some(partial) = &self.partial {
            let _ = std::fs::remove_file(partial);
        }
    }
}

/// `DIR/NAME.partial.EXT` beside `DIR/NAME.EXT` (`DIR/NAME.partial` without an extension).
fn partial_path(path: &Path) -> PathBuf {
    let mut name = path.file_stem().unwrap_or_default().to_os_string();
    name.push(".partial");
    if let Some(ext) = path.extension() {
        name.push(".");
        name.push(ext);
    }
    path.with_file_name(name)
}
