//! Keeping secrets out of everything we print, log or upload.
//!
//! Three layers: values under secret-looking keys are replaced; passwords inside URIs
//! (`scheme://user:password@host`, `password=` query parameters) are replaced; and any text can
//! be scrubbed of the literal values of secret environment variables, which catches a secret
//! that reached a message by a path nobody foresaw.

use serde_yaml_ng::Value;

/// What replaces a secret.
pub const MASK: &str = "***";

/// Shortest secret value that is scrubbed from free text; shorter ones would mangle messages.
const MIN_SCRUB_LEN: usize = 4;

/// True for key or variable names that hold secrets (`*_PASSWORD`, `*_TOKEN`, `*_SECRET`, ...).
pub fn is_secret_name(name: &str) -> bool {
    let upper = name.to_ascii_uppercase();
    [
        "PASSWORD",
        "PASSWD",
        "TOKEN",
        "SECRET",
        "API_KEY",
        "PRIVATE_KEY",
        "CREDENTIAL",
    ]
    .iter()
    .any(|s| upper.contains(s))
}

/// Masks the password of every `scheme://user:password@host` and every `password=` query
/// parameter in `text`.
pub fn redact_uri_passwords(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(pos) = rest.find("://") {
        let (head, tail) = rest.split_at(pos + 3);
        out.push_str(head);
        // The authority ends at the first '/', '?', '#' or whitespace.
        let auth_end = tail
            .find(|c: char| matches!(c, '/' | '?' | '#') || c.is_whitespace())
            .unwrap_or(tail.len());
        let authority = &tail[..auth_end];
        match authority.rfind('@') {
            Some(at) => {
                let userinfo = &authority[..at];
                match userinfo.split_once(':') {
                    Some((user, _)) => {
                        out.push_str(user);
                        out.push(':');
                        out.push_str(MASK);
                    }
                    None => out.push_str(userinfo),
                }
                out.push_str(&authority[at..]);
            }
            None => out.push_str(authority),
        }
        rest = &tail[auth_end..];
    }
    out.push_str(rest);
    redact_query_passwords(&out)
}

fn redact_query_passwords(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(pos) = rest.to_ascii_lowercase().find("password=") {
        let value_start = pos + "password=".len();
        out.push_str(&rest[..value_start]);
        let tail = &rest[value_start..];
        let end = tail
            .find(|c: char| c == '&' || c == '#' || c.is_whitespace() || c == '"' || c == '\'')
            .unwrap_or(tail.len());
        if end > 0 {
            out.push_str(MASK);
        }
        rest = &tail[end..];
    }
    out.push_str(rest);
    out
}

/// Secret values to scrub from free text: the values of secret-named environment variables
/// and the passwords embedded in URIs held by any environment variable.
#[derive(Clone, Default)]
pub struct Redactor {
    secrets: Vec<String>,
}

impl std::fmt::Debug for Redactor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Redactor({} secrets)", self.secrets.len())
    }
}

impl Redactor {
    /// Collects secrets from the process environment.
    pub fn from_env() -> Self {
        Self::from_vars(std::env::vars())
    }

    /// Collects secrets from `(name, value)` pairs.
    pub fn from_vars(vars: impl IntoIterator<Item = (String, String)>) -> Self {
        let mut secrets = Vec::new();
        for (name, value) in vars {
            if is_secret_name(&name) {
                secrets.push(value.clone());
            }
            secrets.extend(uri_passwords(&value));
        }
        secrets.retain(|s| s.len() >= MIN_SCRUB_LEN);
        // Longest first, so a secret containing another is masked whole.
        secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
        secrets.dedup();
        Self { secrets }
    }

    /// Adds the URI passwords found in `text` (e.g. a config value) to the secrets.
    pub fn learn_from(&mut self, text: &str) {
        for p in uri_passwords(text) {
            if p.len() >= MIN_SCRUB_LEN && !self.secrets.contains(&p) {
                self.secrets.push(p);
            }
        }
        self.secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
    }

