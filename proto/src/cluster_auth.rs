//! Cluster authentication: a shared secret proves that a process belongs to
//! the cluster before a scheduler lets it register or announce, and before a
//! peer serves it a piece.
//!
//! - The secret lives in a file (`--cluster-secret-file`), one secret a
//!   line. The first line is the one this process proves with; every line
//!   is accepted from others. That is how a secret rotates without a
//!   restart: add the new one on every node, make it first everywhere,
//!   then remove the old one. The file is looked at again (its mtime, size
//!   and inode) at most every [`RECHECK_EVERY`], so an edit takes effect
//!   within seconds.
//! - Towards the scheduler (gRPC) a request carries
//!   `authorization: Bearer wc1:<unix seconds>:<hex HMAC-SHA256(secret,
//!   "weightcast-scheduler:" + seconds)>`, accepted within [`TOKEN_WINDOW`]
//!   of the scheduler's clock: the secret itself never travels.
//! - On a piece connection the parent sends a fresh random nonce and the
//!   child answers HMAC-SHA256(secret, nonce ‖ "weightcast-pieces")
//!   ([`frame::AuthChallenge`](crate::frame::AuthChallenge),
//!   [`frame::AuthProof`](crate::frame::AuthProof)); a nonce is never
//!   reused, so a recorded answer is worth nothing.
//!
//! Without a secret file nothing is sent or checked (a one-node setup needs
//! no configuration).

use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

type HmacSha256 = Hmac<Sha256>;

/// How often the secret file is looked at again, at most.
pub const RECHECK_EVERY: Duration = Duration::from_secs(2);
/// How far a scheduler token's time may lie from the scheduler's clock.
pub const TOKEN_WINDOW: Duration = Duration::from_secs(300);
/// The shortest secret accepted: a guessable secret is no secret.
pub const MIN_SECRET_LEN: usize = 16;
/// The metadata key a scheduler token rides in.
pub const TOKEN_METADATA_KEY: &str = "authorization";
/// Bytes of a piece-connection nonce and of the answer to it.
pub const NONCE_LEN: usize = 32;
pub const PROOF_LEN: usize = 32;

const TOKEN_VERSION: &str = "wc1";
const SCHEDULER_CONTEXT: &[u8] = b"weightcast-scheduler:";
const PIECES_CONTEXT: &[u8] = b"weightcast-pieces";

#[derive(Debug, thiserror::Error)]
pub enum SecretFileError {
    #[error("cannot read the cluster secret file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the cluster secret file {path} holds no secret (one a line; # starts a comment)")]
    Empty { path: PathBuf },
    #[error("the cluster secret on line {line} of {path} is shorter than {MIN_SECRET_LEN} bytes (generate one with: openssl rand -hex 32)")]
    TooShort { path: PathBuf, line: usize },
}

/// One secret; never printed.
#[derive(Clone, PartialEq, Eq)]
struct Secret(Vec<u8>);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

impl Secret {
    fn mac(&self) -> HmacSha256 {
        // HMAC takes a key of any length.
        HmacSha256::new_from_slice(&self.0).expect("HMAC accepts any key length")
    }
}

/// The secrets of one version of the file: the first proves, all accept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretSet {
    secrets: Vec<Secret>,
}

impl SecretSet {
    /// Parses the file's text: one secret a line, surrounding blanks
    /// trimmed, empty lines and `#` comments skipped.
    pub fn parse(text: &str, path: &Path) -> Result<Self, SecretFileError> {
        let mut secrets = Vec::new();
        for (i, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            if line.len() < MIN_SECRET_LEN {
                return Err(SecretFileError::TooShort {
                    path: path.to_path_buf(),
                    line: i + 1,
                });
            }
            secrets.push(Secret(line.as_bytes().to_vec()));
        }
        if secrets.is_empty() {
            return Err(SecretFileError::Empty {
                path: path.to_path_buf(),
            });
        }
        Ok(Self { secrets })
    }

    fn prover(&self) -> &Secret {
        &self.secrets[0]
    }

    /// How many secrets are accepted.
    pub fn len(&self) -> usize {
        self.secrets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.secrets.is_empty()
    }

