//! `hf://[datasets/]owner/name[@revision][/path-or-glob]`.
//!
//! As in `huggingface_hub`'s file system, a revision with a slash
//! (`refs/pr/1`) is written percent-encoded (`@refs%2Fpr%2F1`): the
//! revision ends at the next `/`, and the rest selects files.

use crate::hf_api::{RepoKind, RepoRef};
use percent_encoding::percent_decode_str;
use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HfUri {
    pub repo: RepoRef,
    /// Branch, tag or commit; `None` means `main`.
    pub revision: Option<String>,
    /// A file, a directory or a glob inside the repo; `None`: everything.
    pub selector: Option<String>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid Hugging Face URI {uri:?}: {why} (expected hf://[datasets/]owner/name[@revision][/path-or-glob])")]
pub struct BadHfUri {
    pub uri: String,
    pub why: &'static str,
}

impl HfUri {
    pub fn is_hf(s: &str) -> bool {
        s.starts_with("hf://")
    }

    pub fn parse(s: &str) -> Result<Self, BadHfUri> {
        let bad = |why| BadHfUri {
            uri: s.to_string(),
            why,
        };
        let rest = s
            .strip_prefix("hf://")
            .ok_or_else(|| bad("it does not start with hf://"))?;
        let (kind, rest) = RepoKind::split_prefix(rest);
        let mut parts = rest.splitn(3, '/');
        let owner = parts.next().unwrap_or_default();
        let name_rev = parts
            .next()
            .ok_or_else(|| bad("the repo needs an owner and a name"))?;
        let selector = parts.next().filter(|p| !p.is_empty()).map(str::to_string);
        let (name, revision) = match name_rev.split_once('@') {
            Some((n, r)) => {
                let r = percent_decode_str(r)
                    .decode_utf8()
                    .map_err(|_| bad("the revision is not UTF-8"))?;
                if r.is_empty() {
                    return Err(bad("the revision after '@' is empty"));
                }
                (n, Some(r.into_owned()))
            }
            None => (name_rev, None),
        };
        let valid = |x: &str| {
            !x.is_empty()
                && x != "."
                && x != ".."
                && x.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        };
        if !valid(owner) || !valid(name) {
            return Err(bad(
                "owner and name may hold only letters, digits, '-', '_' and '.'",
            ));
        }
        if selector
            .as_deref()
            .is_some_and(|p| p.split('/').any(|c| c == ".."))
        {
            return Err(bad("the path may not contain '..'"));
        }
        Ok(Self {
            repo: RepoRef {
                kind,
                id: format!("{owner}/{name}"),
            },
            revision,
            selector,
        })
    }

    /// The revision asked for, `main` when none was.
    pub fn revision(&self) -> &str {
        self.revision.as_deref().unwrap_or("main")
    }
}

impl fmt::Display for HfUri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "hf://")?;
        if self.repo.kind == RepoKind::Dataset {
            write!(f, "datasets/")?;
        }
        write!(f, "{}", self.repo.id)?;
        if let Some(r) = &self.revision {
            write!(f, "@{}", r.replace('/', "%2F"))?;
        }
        if let Some(p) = &self.selector {
            write!(f, "/{p}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_models_datasets_revisions_and_globs() {
        let u = HfUri::parse("hf://meta-llama/Llama-3.1-8B@main").unwrap();
        assert_eq!(
            u.repo,
            RepoRef {
                kind: RepoKind::Model,
                id: "meta-llama/Llama-3.1-8B".into()
            }
        );
        assert_eq!(u.revision(), "main");
        assert_eq!(u.selector, None);

        let u = HfUri::parse("hf://datasets/org/data@0123abc/train/*.parquet").unwrap();
        assert_eq!(u.repo.kind, RepoKind::Dataset);
        assert_eq!(u.revision.as_deref(), Some("0123abc"));
        assert_eq!(u.selector.as_deref(), Some("train/*.parquet"));

        let u = HfUri::parse("hf://org/model@refs%2Fpr%2F1/sub").unwrap();
        assert_eq!(u.revision.as_deref(), Some("refs/pr/1"));
        assert_eq!(u.to_string(), "hf://org/model@refs%2Fpr%2F1/sub");
        assert_eq!(HfUri::parse("hf://org/model").unwrap().revision(), "main");
    }

    #[test]
    fn refuses_malformed_uris() {
        for bad in [
            "https://x/y",
            "hf://",
            "hf://org",
            "hf://org/",
            "hf://../x",
            "hf://org/na me",
            "hf://org/model@",
            "hf://org/model/../../x",
        ] {
            assert!(HfUri::parse(bad).is_err(), "{bad}");
        }
    }
}
