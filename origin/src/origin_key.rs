//! `scheme://host:port`: the unit an origin is counted in. Credentials are
//! bound to one, and limits (concurrency, byte rate) are kept per one, so a
//! token never leaves its host and one busy host does not slow another.

use reqwest::Url;
use std::fmt;

#[derive(
    Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(transparent)]
pub struct OriginKey(String);

impl OriginKey {
    /// The origin of `url`; the port is explicit (`https://h` and
    /// `https://h:443` are one origin).
    pub fn of(url: &Url) -> Self {
        OriginKey(format!(
            "{}://{}:{}",
            url.scheme(),
            url.host_str().unwrap_or(""),
            url.port_or_known_default().unwrap_or(0)
        ))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for OriginKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_ports_are_explicit() {
        let a = OriginKey::of(&Url::parse("https://hub.example/a").unwrap());
        let b = OriginKey::of(&Url::parse("https://hub.example:443/b").unwrap());
        let c = OriginKey::of(&Url::parse("http://hub.example/a").unwrap());
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_eq!(a.as_str(), "https://hub.example:443");
    }
}
