//! Request extractors whose failures are already in the contract's error shape: each maps axum's
//! rejection into an [`ApiError`] that names the parameter or field at fault.

use std::fmt;

use axum::body::Bytes;
use axum::extract::path::ErrorKind;
use axum::extract::rejection::PathRejection;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use serde::de::value::{MapDeserializer, StringDeserializer};
use serde::de::{self, DeserializeOwned, Error as _, IntoDeserializer, Visitor};
use serde_json::Value;

use crate::error::ApiError;

/// A JSON request body: 415 when it is not JSON, 413 when too large, 400 with the parser's
/// position when malformed, 400 naming the path of a key an object gives twice (`{"a":1,"a":2}`
/// is refused rather than read as its last value, which another parser would read as its first). A number with a zero fractional part (`2.0`) is read as the integer
/// (`2`), as JSON Schema counts it: the schema that accepted it and the typed code that reads it
/// then agree.
pub struct JsonBody(pub Value);

impl<S: Send + Sync> FromRequest<S> for JsonBody {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        let is_json = request
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|value| value.to_str().ok())
            .map(|value| {
                let mime = value.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
                mime == "application/json" || (mime.starts_with("application/") && mime.ends_with("+json"))
            })
            .unwrap_or(false);
        if !is_json {
            return Err(ApiError::UnsupportedMediaType);
        }
        let limit = request.extensions().get::<BodyLimit>().map_or(0, |limit| limit.0);
        let bytes = Bytes::from_request(request, state).await.map_err(|rejection| {
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::PayloadTooLarge(limit)
            } else {
                ApiError::field("body", "could not be read to its end")
            }
        })?;
        let mut value = strict_json(&bytes)?;
        integral_floats_as_integers(&mut value);
        Ok(JsonBody(value))
    }
}

/// Parses a JSON body as `serde_json` does, in the same single pass, but refuses an object that
/// gives a key twice, naming its path (`metadata.correlationId`, `items[0].sku`).
fn strict_json(bytes: &[u8]) -> Result<Value, ApiError> {
    let duplicate = std::cell::RefCell::new(None);
    let seed = Strict { at: &JsonPath::Root, duplicate: &duplicate };
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    let parsed = de::DeserializeSeed::deserialize(seed, &mut deserializer).and_then(|value| {
        deserializer.end()?;
        Ok(value)
    });
    match (parsed, duplicate.into_inner()) {
        (Ok(value), _) => Ok(value),
        (Err(_), Some(path)) => {
            Err(ApiError::field(&path, "is given more than once: an object names each key once"))
        }
        (Err(e), None) => Err(ApiError::field("body", format!("malformed JSON: {e}"))),
    }
}

/// Where a value is in the body, built into text only for an error.
enum JsonPath<'a> {
    Root,
    Key(&'a JsonPath<'a>, &'a str),
    Index(&'a JsonPath<'a>, usize),
}

impl fmt::Display for JsonPath<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            JsonPath::Root => Ok(()),
            JsonPath::Key(JsonPath::Root, key) => f.write_str(key),
            JsonPath::Key(parent, key) => write!(f, "{parent}.{key}"),
            JsonPath::Index(JsonPath::Root, index) => write!(f, "body[{index}]"),
            JsonPath::Index(parent, index) => write!(f, "{parent}[{index}]"),
        }
    }
}

/// A `Value` at `at`; a duplicate key's path goes to `duplicate`, and parsing stops.
struct Strict<'a> {
    at: &'a JsonPath<'a>,
    duplicate: &'a std::cell::RefCell<Option<String>>,
}

impl<'de> de::DeserializeSeed<'de> for Strict<'_> {
    type Value = Value;

    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Strict<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(4096));
        loop {
            let at = JsonPath::Index(self.at, items.len());
            match seq.next_element_seed(Strict { at: &at, duplicate: self.duplicate })? {
                Some(item) => items.push(item),
                None => return Ok(Value::Array(items)),
            }
        }
    }

    fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut fields = serde_json::Map::new();
        while let Some(key) = map.next_key::<String>()? {
            if fields.contains_key(&key) {
                *self.duplicate.borrow_mut() = Some(JsonPath::Key(self.at, &key).to_string());
                return Err(A::Error::custom(format!("duplicate key '{key}'")));
            }
            let at = JsonPath::Key(self.at, &key);
            let value = map.next_value_seed(Strict { at: &at, duplicate: self.duplicate })?;
            fields.insert(key, value);
        }
        Ok(Value::Object(fields))
    }
}

