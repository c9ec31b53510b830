//! GCS (`gs://bucket/key`) and Azure Blob Storage (`az://container/key`
//! with `AZURE_STORAGE_ACCOUNT_NAME`, or Triton's
//! `as://account/container/key`) as [`Backend`]s, through the
//! `object_store` crate: its clients, its credential chains
//! (`GOOGLE_*`, `AZURE_*`, service account files, instance metadata and
//! managed identities) and its signing.
//!
//! Its own retries are off: the [`OriginFetcher`](crate::OriginFetcher)
//! retries, under the same limits as every origin. A task is pinned to the
//! `ETag` and version (a GCS generation) of its stat. Keys must be ones
//! `object_store` can name (no empty path segments).

use super::{ObjectError, ObjectUrl, Provider};
use crate::backend::{Backend, Entry, RangeSink, Stat, Target};
use crate::error::{ErrorKind, OriginError};
use futures::StreamExt;
use object_store::azure::MicrosoftAzureBuilder;
use object_store::gcp::GoogleCloudStorageBuilder;
use object_store::list::{PaginatedListOptions, PaginatedListStore};
use object_store::path::Path;
use object_store::{GetOptions, GetRange, ObjectStore, RetryConfig};
use reqwest::Url;
use std::collections::HashMap;
use std::ops::Range;
use std::sync::{Arc, Mutex};
use weightcast_modelpack::hf_api::bare_etag;

/// What a bucket's client can do: read and list by page.
trait Store: ObjectStore + PaginatedListStore {}
impl<T: ObjectStore + PaginatedListStore> Store for T {}

/// A bucket (container) and its Azure account.
type BucketKey = (Option<String>, String);

/// One `object_store` client per bucket (and account), made on first use.
pub struct CloudBackend {
    provider: Provider,
    stores: Mutex<HashMap<BucketKey, Arc<dyn Store>>>,
}

impl CloudBackend {
    pub fn gcs() -> Self {
        Self::new(Provider::Gcs)
    }

    pub fn azure() -> Self {
        Self::new(Provider::Azure)
    }

    fn new(provider: Provider) -> Self {
        Self {
            provider,
            stores: Mutex::new(HashMap::new()),
        }
    }

    fn no_retries() -> RetryConfig {
        RetryConfig {
            max_retries: 0,
            ..RetryConfig::default()
        }
    }

    fn store(&self, o: &ObjectUrl) -> Result<Arc<dyn Store>, OriginError> {
        let key = (o.account.clone(), o.bucket.clone());
        let mut stores = self.stores.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(s) = stores.get(&key) {
            return Ok(s.clone());
        }
        let config = |e: object_store::Error| -> OriginError {
            ObjectError::Config {
                provider: self.provider,
                why: e.to_string(),
            }
            .into()
        };
        let store: Arc<dyn Store> = match self.provider {
            Provider::Gcs => Arc::new(
                GoogleCloudStorageBuilder::from_env()
                    .with_bucket_name(&o.bucket)
                    .with_retry(Self::no_retries())
                    .build()
                    .map_err(config)?,
            ),
            _ => {
                let mut b = MicrosoftAzureBuilder::from_env()
                    .with_container_name(&o.bucket)
                    .with_retry(Self::no_retries());
                if let Some(a) = &o.account {
                    b = b.with_account(a);
                }
                Arc::new(b.build().map_err(config)?)
            }
        };
        stores.insert(key, store.clone());
        Ok(store)
    }

    fn path(o: &ObjectUrl) -> Result<Path, OriginError> {
        Path::parse(&o.key).map_err(|e| OriginError::BadUrl {
            url: o.to_string(),
            why: format!("the object_store client cannot name this key: {e}"),
        })
    }

    fn error(&self, url: &str, e: object_store::Error) -> OriginError {
        use object_store::Error as E;
        let kind = match &e {
            E::NotFound { .. } => ErrorKind::NotFound,
            E::PermissionDenied { .. } | E::Unauthenticated { .. } => ErrorKind::Unauthorized,
            E::Precondition { .. } => {
                return ObjectError::Changed {
                    url: url.to_string(),
                }
                .into()
            }
            E::InvalidPath { .. } => ErrorKind::BadUrl,
            E::NotSupported { .. } | E::NotImplemented | E::UnknownConfigurationKey { .. } => {
                ErrorKind::Unsupported
            }
            // Connection failures and 5xx: the fetcher's retries decide.
            _ => ErrorKind::Unavailable,
        };
        ObjectError::Library {
            url: url.to_string(),
            provider: self.provider,
            kind,
            message: crate::error::error_chain(&e),
        }
        .into()
    }

    fn options(o: &ObjectUrl) -> GetOptions {
        GetOptions {
            if_match: o.etag.as_ref().map(|e| format!("\"{e}\"")),
            version: o.version.clone(),
            ..GetOptions::default()
        }
    }
}

