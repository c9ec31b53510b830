//! The console over plain HTTP (no browser): sessions, CSRF, the token
//! shown once, and the open API left token-only. The browser test in the
//! workspace's `tests/console.rs` drives the pages themselves.

use std::time::Duration;
use weightcast_manager::{Manager, ManagerConfig};

const PASSWORD: &str = "root-password-1";

async fn manager(dir: &std::path::Path) -> Manager {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    Manager::start(
        ManagerConfig {
            data_dir: dir.to_path_buf(),
            database: None,
            keepalive_ttl: Duration::from_secs(5),
            hf_endpoint: "http://127.0.0.1:9".into(),
            hf_token: None,
            root_password: Some(PASSWORD.into()),
            cluster_secrets: None,
        },
        listener,
    )
    .await
    .unwrap()
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// The value of `name="..." value="..."` in a page.
fn field(page: &str, name: &str) -> String {
    let at = page
        .find(&format!(r#"name="{name}" value=""#))
        .unwrap_or_else(|| panic!("no {name} field in {page}"));
    let rest = &page[at + name.len() + 15..];
    rest[..rest.find('"').unwrap()].to_string()
}

fn set_cookie(r: &reqwest::Response, name: &str) -> Option<String> {
    r.headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with(&format!("{name}=")))
        .map(str::to_string)
}

#[tokio::test]
async fn sessions_csrf_and_tokens_shown_once() {
    let dir = tempfile::tempdir().unwrap();
    let m = manager(dir.path()).await;
    let base = format!("http://{}", m.addr);
    let http = client();

    // Without a session: redirected to sign in; POSTs refused.
    let r = http.get(format!("{base}/clusters")).send().await.unwrap();
    assert_eq!(r.status(), 303);
    assert_eq!(r.headers()["location"], "/login?next=%2Fclusters");
    let r = http
        .post(format!("{base}/tokens"))
        .form(&[("csrf", "x"), ("name", "n"), ("scope_job", "on")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = http
        .get(format!("{base}/rollout/events?q=sha256:00"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401, "live views need a session too");

    // The sign-in form's double-submit cookie.
    let r = http.get(format!("{base}/login")).send().await.unwrap();
    let login_cookie = set_cookie(&r, "wc_login").unwrap();
    assert!(login_cookie.contains("HttpOnly") && login_cookie.contains("SameSite=Strict"));
    let login_value = login_cookie.split(';').next().unwrap().to_string();
    let page = r.text().await.unwrap();
    let login_csrf = field(&page, "login_csrf");
    let sign_in = |password: &'static str, csrf: String| {
        http.post(format!("{base}/login"))
            .header("cookie", login_value.clone())
            .form(&[
                ("user", "root".to_string()),
                ("password", password.to_string()),
                ("login_csrf", csrf),
                ("next", "/tokens".to_string()),
            ])
            .send()
    };
    assert_eq!(
        sign_in(PASSWORD, "forged".into()).await.unwrap().status(),
        403
    );
    let r = sign_in("wrong-password", login_csrf.clone()).await.unwrap();
    assert_eq!(r.status(), 303);
    assert!(r.headers()["location"]
        .to_str()
        .unwrap()
        .starts_with("/login?error=1"));
    assert!(set_cookie(&r, "wc_session").is_none());
    let r = sign_in(PASSWORD, login_csrf).await.unwrap();
    assert_eq!(r.status(), 303);
    assert_eq!(r.headers()["location"], "/tokens");
    let session = set_cookie(&r, "wc_session").unwrap();
    assert!(session.contains("HttpOnly") && session.contains("SameSite=Strict"));
    let session = session.split(';').next().unwrap().to_string();

    // Signed in: pages answer, with the hardening headers.
    let r = http
        .get(format!("{base}/tokens"))
        .header("cookie", &session)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .contains("default-src 'self'"));
    assert_eq!(r.headers()["cache-control"], "no-store");
    let page = r.text().await.unwrap();
    let csrf = field(&page, "csrf");
    for path in [
        "/clusters",
        "/jobs",
        "/rollout",
        "/tasks",
        "/assets/console.js",
        "/assets/console.css",
    ] {
        let r = http
            .get(format!("{base}{path}"))
            .header("cookie", &session)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{path}");
    }

    // A token: the POST without the CSRF token is refused; with it, the
    // token is on that answer only.
    let create = |csrf: String| {
        http.post(format!("{base}/tokens"))
            .header("cookie", &session)
            .form(&[
                ("csrf", csrf),
                ("name", "harbor".into()),
                ("scope_job", "on".into()),
            ])
            .send()
    };
    assert_eq!(create("nope".into()).await.unwrap().status(), 403);
    let page = create(csrf.clone()).await.unwrap().text().await.unwrap();
    let at = page
        .find(r#"id="new-token" readonly value=""#)
        .expect("the new token");
    let token: String = page[at + 31..].chars().take_while(|c| *c != '"').collect();
    assert!(token.starts_with("wc_"), "{token}");
    let list = http
        .get(format!("{base}/tokens"))
        .header("cookie", &session)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        list.contains("harbor") && !list.contains(&token),
        "shown once"
    );
    // The open API takes the token, not the session.
    let r = http
        .get(format!("{base}/oapi/v1/jobs"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = http
        .get(format!("{base}/oapi/v1/jobs"))
        .header("cookie", &session)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);

    // A preheat from the form lands in the job queue as the API's would.
    let r = http
        .post(format!("{base}/jobs"))
        .header("cookie", &session)
        .form(&[
            ("csrf", csrf.as_str()),
            ("kind", "file"),
            ("url", "http://127.0.0.1:9/model.safetensors"),
            ("scope", "all_peers"),
            ("cluster", ""),
            ("count", ""),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
    let job = r.headers()["location"].to_str().unwrap().to_string();
    assert!(job.starts_with("/jobs/"), "{job}");
    let r = http
        .post(format!("{base}/jobs"))
        .header("cookie", &session)
        .form(&[
            ("csrf", csrf.as_str()),
            ("kind", "file"),
            ("url", "x"),
            ("scope", "everyone"),
        ])
        .send()
        .await
        .unwrap();
    assert!(
        r.text().await.unwrap().contains("everyone"),
        "a bad form says what is wrong"
    );

    // Sign out ends the session.
    let r = http
        .post(format!("{base}/logout"))
        .header("cookie", &session)
        .form(&[("csrf", csrf.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
    let r = http
        .get(format!("{base}/jobs"))
        .header("cookie", &session)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303, "signed out");
    m.shutdown().await;
}
