//! The console's HTML, written by hand: escaping, the page frame every
//! page shares (navigation, skip link, sign-out form), forms' CSRF field
//! and the pager. Pages are rendered on the server; the one script only
//! swaps in fragments the server renders for live updates.

use std::fmt::Write as _;

/// Text safe inside an element or a quoted attribute.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A value for a URL's query string.
pub fn query_value(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            _ => {
                let _ = write!(out, "%{b:02X}");
            }
        }
    }
    out
}

/// The hidden field every POST form of a session carries.
pub fn csrf_field(csrf: &str) -> String {
    format!(r#"<input type="hidden" name="csrf" value="{}">"#, esc(csrf))
}

/// The navigation's pages: (path, label).
const NAV: [(&str, &str); 5] = [
    ("/clusters", "Clusters"),
    ("/rollout", "Rollout"),
    ("/jobs", "Preheat jobs"),
    ("/tasks", "Tasks"),
    ("/tokens", "Tokens"),
];

/// Who is signed in, for the page frame.
pub struct Viewer<'a> {
    pub user: &'a str,
    pub csrf: &'a str,
}

/// A whole page: `current` is the navigation entry it belongs to.
pub fn page(title: &str, current: &str, viewer: Option<&Viewer>, body: &str) -> String {
    let mut nav = String::new();
    if let Some(v) = viewer {
        nav.push_str(r#"<nav aria-label="Main"><ul>"#);
        for (href, label) in NAV {
            let here = if href == current {
                r#" aria-current="page""#
            } else {
                ""
            };
            let _ = write!(nav, r#"<li><a href="{href}"{here}>{label}</a></li>"#);
        }
        let _ = write!(
            nav,
            r#"</ul><form method="post" action="/logout" class="signout">{}<span>{}</span> <button type="submit">Sign out</button></form></nav>"#,
            csrf_field(v.csrf),
            esc(v.user)
        );
    }
    format!(
        r##"<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title} · weightcast</title>
<link rel="stylesheet" href="/assets/console.css">
<script src="/assets/console.js" defer></script>
</head>
<body>
<a class="skip" href="#main">Skip to content</a>
<header><a class="brand" href="/">weightcast</a>{nav}</header>
<main id="main" tabindex="-1">
<h1>{title}</h1>
{body}
</main>
</body>
</html>
"##,
        title = esc(title),
    )
}

/// A notice (errors, successes) announced to screen readers.
pub fn notice(kind: &str, text: &str) -> String {
    format!(
        r#"<p class="notice {kind}" role="{}">{}</p>"#,
        if kind == "error" { "alert" } else { "status" },
        esc(text)
    )
}

/// Links to the other pages of a paged list; `base` already carries the
/// filter (`/jobs?state=SUCCESS&`).
pub fn pager(base: &str, page: i64, per_page: i64, total: i64) -> String {
    let last = ((total + per_page - 1) / per_page).max(1);
    let mut out = format!(
        r#"<nav class="pager" aria-label="Pages"><span>Page {page} of {last} ({total} in all)</span>"#
    );
    if page > 1 {
        let _ = write!(
            out,
            r#" <a href="{base}page={}" rel="prev">Previous</a>"#,
            page - 1
        );
    }
    if page < last {
        let _ = write!(
            out,
            r#" <a href="{base}page={}" rel="next">Next</a>"#,
            page + 1
        );
    }
    out.push_str("</nav>");
    out
}

/// `12.3 MiB`.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// How long ago `ms` (unix milliseconds) was, from `now`.
pub fn ago(ms: i64, now: i64) -> String {
    let s = ((now - ms) / 1000).max(0);
    match s {
        0..=59 => format!("{s} s ago"),
        60..=3599 => format!("{} min ago", s / 60),
        _ => format!("{} h ago", s / 3600),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_and_query_values() {
        assert_eq!(
            esc(r#"<a href="x">'&'</a>"#),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;"
        );
        assert_eq!(
            query_value("hf://org/m@main x"),
            "hf%3A%2F%2Forg%2Fm%40main%20x"
        );
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(3 << 20), "3.0 MiB");
    }

    #[test]
    fn the_pager_links_only_pages_that_exist() {
        let p = pager("/jobs?", 1, 10, 25);
        assert!(p.contains("Page 1 of 3") && p.contains("page=2") && !p.contains("Previous"));
        let p = pager("/jobs?", 3, 10, 25);
        assert!(p.contains("page=2") && !p.contains("Next"));
    }
}