#[async_trait::async_trait]
impl Backend for CloudBackend {
    fn name(&self) -> &'static str {
        match self.provider {
            Provider::Gcs => "gcs",
            _ => "azure",
        }
    }

    fn schemes(&self) -> &'static [&'static str] {
        match self.provider {
            Provider::Gcs => &["gs"],
            _ => &["az", "as"],
        }
    }

    fn check(&self, url: &Url) -> Result<(), OriginError> {
        ObjectUrl::from_url(url).map(|_| ())
    }

    async fn stat(&self, target: Target<'_>) -> Result<Stat, OriginError> {
        let o = ObjectUrl::from_url(target.url)?;
        let name = o.to_string();
        let store = self.store(&o)?;
        let opts = GetOptions {
            head: true,
            ..Self::options(&o)
        };
        let meta = store
            .get_opts(&Self::path(&o)?, opts)
            .await
            .map_err(|e| self.error(&name, e))?
            .meta;
        Ok(Stat {
            content_length: meta.size,
            etag: meta.e_tag.map(|e| bare_etag(&e).to_string()),
            digest: None,
            version: meta.version,
            last_modified: Some(meta.last_modified.into()),
            sequential: false,
        })
    }

    async fn read_range(
        &self,
        target: Target<'_>,
        range: Range<u64>,
        sink: &mut RangeSink<'_>,
    ) -> Result<(), OriginError> {
        let o = ObjectUrl::from_url(target.url)?;
        let name = o.to_string();
        let store = self.store(&o)?;
        let opts = GetOptions {
            range: Some(GetRange::Bounded(range.clone())),
            ..Self::options(&o)
        };
        let result = store
            .get_opts(&Self::path(&o)?, opts)
            .await
            .map_err(|e| self.error(&name, e))?;
        let start = sink.filled();
        let mut stream = result.into_stream();
        while let Some(chunk) = stream.next().await {
            sink.put(&chunk.map_err(|e| self.error(&name, e))?).await?;
        }
        let (got, want) = ((sink.filled() - start) as u64, range.end - range.start);
        if got != want {
            return Err(OriginError::ShortBody {
                url: name,
                got,
                want,
            });
        }
        Ok(())
    }

    async fn list(&self, target: Target<'_>) -> Result<Vec<Entry>, OriginError> {
        let o = ObjectUrl::from_url(target.url)?;
        let name = o.to_string();
        let store = self.store(&o)?;
        let mut entries = Vec::new();
        let mut token = None;
        loop {
            let page = store
                .list_paginated(
                    Some(&o.key).filter(|k| !k.is_empty()).map(|k| k.as_str()),
                    PaginatedListOptions {
                        page_token: token,
                        ..PaginatedListOptions::default()
                    },
                )
                .await
                .map_err(|e| self.error(&name, e))?;
            for meta in page.result.objects {
                let key = meta.location.as_ref();
                let Some(rel) = key.strip_prefix(o.key.as_str()).filter(|r| !r.is_empty()) else {
                    continue;
                };
                entries.push(Entry {
                    name: rel.to_string(),
                    size: Some(meta.size),
                    etag: meta.e_tag.as_deref().map(|e| bare_etag(e).to_string()),
                    last_modified: Some(meta.last_modified.into()),
                    ..Entry::default()
                });
            }
            match page.page_token {
                Some(t) => token = Some(t),
                None => return Ok(entries),
            }
        }
    }

    fn pins(&self) -> bool {
        true
    }

    fn pin(&self, url: &Url, stat: &Stat) -> Option<Url> {
        let mut o = ObjectUrl::from_url(url).ok()?;
        if self.provider == Provider::Azure && o.account.is_none() {
            // Name the account, so that a seed reads the same one.
            o.account = std::env::var("AZURE_STORAGE_ACCOUNT_NAME")
                .ok()
                .filter(|a| !a.is_empty());
        }
        o.version = stat.version.clone().or(o.version);
        o.etag = stat.etag.clone().or(o.etag);
        Some(o.to_url())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schemes_and_pins() {
        let g = CloudBackend::gcs();
        assert_eq!(g.schemes(), ["gs"]);
        let u = Url::parse("gs://bucket/dir/w.bin").unwrap();
        assert!(g.check(&u).is_ok());
        let stat = Stat {
            etag: Some("e1".into()),
            version: Some("1700000000000000".into()),
            ..Stat::default()
        };
        assert_eq!(
            g.pin(&u, &stat).unwrap().as_str(),
            "gs://bucket/dir/w.bin?version=1700000000000000&etag=e1"
        );
        let a = CloudBackend::azure();
        assert_eq!(a.schemes(), ["az", "as"]);
        let t = Url::parse("as://acct/container/m.bin").unwrap();
        assert_eq!(
            a.pin(&t, &stat).unwrap().as_str(),
            "as://acct/container/m.bin?version=1700000000000000&etag=e1"
        );
        assert!(CloudBackend::path(&ObjectUrl::parse("gs://b/a//c").unwrap()).is_err());
    }

    #[test]
    fn errors_keep_their_kind() {
        let g = CloudBackend::gcs();
        let nf = object_store::Error::NotFound {
            path: "k".into(),
            source: "gone".into(),
        };
        assert_eq!(g.error("gs://b/k", nf).kind(), ErrorKind::NotFound);
        let denied = object_store::Error::PermissionDenied {
            path: "k".into(),
            source: "no".into(),
        };
        let e = g.error("gs://b/k", denied);
        assert_eq!(e.kind(), ErrorKind::Unauthorized);
        assert!(
            e.to_string().contains("GOOGLE_APPLICATION_CREDENTIALS"),
            "{e}"
        );
        let changed = object_store::Error::Precondition {
            path: "k".into(),
            source: "etag".into(),
        };
        assert!(g.error("gs://b/k", changed).to_string().contains("changed"));
    }
}
