//! Power-safe persistence of the head in two slots (A/B).
//!
//! A slot is a 32-byte header followed by the payload:
//!
//! | bytes | field |
//! | --- | --- |
//! | 0..4 | magic `GESL` |
//! | 4..6 | layout version (u16 LE) |
//! | 6..8 | reserved, zero |
//! | 8..16 | generation (u64 LE), one more than the slot it replaces |
//! | 16..24 | payload length (u64 LE) |
//! | 24..28 | CRC-32 of the payload |
//! | 28..32 | CRC-32 of bytes 0..28 |
//!
//! The payload is the novelty threshold (f64 LE) and a statistics file.
//!
//! A save writes the slot that is *not* current: first it zeroes the header
//! and syncs (the slot is now invalid), then writes the payload and syncs,
//! then writes the header and syncs. A power cut at any byte therefore
//! leaves either the old slot as the newest valid one, or the new slot
//! complete: boot picks the valid slot with the highest generation, and the
//! statistics parser re-checks the payload on top of the CRC.

use crate::platform::{Fault, Platform, Slot};
use gaussedge_shared::head::{GaussianHead, Storage};
use gaussedge_shared::stats::{self, StatsMeta};
use gaussedge_shared::wire::ErrorCode;

/// First bytes of a valid slot.
pub const MAGIC: [u8; 4] = *b"GESL";
/// Version of the slot layout above.
pub const LAYOUT: u16 = 1;
/// Bytes of the slot header.
pub const HEADER: usize = 32;
const CRC: crc::Crc<u32, crc::Table<16>> = crc::Crc::<u32, crc::Table<16>>::new(&crc::CRC_32_ISO_HDLC);

/// A decoded slot header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlotHeader {
    /// One more than the generation of the slot this one replaced.
    pub generation: u64,
    /// Payload bytes after the header.
    pub len: u64,
    /// CRC-32 of the payload.
    pub crc: u32,
}

impl SlotHeader {
    /// The header as it is written, its own CRC last.
    pub fn encode(&self) -> [u8; HEADER] {
        let mut h = [0u8; HEADER];
        h[0..4].copy_from_slice(&MAGIC);
        h[4..6].copy_from_slice(&LAYOUT.to_le_bytes());
        h[8..16].copy_from_slice(&self.generation.to_le_bytes());
        h[16..24].copy_from_slice(&self.len.to_le_bytes());
        h[24..28].copy_from_slice(&self.crc.to_le_bytes());
        let c = CRC.checksum(&h[..28]);
        h[28..32].copy_from_slice(&c.to_le_bytes());
        h
    }

    /// The header and payload of a slot, if both check out.
    pub fn decode(slot: &[u8]) -> Option<(SlotHeader, &[u8])> {
        if slot.len() < HEADER || slot[0..4] != MAGIC || u16::from_le_bytes([slot[4], slot[5]]) != LAYOUT {
            return None;
        }
        let word = |r: core::ops::Range<usize>| {
            let mut b = [0u8; 4];
            b.copy_from_slice(&slot[r]);
            u32::from_le_bytes(b)
        };
        let quad = |r: core::ops::Range<usize>| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&slot[r]);
            u64::from_le_bytes(b)
        };
        if CRC.checksum(&slot[..28]) != word(28..32) {
            return None;
        }
        let h = SlotHeader { generation: quad(8..16), len: quad(16..24), crc: word(24..28) };
        let end = HEADER.checked_add(usize::try_from(h.len).ok()?)?;
        let payload = slot.get(HEADER..end)?;
        (CRC.checksum(payload) == h.crc).then_some((h, payload))
    }
}

/// The device state persisted besides the statistics.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Persisted {
    /// Squared Mahalanobis distance above which a prediction is novel.
    pub novelty_threshold: f64,
}

/// Where the head was loaded from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Loaded {
    /// The slot holding the state.
    pub slot: Slot,
    /// Its generation (saves since the first).
    pub generation: u64,
}

