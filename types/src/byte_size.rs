//! Human byte sizes: parsing `256MiB`/`1GB`/`1000` and printing `1.5 GiB`.

/// Parses `N`, `NB`, `NKB`/`NKiB`, `NMB`/`NMiB`, `NGB`/`NGiB`, `NTB`/`NTiB`
/// (case-insensitive; an optional `/s` is ignored so rates read naturally).
pub fn parse(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let t = t.strip_suffix("/s").unwrap_or(t);
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num.parse().map_err(|_| {
        format!("invalid size {s:?}: expected a number with an optional unit, e.g. 256MiB")
    })?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1_000,
        "ki" | "kib" => 1 << 10,
        "m" | "mb" => 1_000_000,
        "mi" | "mib" => 1 << 20,
        "g" | "gb" => 1_000_000_000,
        "gi" | "gib" => 1 << 30,
        "t" | "tb" => 1_000_000_000_000,
        "ti" | "tib" => 1 << 40,
        other => return Err(format!("invalid size {s:?}: unknown unit {other:?} (use B, KB, KiB, MB, MiB, GB, GiB, TB, TiB)")),
    };
    Ok((n * mult as f64) as u64)
}

pub fn format(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn parses_and_formats() {
        assert_eq!(super::parse("256MiB").unwrap(), 256 << 20);
        assert_eq!(super::parse("1GB").unwrap(), 1_000_000_000);
        assert_eq!(super::parse("25MB/s").unwrap(), 25_000_000);
        assert_eq!(super::parse("1.5KiB").unwrap(), 1536);
        assert!(super::parse("12XB").is_err());
        assert!(super::parse("").is_err());
        assert_eq!(super::format(1536), "1.5 KiB");
        assert_eq!(super::format(12), "12 B");
    }
}
