use serde::{Deserialize, Serialize};

/// The JSON body of every error Stead answers: `{"error": {"code": "…", "message": "…"}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorDetail {
    /// A stable, machine-readable code such as `key_too_large`.
    pub code: String,
    /// What was wrong, in words a user can act on.
    pub message: String,
}

impl ErrorBody {
    pub fn new(code: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            error: ErrorDetail {
                code: code.into(),
                message: message.into(),
            },
        }
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|_| {
            r#"{"error":{"code":"internal","message":"error body not serializable"}}"#.into()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_body_has_the_documented_shape() {
        let v: serde_json::Value =
            serde_json::from_str(&ErrorBody::new("key_too_large", "too big").to_json()).unwrap();
        assert_eq!(v["error"]["code"], "key_too_large");
        assert_eq!(v["error"]["message"], "too big");
    }
}
