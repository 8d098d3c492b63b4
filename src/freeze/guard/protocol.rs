//! The guard's wire protocol: fixed 16-byte records (kind, reason, target index, value),
//! little-endian, written atomically (a pipe write under `PIPE_BUF` is never split).
//!
//! Both directions are typed enums. Encoding is a `const fn`; decoding returns an error
//! for anything it does not know (a mismatched binary), never a guess.
use super::super::GuardReason;

/// Size of one record on the wire.
pub const REC: usize = 16;

/// Agent -> guard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// Start the deadline: the guard thaws at `start_ns + timeout`.
    Arm { start_ns: u64 },
    /// Target `target` is about to be frozen: thaw it when firing.
    Mark { target: u32 },
    /// The freeze of `target` failed: leave it alone.
    Unmark { target: u32 },
    /// The freeze of `target` completed (after a firing, the guard thaws it once more: the
    /// freeze was still in flight when it fired).
    Frozen { target: u32 },
    /// Thaw everything now (the agent's signal handler).
    Thaw,
    /// The agent thaws now: answer [`Report::Yielded`] and never fire, unless already fired.
    Yield,
    /// Exit without touching anything.
    Disarm,
}

/// Guard -> agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Report {
    /// Signal handlers, workers and mlockall in place.
    Ready,
    /// The guard began thawing on its own.
    Fired { reason: GuardReason, at_ns: u64 },
    /// A thaw round that thawed something ended at `at_ns`.
    Done { at_ns: u64 },
    /// Answer to [`Command::Yield`]: the guard will not thaw on its own any more.
    Yielded,
}

/// A record that cannot be decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("unknown record kind {0}")]
    UnknownKind(u8),
    #[error("unknown guard reason {0}")]
    UnknownReason(u8),
}

const fn pack(kind: u8, reason: u8, idx: u32, value: u64) -> [u8; REC] {
    let mut r = [0u8; REC];
    r[0] = kind;
    r[1] = reason;
    let i = idx.to_le_bytes();
    let v = value.to_le_bytes();
    let mut k = 0;
    while k < 4 {
        r[4 + k] = i[k];
        k += 1;
    }
    let mut k = 0;
    while k < 8 {
        r[8 + k] = v[k];
        k += 1;
    }
    r
}

fn unpack(r: &[u8; REC]) -> (u8, u8, u32, u64) {
    let mut idx = [0u8; 4];
    idx.copy_from_slice(&r[4..8]);
    let mut val = [0u8; 8];
    val.copy_from_slice(&r[8..16]);
    (r[0], r[1], u32::from_le_bytes(idx), u64::from_le_bytes(val))
}

impl GuardReason {
    /// The reason's byte on the wire.
    pub const fn code(self) -> u8 {
        match self {
            GuardReason::Deadline => 1,
            GuardReason::Signal => 2,
            GuardReason::AgentDied => 3,
            GuardReason::BadMessage => 4,
        }
    }

    /// The reason for a byte; an unknown byte is an error.
    pub fn from_code(c: u8) -> Result<GuardReason, DecodeError> {
        match c {
            1 => Ok(GuardReason::Deadline),
            2 => Ok(GuardReason::Signal),
            3 => Ok(GuardReason::AgentDied),
            4 => Ok(GuardReason::BadMessage),
            other => Err(DecodeError::UnknownReason(other)),
        }
    }
}

impl Command {
    pub const fn encode(self) -> [u8; REC] {
        match self {
            Command::Arm { start_ns } => pack(1, 0, 0, start_ns),
            Command::Mark { target } => pack(2, 0, target, 0),
            Command::Unmark { target } => pack(3, 0, target, 0),
            Command::Thaw => pack(4, 0, 0, 0),
            Command::Disarm => pack(5, 0, 0, 0),
            Command::Frozen { target } => pack(6, 0, target, 0),
            Command::Yield => pack(7, 0, 0, 0),
        }
    }

