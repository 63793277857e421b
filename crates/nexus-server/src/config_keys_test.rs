//! The configuration reference, `docs/configuration.md`, against the file format it documents.
//!
//! Its first `toml` code block is a complete example file. Two checks keep it honest:
//! - the example parses as [`super::File`], which refuses unknown keys, so every key it shows
//!   exists;
//! - every key of `File` and of its sections appears in the example, so every key that exists is
//!   shown. The keys are read from the structs themselves (serde hands a deserializer each
//!   struct's field names), so a key added to or removed from `File` is seen here without editing
//!   this file.

use std::cell::RefCell;
use std::collections::BTreeSet;
use std::path::PathBuf;

use serde::de::value::Error;
use serde::de::{self, DeserializeSeed, Deserializer, IntoDeserializer, Visitor};

const DOC: &str = "docs/configuration.md";

fn doc_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..").join(DOC)
}

/// The first `toml` code block of `docs/configuration.md`.
fn example() -> String {
    let path = doc_path();
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!("cannot read {} ({e}): the configuration reference is missing", path.display())
    });
    let mut lines = text.lines().skip_while(|line| line.trim() != "```toml");
    assert!(lines.next().is_some(), "{DOC} has no ```toml block holding a complete example file");
    let block: Vec<&str> = lines.take_while(|line| line.trim() != "```").collect();
    block.join("\n") + "\n"
}

#[test]
fn the_documented_example_is_a_valid_config_file() {
    if let Err(error) = toml::from_str::<super::File>(&example()) {
        panic!(
            "the example file in {DOC} is not a valid configuration file (an unknown key is a key the \
             server does not have: correct or remove it there):\n{error}"
        );
    }
}

#[test]
fn every_config_key_is_in_the_documented_example() {
    let example = toml::Value::Table(toml::from_str(&example()).expect("the example is TOML"));
    let keys = file_keys();
    assert!(keys.iter().any(|key| key.contains('.')), "the walk found no section keys: {keys:?}");
    let missing: Vec<&String> = keys.iter().filter(|key| !present(&example, key)).collect();
    assert!(
        missing.is_empty(),
        "configuration keys missing from the example file in {DOC}: {missing:?}. Document each one there \
         (its default, what it does, its flag or environment variable) and add it, with a value, to the \
         example's ```toml block"
    );
}

/// Whether the dotted `key` is in `value`; through an array of tables, in any of them.
fn present(value: &toml::Value, key: &str) -> bool {
    fn walk(value: &toml::Value, path: &[&str]) -> bool {
        let Some((first, rest)) = path.split_first() else { return true };
        match value {
            toml::Value::Table(table) => table.get(*first).is_some_and(|inner| walk(inner, rest)),
            toml::Value::Array(items) => items.iter().any(|item| walk(item, path)),
            _ => false,
        }
    }
    walk(value, &key.split('.').collect::<Vec<_>>())
}

/// Every key of the file format as a dotted path (`limits.max-body-bytes`,
/// `auth.api-keys.subject`), tables included (`limits`). A map-valued key (a table whose keys are
/// names the user picks) counts as its table name only.
fn file_keys() -> BTreeSet<String> {
    let keys = RefCell::new(BTreeSet::new());
    <super::File as serde::Deserialize>::deserialize(Recorder { path: "", keys: &keys })
        .unwrap_or_else(|e| panic!("cannot walk the configuration structs: {e}"));
    keys.into_inner()
}

/// A deserializer that reads no input: it answers each struct with all of its fields, each
/// sequence with one element, each option with a value and each enum with its first variant,
/// recording the path of every struct field on the way.
#[derive(Clone, Copy)]
struct Recorder<'a> {
    path: &'a str,
    keys: &'a RefCell<BTreeSet<String>>,
}

impl Recorder<'_> {
    fn unsupported(self, what: &str) -> Error {
        de::Error::custom(format!(
            "`{}` is {what}, which this walk does not know how to fill; extend config_keys_test.rs",
            self.path
        ))
    }
}