/// The largest integer a JSON number carries exactly in a double (2^53).
const EXACT_INTEGER_LIMIT: f64 = 9_007_199_254_740_992.0;

/// Rewrites every number with a zero fractional part (`1.0`, `-3.0`, `2e3`) as that integer.
fn integral_floats_as_integers(value: &mut Value) {
    match value {
        Value::Number(number) => {
            if let Some(float) = number.as_f64().filter(|_| number.is_f64())
                && float.fract() == 0.0
                && float.abs() <= EXACT_INTEGER_LIMIT
            {
                // In range, so the casts are exact.
                *value = if float >= 0.0 { Value::from(float as u64) } else { Value::from(float as i64) };
            }
        }
        Value::Array(items) => items.iter_mut().for_each(integral_floats_as_integers),
        Value::Object(fields) => fields.values_mut().for_each(integral_floats_as_integers),
        _ => {}
    }
}

/// The configured body limit, put in request extensions so the 413 message can name it.
#[derive(Clone, Copy)]
pub struct BodyLimit(pub usize);

/// The largest integer a query parameter (a version, a position, a timeout) may hold: the stores
/// keep them as signed 64-bit integers, so a larger one could never be reached or stored.
pub const MAX_QUERY_INTEGER: u64 = i64::MAX as u64;

/// A non-negative integer query parameter, `0..=MAX_QUERY_INTEGER`, or a 400 naming it.
pub fn query_integer(name: &str, text: &str) -> Result<u64, ApiError> {
    parse_unsigned(text, MAX_QUERY_INTEGER).map_err(|message| ApiError::field(name, message))
}

fn parse_unsigned(text: &str, max: u64) -> Result<u64, String> {
    let digits = !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit());
    match text.parse::<u64>() {
        Ok(n) if n <= max => Ok(n),
        _ if digits => Err(format!("must be at most {max}")),
        _ => Err(format!("must be an integer from 0 to {max}")),
    }
}

fn parse_signed(text: &str, min: i64, max: i64) -> Result<i64, String> {
    text.parse::<i64>()
        .ok()
        .filter(|n| (min..=max).contains(n))
        .ok_or_else(|| format!("must be an integer from {min} to {max}"))
}

/// Query-string parameters, with a 400 in the contract's shape naming the parameter at fault: an
/// unknown one, a missing one, or one whose value is not of its type (integers are
/// `0..=MAX_QUERY_INTEGER` unless the type is narrower).
pub struct QueryParams<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for QueryParams<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        // Percent-decoding is lossy (invalid UTF-8 becomes U+FFFD), so reading pairs cannot fail
        // on a well-formed URI; typing them is done here, where each value knows its name.
        let axum::extract::Query(pairs) =
            axum::extract::Query::<Vec<(String, String)>>::from_request_parts(parts, state)
                .await
                .map_err(|_| ApiError::field("query", "is not a valid query string"))?;
        // Every parameter is a key of the map: the types read all of them (a struct refuses
        // the ones it does not know), so none is left unread.
        let pairs = pairs.into_iter().map(|(name, text)| (name.clone(), QueryValue { name, text }));
        let params = T::deserialize(MapDeserializer::new(pairs)).map_err(QueryError::into_api_error)?;
        Ok(QueryParams(params))
    }
}

/// Why a query string did not fit its parameters, and which parameter it was.
#[derive(Debug)]
pub struct QueryError {
    parameter: Option<String>,
    message: String,
}

impl QueryError {
    fn at(mut self, parameter: &str) -> Self {
        self.parameter.get_or_insert_with(|| parameter.to_owned());
        self
    }

    fn into_api_error(self) -> ApiError {
        ApiError::field(self.parameter.as_deref().unwrap_or("query"), self.message)
    }
}

impl fmt::Display for QueryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.parameter {
            Some(parameter) => write!(f, "{parameter}: {}", self.message),
            None => f.write_str(&self.message),
        }
    }
}

impl std::error::Error for QueryError {}

impl de::Error for QueryError {
    fn custom<M: fmt::Display>(message: M) -> Self {
        Self { parameter: None, message: message.to_string() }
    }

    fn unknown_field(field: &str, expected: &'static [&'static str]) -> Self {
        let message = match expected {
            [] => "is not a parameter of this endpoint (it takes none)".to_owned(),
            known => format!("is not a parameter of this endpoint (it takes {})", known.join(", ")),
        };
        Self { parameter: Some(field.to_owned()), message }
    }

    fn missing_field(field: &'static str) -> Self {
        Self { parameter: Some(field.to_owned()), message: "is required".into() }
    }

    fn duplicate_field(field: &'static str) -> Self {
        Self { parameter: Some(field.to_owned()), message: "is given more than once".into() }
    }

    fn unknown_variant(variant: &str, expected: &'static [&'static str]) -> Self {
        Self::custom(format!("'{variant}' is not one of {}", expected.join(", ")))
    }
}

