//! Compressed gRPC messages for the tests of gzip requests.

use std::io::Write;

use bytes::Bytes;
use flate2::write::GzEncoder;
use flate2::Compression;

/// `data` gzip-compressed.
pub fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = GzEncoder::new(Vec::new(), Compression::default());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

/// `payload` framed as one gRPC message, `flag` its compressed flag.
pub fn frame(flag: u8, payload: &[u8]) -> Bytes {
    let mut out = vec![flag];
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(payload);
    out.into()
}

/// Bytes that gzip does not shrink (xorshift noise from `seed`).
pub fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Bytes that gzip does not shrink (xorshift noise), as hex digits (text for string fields).
pub fn noise_hex(len: usize, seed: u64) -> Vec<u8> {
    noise(len, seed)
        .into_iter()
        .map(|b| b"0123456789abcdef"[usize::from(b & 15)])
        .collect()
}

/// gzip of about `len` bytes of empty deflate blocks: inflates to no bytes at all, slowly.
pub fn empty_blocks(len: usize) -> Vec<u8> {
    let mut out = vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff];
    // Four non-final fixed-Huffman blocks of just an end-of-block code: 40 bits.
    for _ in 0..len / 5 {
        out.extend_from_slice(&[2, 8, 32, 128, 0]);
    }
    // The final empty block, then the CRC and size of nothing.
    out.extend_from_slice(&[3, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    out
}
