//! Validation on write: every object is checked before it reaches etcd, with
//! errors that name the field path the way kubectl does.

use std::fmt;

/// What is wrong with one field, in the words Kubernetes uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ErrorType {
    /// The field must be set (`Required value`).
    Required,
    /// The value is not acceptable (`Invalid value: <value>`); the value is
    /// already rendered the way kubectl shows it (strings quoted).
    Invalid(String),
    /// The value is not one of a fixed set (`Unsupported value`).
    NotSupported {
        /// The rejected value, rendered.
        value: String,
        /// The values that would be accepted.
        supported: Vec<String>,
    },
    /// The value appears twice where it must be unique (`Duplicate value`).
    Duplicate(String),
    /// The field may not be set or changed here (`Forbidden`).
    Forbidden,
    /// The manifest names a field the kind does not have.
    UnknownField,
}

/// One validation failure: the field path, what kind of failure, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// Path of the field, e.g. `spec.template.spec.containers[0].image`.
    pub field: String,
    /// The kind of failure.
    pub error: ErrorType,
    /// Human explanation; may be empty.
    pub detail: String,
}

impl FieldError {
    /// `field: Required value`.
    pub fn required(field: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            error: ErrorType::Required,
            detail: String::new(),
        }
    }

    /// `field: Invalid value: <value>: <detail>`; `value` is any Debug-free
    /// rendering (use [`quote`] for strings).
    pub fn invalid(
        field: impl Into<String>,
        value: impl fmt::Display,
        detail: impl Into<String>,
    ) -> Self {
        Self {
            field: field.into(),
            error: ErrorType::Invalid(value.to_string()),
            detail: detail.into(),
        }
    }

    /// `field: Unsupported value: "<value>": supported values: "a", "b"`.
    pub fn not_supported(field: impl Into<String>, value: &str, supported: &[&str]) -> Self {
        Self {
            field: field.into(),
            error: ErrorType::NotSupported {
                value: quote(value),
                supported: supported.iter().map(|s| quote(s)).collect(),
            },
            detail: String::new(),
        }
    }

    /// `field: Duplicate value: "<value>"`.
    pub fn duplicate(field: impl Into<String>, value: &str) -> Self {
        Self {
            field: field.into(),
            error: ErrorType::Duplicate(quote(value)),
            detail: String::new(),
        }
    }

    /// `field: Forbidden: <detail>`.
    pub fn forbidden(field: impl Into<String>, detail: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            error: ErrorType::Forbidden,
            detail: detail.into(),
        }
    }

    /// `field: unknown field`.
    pub fn unknown(field: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            error: ErrorType::UnknownField,
            detail: String::new(),
        }
    }
}

/// Renders a string value as kubectl shows it in errors: `"value"`.
pub fn quote(value: &str) -> String {
    format!("{value:?}")
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: ", self.field)?;
        match &self.error {
            ErrorType::Required => f.write_str("Required value")?,
            ErrorType::Invalid(v) => write!(f, "Invalid value: {v}")?,
            ErrorType::NotSupported { value, supported } => write!(
                f,
                "Unsupported value: {value}: supported values: {}",
                supported.join(", ")
            )?,
            ErrorType::Duplicate(v) => write!(f, "Duplicate value: {v}")?,
            ErrorType::Forbidden => f.write_str("Forbidden")?,
            ErrorType::UnknownField => f.write_str("unknown field")?,
        }
        if !self.detail.is_empty() {
            write!(f, ": {}", self.detail)?;
        }
        Ok(())
    }
}

/// An object rejected on write, with every field error found.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct Invalid {
    /// The object's kind, e.g. `Deployment`.
    pub kind: String,
    /// The object's name (may be empty when the name itself is missing).
    pub name: String,
    /// Every failure found; never empty.
    pub errors: Vec<FieldError>,
}

impl fmt::Display for Invalid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "The {} {:?} is invalid: ", self.kind, self.name)?;
        if let [one] = self.errors.as_slice() {
            return write!(f, "{one}");
        }
        for e in &self.errors {
            write!(f, "\n* {e}")?;
        }
        Ok(())
    }
}

/// A kind that can check itself before it is written.
pub trait Validate {
    /// Every problem with this object, or an empty list when it may be stored.
    fn validate(&self) -> Vec<FieldError>;
}

mod kinds;

pub use kinds::parse_quantity;
