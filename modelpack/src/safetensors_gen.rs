//! Writes a valid safetensors file of (about) a requested size: the demo's
//! and tests' stand-in for real model weights.

use std::io::Write;
use std::path::Path;

/// Writes `path` with one U8 tensor filling the rest of `size` bytes after
/// the header. Contents are pseudo-random from `seed`, so two runs agree.
pub fn write(path: &Path, size: u64, seed: u64) -> std::io::Result<()> {
    let header_for = |data: u64| {
        format!(
            r#"{{"__metadata__":{{"generator":"weightcast"}},"weight":{{"dtype":"U8","shape":[{data}],"data_offsets":[0,{data}]}}}}"#
        )
    };
    // Fewer data bytes never need more header digits: size the header for
    // `size`, pad it with spaces to a multiple of 8 (as safetensors does),
    // and the file comes out at exactly `size` bytes.
    let padded = header_for(size).len().next_multiple_of(8);
    let data = size.saturating_sub(8 + padded as u64);
    let mut header = header_for(data);
    while header.len() < padded {
        header.push(' ');
    }
    let mut f = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(path)?);
    f.write_all(&(header.len() as u64).to_le_bytes())?;
    f.write_all(header.as_bytes())?;
    let mut state = seed | 1;
    let mut buf = vec![0u8; 1 << 20];
    let mut left = data;
    while left > 0 {
        for chunk in buf.chunks_mut(8) {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let b = state.to_le_bytes();
            chunk.copy_from_slice(&b[..chunk.len()]);
        }
        let n = left.min(buf.len() as u64) as usize;
        f.write_all(&buf[..n])?;
        left -= n as u64;
    }
    f.flush()
}

#[cfg(test)]
mod tests {
    #[test]
    fn header_is_valid_json_and_offsets_fit() {
        let d = tempfile::tempdir().unwrap();
        for size in [1000u64, 4096, 1 << 20] {
            let p = d.path().join("m.safetensors");
            super::write(&p, size, 1).unwrap();
            let bytes = std::fs::read(&p).unwrap();
            let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
            assert_eq!(n % 8, 0);
            let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
            let end = header["weight"]["data_offsets"][1].as_u64().unwrap() as usize;
            assert_eq!(8 + n + end, bytes.len());
            assert_eq!(bytes.len() as u64, size);
        }
    }
}
