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

#[cfg(test)]
mod tests {
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
}