    /// `text` with URI passwords and every known secret value masked.
    pub fn scrub(&self, text: &str) -> String {
        let mut out = redact_uri_passwords(text);
        for secret in &self.secrets {
            if out.contains(secret.as_str()) {
                out = out.replace(secret.as_str(), MASK);
            }
            // Secrets may appear percent-encoded inside URIs.
            let encoded = percent_encode(secret);
            if encoded != *secret && out.contains(&encoded) {
                out = out.replace(&encoded, MASK);
            }
        }
        out
    }

    /// Masks secrets throughout a YAML tree: values under secret-named keys entirely, and
    /// every string scrubbed.
    pub fn redact_value(&self, value: &mut Value) {
        match value {
            Value::String(s) => *s = self.scrub(s),
            Value::Sequence(items) => items.iter_mut().for_each(|v| self.redact_value(v)),
            Value::Mapping(map) => {
                for (key, item) in map.iter_mut() {
                    let secret_key = key.as_str().is_some_and(is_secret_name);
                    if secret_key && !item.is_null() {
                        *item = Value::String(MASK.into());
                    } else {
                        self.redact_value(item);
                    }
                }
            }
            Value::Tagged(t) => self.redact_value(&mut t.value),
            _ => {}
        }
    }
}

fn uri_passwords(text: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut rest = text;
    while let Some(pos) = rest.find("://") {
        let tail = &rest[pos + 3..];
        let auth_end = tail
            .find(|c: char| matches!(c, '/' | '?' | '#') || c.is_whitespace())
            .unwrap_or(tail.len());
        let authority = &tail[..auth_end];
        if let Some(at) = authority.rfind('@')
            && let Some((_, password)) = authority[..at].split_once(':')
            && !password.is_empty()
        {
            found.push(password.to_owned());
            let decoded = percent_decode(password);
            if decoded != password {
                found.push(decoded);
            }
        }
        rest = &tail[auth_end..];
    }
    found
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let (Some(hi), Some(lo)) = (hex(bytes[i + 1]), hex(bytes[i + 2]))
        {
            out.push(hi * 16 + lo);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uri_passwords_are_masked() {
        assert_eq!(
            redact_uri_passwords("postgresql://bot:s3cr%40t@db:5432/x?sslmode=require"),
            "postgresql://bot:***@db:5432/x?sslmode=require"
        );
        assert_eq!(
            redact_uri_passwords("connect to postgres://u:p@h/d failed; http://h:1/a"),
            "connect to postgres://u:***@h/d failed; http://h:1/a"
        );
        assert_eq!(
            redact_uri_passwords("host=h password=hunter22 user=u"),
            "host=h password=*** user=u"
        );
        assert_eq!(redact_uri_passwords("http://user@h/"), "http://user@h/");
    }

    #[test]
    fn scrub_removes_env_secrets_plain_and_encoded() {
        let r = Redactor::from_vars([
            (
                "MLFLOW_TRACKING_PASSWORD".to_string(),
                "pa ss@word".to_string(),
            ),
            (
                "DATABASE_URI".to_string(),
                "postgres://u:dbsecret@h/d".to_string(),
            ),
            ("HOME".to_string(), "/root".to_string()),
        ]);
        let text = "a pa ss@word b pa%20ss%40word c dbsecret d /root";
        assert_eq!(r.scrub(text), "a *** b *** c *** d /root");
    }

    #[test]
    fn secret_keys_are_masked_in_trees() {
        let mut v: Value = serde_yaml_ng::from_str(
            "db: {database_uri: 'postgres://u:pw12@h/d', api_token: abc, name: x}",
        )
        .unwrap();
        Redactor::default().redact_value(&mut v);
        assert_eq!(v["db"]["database_uri"], Value::from("postgres://u:***@h/d"));
        assert_eq!(v["db"]["api_token"], Value::from(MASK));
        assert_eq!(v["db"]["name"], Value::from("x"));
    }
}
