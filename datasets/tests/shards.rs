//! Shard files: round trips in both widths, and one clear error per kind of bad file.

use std::fs;
use std::path::{Path, PathBuf};

use datasets::shard::{write_shard, HEADER_BYTES, MAGIC_U16, MAGIC_U32};
use datasets::{Shard, TokenWidth};
use tempfile::TempDir;

fn header(magic: i32, version: i32, count: i32) -> Vec<u8> {
    let mut h = vec![0i32; 256];
    (h[0], h[1], h[2]) = (magic, version, count);
    h.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn raw(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.join(name);
    fs::write(&p, bytes).unwrap();
    p
}

#[track_caller]
fn open_err(path: &Path, vocab: Option<usize>) -> String {
    Shard::open(path, vocab).expect_err("a bad shard must not open").to_string()
}

#[test]
fn uint16_round_trip_matches_llm_c_layout() {
    let dir = TempDir::new().unwrap();
    let tokens: Vec<u32> = (0..5000u32).map(|i| (i * 7919) % 50257).collect();
    let path = dir.path().join("a.bin");
    write_shard(&path, &tokens, TokenWidth::U16).unwrap();
    let bytes = fs::read(&path).unwrap();
    assert_eq!(bytes.len(), HEADER_BYTES + 2 * tokens.len());
    assert_eq!(&bytes[..12], &header(20240520, 1, 5000)[..12]);
    assert!(bytes[12..HEADER_BYTES].iter().all(|&b| b == 0));
    assert_eq!(u16::from_le_bytes([bytes[HEADER_BYTES + 2], bytes[HEADER_BYTES + 3]]) as u32, tokens[1]);
    let shard = Shard::open(&path, Some(50257)).unwrap();
    assert_eq!((shard.len(), shard.width()), (5000, TokenWidth::U16));
    assert_eq!(shard.to_vec(), tokens);
    let mut mid = [0u32; 3];
    shard.read(4000, &mut mid);
    assert_eq!(mid, [tokens[4000], tokens[4001], tokens[4002]]);
    // No temporary file is left behind.
    assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
}

#[test]
fn uint32_round_trip_keeps_ids_above_65535() {
    let dir = TempDir::new().unwrap();
    let tokens: Vec<u32> = vec![0, 65535, 65536, 100_000, 199_999, 7];
    let path = dir.path().join("b.bin");
    write_shard(&path, &tokens, TokenWidth::U32).unwrap();
    let bytes = fs::read(&path).unwrap();
    assert_eq!(bytes.len(), HEADER_BYTES + 4 * tokens.len());
    assert_eq!(&bytes[..12], &header(20240801, 7, 6)[..12]);
    let shard = Shard::open(&path, Some(200_000)).unwrap();
    assert_eq!(shard.width(), TokenWidth::U32);
    assert_eq!(shard.to_vec(), tokens);
}

#[test]
fn uint16_refuses_ids_that_do_not_fit() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("c.bin");
    let err = write_shard(&path, &[1, 70_000], TokenWidth::U16).unwrap_err().to_string();
    assert_eq!(err, format!("shard {}: token id 70000 does not fit in uint16; write a uint32 shard", path.display()));
    assert!(!path.exists());
}

#[test]
fn wrong_magic_is_named() {
    let dir = TempDir::new().unwrap();
    let mut bytes = header(12345, 1, 2);
    bytes.extend([1, 0, 2, 0]);
    let p = raw(dir.path(), "magic.bin", &bytes);
    assert_eq!(
        open_err(&p, None),
        format!("shard {}: wrong magic number 12345 (expected 20240520 for uint16 tokens or 20240801 for uint32 tokens)", p.display())
    );
}

#[test]
fn wrong_version_is_named() {
    let dir = TempDir::new().unwrap();
    let mut bytes = header(MAGIC_U16, 7, 2);
    bytes.extend([1, 0, 2, 0]);
    let p = raw(dir.path(), "v16.bin", &bytes);
    assert_eq!(open_err(&p, None), format!("shard {}: unsupported version 7 for magic 20240520 (expected version 1)", p.display()));
    let mut bytes = header(MAGIC_U32, 1, 1);
    bytes.extend([1, 0, 0, 0]);
    let p = raw(dir.path(), "v32.bin", &bytes);
    assert_eq!(open_err(&p, None), format!("shard {}: unsupported version 1 for magic 20240801 (expected version 7)", p.display()));
}

#[test]
fn truncated_shard_is_named_with_sizes() {
    let dir = TempDir::new().unwrap();
    let good = dir.path().join("good.bin");
    write_shard(&good, &[5; 100], TokenWidth::U16).unwrap();
    let bytes = fs::read(&good).unwrap();
    let p = raw(dir.path(), "cut.bin", &bytes[..bytes.len() - 3]);
    assert_eq!(
        open_err(&p, None),
        format!(
            "shard {}: truncated: the header says 100 tokens of 2 bytes, so the file should be 1224 bytes, but it is 1221",
            p.display()
        )
    );
    let p = raw(dir.path(), "stub.bin", &bytes[..10]);
    assert_eq!(open_err(&p, None), format!("shard {}: truncated: 10 bytes, shorter than the 1024-byte header", p.display()));
    let mut long = bytes.clone();
    long.push(0);
    let p = raw(dir.path(), "long.bin", &long);
    assert!(open_err(&p, None).contains("too long: the header says 100 tokens"), "{}", open_err(&p, None));
}

#[test]
fn token_at_or_above_the_vocab_is_named_with_its_position() {
    let dir = TempDir::new().unwrap();
    let mut tokens = vec![3u32; 200_000];
    tokens[123_456] = 256;
    let p = dir.path().join("vocab.bin");
    write_shard(&p, &tokens, TokenWidth::U16).unwrap();
    assert_eq!(
        open_err(&p, Some(256)),
        format!("shard {}: token id 256 at position 123456 is not below the vocabulary size 256", p.display())
    );
    assert!(Shard::open(&p, Some(257)).is_ok());
}

#[test]
fn empty_shard_is_named() {
    let dir = TempDir::new().unwrap();
    let p = raw(dir.path(), "empty.bin", &header(MAGIC_U16, 1, 0));
    assert_eq!(open_err(&p, None), format!("shard {}: empty: the header says 0 tokens", p.display()));
}

#[test]
fn missing_shard_names_the_path() {
    let err = open_err(Path::new("no/such/shard.bin"), None);
    assert!(err.starts_with("cannot open no/such/shard.bin: "), "{err}");
}

#[test]
fn from_bytes_checks_and_reads_as_open_does() {
    let dir = TempDir::new().unwrap();
    let tokens: Vec<u32> = (0..300u32).map(|i| (i * 31) % 256).collect();
    let path = dir.path().join("c.bin");
    write_shard(&path, &tokens, TokenWidth::U16).unwrap();
    let bytes = fs::read(&path).unwrap();
    let shard = Shard::from_bytes(&path, bytes.clone(), Some(256)).unwrap();
    assert_eq!((shard.len(), shard.width(), shard.to_vec()), (300, TokenWidth::U16, tokens));
    // The same errors, naming the same path.
    for (vocab, cut) in [(Some(100), bytes.len()), (None, bytes.len() - 1), (None, 10)] {
        let file = raw(dir.path(), "bad.bin", &bytes[..cut]);
        let from_bytes = Shard::from_bytes(&file, bytes[..cut].to_vec(), vocab).expect_err("a bad shard must not open");
        assert_eq!(from_bytes.to_string(), open_err(&file, vocab));
    }
}
