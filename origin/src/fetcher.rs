//! The fetcher: every request to an origin, whatever its backend, goes
//! through here, so limits and retries exist once.
//!
//! An attempt takes a request slot of its origin ([`OriginLimits`]), is
//! paced by the origin's byte rate while its body arrives, and carries the
//! right `Authorization`: a pull token held for it, else the task's own
//! credential for that origin, else this peer's own credential. A failed
//! attempt is retried by [`Backoff`]; a first `401` with a Bearer
//! challenge is answered through the registry token flow
//! ([`RegistryTokens`]) and retried at once.

use crate::auth::{OriginAuth, RegistryTokens};
use crate::backend::{Backend, Backends, Entry, Identity, RangeSink, Stat, Target};
use crate::error::OriginError;
use crate::limits::{OriginLimit, OriginLimits};
use crate::origin_key::OriginKey;
use crate::retry::{Backoff, RetryPolicy};
use crate::sequential::SequentialBody;
use crate::stats::OriginStats;
use reqwest::Url;
use std::collections::HashMap;
use std::ops::Range;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

#[derive(Debug, Clone)]
pub struct OriginConfig {
    /// Requests in flight to one origin at once.
    pub concurrency: usize,
    /// Bytes per second from one origin; `None` for no limit.
    pub rate_limit: Option<u64>,
    /// Attempts per request after the first.
    pub retries: u32,
    /// Longest wait between attempts (also caps `Retry-After`).
    pub max_backoff: Duration,
    /// Credentials this peer holds for origins (a seed's `--hf-token` for
    /// the Hub, its registry logins), used when a task brings none of its own.
    pub credentials: Vec<OriginAuth>,
}

impl Default for OriginConfig {
    fn default() -> Self {
        Self {
            concurrency: 8,
            rate_limit: None,
            retries: 5,
            max_backoff: Duration::from_secs(30),
            credentials: Vec::new(),
        }
    }
}

impl OriginConfig {
    fn retry_policy(&self) -> RetryPolicy {
        RetryPolicy {
            retries: self.retries,
            max_backoff: self.max_backoff,
            ..RetryPolicy::default()
        }
    }
}

pub struct OriginFetcher {
    backends: Backends,
    config: OriginConfig,
    limits: OriginLimits,
    tokens: RegistryTokens,
    stats: Arc<OriginStats>,
    /// Plain HTTP objects as their last stat saw them: every ranged read
    /// of one must still find that object (see [`Identity`]).
    seen: Mutex<HashMap<String, Identity>>,
    /// The bodies of objects whose origin ignores `Range`, each read in
    /// order by its pieces (see `sequential`).
    sequential: Mutex<HashMap<String, Arc<tokio::sync::Mutex<SequentialBody>>>>,
}

/// Objects [`OriginFetcher::seen`] remembers before it starts over (a stat
/// comes before every download, so forgetting costs only the check of the
/// downloads under way).
const SEEN_CAP: usize = 4096;

/// One request's state across attempts.
struct Call<'a> {
    url: Url,
    backend: &'a Arc<dyn Backend>,
    origin: OriginKey,
    limit: Arc<OriginLimit>,
    auth: Option<&'a OriginAuth>,
}

impl OriginFetcher {
    /// A fetcher with the [`Backends::builtin`] backends.
    pub fn new(config: OriginConfig, stats: Arc<OriginStats>) -> Self {
        Self::with_backends(config, stats, Backends::builtin())
    }

    pub fn with_backends(
        config: OriginConfig,
        stats: Arc<OriginStats>,
        backends: Backends,
    ) -> Self {
        Self {
            limits: OriginLimits::new(config.concurrency, config.rate_limit),
            tokens: RegistryTokens::new(crate::http::client(10)),
            backends,
            config,
            stats,
            seen: Mutex::new(HashMap::new()),
            sequential: Mutex::new(HashMap::new()),
        }
    }

