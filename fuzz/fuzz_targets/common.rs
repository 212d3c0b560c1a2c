#![allow(dead_code)] // each target uses some of these
//! Helpers shared by the targets: inputs with their checksums made valid,
//! so the fuzzer explores what lies behind a CRC instead of the CRC.

/// A wire frame around `body` with sequence number `seq`: the checks a
/// frame passes before its body is parsed all hold.
pub fn seal_frame(seq: u32, body: &[u8]) -> Vec<u8> {
    let mut payload = seq.to_le_bytes().to_vec();
    payload.extend_from_slice(body);
    let crc = crc::Crc::<u32>::new(&crc::CRC_32_ISO_HDLC).checksum(&payload);
    payload.extend_from_slice(&crc.to_le_bytes());
    let mut out = cobs::encode_vec(&payload);
    out.push(0);
    out
}

/// Splits `bytes` into length-prefixed records (`[n][n bytes]...`), each
/// sealed as one frame; a record whose length byte has its top bit set
/// repeats the previous sequence number (a host's retry).
pub fn sealed_frames(bytes: &[u8]) -> Vec<u8> {
    let (mut out, mut rest, mut seq) = (vec![], bytes, 0u32);
    while let Some((&n, tail)) = rest.split_first() {
        let len = usize::from(n & 0x7f).min(tail.len());
        if n & 0x80 == 0 {
            seq += 1;
        }
        out.extend(seal_frame(seq, &tail[..len]));
        rest = &tail[len..];
    }
    out
}

/// A statistics file with its length field and CRC made to agree with its
/// bytes, as a crafted file would have them.
pub fn seal_stats(bytes: &[u8]) -> Option<Vec<u8>> {
    let mut b = bytes.to_vec();
    let n = b.len();
    if n < 18 {
        return None;
    }
    b[6..14].copy_from_slice(&(n as u64).to_le_bytes());
    let crc = crc::Crc::<u32>::new(&crc::CRC_32_ISO_HDLC).checksum(&b[..n - 4]);
    b[n - 4..].copy_from_slice(&crc.to_le_bytes());
    Some(b)
}
