//! NTSTATUS codes and the single place where host I/O errors become them.

use std::io;

/// An NTSTATUS value sent in the SMB2 header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NtStatus {
    /// The request succeeded.
    Success,
    /// An async operation is still running (interim reply).
    Pending,
    /// NTLMSSP wants another SESSION_SETUP leg.
    MoreProcessingRequired,
    /// Output was cut short; the data returned is valid but partial.
    BufferOverflow,
    /// Directory enumeration has no more entries.
    NoMoreFiles,
    /// Nothing matched the pattern on the first scan.
    NoSuchFile,
    /// Generic invalid parameter.
    InvalidParameter,
    /// The request is not valid for this object (e.g. READ on a directory).
    InvalidDeviceRequest,
    /// Read at or past the end of the file.
    EndOfFile,
    /// Access denied (read-only share, permissions, escape attempt).
    AccessDenied,
    /// The output buffer cannot hold even the fixed part.
    InfoLengthMismatch,
    /// Bad or unknown name syntax.
    ObjectNameInvalid,
    /// The leaf does not exist.
    ObjectNameNotFound,
    /// The name already exists.
    ObjectNameCollision,
    /// A parent directory does not exist.
    ObjectPathNotFound,
    /// The file is open in a conflicting mode.
    SharingViolation,
    /// The file is a directory and a non-directory was required.
    FileIsADirectory,
    /// A directory was required.
    NotADirectory,
    /// Directory is not empty.
    DirectoryNotEmpty,
    /// Operation not supported.
    NotSupported,
    /// Command not implemented.
    NotImplemented,
    /// Bad password or user.
    LogonFailure,
    /// The share name is unknown.
    BadNetworkName,
    /// The TreeId is unknown.
    NetworkNameDeleted,
    /// The SessionId is unknown.
    UserSessionDeleted,
    /// The FileId is unknown.
    FileClosed,
    /// The information class is unknown.
    InvalidInfoClass,
    /// Lock range conflicts with another lock.
    LockNotGranted,
    /// Lock range conflicts (non-blocking I/O).
    FileLockConflict,
    /// Unlock of a range that is not locked.
    RangeNotLocked,
    /// The disk is full.
    DiskFull,
    /// Too many opens on this connection.
    TooManyOpenedFiles,
    /// Too many sessions on this connection.
    RequestNotAccepted,
    /// The request was cancelled.
    Cancelled,
    /// Not found (DFS referral on IPC$).
    NotFound,
    /// The file is not a reparse point.
    NotAReparsePoint,
    /// Stray oplock break acknowledgement.
    InvalidOplockProtocol,
    /// Delete of a file that has the read-only attribute.
    CannotDelete,
    /// Delete pending on this file.
    DeletePending,
    /// Not enough memory or quota for the request.
    InsufficientResources,
    /// The media is write protected (unused by default).
    MediaWriteProtected,
    /// Network access to the handle was denied.
    NetworkAccessDenied,
    /// The file name is too long.
    NameTooLong,
    /// Rename across file systems.
    NotSameDevice,
    /// Any other value.
    Unknown(u32),
}

impl NtStatus {
    /// The 32-bit wire value.
    pub fn code(self) -> u32 {
        match self {
            Self::Success => 0,
            Self::Pending => 0x0000_0103,
            Self::MoreProcessingRequired => 0xC000_0016,
            Self::BufferOverflow => 0x8000_0005,
            Self::NoMoreFiles => 0x8000_0006,
            Self::NoSuchFile => 0xC000_000F,
            Self::InvalidParameter => 0xC000_000D,
            Self::InvalidDeviceRequest => 0xC000_0010,
            Self::EndOfFile => 0xC000_0011,
            Self::AccessDenied => 0xC000_0022,
            Self::InfoLengthMismatch => 0xC000_0004,
            Self::ObjectNameInvalid => 0xC000_0033,
            Self::ObjectNameNotFound => 0xC000_0034,
            Self::ObjectNameCollision => 0xC000_0035,
            Self::ObjectPathNotFound => 0xC000_003A,
            Self::SharingViolation => 0xC000_0043,
            Self::FileIsADirectory => 0xC000_00BA,
            Self::NotADirectory => 0xC000_0103,
            Self::DirectoryNotEmpty => 0xC000_0101,
            Self::NotSupported => 0xC000_00BB,
            Self::NotImplemented => 0xC000_0002,
            Self::LogonFailure => 0xC000_006D,
            Self::BadNetworkName => 0xC000_00CC,
            Self::NetworkNameDeleted => 0xC000_00C9,
            Self::UserSessionDeleted => 0xC000_0203,
            Self::FileClosed => 0xC000_0128,
            Self::InvalidInfoClass => 0xC000_0003,
            Self::LockNotGranted => 0xC000_0055,
            Self::FileLockConflict => 0xC000_0054,
            Self::RangeNotLocked => 0xC000_007E,
            Self::DiskFull => 0xC000_007F,
            Self::TooManyOpenedFiles => 0xC000_011F,
            Self::RequestNotAccepted => 0xC000_00D0,
            Self::Cancelled => 0xC000_0120,
            Self::NotFound => 0xC000_0225,
            Self::NotAReparsePoint => 0xC000_0275,
            Self::InvalidOplockProtocol => 0xC000_00E3,
            Self::CannotDelete => 0xC000_0121,
            Self::DeletePending => 0xC000_0056,
            Self::InsufficientResources => 0xC000_009A,
            Self::MediaWriteProtected => 0xC000_00A2,
            Self::NetworkAccessDenied => 0xC000_00CA,
            Self::NameTooLong => 0xC000_0106,
            Self::NotSameDevice => 0xC000_00D4,
            Self::Unknown(raw) => raw,
        }
    }

    /// True for codes a client treats as an error (severity bits 11).
    pub fn is_error(self) -> bool {
        self.code() >> 30 == 3
    }

    /// Maps a host I/O error on a share to the status a Windows server would send.
    ///
    /// `parent_missing` tells a missing leaf from a missing parent directory.
    pub fn from_io(err: &io::Error, parent_missing: bool) -> Self {
        use io::ErrorKind as K;
        match err.kind() {
            K::NotFound if parent_missing => Self::ObjectPathNotFound,
            K::NotFound => Self::ObjectNameNotFound,
            K::AlreadyExists => Self::ObjectNameCollision,
            K::PermissionDenied => Self::AccessDenied,
            K::DirectoryNotEmpty => Self::DirectoryNotEmpty,
            K::NotADirectory => Self::NotADirectory,
            K::IsADirectory => Self::FileIsADirectory,
            K::StorageFull | K::QuotaExceeded => Self::DiskFull,
            K::ReadOnlyFilesystem => Self::MediaWriteProtected,
            K::InvalidFilename => Self::NameTooLong,
            K::FileTooLarge | K::InvalidInput => Self::InvalidParameter,
            K::CrossesDevices => Self::NotSameDevice,
            _ => match err.raw_os_error() {
                // ELOOP: cap-std's refusal of a link that leaves the share,
                // or O_NOFOLLOW on a link: never follow, deny.
                Some(40) => Self::AccessDenied,
                Some(36) => Self::NameTooLong,
                _ => Self::AccessDenied,
            },
        }
    }
}