    fn sequential(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<String, Arc<tokio::sync::Mutex<SequentialBody>>>> {
        // Every update is a single insert, remove or clear.
        self.sequential.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Reads `range` of an object whose origin ignores `Range` from its one
    /// body, retrying (from a new GET) as ranged reads retry.
    async fn read_sequential(
        &self,
        call: &Call<'_>,
        body: Arc<tokio::sync::Mutex<SequentialBody>>,
        range: Range<u64>,
        sink: &mut RangeSink<'_>,
    ) -> Result<(), OriginError> {
        let url = call.url.as_str();
        let expect = self.seen().get(url).cloned();
        let mut backoff = Backoff::new(self.config.retry_policy(), &self.stats, url);
        // Pieces queue here in the order they asked (tokio's mutex is fair).
        let mut body = body.lock().await;
        loop {
            let authorization = self.authorization(call);
            let target = Target {
                url: &call.url,
                authorization: authorization.as_deref(),
            };
            let rest = range.start + sink.filled() as u64..range.end;
            let result = {
                let _slot = call.limit.slot().await;
                let open = || async {
                    OriginStats::add(&self.stats.requests, 1);
                    let resp = call.backend.open_body(target).await?;
                    if let Some(e) = &expect {
                        crate::http::check_identity(url, e, resp.content_length(), resp.headers())?;
                    }
                    Ok::<_, OriginError>(resp)
                };
                body.read(url, rest, sink, open).await
            };
            match result {
                Ok(()) => return Ok(()),
                Err(e) => {
                    body.reset();
                    backoff.after(e).await?;
                }
            }
        }
    }

    fn seen(&self) -> std::sync::MutexGuard<'_, HashMap<String, Identity>> {
        // Every update is a single insert or clear.
        self.seen.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `url` parsed, when a builtin backend serves it: what a task URL may be.
    pub fn check_url(url: &str) -> Result<Url, OriginError> {
        // Only checks URLs (no request is sent through these), so one set
        // serves every call.
        static BUILTIN: OnceLock<Backends> = OnceLock::new();
        BUILTIN
            .get_or_init(Backends::builtin)
            .for_url(url)
            .map(|(u, _)| u)
    }

    pub fn backends(&self) -> &Backends {
        &self.backends
    }

    /// Sets this peer's share of the cluster's byte-rate budget towards
    /// `origin` (`scheme://host:port`, as the scheduler names it); 0 lifts it.
    pub fn set_budget(&self, origin: &str, bytes_per_second: u64) -> Result<(), OriginError> {
        let url = Self::check_url(origin)?;
        let limit = self.limits.of(&OriginKey::of(&url));
        limit.set_budget((bytes_per_second > 0).then_some(bytes_per_second));
        Ok(())
    }

    /// The budget shares the scheduler set, by origin.
    pub fn budgets(&self) -> Vec<(String, u64)> {
        self.limits.budgets()
    }

    pub fn stats(&self) -> &Arc<OriginStats> {
        &self.stats
    }

    fn call<'a>(
        &'a self,
        url: &str,
        auth: Option<&'a OriginAuth>,
    ) -> Result<Call<'a>, OriginError> {
        let (url, backend) = self.backends.for_url(url)?;
        let origin = backend.origin(&url);
        Ok(Call {
            limit: self.limits.of(&origin),
            url,
            backend,
            origin,
            auth,
        })
    }

    /// The `Authorization` for `call`: a pull token held for the URL's
    /// repository (a realm gave it for a login and it is newer than any
    /// token a task brought), else the task's own credential, else this
    /// peer's.
    fn authorization(&self, call: &Call<'_>) -> Option<String> {
        self.tokens
            .held(&call.url)
            .or_else(|| {
                call.auth
                    .and_then(|a| a.for_origin(&call.origin))
                    .map(str::to_string)
            })
            .or_else(|| self.own_credential(&call.origin).map(str::to_string))
    }

    fn own_credential(&self, origin: &OriginKey) -> Option<&str> {
        self.config
            .credentials
            .iter()
            .find_map(|a| a.for_origin(origin))
    }

    /// The login a token realm gets: the task's when it is one, else this
    /// peer's (a task's token may be what just expired).
    fn login<'a>(&'a self, call: &Call<'a>) -> Option<&'a str> {
        call.auth
            .filter(|a| a.is_basic())
            .and_then(|a| a.for_origin(&call.origin))
            .or_else(|| self.own_credential(&call.origin))
    }

    /// One attempt of `op`.
    async fn attempt(
        &self,
        call: &Call<'_>,
        op: &mut Op<'_, '_>,
        target: Target<'_>,
    ) -> Result<Done, OriginError> {
        match op {
            Op::Stat => call.backend.stat(target).await.map(Done::Stat),
            Op::Read { range, sink } => {
                // A retry asks for what the last attempt did not bring.
                let rest = range.start + sink.filled() as u64..range.end;
                call.backend.read_range(target, rest, sink).await?;
                Ok(Done::Read)
            }
            Op::List => call.backend.list(target).await.map(Done::List),
        }
    }

    /// Runs `op` until it succeeds, fails for good, or the retries are spent.
    async fn run(&self, call: &Call<'_>, mut op: Op<'_, '_>) -> Result<Done, OriginError> {
        let mut backoff = Backoff::new(self.config.retry_policy(), &self.stats, call.url.as_str());
        let mut exchanged = false;
        loop {
            let authorization = self.authorization(call);
            let target = Target {
                url: &call.url,
                authorization: authorization.as_deref(),
            };
            let result = {
                let _slot = call.limit.slot().await;
                OriginStats::add(&self.stats.requests, 1);
                self.attempt(call, &mut op, target).await
            };
            match result {
                Ok(done) => return Ok(done),
                Err(OriginError::Unauthorized {
                    challenge: Some(c), ..
                }) if !exchanged => {
                    exchanged = true;
                    self.tokens
                        .exchange(&call.url, &c, self.login(call))
                        .await?;
                }
                Err(e) => backoff.after(e).await?,
            }
        }
    }

