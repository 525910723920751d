//! The rules for text a person or a device supplies (versions, names,
//! labels), written once: the HTTP edge turns a refusal into a 422 naming
//! the field, the CLI into a one-line error. Each function returns the reason
//! a value is refused, without the field name.

use crate::selector::{validate_label_key, validate_label_value, Labels};

/// Labels a device, an enrollment token or a selector may carry at most.
pub const MAX_LABELS: usize = 64;

/// Characters that make text lie about itself when printed: control
/// characters (newlines, NUL, the ESC of ANSI sequences) forge log lines and
/// terminal output; bidirectional overrides and zero-width characters make
/// two different strings look alike.
pub fn is_deceptive(c: char) -> bool {
    c.is_control()
        || matches!(c,
            '\u{00AD}' | '\u{061C}' | '\u{180E}' | '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}'
            | '\u{2060}'..='\u{2064}' | '\u{2066}'..='\u{2069}' | '\u{FEFF}')
}

/// A version: 1 to 128 characters, no whitespace, control, bidi or zero-width characters.
pub fn version(v: &str) -> Result<(), String> {
    if v.trim().is_empty() || v.len() > 128 || v.chars().any(|c| is_deceptive(c) || c.is_whitespace()) {
        return Err(format!(
            "'{}' is not a valid version: 1 to 128 characters, no spaces, control, bidi or zero-width characters",
            v.escape_debug()
        ));
    }
    Ok(())
}

/// Longest container image reference accepted.
pub const MAX_IMAGE: usize = 512;

/// A container image reference as Kubernetes takes it:
/// `[registry[:port]/]path[:tag][@sha256:<64 hex>]`, lowercase path
/// components of letters, digits and `._-`, a tag of at most 128 letters,
/// digits and `._-` (not starting with `.` or `-`).
pub fn image(s: &str) -> Result<(), String> {
    let bad = |why: &str| Err(format!("'{}' is not a container image reference: {why}", s.escape_debug()));
    if s.is_empty() || s.len() > MAX_IMAGE {
        return bad(&format!("1 to {MAX_IMAGE} characters"));
    }
    let (rest, digest) = match s.split_once('@') {
        Some((r, d)) => (r, Some(d)),
        None => (s, None),
    };
    if let Some(d) = digest {
        match d.strip_prefix("sha256:") {
            Some(hex) if is_sha256(hex) && hex == hex.to_ascii_lowercase() => {}
            _ => return bad("a digest is sha256: and 64 lowercase hex characters"),
        }
    }
    // A tag follows the last ':' after the last '/' (a ':' before it is a registry port).
    let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
    let (path, tag) = match rest[last_slash..].rfind(':') {
        Some(i) => (&rest[..last_slash + i], Some(&rest[last_slash + i + 1..])),
        None => (rest, None),
    };
    if let Some(t) = tag {
        let ok = !t.is_empty()
            && t.len() <= 128
            && !t.starts_with(['.', '-'])
            && t.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
        if !ok {
            return bad("a tag is 1 to 128 letters, digits, '.', '_' or '-', not starting with '.' or '-'");
        }
    }
    let mut parts = path.split('/').peekable();
    let mut first = true;
    while let Some(part) = parts.next() {
        // The first of several components may be a registry host with a port.
        let registry = first && parts.peek().is_some() && (part.contains(['.', ':']) || part == "localhost");
        first = false;
        let ok = !part.is_empty()
            && if registry {
                part.bytes().all(|b| b.is_ascii_alphanumeric() || b".-:".contains(&b))
            } else {
                part.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
                    && !part.starts_with(['.', '_', '-'])
            };
        if !ok {
            return bad("path components are lowercase letters, digits, '.', '_' or '-'");
        }
    }
    Ok(())
}

/// A device's (or token's) display name: 1 to 128 characters, no control,
/// bidi or zero-width characters.
pub fn name(n: &str) -> Result<(), String> {
    if n.trim().is_empty() || n.len() > 128 {
        return Err("name must be 1 to 128 characters".into());
    }
    if n.chars().any(is_deceptive) {
        return Err(format!("name '{}' contains control, bidi or zero-width characters", n.escape_debug()));
    }
    Ok(())
}

