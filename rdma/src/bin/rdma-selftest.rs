//! `rdma-selftest`: proves the verbs path on this machine without the rest of
//! weightcast. It opens the device, registers two files (a "parent's" and a
//! "child's" task file, mapped by the crate itself), connects a child QP to
//! a parent QP over a loopback TCP control connection speaking weightcast's
//! RDMA frames, reads a piece with RDMA READs split into several outstanding
//! work requests, and checks every byte. Then it drops a fetch mid-read and
//! checks that the destination's permit is released only after the flush,
//! and that the next read (on a rebuilt QP) is whole; and it breaks the
//! parent's side and checks that the child reports an error and rebuilds
//! its QP for the next read.
//!
//! ```text
//! rdma-selftest [--size BYTES] [--device NAME]
//! ```
//! Exit status 0 on success; used inside the soft-RoCE VM by scripts/test --slow.

use std::fs::{File, OpenOptions};
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use weightcast_proto::frame::{ClientFrame, RdmaAccept, RdmaGrant, Status};
use weightcast_proto::transport::ParentAddr;
use weightcast_rdma::{RdmaConfig, RdmaFetchError, RdmaNode, RdmaTransport};
use weightcast_types::{TaskId, WritePermit};

/// The child's destination: the whole file, and a flag set on release.
struct Permit {
    file: File,
    len: u64,
    released: Arc<AtomicBool>,
}

impl WritePermit for Permit {
    fn file(&self) -> &File {
        &self.file
    }
    fn range(&self) -> Range<u64> {
        0..self.len
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.released.store(true, Ordering::SeqCst);
    }
}

/// A file of `len` bytes in the scratch dir.
fn task_file(dir: &std::path::Path, name: &str, len: u64) -> Result<File, String> {
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(dir.join(name))
        .map_err(|e| e.to_string())?;
    f.set_len(len).map_err(|e| e.to_string())?;
    Ok(f)
}

/// Zeroes the file in place. Never by truncating it: a registered file's
/// pages are pinned, and truncation would detach them from the file (the
/// NIC would go on writing into pages the file no longer has).
fn zero(f: &File, len: u64) -> Result<(), String> {
    let zeros = vec![0u8; 1 << 20];
    let mut off = 0;
    while off < len {
        let n = (len - off).min(zeros.len() as u64) as usize;
        f.write_all_at(&zeros[..n], off)
            .map_err(|e| e.to_string())?;
        off += n as u64;
    }
    Ok(())
}

fn read_all(f: &File, len: usize) -> Result<Vec<u8>, String> {
    let mut b = vec![0u8; len];
    f.read_exact_at(&mut b, 0).map_err(|e| e.to_string())?;
    Ok(b)
}

/// The parent's side of the frames, for one file holding piece 0 only.
/// `corrupt_rkey`: answer with a wrong rkey (a remote access error).
async fn serve(
    listener: TcpListener,
    node: Arc<RdmaNode>,
    file: Arc<File>,
    len: u64,
    task: TaskId,
    corrupt_rkey: bool,
) {
    loop {
        let Ok((mut s, _)) = listener.accept().await else {
            return;
        };
        let node = node.clone();
        let file = file.clone();
        tokio::spawn(async move {
            let mut _qp = None;
            let mut magic = [0u8; 4];
            while s.read_exact(&mut magic).await.is_ok() {
                let Ok(n) = ClientFrame::len_for_magic(magic) else {
                    return;
                };
                let mut b = vec![0u8; n];
                b[..4].copy_from_slice(&magic);
                if s.read_exact(&mut b[4..]).await.is_err() {
                    return;
                }
                match ClientFrame::decode(&b) {
                    Ok(ClientFrame::RdmaConnect(child)) => {
                        let (status, endpoint) = match node.accept(&child) {
                            Ok((ep, qp)) => {
                                _qp = Some(qp);
                                (Status::Ok, ep)
                            }
                            Err(e) => {
                                eprintln!("accept failed: {e}");
                                (Status::Failed, child)
                            }
                        };
                        let _ = s.write_all(&RdmaAccept { status, endpoint }.encode()).await;
                    }
                    Ok(ClientFrame::RdmaPiece(req)) => {
                        let loc = match node.piece_location(task, &file, 0..len) {
                            Ok(l) => l,
                            Err(e) => {
                                eprintln!("parent region: {e}");
                                return;
                            }
                        };
                        let g = RdmaGrant {
                            status: if req.piece == 0 {
                                Status::Ok
                            } else {
                                Status::NotFound
                            },
                            active_uploads: 1,
                            addr: loc.addr,
                            rkey: if corrupt_rkey {
                                loc.rkey ^ 0x5a5a
                            } else {
                                loc.rkey
                            },
                            length: loc.length,
                        };
                        let _ = s.write_all(&g.encode()).await;
                    }
                    Ok(ClientFrame::RdmaDone { .. }) => {}
                    _ => return,
                }
            }
        });
    }
}

