//! Error codes, spelled exactly as reports, logs and exit messages show them.
//!
//! The first ten are Azure Backup's (see the seed document's troubleshooting table); the
//! rest are quiesce's own, in the same style, for what Azure leaves silent.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::path::PathBuf;

/// Exit code for an invalid invocation (of `quiesce` or of one of its front ends, such as
/// `quiesce guest-agent`).
pub const EXIT_USAGE: i32 = 2;

/// Every code quiesce can report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ErrorCode {
    #[serde(rename = "Pre-ScriptExecutionFailed")]
    PreScriptExecutionFailed,
    #[serde(rename = "Post-ScriptExecutionFailed")]
    PostScriptExecutionFailed,
    #[serde(rename = "Pre-ScriptNotFound")]
    PreScriptNotFound,
    #[serde(rename = "Post-ScriptNotFound")]
    PostScriptNotFound,
    #[serde(rename = "IncorrectPluginhostFile")]
    IncorrectPluginhostFile,
    #[serde(rename = "IncorrectJSONConfigFile")]
    IncorrectJsonConfigFile,
    #[serde(rename = "InsufficientPermissionforPre-Script")]
    InsufficientPermissionForPreScript,
    #[serde(rename = "InsufficientPermissionforPost-Script")]
    InsufficientPermissionForPostScript,
    #[serde(rename = "Pre-ScriptTimeout")]
    PreScriptTimeout,
    #[serde(rename = "Post-ScriptTimeout")]
    PostScriptTimeout,
    // ---- quiesce's own codes ----
    /// The native TOML configuration is missing, unparseable, invalid or unsafe.
    #[serde(rename = "IncorrectConfigFile")]
    IncorrectConfigFile,
    /// FIFREEZE failed for a reason not covered by a more specific code.
    #[serde(rename = "FreezeFailed")]
    FreezeFailed,
    /// FIFREEZE returned EBUSY: somebody else froze this filesystem.
    #[serde(rename = "FilesystemAlreadyFrozen")]
    FilesystemAlreadyFrozen,
    /// FIFREEZE returned EOPNOTSUPP.
    #[serde(rename = "FreezeNotSupported")]
    FreezeNotSupported,
    /// FIFREEZE returned EPERM (quiesce must run as root).
    #[serde(rename = "FreezePermissionDenied")]
    FreezePermissionDenied,
    /// FITHAW failed; the filesystem may still be frozen.
    #[serde(rename = "ThawFailed")]
    ThawFailed,
    /// The freeze guard thawed before the snapshot completed (deadline, signal or agent death).
    #[serde(rename = "FreezeGuardFired")]
    FreezeGuardFired,
    /// The freeze guard died or stopped answering while filesystems were frozen; the agent
    /// thawed by itself.
    #[serde(rename = "FreezeGuardLost")]
    FreezeGuardLost,
    /// A warning: at start, quiesce thawed filesystems that a crashed run had left frozen.
    #[serde(rename = "RecoveredFrozenFilesystems")]
    RecoveredFrozenFilesystems,
    /// The snapshot provider failed.
    #[serde(rename = "SnapshotFailed")]
    SnapshotFailed,
    /// The snapshot provider did not finish within its timeout.
    #[serde(rename = "SnapshotTimeout")]
    SnapshotTimeout,
    /// Another quiesce operation holds the lock.
    #[serde(rename = "OperationInProgress")]
    OperationInProgress,
    /// A hold-mode hook exited or was killed before the snapshot completed.
    #[serde(rename = "HoldLost")]
    HoldLost,
    /// The freeze plan is invalid (an included mount point does not exist, nothing to freeze, ...).
    #[serde(rename = "InvalidFreezePlan")]
    InvalidFreezePlan,
    /// quiesce was interrupted by SIGTERM/SIGINT.
    #[serde(rename = "Interrupted")]
    Interrupted,
    /// State under /run could not be read or written, or recovery found a problem.
    #[serde(rename = "StateError")]
    StateError,
    /// The catalog could not be written.
    #[serde(rename = "CatalogError")]
    CatalogError,
    /// A host-driven API request was malformed or refused.
    #[serde(rename = "InvalidRequest")]
    InvalidRequest,
    /// A host-driven API caller was not authorised.
    #[serde(rename = "Unauthorized")]
    Unauthorized,
    /// A host-driven operation id is unknown.
    #[serde(rename = "UnknownOperation")]
    UnknownOperation,
    /// A consistency group's etcd could not be reached or refused the call, or a group
    /// operation could not start (no live member, the id already taken).
    #[serde(rename = "GroupCoordinationFailed")]
    GroupCoordinationFailed,
}

