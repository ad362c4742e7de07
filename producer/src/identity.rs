//! Deterministic ids: of a producer input, of its tasks, and of an HTTP request body.
//!
//! An input's id is a UUID v5 of its first entry (the first line that is neither blank nor
//! a `#` comment, trimmed), so two files added to one job are two inputs, and the same file
//! enqueued again is the same input. Its fingerprint hashes its first [`FINGERPRINT_LINES`]
//! entries: a resumed enqueue whose input starts like a recorded one but differs within
//! them is refused. A task's id is a UUID v5 of the job id, the input id and the task's
//! 0-based line position, unless the task object gives one. These derivations are part of
//! the contract (docs/contract.md §5.1): the same input always yields the same ids.

use sha2::{Digest, Sha256};
use uuid::Uuid;

/// Entries the fingerprint covers.
pub const FINGERPRINT_LINES: usize = 16;

/// Namespace of input ids (a UUID v5 of the URL namespace and `tributary:input`).
const INPUT_NAMESPACE: Uuid = Uuid::from_u128(0x3c1b_9a52_5d0e_5f4e_8f44_2b8a_6b3e_91d7);
/// Namespace of producer task ids.
const TASK_NAMESPACE: Uuid = Uuid::from_u128(0x8e2f_4b1a_7c3d_5e6f_9a0b_1c2d_3e4f_5a6b);

/// The id of the input whose first entry is `first`.
pub fn input_id(first: &str) -> Uuid {
    Uuid::new_v5(&INPUT_NAMESPACE, first.as_bytes())
}

/// The id of the task at 0-based line `position` of `input` in `job`.
pub fn task_id(job: Uuid, input: Uuid, position: u64) -> Uuid {
    let name = format!("{job}\n{input}\n{position}");
    Uuid::new_v5(&TASK_NAMESPACE, name.as_bytes())
}

/// An input's id and fingerprint (`<entries>-<32 hex>`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InputIdentity {
    pub id: Uuid,
    pub fingerprint: String,
}

/// Builds an input's identity and the digest of all its lines, one line at a time.
#[derive(Debug, Default)]
pub struct Identify {
    first: Option<Uuid>,
    entries: usize,
    head: Sha256,
    all: Sha256,
}

impl Identify {
    /// Feeds the next line (as read, without its line break).
    pub fn line(&mut self, line: &str) {
        self.all.update(line.as_bytes());
        self.all.update(b"\n");
        let entry = line.trim();
        if entry.is_empty() || entry.starts_with('#') || self.entries >= FINGERPRINT_LINES {
            return;
        }
        self.first.get_or_insert_with(|| input_id(entry));
        self.entries += 1;
        self.head.update(entry.as_bytes());
        self.head.update(b"\n");
    }

    /// The identity (`None` for an input without any entry) and the hex SHA-256 of every
    /// line, each followed by `\n`.
    pub fn finish(self) -> (Option<InputIdentity>, String) {
        let identity = self.first.map(|id| InputIdentity {
            id,
            fingerprint: format!("{}-{}", self.entries, hex(&self.head.finalize()[..16])),
        });
        (identity, hex(&self.all.finalize()))
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job() -> Uuid {
        Uuid::parse_str("6f1c1b7e-4a55-4d0e-9a3c-0a8a3f3f2b10").unwrap()
    }

    fn identify(lines: &[&str]) -> (Option<InputIdentity>, String) {
        let mut id = Identify::default();
        lines.iter().for_each(|l| id.line(l));
        id.finish()
    }

    /// Fixed vectors: a change here changes the ids of every resumed enqueue.
    #[test]
    fn ids_are_stable_across_versions() {
        let input = input_id("https://a.example/1");
        assert_eq!(input.to_string(), "f7ea73e4-d9e2-5758-8a15-658347303035");
        assert_eq!(
            task_id(job(), input, 0).to_string(),
            "ffea0d05-d2dc-55d5-b7ee-99c445cdb9af"
        );
        assert_eq!(
            task_id(job(), input, 199_999).to_string(),
            "b5bd76c2-3078-56b6-87f0-ee4d6f8249dd"
        );
        let (identity, digest) = identify(&["# urls", " https://a.example/1 ", "", "http://b/2"]);
        let identity = identity.unwrap();
        assert_eq!(identity.id, input);
        assert_eq!(identity.fingerprint, "2-7589e1a3e6e7f4f3919b8be3f6541a23");
        assert_eq!(
            digest,
            "85140a07b4dbe4cb201fe1a2d4efdc971bd237649f37585a1afc25fab3d05a9f"
        );
    }

    #[test]
    fn fingerprints_cover_the_first_entries_only() {
        let lines: Vec<String> = (0..40).map(|i| format!("http://a/{i}")).collect();
        let refs: Vec<&str> = lines.iter().map(String::as_str).collect();
        let (full, full_digest) = identify(&refs);
        let (head, head_digest) = identify(&refs[..FINGERPRINT_LINES]);
        assert_eq!(full, head);
        assert_ne!(full_digest, head_digest);
        let (shorter, _) = identify(&refs[..FINGERPRINT_LINES - 1]);
        assert_ne!(shorter.unwrap().fingerprint, head.unwrap().fingerprint);
        assert_eq!(identify(&["", "# only a comment"]).0, None);
    }

    #[test]
    fn ids_differ_by_job_input_and_position() {
        let (a, b) = (input_id("http://a/1"), input_id("http://a/2"));
        assert_ne!(a, b);
        assert_ne!(task_id(job(), a, 0), task_id(job(), b, 0));
        assert_ne!(task_id(job(), a, 0), task_id(job(), a, 1));
        assert_ne!(task_id(job(), a, 0), task_id(Uuid::nil(), a, 0));
    }
}
