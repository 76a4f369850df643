//! Separate debug files: where a stripped file's full symbol table, DWARF and `.debug_frame`
//! are, looked for as gdb looks for them.
//!
//! - by GNU build id: `ROOT/.build-id/xx/yyyy.debug`;
//! - by `.gnu_debuglink` name: beside the file, in its `.debug` directory, and at
//!   `ROOT/<the file's directory>/<name>`; a candidate is checked by build id where the file
//!   has one, else by the link's CRC-32 (as gdb does: without either check a stale debug file
//!   would name the wrong functions);
//! - the `.gnu_debugaltlink` of a file that `dwz` processed (Debian's and Fedora's debug
//!   packages): the supplementary file that holds the DWARF shared between files, by its path
//!   (absolute, or relative to the file that names it) and by its build id.
//!
//! `ROOT` is each of [`DebugDirs`]' roots: `SYSROOT/usr/lib/debug` for `--sysroot`, then the
//! host's `/usr/lib/debug`. Debug files are opened through [`crate::safe_open`] with no size
//! limit short of 1 TiB: they are mapped, and a large program's (a browser's, a compiler's) is
//! over 4 GiB.

use crate::safe_open::{Mapped, Policy};
use object::{Object, ObjectSection};
use std::path::{Path, PathBuf};

/// The directories debug files are looked for under, first to last.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DebugDirs {
    roots: Vec<PathBuf>,
}

impl Default for DebugDirs {
    /// The host's `/usr/lib/debug`.
    fn default() -> Self {
        DebugDirs {
            roots: vec![PathBuf::from("/usr/lib/debug")],
        }
    }
}

/// How debug files are opened: as modules are, but up to 1 TiB (see the module's docs).
pub fn policy() -> Policy {
    Policy {
        max_size: 1 << 40,
        ..Policy::default()
    }
}

impl DebugDirs {
    /// `SYSROOT/usr/lib/debug` (for a core from another machine, whose debug files were copied
    /// with its libraries), then the host's `/usr/lib/debug`.
    pub fn with_sysroot(sysroot: Option<&Path>) -> Self {
        let mut d = DebugDirs::default();
        if let Some(s) = sysroot {
            d.roots.insert(0, s.join("usr/lib/debug"));
        }
        d
    }

    /// The roots, first to last.
    pub fn roots(&self) -> &[PathBuf] {
        &self.roots
    }

    /// `ROOT/.build-id/xx/yyyy.debug` for build id `id`: the first root's that is an ELF
    /// file with that build id (a stale file in a sysroot, or another program's, would name
    /// the wrong functions).
    pub fn by_build_id(&self, id: &[u8]) -> Option<PathBuf> {
        if id.len() < 2 {
            return None;
        }
        let hex: String = id.iter().map(|b| format!("{b:02x}")).collect();
        let rel = format!(".build-id/{}/{}.debug", &hex[..2], &hex[2..]);
        self.roots.iter().map(|r| r.join(&rel)).find(|p| {
            p.exists()
                && crate::safe_open::map_analysed(p, &policy()).is_ok_and(|m| {
                    object::File::parse(&*m).is_ok_and(|f| f.build_id().ok().flatten() == Some(id))
                })
        })
    }

    /// The debug file of `file` by its GNU build id, if installed.
    pub fn for_file(&self, file: &object::File<'_>) -> Option<PathBuf> {
        self.by_build_id(file.build_id().ok()??)
    }

    /// The separate debug file `file` names in `.gnu_debuglink`, looked for beside each of
    /// `paths` (the file read, the path the process mapped), in their `.debug` directories and
    /// under each root with their directories. Taken only when its build id is the file's, or,
    /// for a file without one, when its CRC-32 is the link's.
    pub(crate) fn debuglink(
        &self,
        file: &object::File<'_>,
        paths: &[&Path],
    ) -> Option<(PathBuf, Mapped)> {
        let (name, crc) = debuglink(file)?;
        let name = std::str::from_utf8(name).ok()?;
        if name.is_empty() || name.contains('/') {
            return None;
        }
        let id = file.build_id().ok().flatten();
        let mut seen = Vec::new();
        for p in paths {
            // A relative path (`--exe prog`) is relative to the working directory.
            let p = &if p.is_absolute() {
                p.to_path_buf()
            } else {
                match std::env::current_dir() {
                    Ok(d) => d.join(p),
                    Err(_) => continue,
                }
            };
            let Some(dir) = p.parent().filter(|d| d.is_absolute()) else {
                continue;
            };
            let beside = [dir.join(name), dir.join(".debug").join(name)];
            let under_roots = self
                .roots
                .iter()
                .map(|r| r.join(dir.strip_prefix("/").unwrap_or(dir)).join(name));
            for c in beside.into_iter().chain(under_roots) {
                if seen.contains(&c) || c == *p {
                    continue;
                }
                seen.push(c.clone());
                let Ok(m) = crate::safe_open::map_analysed(&c, &policy()) else {
                    continue;
                };
                let same = match (id, object::File::parse(&*m).ok()) {
                    (Some(id), Some(d)) => d.build_id().ok().flatten() == Some(id),
                    // (The CRC reads the whole file: none over 4 GiB is read for it.)
                    (None, Some(_)) => m.len() <= 4 << 30 && crc32fast::hash(&m) == crc,
                    _ => false,
                };
                if same {
                    return Some((c, m));
                }
            }
        }
        None
    }

