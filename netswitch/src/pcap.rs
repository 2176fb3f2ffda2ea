//! Classic pcap files (the format tshark, tcpdump and Wireshark read):
//! a writer for captures and a small checked reader for tests and tools.
//!
//! Records use microsecond timestamps, link type Ethernet (1) and a snap
//! length of 65535; frames are never cut because the switch never forwards
//! anything longer than its MTU + 14 and the MTU is at most 65535.

use std::io::{self, Write};
use std::time::Duration;

const MAGIC_MICROS: u32 = 0xa1b2_c3d4;
const LINKTYPE_ETHERNET: u32 = 1;
/// Snapshot length written in the file header.
pub const SNAPLEN: u32 = 65535;
const FILE_HEADER_LEN: usize = 24;
const RECORD_HEADER_LEN: usize = 16;

/// Errors of the pcap writer and reader.
#[derive(Debug, thiserror::Error)]
pub enum PcapError {
    /// Writing the capture failed.
    #[error("Cannot write pcap capture")]
    Write(#[source] io::Error),
    /// The data does not start with a little-endian microsecond pcap header.
    #[error("Not a pcap file (bad magic or link type)")]
    BadHeader,
    /// A record claims more bytes than remain or than the snap length.
    #[error("Truncated or oversized pcap record at byte {0}")]
    BadRecord(usize),
}

/// Writes frames into a pcap stream.
#[derive(Debug)]
pub struct PcapWriter<W: Write> {
    out: W,
}

impl<W: Write> PcapWriter<W> {
    /// Writes the file header and returns the writer.
    pub fn new(mut out: W) -> Result<Self, PcapError> {
        let mut header = Vec::with_capacity(FILE_HEADER_LEN);
        header.extend_from_slice(&MAGIC_MICROS.to_le_bytes());
        header.extend_from_slice(&2u16.to_le_bytes()); // version major
        header.extend_from_slice(&4u16.to_le_bytes()); // version minor
        header.extend_from_slice(&0i32.to_le_bytes()); // GMT offset
        header.extend_from_slice(&0u32.to_le_bytes()); // timestamp accuracy
        header.extend_from_slice(&SNAPLEN.to_le_bytes());
        header.extend_from_slice(&LINKTYPE_ETHERNET.to_le_bytes());
        out.write_all(&header).map_err(PcapError::Write)?;
        Ok(Self { out })
    }

    /// Appends one frame stamped `time` since the Unix epoch.
    pub fn write_frame(&mut self, time: Duration, frame: &[u8]) -> Result<(), PcapError> {
        let len = u32::try_from(frame.len()).unwrap_or(u32::MAX).min(SNAPLEN);
        let secs = u32::try_from(time.as_secs()).unwrap_or(u32::MAX);
        let mut header = [0u8; RECORD_HEADER_LEN];
        header[0..4].copy_from_slice(&secs.to_le_bytes());
        header[4..8].copy_from_slice(&time.subsec_micros().to_le_bytes());
        header[8..12].copy_from_slice(&len.to_le_bytes());
        header[12..16]
            .copy_from_slice(&u32::try_from(frame.len()).unwrap_or(u32::MAX).to_le_bytes());
        self.out.write_all(&header).map_err(PcapError::Write)?;
        self.out
            .write_all(&frame[..len as usize])
            .map_err(PcapError::Write)
    }

    /// Flushes buffered records to the underlying writer.
    pub fn flush(&mut self) -> Result<(), PcapError> {
        self.out.flush().map_err(PcapError::Write)
    }
}

/// One frame read back from a pcap file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PcapRecord {
    /// Time since the Unix epoch.
    pub time: Duration,
    /// Frame bytes as captured.
    pub data: Vec<u8>,
}

/// Parses a whole little-endian microsecond Ethernet pcap file.
pub fn parse(bytes: &[u8]) -> Result<Vec<PcapRecord>, PcapError> {
    let u32_at = |at: usize| -> Option<u32> {
        let raw = bytes.get(at..at + 4)?;
        Some(u32::from_le_bytes([raw[0], raw[1], raw[2], raw[3]]))
    };
    if u32_at(0) != Some(MAGIC_MICROS) || u32_at(20) != Some(LINKTYPE_ETHERNET) {
        return Err(PcapError::BadHeader);
    }
    let mut records = Vec::new();
    let mut at = FILE_HEADER_LEN;
    while at < bytes.len() {
        let field = |offset| u32_at(at + offset).ok_or(PcapError::BadRecord(at));
        let (secs, micros, incl) = (field(0)?, field(4)?, field(8)?);
        if incl > SNAPLEN {
            return Err(PcapError::BadRecord(at));
        }
        let start = at + RECORD_HEADER_LEN;
        let end = start + incl as usize;
        let data = bytes.get(start..end).ok_or(PcapError::BadRecord(at))?;
        records.push(PcapRecord {
            time: Duration::from_secs(secs.into()) + Duration::from_micros(micros.into()),
            data: data.to_vec(),
        });
        at = end;
    }
    Ok(records)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_frames_parse_back_identically() {
        let mut w = PcapWriter::new(Vec::new()).unwrap();
        let frames = [vec![1u8; 60], vec![2u8; 1514], vec![3u8; 14]];
        for (i, f) in frames.iter().enumerate() {
            w.write_frame(Duration::from_micros(1_000_000 * i as u64 + 7), f)
                .unwrap();
        }
        let bytes = w.out;
        assert_eq!(bytes.len(), 24 + 3 * 16 + 60 + 1514 + 14);
        let records = parse(&bytes).unwrap();
        assert_eq!(records.len(), 3);
        for (i, (r, f)) in records.iter().zip(&frames).enumerate() {
            assert_eq!(&r.data, f);
            assert_eq!(r.time, Duration::from_micros(1_000_000 * i as u64 + 7));
        }
    }

    #[test]
    fn truncated_or_garbage_files_are_errors_not_panics() {
        let mut w = PcapWriter::new(Vec::new()).unwrap();
        w.write_frame(Duration::ZERO, &[9u8; 100]).unwrap();
        let bytes = w.out;
        for cut in 0..bytes.len() {
            let _ = parse(&bytes[..cut]);
        }
        assert!(matches!(
            parse(&bytes[..bytes.len() - 1]),
            Err(PcapError::BadRecord(24))
        ));
        assert!(matches!(
            parse(b"not a pcap file at all!!"),
            Err(PcapError::BadHeader)
        ));
    }
}
