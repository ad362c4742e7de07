//! Credentials never reach a log line: URLs are printed with their password removed.

/// `amqp://user:secret@host/vhost` becomes `amqp://user:***@host/vhost`; a URL that does not
/// parse is replaced by a placeholder rather than risk printing a secret.
pub fn redact_url(raw: &str) -> String {
    match url::Url::parse(raw) {
        Ok(mut url) => {
            if url.password().is_some() {
                let _ = url.set_password(Some("***"));
            }
            url.to_string()
        }
        Err(_) => "<unparsable url>".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::redact_url;

    #[test]
    fn removes_passwords() {
        assert_eq!(
            redact_url("amqp://guest:guest@127.0.0.1:5672/%2f"),
            "amqp://guest:***@127.0.0.1:5672/%2f"
        );
        assert_eq!(
            redact_url("redis://127.0.0.1:6379/"),
            "redis://127.0.0.1:6379/"
        );
        assert_eq!(
            redact_url("https://u:p@api.example.com/q?x=1"),
            "https://u:***@api.example.com/q?x=1"
        );
        assert_eq!(redact_url("not a url"), "<unparsable url>");
    }
}
