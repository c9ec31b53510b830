//! Safe extraction of a tar layer (plain, gzip or zstd).
//!
//! The archive comes from a registry, so every entry is untrusted:
//! - names go through [`RelPath`]: no `..`, no absolute paths;
//! - a symlink may only point inside the output (resolved lexically from
//!   its own directory), a hard link only to an entry extracted before it;
//! - devices, FIFOs and anything else that is not a file, a directory or a
//!   link are refused;
//! - no directory is created through a symlink that leads out (see
//!   [`RelPath::join_checked`]);
//! - permissions keep only the rwx bits (no setuid, setgid or sticky);
//! - [`ExtractLimits`]: at most so many entries and so many bytes out (a
//!   decompression bomb stops at the cap, not at a full disk).
//!
//! Everything is extracted into a staging directory inside the destination
//! first and moved into place only when the whole archive passed, so a
//! refused archive leaves nothing behind and an earlier good file is never
//! half-overwritten.

use crate::oci_artifact::Packing;
use crate::rel_path::{JoinError, RelPath, UnsafePath};
use std::io::Read;
use std::path::{Component, Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum ExtractError {
    #[error("refusing archive entry {name:?}: {why}")]
    Refused { name: String, why: String },
    #[error(transparent)]
    UnsafePath(#[from] UnsafePath),
    #[error(transparent)]
    Join(#[from] JoinError),
    #[error("cannot extract {}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// An I/O error at `path`, for `map_err`.
fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ExtractError {
    let path = path.to_path_buf();
    move |source| ExtractError::Io { path, source }
}

fn refused(name: &str, why: impl Into<String>) -> ExtractError {
    ExtractError::Refused {
        name: name.to_string(),
        why: why.into(),
    }
}

/// Whether `target`, a symlink's target written in directory `dir` (a
/// path relative to the root), stays inside the root.
fn link_stays_inside(dir: &Path, target: &Path) -> bool {
    if target.is_absolute() {
        return false;
    }
    let mut depth: i64 = dir.components().count() as i64;
    for c in target.components() {
        match c {
            Component::Normal(_) => depth += 1,
            Component::CurDir => {}
            Component::ParentDir => {
                depth -= 1;
                if depth < 0 {
                    return false;
                }
            }
            Component::RootDir | Component::Prefix(_) => return false,
        }
    }
    true
}

fn open(archive: &Path, packing: Packing) -> Result<Box<dyn Read>, ExtractError> {
    let f = std::io::BufReader::new(std::fs::File::open(archive).map_err(io(archive))?);
    Ok(match packing {
        Packing::Tar | Packing::Raw => Box::new(f),
        Packing::TarGzip => Box::new(flate2::read::GzDecoder::new(f)),
        Packing::TarZstd => Box::new(
            ruzstd::decoding::StreamingDecoder::new(f)
                .map_err(|e| io(archive)(std::io::Error::other(e.to_string())))?,
        ),
    })
}

/// How much one archive may put on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExtractLimits {
    pub max_entries: usize,
    /// Bytes of file content written, all entries together.
    pub max_bytes: u64,
}

/// Entries per archive: far above any model's file count.
pub const MAX_ENTRIES: usize = 200_000;
/// Bytes out per byte in, at most (weights barely compress; a bomb of
/// zeros compresses a thousand times and more).
pub const MAX_RATIO: u64 = 64;
/// What any archive may expand to, however small.
pub const MIN_BYTES_CAP: u64 = 1 << 30;

impl ExtractLimits {
    /// The caps for an archive of `archive_len` bytes.
    pub fn for_archive(archive_len: u64) -> Self {
        Self {
            max_entries: MAX_ENTRIES,
            max_bytes: archive_len.saturating_mul(MAX_RATIO).max(MIN_BYTES_CAP),
        }
    }
}

/// Extracts `archive` under `dest/prefix` (or `dest`); returns the paths of
/// the files and links written, relative to `dest`. The caps are
/// [`ExtractLimits::for_archive`].
pub fn extract(
    archive: &Path,
    packing: Packing,
    dest: &Path,
    prefix: Option<&RelPath>,
) -> Result<Vec<RelPath>, ExtractError> {
    let len = std::fs::metadata(archive).map_err(io(archive))?.len();
    extract_with(
        archive,
        packing,
        dest,
        prefix,
        ExtractLimits::for_archive(len),
    )
}

/// [`extract`] with explicit caps.
pub fn extract_with(
    archive: &Path,
    packing: Packing,
    dest: &Path,
    prefix: Option<&RelPath>,
    limits: ExtractLimits,
) -> Result<Vec<RelPath>, ExtractError> {
    std::fs::create_dir_all(dest).map_err(io(dest))?;
    let staging = dest.join(format!(".weightcast-extract-{:016x}", rand_suffix()));
    std::fs::create_dir(&staging).map_err(io(&staging))?;
    let result = unpack(archive, packing, &staging, prefix, limits).and_then(|written| {
        for rel in &written {
            let from = staging.join(rel.as_str());
            let to = rel.join_checked(dest)?;
            // A directory entry becomes a directory; a file or link replaces
            // whatever file was there.
            if std::fs::symlink_metadata(&from)
                .map_err(io(&from))?
                .is_dir()
            {
                std::fs::create_dir_all(&to).map_err(io(&to))?;
            } else {
                if to.is_dir() && !to.is_symlink() {
                    return Err(refused(
                        rel.as_str(),
                        "a directory of that name is already in the output",
                    ));
                }
                std::fs::rename(&from, &to).map_err(io(&to))?;
            }
        }
        Ok(written
            .into_iter()
            .filter(|r| !staging.join(r.as_str()).is_dir())
            .collect())
    });
    let _ = std::fs::remove_dir_all(&staging);
    result
}

fn rand_suffix() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.finish()
}

/// Unpacks every entry under `staging`; returns them in archive order
/// (directories included, so they are created in the destination).
fn unpack(
    archive: &Path,
    packing: Packing,
    staging: &Path,
    prefix: Option<&RelPath>,
    limits: ExtractLimits,
) -> Result<Vec<RelPath>, ExtractError> {
    let mut ar = tar::Archive::new(open(archive, packing)?);
    let mut written: Vec<RelPath> = Vec::new();
    let mut bytes_left = limits.max_bytes;
    for (n, entry) in ar.entries().map_err(io(archive))?.enumerate() {
        if n >= limits.max_entries {
            return Err(refused(
                "(archive)",
                format!("it has more than {} entries", limits.max_entries),
            ));
        }
        let mut entry = entry.map_err(io(archive))?;
        let raw = entry.path_bytes().into_owned();
        let name = String::from_utf8(raw)
            .map_err(|_| refused("(non-UTF-8 name)", "names must be UTF-8"))?;
        let trimmed = name.trim_start_matches("./").trim_end_matches('/');
        if trimmed.is_empty() || trimmed == "." {
            continue;
        }
        let inner = RelPath::parse(trimmed)?;
        let rel = match prefix {
            Some(p) => RelPath::parse(&format!("{p}/{inner}"))?,
            None => inner,
        };
        let kind = entry.header().entry_type();
        let target = rel.join_checked(staging)?;
        match kind {
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                let size = entry.header().size().unwrap_or(u64::MAX);
                if size > bytes_left {
                    return Err(refused(
                        &name,
                        format!(
                            "the archive would expand past {} bytes (a decompression bomb?)",
                            limits.max_bytes
                        ),
                    ));
                }
                let mut f = std::fs::File::create(&target).map_err(io(&target))?;
                let copied =
                    std::io::copy(&mut (&mut entry).take(size), &mut f).map_err(io(&target))?;
                bytes_left -= copied;
                let mode = entry.header().mode().unwrap_or(0o644) & 0o777;
                use std::os::unix::fs::PermissionsExt;
                let _ = std::fs::set_permissions(
                    &target,
                    std::fs::Permissions::from_mode(mode | 0o600),
                );
            }
            tar::EntryType::Directory => {
                std::fs::create_dir_all(&target).map_err(io(&target))?;
            }
            tar::EntryType::Symlink => {
                let link = entry
                    .link_name()
                    .map_err(io(archive))?
                    .ok_or_else(|| refused(&name, "a symlink without a target"))?;
                let dir = Path::new(rel.as_str()).parent().unwrap_or(Path::new(""));
                if !link_stays_inside(dir, &link) {
                    return Err(refused(
                        &name,
                        format!(
                            "its symlink target {} leads outside the output",
                            link.display()
                        ),
                    ));
                }
                std::os::unix::fs::symlink(&link, &target).map_err(io(&target))?;
            }
            tar::EntryType::Link => {
                let link = entry
                    .link_name()
                    .map_err(io(archive))?
                    .ok_or_else(|| refused(&name, "a hard link without a target"))?;
                let link = link
                    .to_str()
                    .ok_or_else(|| refused(&name, "names must be UTF-8"))?;
                let to = RelPath::parse(link.trim_start_matches("./")).map_err(|e| {
                    refused(&name, format!("its hard link target is unsafe: {}", e.why))
                })?;
                let to = match prefix {
                    Some(p) => RelPath::parse(&format!("{p}/{to}"))?,
                    None => to,
                };
                if !written.contains(&to) {
                    return Err(refused(
                        &name,
                        format!("its hard link target {to} is not an earlier entry of the archive"),
                    ));
                }
                let src = staging.join(to.as_str());
                if std::fs::symlink_metadata(&src)
                    .map_err(io(&src))?
                    .file_type()
                    .is_symlink()
                {
                    return Err(refused(&name, "a hard link to a symlink"));
                }
                std::fs::hard_link(&src, &target).map_err(io(&target))?;
            }
            tar::EntryType::XGlobalHeader
            | tar::EntryType::XHeader
            | tar::EntryType::GNULongName
            | tar::EntryType::GNULongLink => continue,
            other => {
                return Err(refused(
                    &name,
                    format!("{other:?} entries (devices, FIFOs, ...) are not allowed"),
                ))
            }
        }
        written.push(rel);
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(kind: tar::EntryType, size: u64) -> tar::Header {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_size(size);
        h.set_mode(0o4755);
        h
    }

    /// A tar with `entries`: (name, kind, file content or link target). The
    /// name is written raw, so hostile names get in as they would from a registry.
    fn tar_of(entries: &[(&str, tar::EntryType, &str)]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (name, kind, data) in entries {
            let is_link = matches!(kind, tar::EntryType::Symlink | tar::EntryType::Link);
            let mut h = header(*kind, if is_link { 0 } else { data.len() as u64 });
            let gnu = h.as_gnu_mut().unwrap();
            gnu.name[..name.len()].copy_from_slice(name.as_bytes());
            if is_link {
                gnu.linkname[..data.len()].copy_from_slice(data.as_bytes());
            }
            h.set_cksum();
            let body: &[u8] = if is_link { &[] } else { data.as_bytes() };
            b.append(&h, body).unwrap();
        }
        b.into_inner().unwrap()
    }

    fn run(
        entries: &[(&str, tar::EntryType, &str)],
        packing: Packing,
    ) -> (tempfile::TempDir, Result<Vec<RelPath>, ExtractError>) {
        let dir = tempfile::tempdir().unwrap();
        let raw = tar_of(entries);
        let bytes = match packing {
            Packing::TarGzip => {
                use std::io::Write;
                let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                e.write_all(&raw).unwrap();
                e.finish().unwrap()
            }
            _ => raw,
        };
        let archive = dir.path().join("layer.tar");
        std::fs::write(&archive, bytes).unwrap();
        let out = dir.path().join("out");
        let r = extract(&archive, packing, &out, None);
        (dir, r)
    }

    use tar::EntryType::{Block, Char, Directory, Fifo, Link, Regular, Symlink};

    #[test]
    fn files_dirs_and_inner_links_extract() {
        let (dir, r) = run(
            &[
                ("./tok/", Directory, ""),
                ("./tok/vocab.json", Regular, "{}"),
                ("weights.bin", Regular, "abc"),
                ("tok/alias.json", Symlink, "vocab.json"),
                ("copy.bin", Link, "weights.bin"),
            ],
            Packing::TarGzip,
        );
        let written = r.unwrap();
        assert_eq!(written.len(), 4, "{written:?}");
        let out = dir.path().join("out");
        assert_eq!(std::fs::read(out.join("tok/alias.json")).unwrap(), b"{}");
        assert_eq!(std::fs::read(out.join("copy.bin")).unwrap(), b"abc");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(out.join("weights.bin"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o7000, 0, "no setuid from the archive");
        assert_eq!(
            std::fs::read_dir(&out).unwrap().count(),
            3,
            "no staging dir left"
        );
    }

    #[test]
    fn hostile_entries_are_refused_and_nothing_is_left() {
        let cases: &[&[(&str, tar::EntryType, &str)]] = &[
            &[
                ("ok.txt", Regular, "x"),
                ("../escape.txt", Regular, "gotcha"),
            ],
            &[("/etc/passwd", Regular, "x")],
            &[("link", Symlink, "../../etc/passwd")],
            &[("link", Symlink, "/etc/passwd")],
            &[("a/link", Symlink, "../../x")],
            &[("hard", Link, "/etc/passwd")],
            &[("hard", Link, "not-extracted-before")],
            &[("dev", Char, "")],
            &[("blk", Block, "")],
            &[("fifo", Fifo, "")],
            &[("up", Symlink, ".."), ("up/x", Regular, "x")],
        ];
        for entries in cases {
            let (dir, r) = run(entries, Packing::Tar);
            assert!(r.is_err(), "{entries:?} must be refused");
            let out = dir.path().join("out");
            assert_eq!(
                std::fs::read_dir(&out).unwrap().count(),
                0,
                "{entries:?} left files"
            );
            assert!(!dir.path().join("escape.txt").exists());
        }
    }

    #[test]
    fn symlink_bookkeeping() {
        assert!(link_stays_inside(Path::new("a/b"), Path::new("../c")));
        assert!(link_stays_inside(Path::new("a"), Path::new("../c")));
        assert!(!link_stays_inside(Path::new("a"), Path::new("../../c")));
        assert!(!link_stays_inside(Path::new(""), Path::new("/x")));
    }

    fn gzip(raw: &[u8]) -> Vec<u8> {
        use std::io::Write;
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        e.write_all(raw).unwrap();
        e.finish().unwrap()
    }

    #[test]
    fn a_decompression_bomb_stops_at_the_byte_cap() {
        let dir = tempfile::tempdir().unwrap();
        // 64 MiB of zeros in one entry: about 64 KiB gzipped.
        let zeros = vec![0u8; 64 << 20];
        let mut b = tar::Builder::new(Vec::new());
        let mut h = header(Regular, zeros.len() as u64);
        h.set_path("bomb.bin").unwrap();
        h.set_cksum();
        b.append(&h, zeros.as_slice()).unwrap();
        let gz = gzip(&b.into_inner().unwrap());
        assert!(gz.len() < 1 << 20);
        let archive = dir.path().join("layer.tar.gz");
        std::fs::write(&archive, &gz).unwrap();
        let out = dir.path().join("out");
        let limits = ExtractLimits {
            max_entries: 10,
            max_bytes: 8 << 20,
        };
        let e = extract_with(&archive, Packing::TarGzip, &out, None, limits).unwrap_err();
        assert!(e.to_string().contains("decompression bomb"), "{e}");
        assert!(
            !out.join("bomb.bin").exists(),
            "nothing of a refused archive stays"
        );
        // The default cap for this archive: 1 GiB at least, 64x its size.
        let d = ExtractLimits::for_archive(gz.len() as u64);
        assert_eq!(d.max_bytes, MIN_BYTES_CAP);
        assert_eq!(ExtractLimits::for_archive(1 << 40).max_bytes, 64 << 40);
    }

    #[test]
    fn too_many_entries_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let names: Vec<String> = (0..20).map(|i| format!("f{i}")).collect();
        let entries: Vec<(&str, tar::EntryType, &str)> =
            names.iter().map(|n| (n.as_str(), Regular, "x")).collect();
        let archive = dir.path().join("layer.tar");
        std::fs::write(&archive, tar_of(&entries)).unwrap();
        let limits = ExtractLimits {
            max_entries: 10,
            max_bytes: 1 << 20,
        };
        let out = dir.path().join("out");
        let e = extract_with(&archive, Packing::Tar, &out, None, limits).unwrap_err();
        assert!(e.to_string().contains("more than 10 entries"), "{e}");
        let limits = ExtractLimits {
            max_entries: 20,
            ..limits
        };
        assert_eq!(
            extract_with(&archive, Packing::Tar, &out, None, limits)
                .unwrap()
                .len(),
            20
        );
    }

    /// Every path under `root` (symlinks not followed) and that no symlink
    /// there resolves outside it.
    fn assert_contained(root: &Path) {
        let root = std::fs::canonicalize(root).unwrap();
        let mut stack = vec![root.clone()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).unwrap() {
                let p = e.unwrap().path();
                let meta = std::fs::symlink_metadata(&p).unwrap();
                if meta.file_type().is_symlink() {
                    if let Ok(real) = std::fs::canonicalize(&p) {
                        assert!(
                            real.starts_with(&root),
                            "{} leads to {}",
                            p.display(),
                            real.display()
                        );
                    }
                } else if meta.is_dir() {
                    stack.push(p);
                }
            }
        }
    }

    /// Fuzz: mutated tar, tar.gz and tar.zst archives never panic, never
    /// write outside the output, never expand past the cap.
    #[test]
    fn fuzzed_archives_never_escape_or_panic() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(12);
        let seeds: Vec<Vec<u8>> = vec![
            tar_of(&[
                ("a", Directory, ""),
                ("a/f", Regular, "hello"),
                ("a/l", Symlink, "f"),
                ("h", Link, "a/f"),
            ]),
            tar_of(&[
                ("x/../../etc/passwd", Regular, "root"),
                ("up", Symlink, "../.."),
            ]),
            tar_of(&[("d", Symlink, "/tmp"), ("d/f", Regular, "x")]),
        ];
        let dir = tempfile::tempdir().unwrap();
        let limits = ExtractLimits {
            max_entries: 64,
            max_bytes: 1 << 20,
        };
        let tries = 600;
        for i in 0..tries {
            let mut bytes = seeds[i % seeds.len()].clone();
            for _ in 0..rng.gen_range(1..12) {
                let at = rng.gen_range(0..bytes.len());
                match rng.gen_range(0..4) {
                    0 => bytes[at] = rng.gen(),
                    1 => bytes[at] ^= 1 << rng.gen_range(0..8),
                    2 => bytes.truncate(at.max(1)),
                    _ => bytes[at] = b"/.0\x00"[rng.gen_range(0..4)],
                }
            }
            let (packing, body) = match i % 3 {
                0 => (Packing::Tar, bytes),
                1 => (Packing::TarGzip, gzip(&bytes)),
                _ => {
                    let mut z = Vec::new();
                    ruzstd::encoding::compress(
                        bytes.as_slice(),
                        &mut z,
                        ruzstd::encoding::CompressionLevel::Fastest,
                    );
                    (Packing::TarZstd, z)
                }
            };
            let case = dir.path().join(format!("case{i}"));
            std::fs::create_dir(&case).unwrap();
            let archive = case.join("layer");
            std::fs::write(&archive, &body).unwrap();
            let out = case.join("out");
            let _ = extract_with(&archive, packing, &out, None, limits);
            if out.exists() {
                assert_contained(&out);
            }
            std::fs::remove_dir_all(&case).unwrap();
        }
        eprintln!("tar fuzz: {tries} archives tried");
    }
}
