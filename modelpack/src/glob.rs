//! The path selector of an `hf://` URI: a file, a directory, or a glob.
//!
//! `*` and `?` stay within one path component, `**` spans any number of
//! them; a selector without wildcards picks that file or everything under
//! that directory. Small on purpose: this is all `hf download`'s include
//! patterns need.

/// Whether `selector` picks `path`.
pub fn selects(selector: &str, path: &str) -> bool {
    let selector = selector.trim_matches('/');
    if selector.is_empty() {
        return true;
    }
    if !selector.contains(['*', '?']) {
        return path == selector
            || path
                .strip_prefix(selector)
                .is_some_and(|rest| rest.starts_with('/'));
    }
    let pat: Vec<&str> = selector.split('/').collect();
    let parts: Vec<&str> = path.split('/').collect();
    match_parts(&pat, &parts)
}

fn match_parts(pat: &[&str], parts: &[&str]) -> bool {
    match pat.split_first() {
        None => parts.is_empty(),
        Some((&"**", rest)) => (0..=parts.len()).any(|skip| match_parts(rest, &parts[skip..])),
        Some((p, rest)) => match parts.split_first() {
            Some((first, others)) => {
                match_component(p.as_bytes(), first.as_bytes()) && match_parts(rest, others)
            }
            None => false,
        },
    }
}

fn match_component(p: &[u8], s: &[u8]) -> bool {
    match p.split_first() {
        None => s.is_empty(),
        Some((b'*', rest)) => (0..=s.len()).any(|i| match_component(rest, &s[i..])),
        Some((b'?', rest)) => !s.is_empty() && match_component(rest, &s[1..]),
        Some((c, rest)) => s.first() == Some(c) && match_component(rest, &s[1..]),
    }
}

#[cfg(test)]
mod tests {
    use super::selects;

    #[test]
    fn files_directories_and_globs() {
        assert!(selects("", "a/b"));
        assert!(selects("config.json", "config.json"));
        assert!(!selects("config.json", "sub/config.json"));
        assert!(selects("train", "train/0.parquet"));
        assert!(!selects("train", "training/0.parquet"));
        assert!(selects("train/*.parquet", "train/0.parquet"));
        assert!(!selects("train/*.parquet", "train/x/0.parquet"));
        assert!(selects("**/*.safetensors", "model.safetensors"));
        assert!(selects("**/*.safetensors", "a/b/model.safetensors"));
        assert!(selects(
            "model-0000?-of-00002.safetensors",
            "model-00001-of-00002.safetensors"
        ));
        assert!(!selects("*.json", "a.safetensors"));
    }
}