    /// The object's length and identity.
    #[tracing::instrument(name = "origin stat", level = "info", skip_all, fields(url = %url))]
    pub async fn stat(&self, url: &str, auth: Option<&OriginAuth>) -> Result<Stat, OriginError> {
        let call = self.call(url, auth)?;
        let stat = match self.run(&call, Op::Stat).await? {
            Done::Stat(s) => s,
            _ => unreachable!("a stat is done with a Stat"),
        };
        // Plain HTTP only: the other backends name their objects by a
        // version or digest already, and answer from other hosts (a CDN)
        // with ETags of their own.
        if call.backend.name() == "http" {
            let mut bodies = self.sequential();
            if !stat.sequential {
                bodies.remove(call.url.as_str());
            } else if !bodies.contains_key(call.url.as_str()) {
                if bodies.len() >= SEEN_CAP {
                    bodies.clear();
                }
                tracing::info!(url = %call.url, "the origin ignores Range requests: this object's pieces are read in order from one GET");
                bodies.insert(call.url.to_string(), Arc::default());
            }
            drop(bodies);
            let mut seen = self.seen();
            if seen.len() >= SEEN_CAP {
                seen.clear();
            }
            seen.insert(
                call.url.to_string(),
                Identity {
                    content_length: stat.content_length,
                    etag: stat.etag.clone(),
                },
            );
        }
        Ok(stat)
    }

    /// Fetches `range` of `url` into `dst` (whose length is the range's).
    /// Returns the bytes received.
    #[tracing::instrument(
        name = "origin fetch",
        level = "info",
        skip_all,
        fields(url = %url, start = range.start, end = range.end)
    )]
    pub async fn fetch_range(
        &self,
        url: &str,
        range: Range<u64>,
        dst: &mut [u8],
        auth: Option<&OriginAuth>,
    ) -> Result<u64, OriginError> {
        let want = range.end.saturating_sub(range.start);
        if want != dst.len() as u64 {
            return Err(OriginError::ShortBody {
                url: url.to_string(),
                got: dst.len() as u64,
                want,
            });
        }
        if want == 0 {
            return Ok(0);
        }
        let call = self.call(url, auth)?;
        let expect = self.seen().get(call.url.as_str()).cloned();
        let mut sink = RangeSink::new(url, dst, Some(&*call.limit), &self.stats).expecting(expect);
        let body = self.sequential().get(call.url.as_str()).cloned();
        if let Some(body) = body {
            self.read_sequential(&call, body, range, &mut sink).await?;
            return Ok(want);
        }
        let read = self
            .run(
                &call,
                Op::Read {
                    range: range.clone(),
                    sink: &mut sink,
                },
            )
            .await;
        match read {
            // A peer that never stat'ed the object (it learned the length
            // from the swarm) meets an origin without Range support here.
            Err(OriginError::NoRangeSupport { .. }) if call.backend.name() == "http" => {
                let body: Arc<tokio::sync::Mutex<SequentialBody>> = self
                    .sequential()
                    .entry(call.url.to_string())
                    .or_default()
                    .clone();
                self.read_sequential(&call, body, range, &mut sink).await?;
            }
            r => {
                r?;
            }
        }
        Ok(want)
    }

    /// For a URL whose backend [`Backend::pins`] (object storage): its
    /// stat, with this peer's credentials, and the URL bound to the
    /// version that stat saw, which a task is named by. `None` for a URL
    /// that names its bytes already. The stat is also what proves that
    /// this peer may read the object.
    pub async fn pin(
        &self,
        url: &str,
        auth: Option<&OriginAuth>,
    ) -> Result<Option<Pinned>, OriginError> {
        let (u, backend) = self.backends.for_url(url)?;
        if !backend.pins() {
            return Ok(None);
        }
        let stat = self.stat(url, auth).await?;
        let pinned = backend.pin(&u, &stat).unwrap_or(u);
        Ok(Some(Pinned {
            url: pinned.to_string(),
            stat,
        }))
    }

    /// The entries under `url`.
    pub async fn list(
        &self,
        url: &str,
        auth: Option<&OriginAuth>,
    ) -> Result<Vec<Entry>, OriginError> {
        let call = self.call(url, auth)?;
        match self.run(&call, Op::List).await? {
            Done::List(entries) => Ok(entries),
            _ => unreachable!("a list is done with a List"),
        }
    }
}

/// An object of a store that changes objects in place, as a task names
/// it: the URL bound to one version, and what its stat said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pinned {
    pub url: String,
    pub stat: Stat,
}

/// What a request asks of its backend.
enum Op<'s, 'b> {
    Stat,
    Read {
        range: Range<u64>,
        sink: &'s mut RangeSink<'b>,
    },
    List,
}

/// What a request brought back.
enum Done {
    Stat(Stat),
    Read,
    List(Vec<Entry>),
}

#[cfg(test)]
mod tests;
