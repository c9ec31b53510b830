//! `rdma-selftest`: proves the verbs path on this machine without the rest of
//! weightcast. It opens the device, registers two buffers (a "parent's" and
//! a "child's"), connects a child QP to a parent QP over a loopback TCP
//! control connection speaking weightcast's RDMA frames, reads a piece with
//! RDMA READs split into several outstanding work requests, and checks every
//! byte; then it breaks the parent's side and checks that the child reports
//! an error and rebuilds its QP for the next read.
//!
//! ```text
//! rdma-selftest [--size BYTES] [--device NAME]
//! ```
//! Exit status 0 on success; used inside the soft-RoCE VM by scripts/test --slow.

use std::sync::Arc;
use std::time::Instant;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use weightcast_proto::frame::{ClientFrame, RdmaAccept, RdmaGrant, Status};
use weightcast_proto::transport::ParentAddr;
use weightcast_rdma::{RdmaConfig, RdmaFetchError, RdmaNode, RdmaTransport};
use weightcast_types::TaskId;

/// The parent's side of the frames, for one region holding piece 0 only.
/// `corrupt_rkey`: answer with a wrong rkey (a remote access error).
async fn serve(
    listener: TcpListener,
    node: Arc<RdmaNode>,
    buf: (usize, usize),
    task: TaskId,
    corrupt_rkey: bool,
) {
    let (base, len) = buf;
    loop {
        let Ok((mut s, _)) = listener.accept().await else {
            return;
        };
        let node = node.clone();
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
                        let keep: Arc<dyn std::any::Any + Send + Sync> = Arc::new(());
                        let region = node
                            .region(task, base as *mut u8, len, keep)
                            .expect("parent region");
                        let g = RdmaGrant {
                            status: if req.piece == 0 {
                                Status::Ok
                            } else {
                                Status::NotFound
                            },
                            active_uploads: 1,
                            addr: base as u64,
                            rkey: if corrupt_rkey {
                                region.region.rkey ^ 0x5a5a
                            } else {
                                region.region.rkey
                            },
                            length: len as u64,
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

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let arg = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let size: usize = arg("--size")
        .and_then(|s| s.parse().ok())
        .unwrap_or(20 << 20);
    let device = arg("--device");
    match run(size, device.as_deref()).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("rdma-selftest: FAILED: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(size: usize, device: Option<&str>) -> Result<(), String> {
    let config = RdmaConfig {
        wr_size: 1 << 20,
        outstanding: 8,
        ..RdmaConfig::default()
    };
    let node = RdmaNode::open(device, config).map_err(|e| e.to_string())?;
    println!("device {:?}", node.device);
    let src: Vec<u8> = (0..size).map(|i| (i * 7 % 251) as u8).collect();
    let src = Box::leak(src.into_boxed_slice());
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
            (src.as_mut_ptr() as usize, src.len()),
            parent_task,
            corrupt,
        ));
        let t = RdmaTransport::new(node.clone());
        let mut dst = vec![0u8; size];
        let keep: Arc<dyn std::any::Any + Send + Sync> = Arc::new(());
        let local = node
            .region(child_task, dst.as_mut_ptr(), dst.len(), keep)
            .map_err(|e| e.to_string())?;
        if !corrupt {
            for round in 0..3 {
                dst.fill(0);
                let t0 = Instant::now();
                let r = t
                    .fetch(&addr, child_task, 0, &mut dst, &local)
                    .await
                    .map_err(|e| e.to_string())?;
                let secs = t0.elapsed().as_secs_f64();
                if dst.as_slice() != &src[..] {
                    return Err(format!("round {round}: bytes differ after RDMA READ"));
                }
                println!(
                    "read {} bytes in {:.3} s ({:.1} MB/s)",
                    r.bytes,
                    secs,
                    r.bytes as f64 / secs / 1e6
                );
            }
            if t.connects.load(std::sync::atomic::Ordering::Relaxed) != 1 {
                return Err("the QP was not reused across pieces".into());
            }
            match t.fetch(&addr, child_task, 1, &mut dst, &local).await {
                Err(RdmaFetchError::Parent(_)) => {}
                other => return Err(format!("a missing piece gave {other:?}")),
            }
            results.push("ok");
        } else {
            match t.fetch(&addr, child_task, 0, &mut dst, &local).await {
                Err(RdmaFetchError::Rdma { source, .. }) => {
                    println!("bad rkey fails as expected: {source}")
                }
                other => return Err(format!("a bad rkey gave {other:?}")),
            }
            // The broken QP is rebuilt for the next piece (which fails the same way here).
            let _ = t.fetch(&addr, child_task, 0, &mut dst, &local).await;
            if t.connects.load(std::sync::atomic::Ordering::Relaxed) != 2 {
                return Err("the broken QP was not rebuilt".into());
            }
            results.push("error path ok");
        }
        node.evict(&child_task);
    }
    // Registration cost: pin a 256 MiB buffer (an emulated CPU: a figure
    // for this VM, not for hardware).
    let mut big = vec![0u8; 256 << 20];
    let t0 = Instant::now();
    let keep: Arc<dyn std::any::Any + Send + Sync> = Arc::new(());
    node.region(TaskId([9; 32]), big.as_mut_ptr(), big.len(), keep)
        .map_err(|e| e.to_string())?;
    let secs = t0.elapsed().as_secs_f64();
    println!(
        "registered 256 MiB in {:.0} ms ({:.2} s/GiB)",
        secs * 1e3,
        secs * 4.0
    );
    node.evict(&TaskId([9; 32]));
    drop(big);
    println!("rdma-selftest: PASSED ({})", results.join(", "));
    Ok(())
}
