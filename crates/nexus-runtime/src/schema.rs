//! Command payload validation against the JSON Schemas the domain ships.

use std::collections::HashMap;

use jsonschema::error::ValidationErrorKind;
use nexus_core::{Domain, FieldError};
use serde_json::Value;

/// Compiled validators, one per command type, built once at start-up (compiling costs ~100× a
/// validation).
pub struct PayloadValidator {
    validators: HashMap<String, jsonschema::Validator>,
}

impl PayloadValidator {
    /// Compiles every command schema of `domain`; an invalid schema is a start-up error.
    pub fn for_commands(domain: &Domain) -> Result<Self, String> {
        let mut validators = HashMap::new();
        for spec in domain.commands() {
            let schema: Value = serde_json::from_str(spec.schema)
                .map_err(|e| format!("schema of command {} is not JSON: {e}", spec.name))?;
            let validator = jsonschema::options()
                .should_validate_formats(true)
                .build(&schema)
                .map_err(|e| format!("schema of command {} is not a valid JSON Schema: {e}", spec.name))?;
            validators.insert(spec.name.to_owned(), validator);
        }
        Ok(Self { validators })
    }

    /// Every violation of `payload`, each named by its path (`items[0].quantity`).
    pub fn check(&self, command_type: &str, payload: &Value) -> Vec<FieldError> {
        let Some(validator) = self.validators.get(command_type) else {
            return Vec::new();
        };
        let mut fields = Vec::new();
        for error in validator.iter_errors(payload) {
            let path = field_path(payload, &error.instance_path().to_string());
            match error.kind() {
                ValidationErrorKind::Required { property } => {
                    let name = property.as_str().map(str::to_owned).unwrap_or_else(|| property.to_string());
                    fields.push(FieldError::new(join(&path, &name), "is required"));
                }
                ValidationErrorKind::AdditionalProperties { unexpected } => {
                    for name in unexpected {
                        fields.push(FieldError::new(join(&path, name), "is not an allowed field"));
                    }
                }
                _ => fields.push(FieldError::new(
                    if path.is_empty() { "payload".into() } else { path },
                    error.to_string(),
                )),
            }
        }
        fields
    }
}

fn join(parent: &str, name: &str) -> String {
    if parent.is_empty() { name.to_owned() } else { format!("{parent}.{name}") }
}

/// Turns a JSON pointer (`/items/0/quantity`) into the contract's path (`items[0].quantity`),
/// walking the instance so a numeric key of an object stays a key.
fn field_path(instance: &Value, pointer: &str) -> String {
    let mut path = String::new();
    let mut current = Some(instance);
    for raw in pointer.split('/').skip(1) {
        let segment = raw.replace("~1", "/").replace("~0", "~");
        match current {
            Some(Value::Array(items)) => {
                path.push_str(&format!("[{segment}]"));
                current = segment.parse::<usize>().ok().and_then(|i| items.get(i));
            }
            other => {
                if !path.is_empty() {
                    path.push('.');
                }
                current = other.and_then(|v| v.get(&segment));
                path.push_str(&segment);
            }
        }
    }
    path
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn pointers_become_contract_paths() {
        let instance = json!({"items": [{"quantity": 0}], "0": {"a": 1}});
        assert_eq!(field_path(&instance, "/items/0/quantity"), "items[0].quantity");
        assert_eq!(field_path(&instance, "/0/a"), "0.a");
        assert_eq!(field_path(&instance, ""), "");
    }
}
