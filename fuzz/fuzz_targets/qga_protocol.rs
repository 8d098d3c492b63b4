//! The guest-agent wire protocol (`quiesce::qga::protocol`): the bytes a hypervisor sends on
//! the virtio-serial port, split at arbitrary read boundaries (the first byte says where).
//!
//! Oracle: never panics; splitting the same stream in one read or in two gives the same
//! frames; every message decodes to a request or to an error answer that is one line of
//! JSON with a class; a request's argument check never panics either.
#![no_main]

use libfuzzer_sys::fuzz_target;
use quiesce::qga::protocol::{self, Frame, Splitter};

fuzz_target!(|data: &[u8]| {
    let Some((&cut, stream)) = data.split_first() else {
        return;
    };
    let cut = (cut as usize).min(stream.len());
    let whole = Splitter::new().push(stream);
    let mut s = Splitter::new();
    let mut parts = s.push(&stream[..cut]);
    parts.extend(s.push(&stream[cut..]));
    assert_eq!(whole, parts, "read boundaries change the frames");
    for frame in whole {
        let Frame::Message(msg) = frame else { continue };
        assert!(msg.len() <= protocol::MAX_MESSAGE + 1);
        match protocol::decode(&msg) {
            Ok(req) => {
                if let Err(e) = protocol::command(&req) {
                    let line = protocol::answer_error(&e, req.id.as_ref());
                    assert_eq!(line.iter().filter(|b| **b == b'\n').count(), 1);
                }
            }
            Err((e, id)) => {
                let line = protocol::answer_error(&e, id.as_ref());
                assert_eq!(line.iter().filter(|b| **b == b'\n').count(), 1);
                let v: serde_json::Value = serde_json::from_slice(&line).expect("answer is JSON");
                assert!(v["error"]["class"].is_string());
            }
        }
    }
});