/// One parameter's text, typed on demand (as `serde_urlencoded` does), its errors named.
struct QueryValue {
    name: String,
    text: String,
}

impl QueryValue {
    fn unsigned<'de, V: Visitor<'de>>(self, visitor: V, max: u64) -> Result<V::Value, QueryError> {
        let name = self.name;
        let n = parse_unsigned(&self.text, max).map_err(|m| QueryError::custom(m).at(&name))?;
        visitor.visit_u64::<QueryError>(n).map_err(|e| e.at(&name))
    }

    fn signed<'de, V: Visitor<'de>>(self, visitor: V, min: i64, max: i64) -> Result<V::Value, QueryError> {
        let name = self.name;
        let n = parse_signed(&self.text, min, max).map_err(|m| QueryError::custom(m).at(&name))?;
        visitor.visit_i64::<QueryError>(n).map_err(|e| e.at(&name))
    }

    fn float<'de, V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, QueryError> {
        let name = self.name;
        match self.text.parse::<f64>().ok().filter(|f| f.is_finite()) {
            Some(f) => visitor.visit_f64::<QueryError>(f).map_err(|e| e.at(&name)),
            None => Err(QueryError::custom("must be a number").at(&name)),
        }
    }
}

impl<'de> IntoDeserializer<'de, QueryError> for QueryValue {
    type Deserializer = Self;

    fn into_deserializer(self) -> Self {
        self
    }
}

impl<'de> de::Deserializer<'de> for QueryValue {
    type Error = QueryError;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, QueryError> {
        let name = self.name;
        visitor.visit_string::<QueryError>(self.text).map_err(|e| e.at(&name))
    }

    fn deserialize_u64<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, QueryError> {
        self.unsigned(visitor, MAX_QUERY_INTEGER)
    }

    fn deserialize_u32<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, QueryError> {
        self.unsigned(visitor, u32::MAX.into())
    }

    fn deserialize_u16<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, QueryError> {
        self.unsigned(visitor, u16::MAX.into())
    }

    fn deserialize_u8<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, QueryError> {
        self.unsigned(visitor, u8::MAX.into())
    }

    fn deserialize_i64<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, QueryError> {
        self.signed(visitor, i64::MIN, i64::MAX)
    }

    fn deserialize_i32<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, QueryError> {
        self.signed(visitor, i32::MIN.into(), i32::MAX.into())
    }

    fn deserialize_i16<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, QueryError> {
        self.signed(visitor, i16::MIN.into(), i16::MAX.into())
    }

    fn deserialize_i8<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, QueryError> {
        self.signed(visitor, i8::MIN.into(), i8::MAX.into())
    }

    fn deserialize_f64<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, QueryError> {
        self.float(visitor)
    }

    fn deserialize_f32<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, QueryError> {
        self.float(visitor)
    }

    fn deserialize_bool<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, QueryError> {
        let name = self.name;
        match self.text.as_str() {
            "true" => visitor.visit_bool(true),
            "false" => visitor.visit_bool(false),
            _ => Err(QueryError::custom("must be true or false")),
        }
        .map_err(|e| e.at(&name))
    }

    /// A parameter that is there is `Some`.
    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, QueryError> {
        let name = self.name.clone();
        visitor.visit_some(self).map_err(|e| e.at(&name))
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, QueryError> {
        let name = self.name.clone();
        visitor.visit_newtype_struct(self).map_err(|e| e.at(&name))
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        enum_name: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, QueryError> {
        let name = self.name;
        StringDeserializer::<QueryError>::new(self.text)
            .deserialize_enum(enum_name, variants, visitor)
            .map_err(|e| e.at(&name))
    }

    serde::forward_to_deserialize_any! {
        i128 u128 char str string bytes byte_buf unit unit_struct seq tuple tuple_struct map struct
        identifier ignored_any
    }
}

/// A path parameter, with a 400 in the contract's shape naming it (`aggregateId`, not
/// `aggregate_id`) when it does not decode, such as percent-encoded bytes that are not UTF-8.
pub struct PathParam<T>(pub T);

impl<T: DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for PathParam<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|path| PathParam(path.0))
            .map_err(|rejection| path_error(&rejection))
    }
}