    /// The token a scheduler request carries, for the time `unix_secs`.
    pub fn scheduler_token(&self, unix_secs: u64) -> String {
        let mut mac = self.prover().mac();
        mac.update(SCHEDULER_CONTEXT);
        mac.update(unix_secs.to_string().as_bytes());
        format!(
            "{TOKEN_VERSION}:{unix_secs}:{}",
            hex::encode(mac.finalize().into_bytes())
        )
    }

    /// Checks a scheduler token against every accepted secret, at the time
    /// `now_unix_secs` (constant-time comparisons).
    pub fn verify_scheduler_token(
        &self,
        token: &str,
        now_unix_secs: u64,
    ) -> Result<(), TokenError> {
        let mut parts = token.splitn(3, ':');
        let (Some(TOKEN_VERSION), Some(secs), Some(tag)) =
            (parts.next(), parts.next(), parts.next())
        else {
            return Err(TokenError::Malformed);
        };
        let secs: u64 = secs.parse().map_err(|_| TokenError::Malformed)?;
        let tag = hex::decode(tag).map_err(|_| TokenError::Malformed)?;
        let skew = now_unix_secs.abs_diff(secs);
        if skew > TOKEN_WINDOW.as_secs() {
            return Err(TokenError::OutOfWindow { skew_secs: skew });
        }
        let accepted = self.secrets.iter().any(|s| {
            let mut mac = s.mac();
            mac.update(SCHEDULER_CONTEXT);
            mac.update(secs.to_string().as_bytes());
            mac.verify_slice(&tag).is_ok()
        });
        if accepted {
            Ok(())
        } else {
            Err(TokenError::Mismatch)
        }
    }

    /// The answer to a piece connection's `nonce`.
    pub fn piece_proof(&self, nonce: &[u8; NONCE_LEN]) -> [u8; PROOF_LEN] {
        piece_mac(self.prover(), nonce)
            .finalize()
            .into_bytes()
            .into()
    }

    /// Whether `proof` answers `nonce` with any accepted secret
    /// (constant-time comparisons).
    pub fn accepts_piece_proof(&self, nonce: &[u8; NONCE_LEN], proof: &[u8; PROOF_LEN]) -> bool {
        self.secrets
            .iter()
            .any(|s| piece_mac(s, nonce).verify_slice(proof).is_ok())
    }
}

fn piece_mac(secret: &Secret, nonce: &[u8; NONCE_LEN]) -> HmacSha256 {
    let mut mac = secret.mac();
    mac.update(nonce);
    mac.update(PIECES_CONTEXT);
    mac
}

/// Why a scheduler token was refused; the text goes back to the peer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("no cluster token: this scheduler requires the cluster secret (start the peer with --cluster-secret-file)")]
    Missing,
    #[error("malformed cluster token (expected Bearer wc1:<unix seconds>:<hex HMAC>)")]
    Malformed,
    #[error("the cluster token's time is {skew_secs} s off the scheduler's clock (at most 300 s allowed): check the clocks")]
    OutOfWindow { skew_secs: u64 },
    #[error("the cluster token matches none of this scheduler's cluster secrets (a wrong or retired --cluster-secret-file)")]
    Mismatch,
}

/// What identifies one version of the file without reading it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileStamp {
    modified: Option<SystemTime>,
    len: u64,
    inode: u64,
}

impl FileStamp {
    fn of(meta: &std::fs::Metadata) -> Self {
        #[cfg(unix)]
        let inode = std::os::unix::fs::MetadataExt::ino(meta);
        #[cfg(not(unix))]
        let inode = 0;
        Self {
            modified: meta.modified().ok(),
            len: meta.len(),
            inode,
        }
    }
}

struct Loaded {
    set: Arc<SecretSet>,
    stamp: FileStamp,
    checked: Instant,
}

/// The cluster secret file, re-read when it changes.
pub struct ClusterSecrets {
    path: PathBuf,
    recheck_every: Duration,
    loaded: Mutex<Loaded>,
}

impl std::fmt::Debug for ClusterSecrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterSecrets")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

fn read(path: &Path) -> Result<(SecretSet, FileStamp), SecretFileError> {
    let err = |source| SecretFileError::Read {
        path: path.to_path_buf(),
        source,
    };
    let meta = std::fs::metadata(path).map_err(err)?;
    let text = std::fs::read_to_string(path).map_err(err)?;
    Ok((SecretSet::parse(&text, path)?, FileStamp::of(&meta)))
}

