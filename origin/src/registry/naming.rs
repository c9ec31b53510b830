//! Where a registry's API is, and what it calls a repository there.
//!
//! Docker Hub is the one registry whose name is not its API host: images
//! are named `docker.io/...` (or the legacy `index.docker.io`), the API
//! answers at `registry-1.docker.io`, and a one-component name (`alpine`)
//! is `library/alpine` there. Docker's config keys it as
//! `https://index.docker.io/v1/`. Every other registry is its own host.

use weightcast_modelpack::oci_ref::OciRef;

/// The API host of Docker Hub.
pub const DOCKER_HUB_API: &str = "registry-1.docker.io";

fn is_docker_hub(host: &str) -> bool {
    matches!(host, "docker.io" | "index.docker.io" | DOCKER_HUB_API)
}

/// The API `host[:port]` of the registry named `registry` (an image's
/// first component, or a docker config key such as
/// `https://index.docker.io/v1/`).
pub fn api_host(registry: &str) -> String {
    let host = registry
        .trim_start_matches("https://")
        .trim_start_matches("http://")
        .trim_end_matches('/');
    let host = host.split('/').next().unwrap_or(host);
    if is_docker_hub(host) {
        DOCKER_HUB_API.to_string()
    } else {
        host.to_string()
    }
}

/// The repository name of `r` in its registry's API.
pub fn api_repository(r: &OciRef) -> String {
    if is_docker_hub(&api_host(&r.registry)) && !r.repository.contains('/') {
        format!("library/{}", r.repository)
    } else {
        r.repository.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_hub_names_map_to_its_api() {
        let r = OciRef::parse("oci://docker.io/alpine:3").unwrap();
        assert_eq!(api_host(&r.registry), "registry-1.docker.io");
        assert_eq!(api_repository(&r), "library/alpine");
        let r = OciRef::parse("oci://index.docker.io/org/model:v1").unwrap();
        assert_eq!(api_host(&r.registry), "registry-1.docker.io");
        assert_eq!(api_repository(&r), "org/model");
        assert_eq!(
            api_host("https://index.docker.io/v1/"),
            "registry-1.docker.io"
        );
        let r = OciRef::parse("oci://127.0.0.1:5000/m:v1").unwrap();
        assert_eq!(api_host(&r.registry), "127.0.0.1:5000");
        assert_eq!(api_repository(&r), "m", "no library/ outside Docker Hub");
        assert_eq!(api_host("https://ghcr.io"), "ghcr.io");
    }
}
