//! Producer input: where lines come from, and what a line means.
//!
//! A line is blank, a `#` comment, an http(s) URL, or a task JSON object (`url` required;
//! `v`, `job_id`, `task_id`, `headers`, `meta` optional; a `job_id` must be the job's).
//! Sources are read as streams, so memory does not grow with the input; stdin (and an HTTP
//! request body) is spooled to a temporary file so it can be validated before anything is
//! published.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use serde::Deserialize;
use tributary::message::{Task, VERSION};

use crate::identity::{Identify, InputIdentity};
use uuid::Uuid;

/// A task line as the producer accepts it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct InputTask {
    #[serde(default)]
    v: Option<u8>,
    #[serde(default)]
    job_id: Option<Uuid>,
    #[serde(default)]
    task_id: Option<Uuid>,
    url: String,
    #[serde(default)]
    headers: Option<BTreeMap<String, String>>,
    #[serde(default)]
    meta: Option<serde_json::Value>,
}

/// Parses one line: `Ok(None)` for blank lines and comments, `Err(reason)` for a line that is
/// neither a valid URL nor a valid task. The task's id is `id` unless a task object gives
/// one (see [`crate::identity`]).
pub fn parse_line(line: &str, job: Uuid, id: Uuid) -> Result<Option<Task>, String> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return Ok(None);
    }
    let task = if line.starts_with('{') {
        let input: InputTask =
            serde_json::from_str(line).map_err(|e| format!("not a task object: {e}"))?;
        if let Some(v) = input.v
            && v != VERSION
        {
            return Err(format!("unsupported task version {v}"));
        }
        if let Some(other) = input.job_id
            && other != job
        {
            return Err(format!(
                "job_id {other} is not the job being enqueued ({job})"
            ));
        }
        Task {
            v: VERSION,
            job_id: job,
            task_id: input.task_id.filter(|t| !t.is_nil()).unwrap_or(id),
            url: input.url,
            headers: input.headers,
            meta: input.meta,
        }
    } else {
        Task::identified(job, id, line.to_string())
    };
    task.validate().map_err(|f| f.reason)?;
    Ok(Some(task))
}

/// What each line of a source holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Producer input: blank, `#` comment, URL or task object ([`parse_line`]).
    Lines,
    /// One JSON string, a URL, per line (the `urls` of an HTTP job, spooled).
    JsonUrls,
    /// One JSON task object per line (the `tasks` of an HTTP job, spooled).
    JsonTasks,
}

/// Parses one line of a source in `format` (see [`parse_line`] for the results).
pub fn parse_entry(
    format: Format,
    line: &str,
    job: Uuid,
    id: Uuid,
) -> Result<Option<Task>, String> {
    match format {
        Format::Lines => parse_line(line, job, id),
        Format::JsonUrls => {
            let url: String =
                serde_json::from_str(line).map_err(|_| "not a URL string".to_string())?;
            let task = Task::identified(job, id, url.trim().to_string());
            task.validate().map_err(|f| f.reason)?;
            Ok(Some(task))
        }
        Format::JsonTasks if line.trim_start().starts_with('{') => parse_line(line, job, id),
        Format::JsonTasks => Err("not a task object".into()),
    }
}

/// Where the lines come from.
#[derive(Debug)]
pub enum Source {
    Args(Vec<String>),
    File(PathBuf),
    /// Stdin, spooled; the file is deleted when this is dropped.
    Spooled(tempfile::NamedTempFile),
    /// An HTTP request body, spooled (deleted on drop), one entry per line.
    Body {
        spool: tempfile::NamedTempFile,
        format: Format,
    },
}

impl Source {
    /// Picks the source from `--file` and the positional URLs (`-` = stdin).
    pub fn open(file: Option<&Path>, urls: &[String]) -> anyhow::Result<Option<Source>> {
        let stdin_wanted =
            file.is_some_and(|f| f == Path::new("-")) || urls.iter().any(|u| u == "-");
        if stdin_wanted {
            return Ok(Some(Source::Spooled(spool_stdin()?)));
        }
        if let Some(path) = file {
            File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
            return Ok(Some(Source::File(path.to_path_buf())));
        }
        if urls.is_empty() {
            return Ok(None);
        }
        Ok(Some(Source::Args(urls.to_vec())))
    }

    pub fn describe(&self) -> String {
        match self {
            Source::Args(_) => "arguments".into(),
            Source::File(p) => p.display().to_string(),
            Source::Spooled(_) => "stdin".into(),
            Source::Body { .. } => "the request body".into(),
        }
    }

    /// What each line holds.
    pub fn format(&self) -> Format {
        match self {
            Source::Body { format, .. } => *format,
            _ => Format::Lines,
        }
    }

    /// Parses one line of this source (`id` as in [`parse_line`]).
    pub fn parse(&self, line: &str, job: Uuid, id: Uuid) -> Result<Option<Task>, String> {
        parse_entry(self.format(), line, job, id)
    }

    /// The lines, streaming (numbered from 1 by the caller's `enumerate() + 1`).
    pub fn lines(
        &self,
    ) -> anyhow::Result<Box<dyn Iterator<Item = io::Result<String>> + Send + '_>> {
        let open =
            |path: &Path| -> anyhow::Result<Box<dyn Iterator<Item = io::Result<String>> + Send>> {
                let file =
                    File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
                Ok(Box::new(BufReader::with_capacity(1 << 16, file).lines()))
            };
        match self {
            Source::Args(urls) => Ok(Box::new(urls.iter().cloned().map(Ok))),
            Source::File(path) => open(path),
            Source::Spooled(file) | Source::Body { spool: file, .. } => open(file.path()),
        }
    }

    /// Calls `each(line_number, line)` for every line, streaming.
    pub fn for_each_line(
        &self,
        mut each: impl FnMut(usize, &str) -> anyhow::Result<()>,
    ) -> anyhow::Result<()> {
        for (i, line) in self.lines()?.enumerate() {
            let line =
                line.with_context(|| format!("reading line {} of {}", i + 1, self.describe()))?;
            each(i + 1, &line)?;
        }
        Ok(())
    }
}

