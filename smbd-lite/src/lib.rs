//! A small SMB2/3 file server over any async byte stream.
//!
//! Limitations: nothing is implemented yet.
#![forbid(unsafe_code)]
