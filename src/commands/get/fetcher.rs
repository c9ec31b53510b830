//! Where downloads run: the node's daemon (through its socket), or an engine
//! in this process when no daemon answers.

use super::args::GetArgs;
use crate::commands::engine_args::default_data_dir;
use anyhow::{bail, Context};
use std::path::PathBuf;
use std::sync::Arc;
use tracing::Instrument;
use weightcast_engine::place_as_verified::{PlaceAsVerified, Verified};
use weightcast_engine::{local_api, Engine, GetRequest, GetSummary};

/// Where downloads run, and what every request of this `get` asks.
pub struct Fetcher {
    pub via: Via,
    /// The daemon places the files (`--daemon-places`), not this process.
    daemon_places: bool,
    /// Keep the tasks in the cache (`--pin`).
    pin: bool,
}

/// The node's daemon, or an engine in this process.
pub enum Via {
    Daemon(PathBuf),
    InProcess(Arc<Engine>),
}

impl Fetcher {
    pub async fn start(a: &GetArgs) -> anyhow::Result<Self> {
        let data_dir = a.data_dir.clone().unwrap_or_else(default_data_dir);
        let (socket, must_answer) = match &a.daemon {
            Some(s) => (s.clone(), true),
            None => (local_api::socket_path(&data_dir), false),
        };
        let via = if local_api::connect(&socket).await.is_some() {
            tracing::info!(socket = %socket.display(), "using the node's daemon");
            Via::Daemon(socket)
        } else if must_answer {
            bail!("no weightcast daemon answers on {}", socket.display());
        } else {
            let config = a.engine.config(data_dir, a.listen, false, &a.hf)?;
            Via::InProcess(Engine::start(config).await?)
        };
        Ok(Self {
            via,
            daemon_places: a.daemon_places,
            pin: a.pin,
        })
    }

    /// Runs one download; `on_progress` sees (bytes done, total when known).
    pub async fn get(
        &self,
        req: &GetRequest,
        on_progress: impl FnMut(u64, Option<u64>),
    ) -> anyhow::Result<GetSummary> {
        // One span per file: the daemon's (and through it the scheduler's
        // and the seed's) spans for this file are its children.
        let span = tracing::info_span!("get file", url = %req.url);
        let req = GetRequest {
            pin: req.pin || self.pin,
            traceparent: weightcast_telemetry::traceparent_of(&span),
            ..req.clone()
        };
        self.get_one(req, on_progress).instrument(span).await
    }

    async fn get_one(
        &self,
        req: GetRequest,
        mut on_progress: impl FnMut(u64, Option<u64>),
    ) -> anyhow::Result<GetSummary> {
        match &self.via {
            Via::Daemon(socket) => {
                let stream = local_api::connect(socket).await.with_context(|| {
                    format!("the daemon on {} stopped answering", socket.display())
                })?;
                if self.daemon_places {
                    let req = GetRequest {
                        client_places: false,
                        ..req
                    };
                    return Ok(local_api::get_via_daemon(stream, socket, &req, on_progress).await?);
                }
                // The daemon verifies; this process places the file, since
                // the daemon may not see this filesystem (an init
                // container), copying pieces as the daemon verifies them.
                let req = GetRequest {
                    client_places: true,
                    ..req
                };
                let mut get = local_api::DaemonGet::send(stream, socket, &req).await?;
                let mut placing = PlaceAsVerified::new(&req.output);
                let mut s = loop {
                    match get.next().await? {
                        local_api::DaemonEvent::Done(s) => break s,
                        local_api::DaemonEvent::Progress {
                            done,
                            total,
                            placeable,
                        } => {
                            on_progress(done, total);
                            if let Some(p) = placeable {
                                if !placing.started() {
                                    must_see(&p.cache_path)?;
                                }
                                placing
                                    .advance(|| Verified {
                                        mask: p.mask(),
                                        cache_file: p.cache_path,
                                        len: p.len,
                                        piece_size: p.piece_size,
                                    })
                                    .await?;
                            }
                        }
                    }
                };
                let cache = s
                    .cache_path
                    .clone()
                    .context("the daemon did not say where the file is")?;
                must_see(&cache)?;
                s.placement = Some(placing.finish(&cache).await?);
                Ok(s)
            }
            Via::InProcess(engine) => {
                Ok(engine.get(&req, |p| on_progress(p.done, p.total)).await?)
            }
        }
    }
}

/// A daemon's cache file must be visible at the same path here.
fn must_see(cache: &std::path::Path) -> anyhow::Result<()> {
    if !cache.exists() {
        bail!(
            "the daemon's cache file {} is not visible here: mount the daemon's data dir at the same path (see deploy/kubernetes)",
            cache.display()
        );
    }
    Ok(())
}
