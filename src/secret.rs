//! Secrets (API keys and secrets, tokens) as a type that cannot leak by accident: its `Debug` and
//! `Display` print a fixed mask, it is not `Serialize`, and the only way to the text is the
//! deliberately named [`Secret::expose`], used where the value is sent or signed.

use std::fmt;

#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: String) -> Self {
        Self(value)
    }

    /// The secret itself. Call it only to put the value on the wire or into a signature.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// Reads a secret from the environment variable `name`. The error names the variable, never a value.
pub fn from_env(name: &str) -> Result<Secret, String> {
    match std::env::var(name) {
        Ok(value) if !value.trim().is_empty() => Ok(Secret::new(value.trim().to_owned())),
        Ok(_) => Err(format!("environment variable {name} is empty")),
        Err(std::env::VarError::NotPresent) => Err(format!("environment variable {name} is not set")),
        Err(std::env::VarError::NotUnicode(_)) => Err(format!("environment variable {name} is not valid UTF-8")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_never_print() {
        let secret = Secret::new("hunter2-very-secret".into());
        assert_eq!(format!("{secret}"), "***");
        assert_eq!(format!("{secret:?}"), "Secret(***)");
        assert_eq!(format!("{:?}", Some(secret.clone())), "Some(Secret(***))");
        assert_eq!(secret.expose(), "hunter2-very-secret");
    }

    #[test]
    fn a_missing_variable_is_named_not_shown() {
        let error = from_env("BULWARK_TEST_SURELY_UNSET_VARIABLE").unwrap_err();
        assert!(error.contains("BULWARK_TEST_SURELY_UNSET_VARIABLE is not set"));
    }
}