/// Loads the newest valid slot into `head`. Returns `None` (head untouched)
/// if neither slot holds a valid state for this backbone.
pub fn load_newest<S: Storage, P: Platform>(
    platform: &mut P,
    head: &mut GaussianHead<S>,
    backbone_sha256: [u8; 32],
) -> Result<Option<(Loaded, Persisted)>, Fault> {
    let mut candidates: [Option<(u64, Slot)>; 2] = [None, None];
    for slot in 0..2u8 {
        let bytes = platform.slot_read(slot)?;
        if let Some((h, _)) = SlotHeader::decode(bytes) {
            candidates[slot as usize] = Some((h.generation, slot));
        }
    }
    // Newest first.
    if let (Some(a), Some(b)) = (candidates[0], candidates[1]) {
        if b.0 > a.0 {
            candidates.swap(0, 1);
        }
    } else if candidates[0].is_none() {
        candidates.swap(0, 1);
    }
    for (generation, slot) in candidates.into_iter().flatten() {
        let bytes = platform.slot_read(slot)?;
        let Some((_, payload)) = SlotHeader::decode(bytes) else { continue };
        if payload.len() < 8 {
            continue;
        }
        let mut t = [0u8; 8];
        t.copy_from_slice(&payload[..8]);
        let expect = stats::Expect { backbone_sha256: Some(backbone_sha256) };
        if stats::load(head, &payload[8..], &expect).is_ok() {
            let persisted = Persisted { novelty_threshold: f64::from_le_bytes(t) };
            return Ok(Some((Loaded { slot, generation }, persisted)));
        }
    }
    Ok(None)
}

/// Saves the head into the slot that is not `current`, as generation
/// `current.generation + 1`. Never touches the current slot.
pub fn save<S: Storage, P: Platform>(
    platform: &mut P,
    head: &GaussianHead<S>,
    meta: &StatsMeta,
    persisted: &Persisted,
    current: Option<Loaded>,
) -> Result<Loaded, Fault> {
    let slot = match current {
        Some(c) => 1 - c.slot,
        None => 0,
    };
    let generation = current.map_or(1, |c| c.generation + 1);
    // 1. Invalidate the target slot.
    platform.slot_write(slot, 0, &[0u8; HEADER])?;
    platform.slot_sync(slot, HEADER as u64)?;
    // 2. The payload, with its CRC computed on the way.
    let mut digest = CRC.digest();
    let threshold = persisted.novelty_threshold.to_le_bytes();
    digest.update(&threshold);
    platform.slot_write(slot, HEADER as u64, &threshold)?;
    let mut offset = (HEADER + 8) as u64;
    let mut fault = None;
    let written = stats::write(head, meta, |bytes| {
        digest.update(bytes);
        match platform.slot_write(slot, offset, bytes) {
            Ok(()) => {
                offset += bytes.len() as u64;
                Ok(())
            }
            Err(f) => {
                fault = Some(f);
                Err(())
            }
        }
    });
    if let Some(f) = fault {
        return Err(f);
    }
    let written = written.map_err(|_| Fault::new(ErrorCode::Busy, "a class is being learned"))?;
    let len = 8 + written;
    platform.slot_sync(slot, HEADER as u64 + len)?;
    // 3. The header that makes it valid.
    let header = SlotHeader { generation, len, crc: digest.finalize() }.encode();
    platform.slot_write(slot, 0, &header)?;
    platform.slot_sync(slot, HEADER as u64 + len)?;
    Ok(Loaded { slot, generation })
}

/// The statistics file inside the current slot (for downloads).
pub fn stats_bytes<P: Platform>(platform: &mut P, current: Loaded) -> Result<&[u8], Fault> {
    let bytes = platform.slot_read(current.slot)?;
    match SlotHeader::decode(bytes) {
        Some((_, payload)) if payload.len() >= 8 => Ok(&payload[8..]),
        _ => Err(Fault::new(ErrorCode::Storage, "current slot unreadable")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trip_and_damage() {
        let payload = b"hello statistics";
        let h = SlotHeader { generation: 7, len: payload.len() as u64, crc: CRC.checksum(payload) };
        let mut slot = h.encode().to_vec();
        slot.extend_from_slice(payload);
        assert_eq!(SlotHeader::decode(&slot), Some((h, &payload[..])));
        for i in 0..slot.len() {
            let mut bad = slot.clone();
            bad[i] ^= 0x10;
            assert_eq!(SlotHeader::decode(&bad), None, "byte {i}");
        }
        assert_eq!(SlotHeader::decode(&slot[..slot.len() - 1]), None);
        assert_eq!(SlotHeader::decode(&[]), None);
    }
}