/// The name of an analysis check or an alert rule, used in events, URLs
/// and Alertmanager labels: 1 to 63 letters, digits, `.`, `_` or `-`.
pub fn identifier(n: &str) -> Result<(), String> {
    if n.is_empty() || n.len() > 63 || !n.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b)) {
        return Err("must be 1 to 63 letters, digits, '.', '_' or '-'".into());
    }
    Ok(())
}

/// A label set: at most [`MAX_LABELS`], each key and value valid. On a bad
/// label the error names its key (`Some(key)`), on too many none.
pub fn labels(labels: &Labels) -> Result<(), (Option<String>, String)> {
    if labels.len() > MAX_LABELS {
        return Err((None, format!("at most {MAX_LABELS} labels")));
    }
    for (k, v) in labels {
        validate_label_key(k).map_err(|m| (Some(k.clone()), m))?;
        validate_label_value(v).map_err(|m| (Some(k.clone()), m))?;
    }
    Ok(())
}

/// Artifacts a release may list at most.
pub const MAX_ARTIFACTS: usize = 64;
/// Longest artifact name, bytes (it becomes a file name on devices).
pub const MAX_ARTIFACT_NAME: usize = 128;
/// Longest signature (of a release or an artifact), bytes: an ed25519
/// signature is 88 characters in base64, so this leaves room for others.
pub const MAX_SIGNATURE: usize = 1024;
/// Largest artifact size a release may declare, bytes (1 TiB).
pub const MAX_ARTIFACT_SIZE: i64 = 1 << 40;
/// Longest artifact URI, bytes.
pub const MAX_URI: usize = 2048;
/// The server's own download path for uploaded artifacts, before the SHA-256.
pub const SERVER_ARTIFACT_PREFIX: &str = "/device/v1/artifacts/";

/// An artifact name, which agents use as a file name: 1 to 128 bytes, not
/// `.`/`..` nor starting with `.`, no `/` or `\\`, no control, bidi or
/// zero-width characters.
pub fn artifact_name(n: &str) -> Result<(), String> {
    let why = if n.is_empty() || n.len() > MAX_ARTIFACT_NAME {
        Some("must be 1 to 128 bytes")
    } else if n.starts_with('.') {
        Some("must not start with '.' (no '.', '..' or hidden files)")
    } else if n.contains(['/', '\\']) {
        Some("must not contain '/' or '\\'")
    } else if n.chars().any(is_deceptive) {
        Some("must not contain control, bidi or zero-width characters")
    } else if n.trim() != n {
        Some("must not start or end with whitespace")
    } else {
        None
    };
    match why {
        Some(w) => Err(format!("'{}' is not a valid artifact name: {w}", n.escape_debug())),
        None => Ok(()),
    }
}

