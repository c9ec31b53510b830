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
        // What the environment can hold: `set_var` panics on a NUL, and a
        // name is plain upper-case letters, digits and '_'.
        if !k
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
        {
            bail!(
                "{}:{}: {k:?} is not a setting name (upper-case letters, digits and '_')",
                path.display(),
                i + 1
            );
        }
        if v.contains('\0') {
            bail!(
                "{}:{}: {k}'s value contains a NUL byte",
                path.display(),
                i + 1
            );
        }
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

    /// Fuzz (seeded, bounded): mutated config files never panic, and every
    /// pair accepted is one the environment can take.
    #[test]
    fn fuzzed_config_files_never_panic_and_parse_to_settable_pairs() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(17);
        let seed = b"# comment\nWEIGHTCAST_SCHEDULER=http://s:7400\nexport WEIGHTCAST_ZONE=\"eu 1\"\nWEIGHTCAST_CACHE_SIZE=80%\n";
        let alphabet = b"=#\"\n\0 _eXWEIGHTCAST_\xff\xc3";
        let mut accepted = 0;
        for _ in 0..5_000 {
            let mut bytes = seed.to_vec();
            for _ in 0..rng.gen_range(1..8) {
                let at = rng.gen_range(0..bytes.len());
                match rng.gen_range(0..4) {
                    0 => bytes[at] = rng.gen(),
                    1 => bytes.insert(at, alphabet[rng.gen_range(0..alphabet.len())]),
                    2 => {
                        bytes.remove(at);
                    }
                    _ => bytes[at] = alphabet[rng.gen_range(0..alphabet.len())],
                }
                if bytes.is_empty() {
                    bytes.push(b'\n');
                }
            }
            let text = String::from_utf8_lossy(&bytes);
            if let Ok(pairs) = parse(&text, Path::new("fuzz.env")) {
                accepted += 1;
                for (k, v) in pairs {
                    assert!(
                        k.starts_with("WEIGHTCAST_") && !k.contains(['=', '\0']),
                        "{k:?}"
                    );
                    assert!(!v.contains('\0'), "{v:?}");
                }
            }
        }
        eprintln!("config fuzz: 5000 files, {accepted} accepted");
        assert!(accepted > 0, "the mutations left some files valid");
    }

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