// One thread: a dropped fetch's permit is observed before any completion
// is polled.
#[tokio::main(flavor = "current_thread")]
async fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let arg = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let size: u64 = arg("--size")
        .and_then(|s| s.parse().ok())
        .unwrap_or(20 << 20);
    let device = arg("--device");
    let scratch = std::env::temp_dir().join(format!("rdma-selftest-{}", std::process::id()));
    let r = match std::fs::create_dir_all(&scratch) {
        Ok(()) => run(size, device.as_deref(), scratch.clone()).await,
        Err(e) => Err(format!("{}: {e}", scratch.display())),
    };
    let _ = std::fs::remove_dir_all(&scratch);
    match r {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("rdma-selftest: FAILED: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(size: u64, device: Option<&str>, dir: PathBuf) -> Result<(), String> {
    let config = RdmaConfig {
        wr_size: 1 << 20,
        outstanding: 8,
        ..RdmaConfig::default()
    };
    let node = RdmaNode::open(device, config).map_err(|e| e.to_string())?;
    println!("device {:?}", node.device);
    let src: Vec<u8> = (0..size).map(|i| (i * 7 % 251) as u8).collect();
    let parent_file = task_file(&dir, "parent", size)?;
    parent_file
        .write_all_at(&src, 0)
        .map_err(|e| e.to_string())?;
    let parent_file = Arc::new(parent_file);
    let parent_task = TaskId([1; 32]);
    let child_task = TaskId([2; 32]);
    let mut results = Vec::new();
    for corrupt in [false, true] {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| e.to_string())?;
        let addr = ParentAddr(
            listener
                .local_addr()
                .map_err(|e| e.to_string())?
                .to_string(),
        );
        tokio::spawn(serve(
            listener,
            node.clone(),
            parent_file.clone(),
            size,
            parent_task,
            corrupt,
        ));
        let t = RdmaTransport::new(node.clone());
        let child_file = task_file(&dir, "child", size)?;
        let released = Arc::new(AtomicBool::new(false));
        let mut permit = Permit {
            file: child_file,
            len: size,
            released: released.clone(),
        };
        if !corrupt {
            for round in 0..3 {
                zero(&permit.file, size)?;
                let t0 = Instant::now();
                let (r, p) = t.fetch(&addr, child_task, 0, permit).await;
                permit = p;
                let r = r.map_err(|e| e.to_string())?;
                let secs = t0.elapsed().as_secs_f64();
                if read_all(&permit.file, size as usize)? != src {
                    return Err(format!("round {round}: bytes differ after RDMA READ"));
                }
                println!(
                    "read {} bytes in {:.3} s ({:.1} MB/s)",
                    r.bytes,
                    secs,
                    r.bytes as f64 / secs / 1e6
                );
            }
            if t.connects.load(Ordering::Relaxed) != 1 {
                return Err("the QP was not reused across pieces".into());
            }
            let (r, p) = t.fetch(&addr, child_task, 1, permit).await;
            permit = p;
            match r {
                Err(RdmaFetchError::Parent(_)) => {}
                other => return Err(format!("a missing piece gave {other:?}")),
            }
            // Cancellation: a fetch dropped mid-read. Its permit must stay
            // held after the drop (the runtime has one thread: no completion
            // is polled before this task yields) and be released once the
            // QP's flushes are in; the next fetch then runs on a new QP and
            // gets every byte. Dropped after 1, 2, 4... ms until a drop
            // lands mid-read (earlier ones land in the control exchange).
            let mut delay = Duration::from_millis(1);
            let (cut_released, after_drop, delay) = loop {
                if delay > Duration::from_secs(4) {
                    return Err("no fetch could be dropped mid-read".into());
                }
                let cut_released = Arc::new(AtomicBool::new(false));
                let cut = Permit {
                    file: permit.file.try_clone().map_err(|e| e.to_string())?,
                    len: size,
                    released: cut_released.clone(),
                };
                let fetch = t.fetch(&addr, child_task, 0, cut);
                if let Ok((r, _)) = tokio::time::timeout(delay, fetch).await {
                    return Err(format!(
                        "a fetch finished within {delay:?} ({r:?}) before any was dropped mid-read"
                    ));
                }
                if !cut_released.load(Ordering::SeqCst) {
                    break (cut_released, t.connects.load(Ordering::Relaxed), delay);
                }
                delay *= 2;
            };
            let t0 = Instant::now();
            while !cut_released.load(Ordering::SeqCst) {
                if t0.elapsed() > Duration::from_secs(30) {
                    return Err("a fetch dropped mid-read never released its permit".into());
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            println!(
                "fetch dropped mid-read after {delay:?}: permit held until the flushes, released {:.1} ms later",
                t0.elapsed().as_secs_f64() * 1e3
            );
            zero(&permit.file, size)?;
            let (r, p) = t.fetch(&addr, child_task, 0, permit).await;
            permit = p;
            r.map_err(|e| format!("the fetch after a dropped one: {e}"))?;
            if read_all(&permit.file, size as usize)? != src {
                return Err("bytes differ after the fetch that followed a dropped one".into());
            }
            if t.connects.load(Ordering::Relaxed) != after_drop + 1 {
                return Err("the QP flushed by a dropped fetch was not rebuilt".into());
            }
            results.push("ok");
        } else {
            let (r, p) = t.fetch(&addr, child_task, 0, permit).await;
            permit = p;
            match r {
                Err(RdmaFetchError::Rdma { source, .. }) => {
                    println!("bad rkey fails as expected: {source}")
                }
                other => return Err(format!("a bad rkey gave {other:?}")),
            }
            // The broken QP is rebuilt for the next piece (which fails the same way here).
            let (_, p) = t.fetch(&addr, child_task, 0, permit).await;
            permit = p;
            if t.connects.load(Ordering::Relaxed) != 2 {
                return Err("the broken QP was not rebuilt".into());
            }
            results.push("error path ok");
        }
        if released.load(Ordering::SeqCst) {
            return Err("a permit was released while its fetch still ran".into());
        }
        drop(permit);
        node.evict(&child_task);
    }
    // Registration cost: pin a 256 MiB file (an emulated CPU: a figure for
    // this VM, not for hardware).
    let big = task_file(&dir, "big", 256 << 20)?;
    let t0 = Instant::now();
    node.region(TaskId([9; 32]), &big)
        .map_err(|e| e.to_string())?;
    let secs = t0.elapsed().as_secs_f64();
    println!(
        "registered 256 MiB in {:.0} ms ({:.2} s/GiB)",
        secs * 1e3,
        secs * 4.0
    );
    node.evict(&TaskId([9; 32]));
    println!("rdma-selftest: PASSED ({})", results.join(", "));
    Ok(())
}