/// Whether `s` is a lowercase hex SHA-256.
pub fn is_sha256(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Where devices download an artifact: an `https://` URL (`http://` too
/// when `allow_http`), or the server's own `/device/v1/artifacts/<sha256>`.
/// Anything else (`file:`, other schemes, relative paths) is refused.
pub fn artifact_uri(uri: &str, allow_http: bool) -> Result<(), String> {
    if uri.is_empty() || uri.len() > MAX_URI {
        return Err(format!("must be 1 to {MAX_URI} bytes"));
    }
    if uri.chars().any(|c| is_deceptive(c) || c.is_whitespace()) {
        return Err("must not contain spaces, control, bidi or zero-width characters".into());
    }
    if let Some(sha) = uri.strip_prefix(SERVER_ARTIFACT_PREFIX) {
        return if is_sha256(sha) {
            Ok(())
        } else {
            Err(format!("a server path must be {SERVER_ARTIFACT_PREFIX}<lowercase hex sha256>"))
        };
    }
    let lower = uri.to_ascii_lowercase();
    let rest = if let Some(r) = lower.strip_prefix("https://") {
        r
    } else if let Some(r) = lower.strip_prefix("http://") {
        if !allow_http {
            return Err(
                "http:// is refused (start the server with --allow-http-artifacts to allow it); use https://".into()
            );
        }
        r
    } else {
        return Err(format!("must be an https:// URL or {SERVER_ARTIFACT_PREFIX}<sha256>"));
    };
    let host = rest.split(['/', '?', '#']).next().unwrap_or("");
    let host = host.rsplit('@').next().unwrap_or("");
    if host.is_empty() || host.starts_with(':') {
        return Err("the URL has no host".into());
    }
    Ok(())
}

/// A webhook's URL: `http://` or `https://` with a host, at most
/// [`MAX_URI`] bytes, no spaces, control, bidi or zero-width characters, no
/// fragment (it is never sent).
pub fn webhook_url(uri: &str) -> Result<(), String> {
    if uri.is_empty() || uri.len() > MAX_URI {
        return Err(format!("must be 1 to {MAX_URI} bytes"));
    }
    if uri.chars().any(|c| is_deceptive(c) || c.is_whitespace()) {
        return Err("must not contain spaces, control, bidi or zero-width characters".into());
    }
    let lower = uri.to_ascii_lowercase();
    let Some(rest) = lower.strip_prefix("https://").or_else(|| lower.strip_prefix("http://")) else {
        return Err("must be an http:// or https:// URL".into());
    };
    if uri.contains('#') {
        return Err("must not have a fragment (#…)".into());
    }
    let host = rest.split(['/', '?']).next().unwrap_or("");
    let host = host.rsplit('@').next().unwrap_or("");
    if host.is_empty() || host.starts_with(':') {
        return Err("the URL has no host".into());
    }
    Ok(())
}

/// Longest description (of a webhook), characters.
pub const MAX_DESCRIPTION: usize = 500;

/// A free-text description: at most [`MAX_DESCRIPTION`] characters, no
/// control, bidi or zero-width characters.
pub fn description(d: &str) -> Result<(), String> {
    if d.chars().count() > MAX_DESCRIPTION {
        return Err(format!("at most {MAX_DESCRIPTION} characters"));
    }
    if d.chars().any(is_deceptive) {
        return Err("must not contain control, bidi or zero-width characters".into());
    }
    Ok(())
}

/// A signature: at most [`MAX_SIGNATURE`] bytes of printable ASCII.
pub fn signature(s: &str) -> Result<(), String> {
    if s.len() > MAX_SIGNATURE {
        return Err(format!("at most {MAX_SIGNATURE} bytes"));
    }
    if !s.bytes().all(|b| b.is_ascii_graphic()) {
        return Err("must be printable ASCII without spaces (base64 or hex)".into());
    }
    Ok(())
}

/// An artifact's declared size: 0 to [`MAX_ARTIFACT_SIZE`] bytes.
pub fn artifact_size(n: i64) -> Result<(), String> {
    if !(0..=MAX_ARTIFACT_SIZE).contains(&n) {
        return Err(format!("must be between 0 and {MAX_ARTIFACT_SIZE} bytes"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn image_references() {
        for ok in [
            "nginx",
            "nginx:1.27",
            "registry.example.com:5000/robots/arm:2.0.0",
            "localhost/robot@sha256:0000000000000000000000000000000000000000000000000000000000000000",
            "ghcr.io/a/b:v1_rc-2@sha256:0000000000000000000000000000000000000000000000000000000000000000",
        ] {
            assert!(super::image(ok).is_ok(), "{ok}");
        }
        for bad in ["", "Nginx", "a b", "robot:", "robot:-x", "robot@sha256:xyz", "a//b", "robot@md5:00", "/robot"] {
            assert!(super::image(bad).is_err(), "{bad:?}");
        }
    }

    use super::*;

    #[test]
    fn versions_names_and_labels() {
        assert!(version("2.0.0").is_ok());
        for bad in ["", " ", "1 0", "a\nb", &"x".repeat(129)] {
            assert!(version(bad).is_err(), "{bad:?}");
        }
        assert!(version("a\nb").unwrap_err().contains("a\\nb"), "control characters are escaped in the message");
        assert!(name("robot-1").is_ok());
        assert!(name("Roboter Süd 3").is_ok());
        for bad in ["a\nb", "evil\u{1b}[31m", "nul\0", "admin\u{202E}txt", "zero\u{200B}width"] {
            assert!(name(bad).is_err(), "{bad:?}");
        }
        assert!(version("2.0.0\u{202E}").is_err() && version("2.0\u{200B}.0").is_err());
        assert!(name("").is_err() && name(&"n".repeat(129)).is_err());
        let mut l = Labels::new();
        l.insert("site".into(), "a".into());
        assert!(labels(&l).is_ok());
        l.insert("bad key!".into(), "x".into());
        assert_eq!(labels(&l).unwrap_err().0.as_deref(), Some("bad key!"));
        let many: Labels = (0..65).map(|i| (format!("k{i}"), "v".to_string())).collect();
        assert_eq!(labels(&many).unwrap_err().0, None);
    }

    #[test]
    fn artifact_names_are_safe_file_names() {
        for good in ["fw.bin", "fw#1.bin", "rootfs-2.0.0.ext4.gz", "Süd.bin", "a..b", &"n".repeat(128)] {
            assert!(artifact_name(good).is_ok(), "{good:?}");
        }
        for bad in [
            "",
            ".",
            "..",
            ".hidden",
            "a/b",
            "a\\b",
            "../etc",
            "a\nb",
            "nul\0",
            "a\u{202E}b",
            "zw\u{200B}",
            " pad",
            "pad ",
            &"n".repeat(129),
        ] {
            assert!(artifact_name(bad).is_err(), "{bad:?}");
        }
        assert!(artifact_name("a\nb").unwrap_err().contains("a\\nb"), "escaped in the message");
    }

    #[test]
    fn webhook_urls_are_http_or_https_with_a_host() {
        for good in ["https://hooks.example/otafleet", "http://127.0.0.1:9000/x?a=1", "HTTP://h"] {
            assert!(webhook_url(good).is_ok(), "{good:?}");
        }
        for bad in [
            "",
            "ftp://x",
            "https://",
            "http:///p",
            "https://a b",
            "https://x/#frag",
            "javascript:alert(1)",
            "https://x/\u{202E}",
        ] {
            assert!(webhook_url(bad).is_err(), "{bad:?}");
        }
        assert!(webhook_url(&format!("https://x/{}", "a".repeat(MAX_URI))).is_err());
        assert!(description("pager for the night shift").is_ok() && description("").is_ok());
        assert!(description("a\nb").is_err() && description(&"x".repeat(MAX_DESCRIPTION + 1)).is_err());
    }

    #[test]
    fn artifact_uris_are_https_or_the_servers_own() {
        let sha = "a".repeat(64);
        let own = format!("{SERVER_ARTIFACT_PREFIX}{sha}");
        for good in ["https://cdn.example/fw.bin", "HTTPS://cdn/x?y=1", "https://user@host:8443/p", own.as_str()] {
            assert!(artifact_uri(good, false).is_ok(), "{good:?}");
        }
        assert!(artifact_uri("http://cdn/x", true).is_ok());
        for bad in [
            "",
            "file:///etc/passwd",
            "http://cdn/x",
            "ftp://x/y",
            "/etc/passwd",
            "fw.bin",
            "https://",
            "https:///path",
            "https://a b",
            "https://x/\n",
            "/device/v1/artifacts/../../etc",
            "/device/v1/artifacts/ABC",
            "javascript:alert(1)",
        ] {
            assert!(artifact_uri(bad, false).is_err(), "{bad:?}");
        }
        assert!(artifact_uri("http://cdn/x", false).unwrap_err().contains("--allow-http-artifacts"));
        assert!(artifact_uri(&format!("https://h/{}", "x".repeat(MAX_URI)), false).is_err());
    }

    #[test]
    fn signatures_and_sizes_are_bounded() {
        assert!(signature("MEUCIQ+/=").is_ok() && signature(&"s".repeat(MAX_SIGNATURE)).is_ok());
        assert!(signature(&"s".repeat(MAX_SIGNATURE + 1)).is_err() && signature("a b").is_err());
        assert!(artifact_size(0).is_ok() && artifact_size(MAX_ARTIFACT_SIZE).is_ok());
        assert!(artifact_size(-1).is_err() && artifact_size(MAX_ARTIFACT_SIZE + 1).is_err());
        assert!(is_sha256(&"0".repeat(64)) && !is_sha256(&"A".repeat(64)) && !is_sha256("0"));
    }
}