/// What a path rejection means for the client: a bad segment (400, named), or a bug (500).
pub fn path_error(rejection: &PathRejection) -> ApiError {
    let PathRejection::FailedToDeserializePathParams(failed) = rejection else {
        return ApiError::Internal(format!("path parameters: {rejection}"));
    };
    match failed.kind() {
        ErrorKind::InvalidUtf8InPathParam { key } => {
            ApiError::field(&camel_case(key), "is not valid UTF-8 once percent-decoded")
        }
        ErrorKind::ParseErrorAtKey { key, expected_type, .. } => {
            ApiError::field(&camel_case(key), format!("is not a valid {}", plain_type(expected_type)))
        }
        ErrorKind::DeserializeError { key, message, .. } => {
            ApiError::field(&camel_case(key), message.clone())
        }
        ErrorKind::ParseError { expected_type, .. } | ErrorKind::ParseErrorAtIndex { expected_type, .. } => {
            ApiError::field("path", format!("is not a valid {}", plain_type(expected_type)))
        }
        other => ApiError::Internal(format!("path parameters: {other}")),
    }
}

/// A route's parameter name as the contract spells it: `aggregate_id` is `aggregateId`.
fn camel_case(key: &str) -> String {
    let mut parts = key.split('_');
    let mut name = parts.next().unwrap_or_default().to_owned();
    for part in parts {
        let mut chars = part.chars();
        if let Some(first) = chars.next() {
            name.extend(first.to_uppercase());
            name.push_str(chars.as_str());
        }
    }
    name
}

fn plain_type(rust_type: &str) -> &'static str {
    match rust_type {
        "u8" | "u16" | "u32" | "u64" | "usize" => "non-negative integer",
        "i8" | "i16" | "i32" | "i64" | "isize" => "integer",
        "f32" | "f64" => "number",
        "bool" => "boolean (true or false)",
        _ => "value",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integral_floats_become_integers_and_others_stay() {
        let mut value = serde_json::json!({
            "a": 1.0, "b": [2.0, -3.0, 1.5], "c": {"d": 9.007199254740992e15, "e": 1e300, "f": 7}
        });
        integral_floats_as_integers(&mut value);
        assert_eq!(
            value.to_string(),
            r#"{"a":1,"b":[2,-3,1.5],"c":{"d":9007199254740992,"e":1e+300,"f":7}}"#
        );
        assert!(value["a"].is_u64() && value["b"][1].is_i64());
    }

    #[test]
    fn duplicate_keys_are_named_by_their_path() {
        let field = |body: &str| match strict_json(body.as_bytes()) {
            Err(ApiError::Validation { fields, .. }) => fields[0].field.clone(),
            other => panic!("{body}: {:?}", other.map(|v| v.to_string()).map_err(|e| e.to_string())),
        };
        assert_eq!(field(r#"{"a":1,"a":2}"#), "a");
        assert_eq!(
            field(r#"{"metadata":{"correlationId":"x","correlationId":"y"}}"#),
            "metadata.correlationId"
        );
        assert_eq!(field(r#"{"items":[{"sku":"a"},{"sku":"b","sku":"c"}]}"#), "items[1].sku");
        assert_eq!(field(r#"[{"k":1,"k":1}]"#), "body[0].k");
        assert_eq!(field(r#"{"a":1} x"#), "body");
        let text = r#"{"a":[1,-2,1.5,"s",null,true,{}],"b":{"c":{"a":1}},"a2":18446744073709551615}"#;
        assert_eq!(strict_json(text.as_bytes()).unwrap(), serde_json::from_str::<Value>(text).unwrap());
    }

    #[test]
    fn parameter_names_are_camel_case() {
        assert_eq!(camel_case("aggregate_id"), "aggregateId");
        assert_eq!(camel_case("command_type"), "commandType");
        assert_eq!(camel_case("id"), "id");
    }

    #[test]
    fn integers_beyond_the_stores_range_are_refused() {
        assert_eq!(parse_unsigned("9223372036854775807", MAX_QUERY_INTEGER), Ok(i64::MAX as u64));
        for text in ["9223372036854775808", "18446744073709551615", "99999999999999999999999"] {
            assert_eq!(parse_unsigned(text, MAX_QUERY_INTEGER), Err(format!("must be at most {}", i64::MAX)));
        }
        for text in ["", "-1", "1.0", "x", "1e3"] {
            assert!(
                parse_unsigned(text, MAX_QUERY_INTEGER).unwrap_err().starts_with("must be an integer"),
                "{text}"
            );
        }
    }
}