    pub fn decode(r: &[u8; REC]) -> Result<Command, DecodeError> {
        let (kind, _, idx, value) = unpack(r);
        Ok(match kind {
            1 => Command::Arm { start_ns: value },
            2 => Command::Mark { target: idx },
            3 => Command::Unmark { target: idx },
            4 => Command::Thaw,
            5 => Command::Disarm,
            6 => Command::Frozen { target: idx },
            7 => Command::Yield,
            other => return Err(DecodeError::UnknownKind(other)),
        })
    }
}

impl Report {
    pub const fn encode(self) -> [u8; REC] {
        match self {
            Report::Ready => pack(101, 0, 0, 0),
            Report::Fired { reason, at_ns } => pack(102, reason.code(), 0, at_ns),
            Report::Done { at_ns } => pack(103, 0, 0, at_ns),
            Report::Yielded => pack(104, 0, 0, 0),
        }
    }

    pub fn decode(r: &[u8; REC]) -> Result<Report, DecodeError> {
        let (kind, reason, _, value) = unpack(r);
        Ok(match kind {
            101 => Report::Ready,
            102 => Report::Fired {
                reason: GuardReason::from_code(reason)?,
                at_ns: value,
            },
            103 => Report::Done { at_ns: value },
            104 => Report::Yielded,
            other => return Err(DecodeError::UnknownKind(other)),
        })
    }
}

/// The record a signal handler writes (built at compile time: no work in the handler).
pub const THAW_RECORD: [u8; REC] = Command::Thaw.encode();

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_command_round_trips() {
        let all = [
            Command::Arm { start_ns: u64::MAX },
            Command::Arm { start_ns: 0 },
            Command::Mark { target: 7 },
            Command::Unmark { target: u32::MAX },
            Command::Frozen { target: 3 },
            Command::Thaw,
            Command::Yield,
            Command::Disarm,
        ];
        for c in all {
            assert_eq!(Command::decode(&c.encode()), Ok(c), "{c:?}");
        }
    }

    #[test]
    fn every_report_round_trips() {
        let mut all = vec![
            Report::Ready,
            Report::Done { at_ns: 123_456 },
            Report::Yielded,
        ];
        for reason in [
            GuardReason::Deadline,
            GuardReason::Signal,
            GuardReason::AgentDied,
            GuardReason::BadMessage,
        ] {
            all.push(Report::Fired { reason, at_ns: 42 });
        }
        for r in all {
            assert_eq!(Report::decode(&r.encode()), Ok(r), "{r:?}");
        }
    }

    #[test]
    fn unknown_codes_are_errors_not_guesses() {
        // An unknown reason used to be read as "signal".
        let mut rec = Report::Fired {
            reason: GuardReason::Deadline,
            at_ns: 1,
        }
        .encode();
        rec[1] = 99;
        assert_eq!(Report::decode(&rec), Err(DecodeError::UnknownReason(99)));
        assert_eq!(
            Report::decode(&pack(0, 0, 0, 0)),
            Err(DecodeError::UnknownKind(0))
        );
        assert_eq!(
            Command::decode(&pack(200, 0, 0, 0)),
            Err(DecodeError::UnknownKind(200))
        );
        // Directions do not mix.
        assert!(Command::decode(&Report::Ready.encode()).is_err());
        assert!(Report::decode(&Command::Thaw.encode()).is_err());
    }

    #[test]
    fn layout_is_fixed() {
        let r = Command::Mark {
            target: 0x0102_0304,
        }
        .encode();
        assert_eq!(&r[..8], &[2, 0, 0, 0, 4, 3, 2, 1]);
        let r = Report::Done { at_ns: 0x0102 }.encode();
        assert_eq!(r[0], 103);
        assert_eq!(&r[8..10], &[2, 1]);
        assert_eq!(THAW_RECORD[0], 4);
    }
}