    /// The supplementary file (`dwz -m`'s) that `file`'s DWARF refers to through
    /// `.gnu_debugaltlink`, `file` being read from `path`: the path it names (an absolute one
    /// under each root's sysroot first, a relative one from `path`'s directory), else by the
    /// build id the link holds. A candidate whose build id is not the link's is not taken.
    pub fn altlink(&self, file: &object::File<'_>, path: &Path) -> Option<PathBuf> {
        let (name, id) = altlink(file)?;
        let name = Path::new(std::ffi::OsStr::new(std::str::from_utf8(name).ok()?));
        let mut candidates = Vec::new();
        if name.is_absolute() {
            // `SYSROOT/usr/lib/debug` -> `SYSROOT` + the absolute path.
            for r in &self.roots {
                if let Some(sysroot) = r.parent().and_then(Path::parent).and_then(Path::parent) {
                    candidates.push(sysroot.join(name.strip_prefix("/").unwrap_or(name)));
                }
            }
        } else if let Some(dir) = path.parent() {
            candidates.push(dir.join(name));
        }
        let matches = |c: &Path| {
            let Ok(m) = crate::safe_open::map_analysed(c, &policy()) else {
                return false;
            };
            let found = object::File::parse(&*m)
                .ok()
                .and_then(|f| f.build_id().ok().flatten().map(<[u8]>::to_vec));
            !id.is_empty() && found.as_deref() == Some(id)
        };
        candidates
            .into_iter()
            .find(|c| matches(c))
            .or_else(|| self.by_build_id(id).filter(|c| matches(c)))
    }
}

/// `.gnu_debuglink`: the file name (up to its NUL) and the CRC-32 after it (at the next
/// 4-byte boundary, in the file's byte order).
fn debuglink<'d>(file: &object::File<'d>) -> Option<(&'d [u8], u32)> {
    let data = crate::cfi::section_names::section_by_name(file, ".gnu_debuglink")?
        .data()
        .ok()?;
    let end = data.iter().position(|&b| b == 0)?;
    let at = (end + 4) & !3;
    let crc: [u8; 4] = data.get(at..at + 4)?.try_into().ok()?;
    let crc = if file.is_little_endian() {
        u32::from_le_bytes(crc)
    } else {
        u32::from_be_bytes(crc)
    };
    Some((&data[..end], crc))
}

/// `.gnu_debugaltlink`: the supplementary file's path (up to its NUL) and its build id (the
/// rest).
fn altlink<'d>(file: &object::File<'d>) -> Option<(&'d [u8], &'d [u8])> {
    let data = crate::cfi::section_names::section_by_name(file, ".gnu_debugaltlink")?
        .data()
        .ok()?;
    let end = data.iter().position(|&b| b == 0)?;
    (end > 0).then(|| (&data[..end], &data[end + 1..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// gdb's debuglink CRC is the IEEE CRC-32 (zlib's `crc32`).
    #[test]
    fn the_debuglink_crc_is_zlib_s() {
        assert_eq!(crc32fast::hash(b"123456789"), 0xcbf4_3926);
    }

    /// The debug link's file name and CRC, as `object` reads them, in the system's libraries
    /// (Debian's are stripped with a link).
    #[test]
    fn debug_links_read_as_object_reads_them() {
        let mut links = 0;
        for dir in [
            "/usr/lib/x86_64-linux-gnu",
            "/usr/lib/aarch64-linux-gnu",
            "/usr/bin",
        ] {
            let Ok(entries) = std::fs::read_dir(dir) else {
                continue;
            };
            for e in entries.flatten().take(400) {
                let Ok(data) = std::fs::read(e.path()) else {
                    continue;
                };
                let Ok(file) = object::File::parse(&*data) else {
                    continue;
                };
                let theirs = file.gnu_debuglink().ok().flatten();
                assert_eq!(debuglink(&file), theirs, "{}", e.path().display());
                links += usize::from(theirs.is_some());
            }
        }
        eprintln!("{links} files with a debug link");
    }

    #[test]
    fn a_sysroot_s_debug_directory_comes_first() {
        let d = DebugDirs::with_sysroot(Some(Path::new("/sys/root")));
        assert_eq!(
            d.roots(),
            [
                PathBuf::from("/sys/root/usr/lib/debug"),
                PathBuf::from("/usr/lib/debug")
            ]
        );
        assert_eq!(
            DebugDirs::default().roots(),
            [PathBuf::from("/usr/lib/debug")]
        );
        assert_eq!(DebugDirs::with_sysroot(None), DebugDirs::default());
    }
}
