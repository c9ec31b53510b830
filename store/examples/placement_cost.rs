//! What placing a finished file at an output costs, on the filesystem of
//! `--dir`: the old hard link against [`export::place`] (a reflink where the
//! filesystem can, else an in-kernel copy), with the cache file in the page
//! cache (just downloaded) and out of it, and the writeback (fsync) a copy
//! adds.
//!
//! ```text
//! cargo run -p weightcast-store --example placement_cost -- --dir /var/tmp --gib 1 --gib 4
//! ```

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::time::Instant;
use weightcast_store::export;

fn secs(t0: Instant) -> f64 {
    t0.elapsed().as_secs_f64()
}

/// Drops `path`'s pages from the page cache (it must be clean).
fn evict(path: &Path) -> std::io::Result<()> {
    let f = File::open(path)?;
    // SAFETY: a plain advisory syscall on an open descriptor.
    let rc = unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    if rc != 0 {
        return Err(std::io::Error::from_raw_os_error(rc));
    }
    Ok(())
}

fn measure(dir: &Path, gib: u64) -> std::io::Result<()> {
    let len = gib << 30;
    let cache = dir.join(format!("placement-cache-{gib}g"));
    let out = dir.join(format!("placement-out-{gib}g"));
    {
        let mut f = File::create(&cache)?;
        let chunk: Vec<u8> = (0..4u32 << 20).map(|i| (i % 251) as u8 + 1).collect();
        for _ in 0..len / chunk.len() as u64 {
            f.write_all(&chunk)?;
        }
        f.sync_all()?;
    }
    let t0 = Instant::now();
    std::fs::hard_link(&cache, &out)?;
    let link = secs(t0);
    std::fs::remove_file(&out)?;

    // Warm: the cache file's pages are in memory, as right after a download.
    let t0 = Instant::now();
    let how = export::place(&cache, &out).map_err(std::io::Error::other)?;
    let warm = secs(t0);
    let t0 = Instant::now();
    OpenOptions::new().write(true).open(&out)?.sync_all()?;
    let writeback = secs(t0);
    std::fs::remove_file(&out)?;

    // Cold: the cache file is on disk only (a cache hit long after).
    evict(&cache)?;
    let t0 = Instant::now();
    export::place(&cache, &out).map_err(std::io::Error::other)?;
    let cold = secs(t0);
    std::fs::remove_file(&out)?;
    std::fs::remove_file(&cache)?;
    let gbs = |s: f64| len as f64 / s / 1e9;
    println!(
        "{gib} GiB: hard link {:.3} ms | {how:?}: warm {warm:.2} s ({:.2} GB/s), then fsync {writeback:.2} s; cold {cold:.2} s ({:.2} GB/s)",
        link * 1e3,
        gbs(warm),
        gbs(cold),
    );
    Ok(())
}

fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let mut dir = std::env::temp_dir();
    let mut sizes = Vec::new();
    let mut i = 1;
    while i < args.len() {
        match (args[i].as_str(), args.get(i + 1)) {
            ("--dir", Some(d)) => dir = d.into(),
            ("--gib", Some(g)) => match g.parse() {
                Ok(g) => sizes.push(g),
                Err(_) => {
                    eprintln!("--gib takes a whole number of GiB, not {g:?}");
                    return std::process::ExitCode::FAILURE;
                }
            },
            (a, _) => {
                eprintln!("unknown argument {a:?}: expected --dir DIR and --gib N (repeatable)");
                return std::process::ExitCode::FAILURE;
            }
        }
        i += 2;
    }
    if sizes.is_empty() {
        sizes = vec![1, 4];
    }
    for gib in sizes {
        if let Err(e) = measure(&dir, gib) {
            eprintln!("placement_cost: {}: {e}", dir.display());
            return std::process::ExitCode::FAILURE;
        }
    }
    std::process::ExitCode::SUCCESS
}
