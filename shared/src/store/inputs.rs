//! Producer inputs of a job: idempotent task registration and resumable checkpoints.
//!
//! An input (a file, stdin, the body of an HTTP request) has an id and a fingerprint of
//! its first lines (the producer derives both). [`Store::begin_input`] records it in the
//! job's inputs hash as a [`Checkpoint`]: the first line not yet confirmed on the broker,
//! whether the whole input is (`sealed`), and the fingerprint. While an input is not sealed
//! the job's status field `enqueuing` counts it and the job cannot be `done`.
//!
//! [`Store::register`] runs once per published message: it records the message's line
//! positions (a bitmap per input) and explicit task ids (a set per job) and raises the total
//! only by those it had not seen, so a resumed enqueue that republishes a message never
//! changes the total. It also moves the checkpoint, and seals the input at the end.

use uuid::Uuid;

use super::{ScriptCall, Store, StoreError};

/// The registration state of one input, as kept in Redis: `"<confirmed> <sealed> <fp>"`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    /// Every line before this one (0-based) is confirmed on the broker.
    pub confirmed: u64,
    /// The whole input is confirmed and registered.
    pub sealed: bool,
    /// The fingerprint of the input's first lines.
    pub fingerprint: String,
}

impl Checkpoint {
    /// Parses the stored form; `None` when it is malformed.
    pub fn parse(raw: &str) -> Option<Checkpoint> {
        let mut parts = raw.split(' ');
        let confirmed = parts.next()?.parse().ok()?;
        let sealed = match parts.next()? {
            "0" => false,
            "1" => true,
            _ => return None,
        };
        let fingerprint = parts.next().filter(|f| !f.is_empty())?.to_string();
        if parts.next().is_some() {
            return None;
        }
        Some(Checkpoint {
            confirmed,
            sealed,
            fingerprint,
        })
    }
}

/// The tasks of one published message, as registered.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Registration {
    /// Line positions (0-based) of tasks whose id derives from their position.
    pub positions: Vec<u64>,
    /// Tasks whose id was given explicitly.
    pub explicit: Vec<Uuid>,
}

impl Registration {
    pub fn is_empty(&self) -> bool {
        self.positions.is_empty() && self.explicit.is_empty()
    }
}

/// One input of one job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InputRef {
    pub job: Uuid,
    pub input: Uuid,
}

impl Store {
    /// Records the input in its job (a new one as nothing confirmed, counted in
    /// `enqueuing`) and returns its checkpoint; a known input keeps its checkpoint, whose
    /// fingerprint the caller compares with its own.
    pub async fn begin_input(
        &self,
        at: InputRef,
        fingerprint: &str,
    ) -> Result<Checkpoint, StoreError> {
        let mut call = ScriptCall::new(&self.scripts.begin);
        call.key(self.names.inputs_key(at.job))
            .key(self.names.status_key(at.job))
            .arg(at.input.to_string())
            .arg(fingerprint)
            .arg(self.ttl_secs);
        let raw: String = self.write(&call).await?;
        self.parse_checkpoint(at.job, &raw)
    }

    /// Registers the tasks of one message (before it is published), moves the checkpoint to
    /// `confirmed` (if further) and, with `seal`, marks the input complete. Returns how many
    /// tasks were new to the job (and raised its total).
    pub async fn register(
        &self,
        at: InputRef,
        tasks: &Registration,
        confirmed: u64,
        seal: bool,
    ) -> Result<u64, StoreError> {
        let mut call = ScriptCall::new(&self.scripts.register);
        call.key(self.names.inputs_key(at.job))
            .key(self.names.status_key(at.job))
            .key(self.names.input_positions_key(at.job, at.input))
            .key(self.names.task_ids_key(at.job))
            .arg(at.input.to_string())
            .arg(confirmed)
            .arg(if seal { "1" } else { "0" })
            .arg(self.ttl_secs)
            .arg(tasks.positions.len());
        for position in &tasks.positions {
            call.arg(*position);
        }
        for id in &tasks.explicit {
            call.arg(id.to_string());
        }
        self.write(&call).await
    }

    /// Binds the job to the digest of the HTTP request that creates it; returns the digest
    /// it is bound to (`digest` itself for the first request).
    pub async fn claim_job(&self, job: Uuid, digest: &str) -> Result<String, StoreError> {
        let mut call = ScriptCall::new(&self.scripts.claim);
        call.key(self.names.inputs_key(job))
            .arg(digest)
            .arg(self.ttl_secs);
        self.write(&call).await
    }

    fn parse_checkpoint(&self, job: Uuid, raw: &str) -> Result<Checkpoint, StoreError> {
        Checkpoint::parse(raw).ok_or_else(|| StoreError::Corrupt {
            key: self.names.inputs_key(job),
            detail: format!("checkpoint {raw:?}"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checkpoints_parse() {
        assert_eq!(
            Checkpoint::parse("0 0 3-abc"),
            Some(Checkpoint {
                confirmed: 0,
                sealed: false,
                fingerprint: "3-abc".into()
            })
        );
        let c = Checkpoint::parse("123456 1 16-0f").unwrap();
        assert_eq!((c.confirmed, c.sealed), (123_456, true));
        for bad in [
            "",
            "1",
            "1 0",
            "1 0 ",
            "x 0 fp",
            "-1 0 fp",
            "1 2 fp",
            "1 0 fp extra",
            "1  0 fp",
        ] {
            assert_eq!(Checkpoint::parse(bad), None, "{bad:?}");
        }
    }
}
