//! What fleet members publish, and where: the topic layout and the
//! messages, independent of any broker client.
//!
//! Under `gaussedge/<fleet>/`:
//!
//! | topic | retained | who publishes | payload |
//! | --- | --- | --- | --- |
//! | `devices/<id>` | yes | a device's agent, after each commit or forget | [`DeviceMessage`] |
//! | `head` | yes | the merger, when the merge changes | [`HeadMessage`] |
//! | `forgets` | yes | `gaussedge fleet forget` | [`Forgets`] |
//! | `errors` | no | the merger, for a refused contribution | UTF-8 text |
//!
//! Retained messages are the fleet's memory: a merger or device that comes
//! online late reads the latest of each, and nothing else is needed. Only
//! MQTT 3.1.1 features are used (retain, QoS 1, `+` wildcards), so any
//! broker works.

use serde::{Deserialize, Serialize};

/// Topic names of one fleet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topics {
    prefix: String,
}

impl Topics {
    /// `None` if `fleet` cannot be one topic level (empty, or holding `/`,
    /// `+`, `#` or a NUL).
    pub fn new(fleet: &str) -> Option<Topics> {
        valid_level(fleet).then(|| Topics { prefix: format!("gaussedge/{fleet}") })
    }
    pub fn head(&self) -> String {
        format!("{}/head", self.prefix)
    }
    pub fn forgets(&self) -> String {
        format!("{}/forgets", self.prefix)
    }
    pub fn errors(&self) -> String {
        format!("{}/errors", self.prefix)
    }
    /// `None` for an id that cannot be one topic level.
    pub fn device(&self, id: &str) -> Option<String> {
        valid_level(id).then(|| format!("{}/devices/{id}", self.prefix))
    }
    /// The filter matching every device's topic.
    pub fn devices(&self) -> String {
        format!("{}/devices/+", self.prefix)
    }
    /// The device id of a topic matched by [`devices`](Self::devices).
    pub fn device_of<'a>(&self, topic: &'a str) -> Option<&'a str> {
        topic.strip_prefix(&self.prefix)?.strip_prefix("/devices/").filter(|id| valid_level(id))
    }
}

fn valid_level(s: &str) -> bool {
    !s.is_empty() && s.len() <= 128 && !s.contains(['/', '+', '#', '\0'])
}

/// A device's contribution as its agent publishes it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeviceMessage {
    pub device: String,
    pub generation: u64,
    /// The newest fleet forget the device had applied.
    pub forgets_applied: u64,
    /// SHA-256 of the fleet head statistics the device last started from
    /// (`None`: the base).
    pub parent: Option<[u8; 32]>,
    /// [`crate::Summary::to_bytes`].
    pub summary: Vec<u8>,
}

/// The fleet head as the merger publishes it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HeadMessage {
    /// Sum of the included generations and the forgets: it grows with every
    /// change, and a restarted merger derives the same one.
    pub generation: u64,
    /// Each device's contribution in the head, by generation.
    pub included: Vec<(String, u64)>,
    pub forgets: u64,
    /// SHA-256 of `stats`.
    pub sha256: [u8; 32],
    /// The head's statistics file.
    pub stats: Vec<u8>,
}

/// Every fleet forget so far, by id.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Forgets {
    pub forgets: Vec<(u64, String)>,
}

/// Postcard encoding of a message.
pub fn encode<T: Serialize>(message: &T) -> Vec<u8> {
    postcard::to_stdvec(message).expect("fleet messages serialise")
}

/// Postcard decoding; `None` for bytes that are not such a message.
pub fn decode<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Option<T> {
    postcard::from_bytes(bytes).ok()
}
