//! The config file: `WEIGHTCAST_*=value` lines, the same names as the
//! environment variables each flag reads (so one file also serves as a
//! systemd `EnvironmentFile`). Precedence: flag > environment > file.

use anyhow::{bail, Context};
use std::path::{Path, PathBuf};

/// Read when no `--config` / `WEIGHTCAST_CONFIG` is given, if it exists.
pub const DEFAULT_PATH: &str = "/etc/weightcast/weightcast.env";

/// Parses the file into (name, value) pairs.
pub fn parse(text: &str, path: &Path) -> anyhow::Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line.strip_prefix("export ").unwrap_or(line);
        let Some((k, v)) = line.split_once('=') else {
            bail!(
                "{}:{}: expected NAME=value, got {line:?}",
                path.display(),
                i + 1
            );
        };
        let k = k.trim();
        if !k.starts_with("WEIGHTCAST_") {
            bail!(
                "{}:{}: {k} is not a weightcast setting (names start with WEIGHTCAST_)",
                path.display(),
                i + 1
            );
        }
        let v = v.trim();
        let v = v
            .strip_prefix('"')
            .and_then(|v| v.strip_suffix('"'))
            .unwrap_or(v);
        out.push((k.to_string(), v.to_string()));
    }
    Ok(out)
}

/// Loads the config file into the environment, without overriding
/// variables already set. Call before any thread starts.
pub fn load(explicit: Option<PathBuf>) -> anyhow::Result<()> {
    let (path, required) = match explicit {
        Some(p) => (p, true),
        None => (PathBuf::from(DEFAULT_PATH), false),
    };
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if !required && e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => {
            return Err(e).with_context(|| format!("cannot read config file {}", path.display()))
        }
    };
    for (k, v) in parse(&text, &path)? {
        if std::env::var_os(&k).is_none() {
            std::env::set_var(k, v);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_env_file_lines() {
        let p = Path::new("w.env");
        let v = parse(
            "# c\n\nWEIGHTCAST_SCHEDULER=http://s:7400\nexport WEIGHTCAST_ZONE=\"eu 1\"\n",
            p,
        )
        .unwrap();
        assert_eq!(
            v,
            vec![
                ("WEIGHTCAST_SCHEDULER".into(), "http://s:7400".into()),
                ("WEIGHTCAST_ZONE".into(), "eu 1".into())
            ]
        );
        assert!(parse("WEIGHTCAST_X", p)
            .unwrap_err()
            .to_string()
            .contains("w.env:1"));
        assert!(parse("PATH=/x", p).is_err());
    }
}
