//! Text Postgres can store. Postgres refuses U+0000 in `text` and `jsonb` (and in a query
//! parameter of either), so every string that reaches it — stored or used in a query, object
//! keys included — is checked here first: a request is refused with 422 naming the field, and a
//! service's answer that contains one is a failed call ([`crate::saga::classify`]).

use serde_json::Value;
use tandem_kit::problem::FieldIssue;

/// What the 422 says about a string that contains U+0000 (the kit's wording, shared by every
/// server).
pub use tandem_kit::http::NUL_MESSAGE;

/// The JSON Pointer (below `base`) of the first string or object key in `value` that contains
/// U+0000 (the kit's walk, [`tandem_kit::http::nul_in`]). A key's pointer names the member it
/// labels.
pub fn find_nul(value: &Value, base: &str) -> Option<String> {
    tandem_kit::http::nul_in(value, base.to_string())
}

/// The 422 issue for a JSON document with U+0000 somewhere below `base`, if any.
pub fn check_json(value: &Value, base: &str) -> Result<(), FieldIssue> {
    match find_nul(value, base) {
        Some(pointer) => Err(FieldIssue {
            pointer,
            message: NUL_MESSAGE.to_string(),
        }),
        None => Ok(()),
    }
}

/// The 422 issue for one string parameter (`/query/definition`, a header …) with U+0000.
pub fn check_str(value: &str, pointer: &str) -> Result<(), FieldIssue> {
    if value.contains('\0') {
        Err(FieldIssue {
            pointer: pointer.to_string(),
            message: NUL_MESSAGE.to_string(),
        })
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn finds_nul_in_strings_and_keys_by_pointer() {
        assert_eq!(
            find_nul(&json!({"a": ["x", "y\u{0}"]}), ""),
            Some("/a/1".into())
        );
        assert_eq!(
            find_nul(&json!({"in": {"k\u{0}": 1}}), "/body"),
            Some("/body/in/k\u{0}".into())
        );
        assert_eq!(find_nul(&json!({"a/b": "\u{0}"}), ""), Some("/a~1b".into()));
        assert_eq!(find_nul(&json!({"a": [1, null, true, "ok"]}), ""), None);
        assert!(check_str("x\0", "/query/definition").is_err());
        assert!(check_str("x", "/query/definition").is_ok());
    }
}
