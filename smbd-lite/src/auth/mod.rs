//! Authentication: SPNEGO wrapping, NTLMSSP/NTLMv2, signing keys.

pub mod ntlm;
pub mod signing;
pub mod spnego;