impl<'de> Deserializer<'de> for Recorder<'_> {
    type Error = Error;

    fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Error> {
        Err(self.unsupported("a self-describing value (untagged enum, flatten or any)"))
    }
    fn deserialize_bool<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_bool(true)
    }
    fn deserialize_i8<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_i64(1)
    }
    fn deserialize_i16<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_i64(1)
    }
    fn deserialize_i32<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_i64(1)
    }
    fn deserialize_i64<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_i64(1)
    }
    fn deserialize_u8<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_u64(1)
    }
    fn deserialize_u16<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_u64(1)
    }
    fn deserialize_u32<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_u64(1)
    }
    fn deserialize_u64<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_u64(1)
    }
    fn deserialize_f32<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_f64(1.0)
    }
    fn deserialize_f64<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_f64(1.0)
    }
    fn deserialize_char<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_char('x')
    }
    // A text that every string-like key accepts: strings, paths and socket addresses.
    fn deserialize_str<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_str("127.0.0.1:1")
    }
    fn deserialize_string<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_str("127.0.0.1:1")
    }
    fn deserialize_bytes<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_bytes(b"x")
    }
    fn deserialize_byte_buf<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_bytes(b"x")
    }
    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_some(self)
    }
    fn deserialize_unit<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_unit()
    }
    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        visitor: V,
    ) -> Result<V::Value, Error> {
        visitor.visit_unit()
    }
    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        visitor: V,
    ) -> Result<V::Value, Error> {
        visitor.visit_newtype_struct(self)
    }
    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_seq(Elements { recorder: self, left: 1 })
    }
    fn deserialize_tuple<V: Visitor<'de>>(self, len: usize, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_seq(Elements { recorder: self, left: len })
    }
    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        len: usize,
        visitor: V,
    ) -> Result<V::Value, Error> {
        visitor.visit_seq(Elements { recorder: self, left: len })
    }
    /// A map's keys are the user's (e.g. process manager names): the table's name is the key.
    fn deserialize_map<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_map(serde::de::value::MapDeserializer::<_, Error>::new(std::iter::empty::<((), ())>()))
    }
    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        visitor.visit_map(Fields { recorder: self, fields, next: 0, current: String::new() })
    }
    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        let first = *variants.first().ok_or_else(|| self.unsupported("an enum without variants"))?;
        visitor.visit_enum(Variant { recorder: self, name: first })
    }
    fn deserialize_identifier<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Error> {
        Err(self.unsupported("an identifier"))
    }
    fn deserialize_ignored_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_unit()
    }
}

/// A struct's fields, each recorded as `path.field` and filled by a recorder at that path.
struct Fields<'a> {
    recorder: Recorder<'a>,
    fields: &'static [&'static str],
    next: usize,
    current: String,
}

impl<'de> de::MapAccess<'de> for Fields<'_> {
    type Error = Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(&mut self, seed: K) -> Result<Option<K::Value>, Error> {
        let Some(field) = self.fields.get(self.next) else { return Ok(None) };
        self.next += 1;
        self.current = match self.recorder.path {
            "" => (*field).to_owned(),
            parent => format!("{parent}.{field}"),
        };
        self.recorder.keys.borrow_mut().insert(self.current.clone());
        seed.deserialize(IntoDeserializer::<Error>::into_deserializer(*field)).map(Some)
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, Error> {
        seed.deserialize(Recorder { path: &self.current, keys: self.recorder.keys })
    }
}

/// The elements of a sequence: an array of tables records its tables' keys under its own path.
struct Elements<'a> {
    recorder: Recorder<'a>,
    left: usize,
}

impl<'de> de::SeqAccess<'de> for Elements<'_> {
    type Error = Error;

    fn next_element_seed<T: DeserializeSeed<'de>>(&mut self, seed: T) -> Result<Option<T::Value>, Error> {
        if self.left == 0 {
            return Ok(None);
        }
        self.left -= 1;
        seed.deserialize(self.recorder).map(Some)
    }
}

/// An enum's first variant, filled like any other value.
struct Variant<'a> {
    recorder: Recorder<'a>,
    name: &'static str,
}

impl<'de> de::EnumAccess<'de> for Variant<'_> {
    type Error = Error;
    type Variant = Self;

    fn variant_seed<V: DeserializeSeed<'de>>(self, seed: V) -> Result<(V::Value, Self), Error> {
        let value = seed.deserialize(IntoDeserializer::<Error>::into_deserializer(self.name))?;
        Ok((value, self))
    }
}

impl<'de> de::VariantAccess<'de> for Variant<'_> {
    type Error = Error;

    fn unit_variant(self) -> Result<(), Error> {
        Ok(())
    }
    fn newtype_variant_seed<T: DeserializeSeed<'de>>(self, seed: T) -> Result<T::Value, Error> {
        seed.deserialize(self.recorder)
    }
    fn tuple_variant<V: Visitor<'de>>(self, len: usize, visitor: V) -> Result<V::Value, Error> {
        self.recorder.deserialize_tuple(len, visitor)
    }
    fn struct_variant<V: Visitor<'de>>(
        self,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        self.recorder.deserialize_struct(self.name, fields, visitor)
    }
}