impl ErrorCode {
    /// The exact spelling used in reports and logs.
    pub fn as_str(self) -> &'static str {
        use ErrorCode::*;
        match self {
            PreScriptExecutionFailed => "Pre-ScriptExecutionFailed",
            PostScriptExecutionFailed => "Post-ScriptExecutionFailed",
            PreScriptNotFound => "Pre-ScriptNotFound",
            PostScriptNotFound => "Post-ScriptNotFound",
            IncorrectPluginhostFile => "IncorrectPluginhostFile",
            IncorrectJsonConfigFile => "IncorrectJSONConfigFile",
            InsufficientPermissionForPreScript => "InsufficientPermissionforPre-Script",
            InsufficientPermissionForPostScript => "InsufficientPermissionforPost-Script",
            PreScriptTimeout => "Pre-ScriptTimeout",
            PostScriptTimeout => "Post-ScriptTimeout",
            IncorrectConfigFile => "IncorrectConfigFile",
            FreezeFailed => "FreezeFailed",
            FilesystemAlreadyFrozen => "FilesystemAlreadyFrozen",
            FreezeNotSupported => "FreezeNotSupported",
            FreezePermissionDenied => "FreezePermissionDenied",
            ThawFailed => "ThawFailed",
            FreezeGuardFired => "FreezeGuardFired",
            FreezeGuardLost => "FreezeGuardLost",
            RecoveredFrozenFilesystems => "RecoveredFrozenFilesystems",
            SnapshotFailed => "SnapshotFailed",
            SnapshotTimeout => "SnapshotTimeout",
            OperationInProgress => "OperationInProgress",
            HoldLost => "HoldLost",
            InvalidFreezePlan => "InvalidFreezePlan",
            Interrupted => "Interrupted",
            StateError => "StateError",
            CatalogError => "CatalogError",
            InvalidRequest => "InvalidRequest",
            Unauthorized => "Unauthorized",
            UnknownOperation => "UnknownOperation",
            GroupCoordinationFailed => "GroupCoordinationFailed",
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where in a file a problem was found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Location {
    pub file: PathBuf,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub line: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub column: Option<usize>,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", crate::quote::quote_path(&self.file))?;
        if let Some(l) = self.line {
            write!(f, ":{l}")?;
            if let Some(c) = self.column {
                write!(f, ":{c}")?;
            }
        }
        Ok(())
    }
}

/// One reported warning: a human message, where it was found, and the hook it concerns if
/// any. Configuration warnings (unknown keys, lenient forms, timeouts above Azure's cap)
/// carry no code: codes name errors. A run's own findings that are not failures (the catalog
/// could not record, nothing was eligible to freeze) keep the code that names them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Warning {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<ErrorCode>,
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hook: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<Location>,
}

impl Warning {
    /// A warning without a code.
    pub fn new(message: impl Into<String>) -> Self {
        Warning {
            code: None,
            message: message.into(),
            hook: None,
            location: None,
        }
    }

    pub fn at(mut self, location: Location) -> Self {
        self.location = Some(location);
        self
    }
}

/// A coded finding reported as a warning keeps its code.
impl From<Problem> for Warning {
    fn from(p: Problem) -> Self {
        Warning {
            code: Some(p.code),
            message: p.message,
            hook: p.hook,
            location: p.location,
        }
    }
}

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(code) = self.code {
            write!(f, "{code}: ")?;
        }
        if let Some(loc) = &self.location {
            write!(f, "{loc}: ")?;
        }
        if let Some(h) = &self.hook {
            write!(f, "hook `{}`: ", crate::quote::quote(h))?;
        }
        f.write_str(&self.message)
    }
}

/// One reported error: its code, a human message, and the hook it concerns if any.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Problem {
    pub code: ErrorCode,
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hook: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub location: Option<Location>,
}

impl Problem {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Problem {
            code,
            message: message.into(),
            hook: None,
            location: None,
        }
    }

    pub fn with_hook(mut self, hook: impl Into<String>) -> Self {
        self.hook = Some(hook.into());
        self
    }

    pub fn at(mut self, location: Location) -> Self {
        self.location = Some(location);
        self
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: ", self.code)?;
        if let Some(loc) = &self.location {
            write!(f, "{loc}: ")?;
        }
        if let Some(h) = &self.hook {
            write!(f, "hook `{}`: ", crate::quote::quote(h))?;
        }
        f.write_str(&self.message)
    }
}