impl ClusterSecrets {
    /// Reads the file; a missing, empty or weak file is an error at start.
    pub fn load(path: impl Into<PathBuf>) -> Result<Arc<Self>, SecretFileError> {
        Self::load_rechecking(path, RECHECK_EVERY)
    }

    /// [`ClusterSecrets::load`], looking at the file again at most every
    /// `recheck_every` (tests use a short one).
    pub fn load_rechecking(
        path: impl Into<PathBuf>,
        recheck_every: Duration,
    ) -> Result<Arc<Self>, SecretFileError> {
        let path = path.into();
        let (set, stamp) = read(&path)?;
        #[cfg(unix)]
        if let Ok(meta) = std::fs::metadata(&path) {
            if std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o004 != 0 {
                tracing::warn!(path = %path.display(), "the cluster secret file is readable by every local user (chmod 600 it)");
            }
        }
        Ok(Arc::new(Self {
            path,
            recheck_every,
            loaded: Mutex::new(Loaded {
                set: Arc::new(set),
                stamp,
                checked: Instant::now(),
            }),
        }))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The secrets now. Looks at the file again when the last look is
    /// older than the recheck interval, and reads it when it changed. A
    /// file that cannot be read or parsed then (being rewritten, or
    /// emptied by mistake) keeps the last good secrets, with a warning:
    /// a node never drops out of its cluster over a half-written file.
    pub fn current(&self) -> Arc<SecretSet> {
        let mut loaded = self.loaded.lock().unwrap_or_else(|p| p.into_inner());
        if loaded.checked.elapsed() < self.recheck_every {
            return loaded.set.clone();
        }
        loaded.checked = Instant::now();
        let unchanged = std::fs::metadata(&self.path)
            .map(|m| FileStamp::of(&m) == loaded.stamp)
            .unwrap_or(false);
        if unchanged {
            return loaded.set.clone();
        }
        match read(&self.path) {
            Ok((set, stamp)) => {
                if *loaded.set != set {
                    tracing::info!(path = %self.path.display(), secrets = set.len(), "cluster secret file changed; using its new secrets");
                }
                loaded.set = Arc::new(set);
                loaded.stamp = stamp;
            }
            Err(e) => {
                tracing::warn!(error = %e, "keeping the last good cluster secrets");
            }
        }
        loaded.set.clone()
    }
}

/// Seconds since the Unix epoch now (0 for a clock before it).
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Adds the cluster token to every request of a scheduler client (nothing
/// without secrets). The secrets are read per request, so a long-lived
/// client follows a rotation.
#[derive(Debug, Clone, Default)]
pub struct ClientAuth(pub Option<Arc<ClusterSecrets>>);

impl tonic::service::Interceptor for ClientAuth {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(secrets) = &self.0 {
            let token = secrets.current().scheduler_token(unix_now());
            let value = format!("Bearer {token}").parse().map_err(|_| {
                tonic::Status::internal("the cluster token is not a valid header value")
            })?;
            req.metadata_mut().insert(TOKEN_METADATA_KEY, value);
        }
        Ok(req)
    }
}

/// A scheduler client that sends the cluster token.
pub type AuthedSchedulerClient = crate::pb::scheduler_client::SchedulerClient<
    tonic::service::interceptor::InterceptedService<tonic::transport::Channel, ClientAuth>,
>;

/// A scheduler client on `channel`, sending the token of `secrets`.
pub fn scheduler_client(
    channel: tonic::transport::Channel,
    secrets: Option<Arc<ClusterSecrets>>,
) -> AuthedSchedulerClient {
    crate::pb::scheduler_client::SchedulerClient::with_interceptor(channel, ClientAuth(secrets))
}

/// Connects to the scheduler at `endpoint` (`http://host:port`) with a
/// client that sends the token of `secrets`.
pub async fn connect_scheduler(
    endpoint: &str,
    secrets: Option<Arc<ClusterSecrets>>,
) -> Result<AuthedSchedulerClient, tonic::transport::Error> {
    let channel = tonic::transport::Endpoint::from_shared(endpoint.to_string())?
        .connect()
        .await?;
    Ok(scheduler_client(channel, secrets))
}

/// Refuses scheduler requests without a valid cluster token (lets all
/// through without secrets), counting the refusals.
#[derive(Debug, Clone, Default)]
pub struct ServerAuth {
    pub secrets: Option<Arc<ClusterSecrets>>,
    pub refused: Arc<std::sync::atomic::AtomicU64>,
    /// When a refusal was last logged as a warning (Unix seconds): a
    /// misconfigured peer retries every few seconds, and its refusals after
    /// the first go to the debug log (the counter has them all).
    pub last_warned: Arc<std::sync::atomic::AtomicU64>,
}

/// At most one warning about refused requests per this many seconds.
const REFUSAL_WARN_EVERY_SECS: u64 = 10;

impl ServerAuth {
    /// Checks the `authorization` value of one request.
    pub fn check(&self, authorization: Option<&str>) -> Result<(), TokenError> {
        let Some(secrets) = &self.secrets else {
            return Ok(());
        };
        let token = authorization
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or(TokenError::Missing)?;
        secrets
            .current()
            .verify_scheduler_token(token.trim(), unix_now())
    }
}

impl tonic::service::Interceptor for ServerAuth {
    fn call(&mut self, req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        let value = req
            .metadata()
            .get(TOKEN_METADATA_KEY)
            .and_then(|v| v.to_str().ok());
        match self.check(value) {
            Ok(()) => Ok(req),
            Err(e) => {
                self.refused
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let from = req
                    .remote_addr()
                    .map_or_else(|| "?".to_string(), |a| a.to_string());
                let now = unix_now();
                let last = self.last_warned.load(std::sync::atomic::Ordering::Relaxed);
                if now.saturating_sub(last) >= REFUSAL_WARN_EVERY_SECS
                    && self
                        .last_warned
                        .compare_exchange(
                            last,
                            now,
                            std::sync::atomic::Ordering::Relaxed,
                            std::sync::atomic::Ordering::Relaxed,
                        )
                        .is_ok()
                {
                    tracing::warn!(%from, error = %e, "refused a scheduler request without a valid cluster token (more are counted in weightcast_scheduler_refused_unauthenticated_total)");
                } else {
                    tracing::debug!(%from, error = %e, "refused a scheduler request");
                }
                Err(tonic::Status::unauthenticated(e.to_string()))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "first-secret-0123456789";
    const B: &str = "second-secret-0123456789";

    fn set(text: &str) -> SecretSet {
        SecretSet::parse(text, Path::new("s")).unwrap()
    }

    #[test]
    fn a_token_verifies_with_any_accepted_secret_inside_the_window_only() {
        let now = 1_800_000_000;
        let t = set(A).scheduler_token(now);
        assert!(t.starts_with("wc1:1800000000:"), "{t}");
        assert!(!t.contains(A), "the secret itself never travels");
        assert_eq!(set(A).verify_scheduler_token(&t, now), Ok(()));
        // The new secret first, the old one still accepted: a rotation.
        assert_eq!(
            set(&format!("{B}\n{A}\n")).verify_scheduler_token(&t, now + 299),
            Ok(())
        );
        assert_eq!(
            set(A).verify_scheduler_token(&t, now + 301),
            Err(TokenError::OutOfWindow { skew_secs: 301 })
        );
        assert_eq!(
            set(A).verify_scheduler_token(&t, now - 301),
            Err(TokenError::OutOfWindow { skew_secs: 301 })
        );
        assert_eq!(
            set(B).verify_scheduler_token(&t, now),
            Err(TokenError::Mismatch)
        );
        // The time is bound to the tag: moving it breaks the token.
        let moved = t.replacen("1800000000", "1800000001", 1);
        assert_eq!(
            set(A).verify_scheduler_token(&moved, now),
            Err(TokenError::Mismatch)
        );
        for bad in [
            "",
            "wc1",
            "wc1:x:00",
            "wc2:1800000000:00",
            "wc1:1800000000:zz",
        ] {
            assert_eq!(
                set(A).verify_scheduler_token(bad, now),
                Err(TokenError::Malformed),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn a_piece_proof_answers_its_own_nonce_with_an_accepted_secret() {
        let nonce = [7u8; NONCE_LEN];
        let proof = set(A).piece_proof(&nonce);
        assert!(set(A).accepts_piece_proof(&nonce, &proof));
        assert!(set(&format!("{B}\n{A}")).accepts_piece_proof(&nonce, &proof));
        assert!(!set(B).accepts_piece_proof(&nonce, &proof));
        assert!(
            !set(A).accepts_piece_proof(&[8u8; NONCE_LEN], &proof),
            "a recorded answer does not answer another nonce"
        );
        assert_ne!(
            set(A).piece_proof(&nonce),
            {
                let mut m = set(A).prover().mac();
                m.update(SCHEDULER_CONTEXT);
                m.update(&nonce);
                <[u8; 32]>::from(m.finalize().into_bytes())
            },
            "the two protocols' answers differ"
        );
    }

    #[test]
    fn the_file_format_skips_comments_and_refuses_weak_or_empty_files() {
        let s = set(&format!("# rotated 2026-12\n\n  {B}  \n{A}\n"));
        assert_eq!(s.len(), 2);
        assert_eq!(s.prover(), &Secret(B.as_bytes().to_vec()));
        let p = Path::new("/etc/wc/secret");
        assert!(matches!(
            SecretSet::parse("# nothing\n\n", p),
            Err(SecretFileError::Empty { .. })
        ));
        let e = SecretSet::parse(&format!("{A}\nshort\n"), p).unwrap_err();
        assert!(
            matches!(e, SecretFileError::TooShort { line: 2, .. }),
            "{e}"
        );
        assert!(!format!("{s:?}").contains(A), "secrets are never printed");
    }

    #[test]
    fn the_file_is_read_again_when_it_changes_and_a_broken_edit_keeps_the_last_good_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");
        std::fs::write(&path, format!("{A}\n")).unwrap();
        let secrets = ClusterSecrets::load_rechecking(&path, Duration::from_millis(20)).unwrap();
        let nonce = [1u8; NONCE_LEN];
        let proof_a = set(A).piece_proof(&nonce);
        let proof_b = set(B).piece_proof(&nonce);
        assert_eq!(secrets.current().piece_proof(&nonce), proof_a);
        // Step 1 of a rotation: the new secret is accepted too.
        std::fs::write(&path, format!("{A}\n{B}\n")).unwrap();
        std::thread::sleep(Duration::from_millis(30));
        assert!(secrets.current().accepts_piece_proof(&nonce, &proof_b));
        assert_eq!(secrets.current().piece_proof(&nonce), proof_a);
        // Step 2: the new one proves.
        std::fs::write(&path, format!("{B}\n{A}\n")).unwrap();
        std::thread::sleep(Duration::from_millis(30));
        assert_eq!(secrets.current().piece_proof(&nonce), proof_b);
        // A half-written or removed file keeps the last good secrets.
        std::fs::write(&path, "").unwrap();
        std::thread::sleep(Duration::from_millis(30));
        assert_eq!(secrets.current().len(), 2);
        std::fs::remove_file(&path).unwrap();
        std::thread::sleep(Duration::from_millis(30));
        assert_eq!(secrets.current().len(), 2);
        // Step 3 (atomically renamed into place): the old one is gone.
        let tmp = dir.path().join("secret.new");
        std::fs::write(&tmp, format!("{B}\n")).unwrap();
        std::fs::rename(&tmp, &path).unwrap();
        std::thread::sleep(Duration::from_millis(30));
        assert!(!secrets.current().accepts_piece_proof(&nonce, &proof_a));
        assert!(secrets.current().accepts_piece_proof(&nonce, &proof_b));
        assert!(matches!(
            ClusterSecrets::load(dir.path().join("missing")),
            Err(SecretFileError::Read { .. })
        ));
    }

    #[test]
    fn the_server_check_needs_a_bearer_token_only_with_secrets() {
        assert_eq!(ServerAuth::default().check(None), Ok(()));
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");
        std::fs::write(&path, A).unwrap();
        let auth = ServerAuth {
            secrets: Some(ClusterSecrets::load(&path).unwrap()),
            ..Default::default()
        };
        assert_eq!(auth.check(None), Err(TokenError::Missing));
        let token = set(A).scheduler_token(unix_now());
        assert_eq!(auth.check(Some(&token)), Err(TokenError::Missing));
        assert_eq!(auth.check(Some(&format!("Bearer {token}"))), Ok(()));
    }
}