fn spool_stdin() -> anyhow::Result<tempfile::NamedTempFile> {
    let mut spool =
        tempfile::NamedTempFile::new().context("cannot create a spool file for stdin")?;
    let stdin = io::stdin();
    let mut lock = stdin.lock();
    io::copy(&mut lock, spool.as_file_mut()).context("reading stdin")?;
    spool.as_file_mut().flush()?;
    Ok(spool)
}

/// What the validation pass found.
#[derive(Debug, Default)]
pub struct Scan {
    pub valid: u64,
    pub invalid: Vec<(usize, String)>,
    pub invalid_count: u64,
    /// The input's id and fingerprint (`None` without any entry).
    pub identity: Option<InputIdentity>,
    /// Hex SHA-256 of every line (an HTTP request's identity).
    pub digest: String,
}

/// Most invalid lines reported one by one.
pub const MAX_REPORTED: usize = 20;

/// Validates every line without keeping any, and identifies the input.
pub fn scan(source: &Source, job: Uuid) -> anyhow::Result<Scan> {
    let mut scan = Scan::default();
    let mut identify = Identify::default();
    source.for_each_line(|n, line| {
        identify.line(line);
        match source.parse(line, job, Uuid::nil()) {
            Ok(Some(_)) => scan.valid += 1,
            Ok(None) => {}
            Err(reason) => {
                scan.invalid_count += 1;
                if scan.invalid.len() < MAX_REPORTED {
                    scan.invalid.push((n, reason));
                }
            }
        }
        Ok(())
    })?;
    (scan.identity, scan.digest) = identify.finish();
    Ok(scan)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: Uuid = Uuid::from_u128(7);

    fn job() -> Uuid {
        Uuid::parse_str("6f1c1b7e-4a55-4d0e-9a3c-0a8a3f3f2b10").unwrap()
    }

    #[test]
    fn urls_comments_and_blanks() {
        assert_eq!(parse_line("", job(), ID), Ok(None));
        assert_eq!(parse_line("   # comment", job(), ID), Ok(None));
        let t = parse_line("  https://api.example.com/q/AAPL  ", job(), ID)
            .unwrap()
            .unwrap();
        assert_eq!(t.url, "https://api.example.com/q/AAPL");
        assert_eq!(t.job_id, job());
        assert_eq!(t.task_id, ID);
        assert!(
            parse_line("ftp://x/y", job(), ID)
                .unwrap_err()
                .contains("scheme")
        );
        assert!(parse_line("not a url", job(), ID).is_err());
        assert!(parse_line("http://", job(), ID).is_err());
    }

    #[test]
    fn task_objects() {
        let t = parse_line(
            r#"{"url":"http://a.example/1","headers":{"accept":"application/json"},"meta":{"k":1}}"#,
            job(),
            ID,
        )
        .unwrap()
        .unwrap();
        assert_eq!(t.meta, Some(serde_json::json!({"k": 1})));
        assert_eq!(t.task_id, ID);
        let id = Uuid::new_v4();
        let t = parse_line(
            &format!(r#"{{"v":1,"task_id":"{id}","url":"http://a/1"}}"#),
            job(),
            ID,
        )
        .unwrap()
        .unwrap();
        assert_eq!(t.task_id, id);
        let other = Uuid::new_v4();
        assert!(
            parse_line(
                &format!(r#"{{"job_id":"{other}","url":"http://a/1"}}"#),
                job(),
                ID
            )
            .unwrap_err()
            .contains("not the job")
        );
        assert!(parse_line(r#"{"url":"http://a/1","extra":1}"#, job(), ID).is_err());
        assert!(parse_line(r#"{"url":"http://a/1","headers":{"host":"x"}}"#, job(), ID).is_err());
        assert!(parse_line(r#"{"v":2,"url":"http://a/1"}"#, job(), ID).is_err());
        assert!(parse_line("{broken", job(), ID).is_err());
    }

    #[test]
    fn scanning_counts_and_reports() {
        let source = Source::Args(vec![
            "http://a/1".into(),
            "# c".into(),
            "bad".into(),
            "http://a/2".into(),
        ]);
        let scan = scan(&source, job()).unwrap();
        assert_eq!(scan.valid, 2);
        assert_eq!(scan.invalid_count, 1);
        assert_eq!(scan.invalid[0].0, 3);
    }

    #[test]
    fn json_entries() {
        let url = parse_entry(Format::JsonUrls, r#"" http://a.example/1 ""#, job(), ID);
        assert_eq!(url.unwrap().unwrap().url, "http://a.example/1");
        for bad in [
            "3",
            "null",
            r#"{"url":"http://a/1"}"#,
            r##""# c""##,
            r#""""#,
        ] {
            assert!(
                parse_entry(Format::JsonUrls, bad, job(), ID).is_err(),
                "{bad}"
            );
        }
        let task = parse_entry(Format::JsonTasks, r#"{"url":"http://a/1"}"#, job(), ID);
        assert_eq!(task.unwrap().unwrap().url, "http://a/1");
        for bad in [r#""http://a/1""#, "7", "{}", r#"{"url":"ftp://a/1"}"#] {
            assert!(
                parse_entry(Format::JsonTasks, bad, job(), ID).is_err(),
                "{bad}"
            );
        }
    }
}
