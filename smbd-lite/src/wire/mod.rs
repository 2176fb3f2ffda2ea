//! SMB2 wire format: checked views over `&[u8]` and typed request/response reprs.
//!
//! Every length and offset read from the wire goes through [`Buf`], whose
//! accessors return [`WireError`] instead of panicking. Responses are built
//! with [`Out`], a small little-endian writer.

pub mod header;
pub mod negotiate;
pub mod requests;
pub mod status;

pub use header::{Command, Header};
pub use status::NtStatus;

/// Size of the SMB2 header.
pub const HEADER_LEN: usize = 64;
/// Largest frame (one message or compound) accepted or sent.
pub const MAX_FRAME: usize = MAX_IO + 64 * 1024;
/// Largest READ/WRITE/transact payload advertised.
pub const MAX_IO: usize = 1024 * 1024;

/// A malformed message.
#[derive(Debug, thiserror::Error, Clone, Copy, PartialEq, Eq)]
pub enum WireError {
    /// A field or buffer reaches past the end of the message.
    #[error("Field out of bounds at offset {0}")]
    Truncated(usize),
    /// A fixed field has a value the protocol forbids.
    #[error("Invalid {0}")]
    Invalid(&'static str),
}

/// A bounds-checked little-endian view over received bytes.
#[derive(Debug, Clone, Copy)]
pub struct Buf<'a>(pub &'a [u8]);

impl<'a> Buf<'a> {
    /// The bytes `[off, off + len)`, or an error if they are not all present.
    pub fn bytes(&self, off: usize, len: usize) -> Result<&'a [u8], WireError> {
        let end = off.checked_add(len).ok_or(WireError::Truncated(off))?;
        self.0.get(off..end).ok_or(WireError::Truncated(off))
    }
    /// A byte.
    pub fn u8(&self, off: usize) -> Result<u8, WireError> {
        self.0.get(off).copied().ok_or(WireError::Truncated(off))
    }
    /// A little-endian u16.
    pub fn u16(&self, off: usize) -> Result<u16, WireError> {
        let b = self.bytes(off, 2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }
    /// A little-endian u32.
    pub fn u32(&self, off: usize) -> Result<u32, WireError> {
        let b = self.bytes(off, 4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    /// A little-endian u64.
    pub fn u64(&self, off: usize) -> Result<u64, WireError> {
        let b = self.bytes(off, 8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }
    /// 16 raw bytes (GUIDs, FileIds, signatures).
    pub fn b16(&self, off: usize) -> Result<[u8; 16], WireError> {
        let mut a = [0u8; 16];
        a.copy_from_slice(self.bytes(off, 16)?);
        Ok(a)
    }
    /// A buffer given by a u16/u32 offset (from the start of the SMB2 header)
    /// and length; an empty buffer may carry any offset.
    pub fn region(&self, off: usize, len: usize) -> Result<&'a [u8], WireError> {
        if len == 0 {
            return Ok(&[]);
        }
        self.bytes(off, len)
    }
    /// Total length.
    pub fn len(&self) -> usize {
        self.0.len()
    }
    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// A little-endian response writer.
#[derive(Debug, Default, Clone)]
pub struct Out(pub Vec<u8>);

impl Out {
    /// A writer with `cap` bytes reserved.
    pub fn with_capacity(cap: usize) -> Self {
        Self(Vec::with_capacity(cap))
    }
    /// Appends a byte.
    pub fn u8(&mut self, v: u8) -> &mut Self {
        self.0.push(v);
        self
    }
    /// Appends a u16.
    pub fn u16(&mut self, v: u16) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    /// Appends a u32.
    pub fn u32(&mut self, v: u32) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    /// Appends a u64.
    pub fn u64(&mut self, v: u64) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    /// Appends raw bytes.
    pub fn bytes(&mut self, v: &[u8]) -> &mut Self {
        self.0.extend_from_slice(v);
        self
    }
    /// Appends `n` zero bytes.
    pub fn zeros(&mut self, n: usize) -> &mut Self {
        self.0.resize(self.0.len() + n, 0);
        self
    }
    /// Pads with zeros to a multiple of `align`.
    pub fn align(&mut self, align: usize) -> &mut Self {
        let pad = (align - self.0.len() % align) % align;
        self.zeros(pad)
    }
    /// Overwrites a u16 at `off` (for back-patched lengths).
    pub fn put_u16(&mut self, off: usize, v: u16) {
        if let Some(d) = self.0.get_mut(off..off + 2) {
            d.copy_from_slice(&v.to_le_bytes());
        }
    }
    /// Overwrites a u32 at `off`.
    pub fn put_u32(&mut self, off: usize, v: u32) {
        if let Some(d) = self.0.get_mut(off..off + 4) {
            d.copy_from_slice(&v.to_le_bytes());
        }
    }
    /// Current length.
    pub fn len(&self) -> usize {
        self.0.len()
    }
    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Converts a length known to be small to u16, saturating.
pub fn u16_len(n: usize) -> u16 {
    u16::try_from(n).unwrap_or(u16::MAX)
}

/// Converts a length known to be small to u32, saturating.
pub fn u32_len(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// Decodes UTF-16LE bytes (odd trailing byte is an error; unpaired surrogates too).
pub fn utf16_to_string(b: &[u8]) -> Result<String, WireError> {
    if b.len() % 2 != 0 {
        return Err(WireError::Invalid("UTF-16 length"));
    }
    let units = b.chunks_exact(2).map(|c| u16::from_le_bytes([c[0], c[1]]));
    char::decode_utf16(units)
        .collect::<Result<String, _>>()
        .map_err(|_| WireError::Invalid("UTF-16 string"))
}

/// Encodes a string as UTF-16LE.
pub fn string_to_utf16(s: &str) -> Vec<u8> {
    s.encode_utf16().flat_map(u16::to_le_bytes).collect()
}
