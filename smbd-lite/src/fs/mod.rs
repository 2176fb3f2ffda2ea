//! The file-system side: names, confinement, information classes, listings.

pub mod dir;
pub mod info;
pub mod path;
pub mod share;
