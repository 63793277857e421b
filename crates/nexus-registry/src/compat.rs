//! Schema compatibility: a structural diff of two JSON Schemas (draft-07 / 2020-12, as written
//! for event payloads) implementing the seed's Schema Evolution Rules (§6) in Confluent's
//! compatibility levels.
//!
//! # One question, asked in two directions
//!
//! Everything reduces to [`can_read`]: can a consumer whose schema is `reader` read every payload
//! written under `writer`? The levels combine it ([`check`]), per compared version `old`:
//!
//! | level | question |
//! |---|---|
//! | `BACKWARD` | the new schema reads what `old` wrote: `can_read(new, old)`. Consumers upgrade first, and the store's old events stay readable. Compared with the latest version only. |
//! | `FORWARD` | `old` reads what the new schema writes: `can_read(old, new)`. Producers upgrade first. |
//! | `FULL` | both |
//! | `*_TRANSITIVE` | the same against every registered version, oldest first, not only the latest |
//! | `NONE` | nothing is checked |
//!
//! A subject with no versions yet (a new event type) has nothing to compare with: compatible.
//!
//! # The model: declared fields, closed unless a schema opts out
//!
//! The seed's rules (adding an optional field is fine; removing or renaming one breaks) are the
//! rules of a *closed* content model: a removed field breaks a backward check only if the new
//! reader would refuse, or silently lose, a field that old events carry. So an object schema that
//! lists `properties` and says nothing about `additionalProperties` (or `unevaluatedProperties`)
//! is compared as closed: its consumers are taken to understand exactly the fields it declares.
//! An object that says `"additionalProperties": true` (or gives a schema) promises to tolerate
//! undeclared fields, which are then compared against that schema; an object without
//! `properties` (`{"type": "object"}`) is a free-form map and open. Writers are taken to write
//! the fields they declare; their own openness is compared as a whole (an open writer against a
//! closed reader is a tightening). This convention is for comparison only: validating events on
//! append follows JSON Schema, where a missing `additionalProperties` means open.
//!
//! # Direction, worked through
//!
//! With that model the rules are one symmetric set, and FORWARD is exactly the mirror of BACKWARD
//! (FORWARD asks `can_read(reader = old, writer = new)`):
//!
//! | change, old → new | BACKWARD: new reads old | FORWARD: old reads new |
//! |---|---|---|
//! | add an optional field (with or without `default`) | ok | `FIELD_ADDED`: the old reader is closed; ok if it opted out |
//! | add a required field | `REQUIRED_FIELD_ADDED` (a `default` does not help: old events lack the field) | as above |
//! | remove an optional field | `FIELD_REMOVED`; ok if the new schema is open | ok: the old reader already copes with its absence |
//! | remove a required field | `FIELD_REMOVED` | `FIELD_REMOVED`: the old reader requires it |
//! | rename a field | `FIELD_RENAMED` | `FIELD_RENAMED` |
//! | optional → required | `OPTIONAL_MADE_REQUIRED` | ok |
//! | required → optional | ok | `REQUIRED_MADE_OPTIONAL` |
//! | add an enum value | ok | `ENUM_VALUE_ADDED` |
//! | remove an enum value | `ENUM_VALUE_REMOVED` | ok |
//! | `integer` → `number` | ok: a widening, the new reader accepts every integer | `TYPE_CHANGED` |
//! | `number` → `integer`, `integer` → `string` | `TYPE_CHANGED` | `TYPE_CHANGED` for the latter, ok for the former |
//! | `T` → `[T, "null"]` | ok: the reader accepts more types | `TYPE_CHANGED` |
//! | tighten a bound (`maximum` 100 → 50) | `CONSTRAINT_TIGHTENED` | ok |
//! | loosen a bound | ok | `CONSTRAINT_RELAXED` |
//! | add, remove or change an `allOf`, `not`, `if`/`then`/`else`, ... (see below) | `COMPOSITION_CHANGED` | `COMPOSITION_CHANGED` |
//!
//! Why an added field breaks FORWARD on a closed object: a consumer that declared its fields
//! cannot be assumed to ignore new ones, and "a field one side declares and the other does not"
//! must mean the same thing whichever side is the reader, or [`can_read`] would not be one
//! question. Subjects that want to grow under FORWARD or FULL declare their objects open; the
//! price, in BACKWARD, is that removing an optional field from an open object is then allowed
//! (the new reader has promised to tolerate it).
//!
//! Rules are named for the change from the old schema to the new one, so the same finding reads
//! `FIELD_REMOVED` in one direction and `FIELD_ADDED` in the other. [`can_read`], which does not
//! know which side is newer, names them as BACKWARD does (the reader taken as the newer side).
//! A rename is reported when exactly one field disappears and one appears in the same object with
//! the same schema (annotations aside) and the pair breaks something: one `FIELD_RENAMED` at the
//! old field's path replaces the removal and addition.
//!
//! # What is walked, and what is not compared
//!
//! Walked: `type` (a name or an array of names; `integer` ⊂ `number`), `enum` and `const` (a
//! `const` is a one-value enum), `properties`, `required`, `additionalProperties` /
//! `unevaluatedProperties`, `items` (a schema, or draft-07's tuple array with `additionalItems`),
//! `prefixItems`, `anyOf` / `oneOf` (as unions: each writer branch, and each writer type, must be
//! readable by some reader branch; the keywords beside them, see below), boolean schemas, and
//! local `$ref`s (`#`, `#/$defs/X`, `#/definitions/X`, any JSON pointer into the same document;
//! the keywords beside them, see below), with a guard that assumes a pair already being compared
//! further up holds, so recursive schemas terminate. Bounds are compared where both sides can
//! hold the type: `minimum`, `exclusiveMinimum`, `maximum`, `exclusiveMaximum` (numbers; draft-04
//! boolean forms ignored), `minLength` / `maxLength`, `minItems` / `maxItems`: a reader bound
//! tighter than the writer's is breaking.
//!
//! Not compared (a change to them is never reported): annotations (`title`, `description`,
//! `default`, `examples`, `deprecated`, ...), `format`, `pattern`, `patternProperties`,
//! `propertyNames`, `multipleOf`, `uniqueItems`, `contains`, `min`/`maxProperties`,
//! `dependentRequired`, `$anchor` references, and references to other documents (a non-local
//! `$ref` is reported as `UNRESOLVED_REFERENCE` unless both sides name the same one). `enum`
//! values are not checked against bounds.
//!
//! # Composition the diff does not judge: the same on both sides, or `COMPOSITION_CHANGED`
//!
//! A composition keyword applies a schema to the value where it stands; ignored, it lets a new
//! reader refuse what old events hold (`{"allOf": [{"properties": {"v": {"type": "integer"}}}]}`
//! after `{"properties": {"v": {"type": "string"}}}`; `"not": {}`, which refuses everything; a
//! field required through `allOf`), or a writer declare fields the reader never hears of. Those
//! the walk does not judge must be *the same in both schemas* at each compared location, or the
//! change is reported there as `COMPOSITION_CHANGED`, in both directions:
//!
//! - `allOf`, `not`, `if`/`then`/`else` (together, as one), `dependentSchemas`, draft-07
//!   `dependencies`, `$dynamicRef` / `$recursiveRef`, and an `anyOf` / `oneOf` that is not walked
//!   as a union (an empty list, or `oneOf` beside an `anyOf`);
//! - every constraint beside a `$ref` (only the reference is followed) and beside the `anyOf` /
//!   `oneOf` of a union (only its branches are walked). Annotations, `$defs` / `definitions`,
//!   `$schema` and anchors are not constraints.
//!
//! "The same" is keyword for keyword, annotations aside, with local `$ref`s inside followed on
//! both sides: an `allOf` written identically whose `$ref` now points at a changed definition is
//! a change. Where it is the same, the rest of both schemas is walked as usual. What a writer's
//! value is known to satisfy accumulates along the writer's `$ref` chain and the union branch it
//! is in, and a reader's likewise, so an `allOf` inside one branch of a union is compared with
//! the writer branch that branch must read. Moving a constraint into or out of `allOf` is a
//! change (refused even when equivalent): register it under `NONE` if it is deliberate.
//!
//! Case files (`tests/compat/`): `backward-allof-type-changed`, `backward-not-added`,
//! `backward-allof-required-field-added`, `backward-if-then-added-nested`,
//! `backward-dependent-schemas-added`, `backward-ref-sibling-added`,
//! `backward-anyof-sibling-added`, `backward-oneof-branch-allof-added`,
//! `backward-allof-identical-ref-target-changed`, `forward-allof-removed`,
//! `full-allof-changed-reported-once`; the same on both sides:
//! `backward-allof-identical-compatible`, `backward-allof-identical-other-change-found`,
//! `full-recursive-ref-in-allof-identical`.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fmt;
use std::str::FromStr;
use std::sync::LazyLock;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// A Confluent compatibility level.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Compatibility {
    Backward,
    BackwardTransitive,
    Forward,
    ForwardTransitive,
    Full,
    FullTransitive,
    None,
}

impl Compatibility {
    pub const ALL: [Self; 7] = [
        Self::Backward,
        Self::BackwardTransitive,
        Self::Forward,
        Self::ForwardTransitive,
        Self::Full,
        Self::FullTransitive,
        Self::None,
    ];

    /// The wire name, e.g. `BACKWARD_TRANSITIVE`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Backward => "BACKWARD",
            Self::BackwardTransitive => "BACKWARD_TRANSITIVE",
            Self::Forward => "FORWARD",
            Self::ForwardTransitive => "FORWARD_TRANSITIVE",
            Self::Full => "FULL",
            Self::FullTransitive => "FULL_TRANSITIVE",
            Self::None => "NONE",
        }
    }

    /// Whether every registered version is compared, not only the latest.
    pub fn is_transitive(self) -> bool {
        matches!(self, Self::BackwardTransitive | Self::ForwardTransitive | Self::FullTransitive)
    }

    /// Whether the new schema must read data written under the old one(s).
    pub fn checks_backward(self) -> bool {
        matches!(self, Self::Backward | Self::BackwardTransitive | Self::Full | Self::FullTransitive)
    }

    /// Whether the old schema(s) must read data written under the new one.
    pub fn checks_forward(self) -> bool {
        matches!(self, Self::Forward | Self::ForwardTransitive | Self::Full | Self::FullTransitive)
    }
}

impl fmt::Display for Compatibility {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A compatibility level name that is not one of Confluent's seven.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown compatibility level '{0}' (expected NONE, BACKWARD, BACKWARD_TRANSITIVE, FORWARD, \
     FORWARD_TRANSITIVE, FULL or FULL_TRANSITIVE)"
)]
pub struct UnknownCompatibility(pub String);

impl FromStr for Compatibility {
    type Err = UnknownCompatibility;

    /// Case-insensitive, as Confluent's server is.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let wanted = text.trim();
        Self::ALL
            .into_iter()
            .find(|level| level.as_str().eq_ignore_ascii_case(wanted))
            .ok_or_else(|| UnknownCompatibility(text.to_owned()))
    }
}

/// Which evolution rule a [`Violation`] breaks, named for the change from the old schema to the
/// new one (see the module docs for when each fires in which direction).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Rule {
    /// A field the old schema declares is gone from the new one (or, forward, a field the old
    /// schema requires).
    FieldRemoved,
    /// The new schema declares a field that the old schema's closed object rejects (forward).
    FieldAdded,
    /// One field disappeared and one with the same schema appeared in the same object.
    FieldRenamed,
    /// The reader does not accept some type the writer allows (`integer` → `string`,
    /// `number` → `integer`, `["string", "null"]` → `"string"`, ...).
    TypeChanged,
    /// A field optional in the old schema is required in the new one.
    OptionalMadeRequired,
    /// A field the old schema requires is optional in the new one (forward).
    RequiredMadeOptional,
    /// The new schema requires a field the old one does not declare.
    RequiredFieldAdded,
    /// An `enum` (or `const`) value of the old schema is not accepted by the new one.
    EnumValueRemoved,
    /// The new schema's `enum` (or `const`) allows a value the old one rejects (forward).
    EnumValueAdded,
    /// The new schema narrows what the old one allowed: a bound, an `enum` where there was none,
    /// an object closed to undeclared properties.
    ConstraintTightened,
    /// The new schema allows more than the old one's bound, `enum` or closed object (forward).
    ConstraintRelaxed,
    /// A `$ref` that cannot be followed (not local, missing, or a cycle of bare references).
    UnresolvedReference,
    /// A composition keyword the diff does not judge (`allOf`, `not`, `if`/`then`/`else`,
    /// `dependentSchemas`, ..., or a keyword beside `$ref`, `anyOf` or `oneOf`) is not the same
    /// in both schemas.
    CompositionChanged,
}

impl Rule {
    pub const ALL: [Self; 13] = [
        Self::FieldRemoved,
        Self::FieldAdded,
        Self::FieldRenamed,
        Self::TypeChanged,
        Self::OptionalMadeRequired,
        Self::RequiredMadeOptional,
        Self::RequiredFieldAdded,
        Self::EnumValueRemoved,
        Self::EnumValueAdded,
        Self::ConstraintTightened,
        Self::ConstraintRelaxed,
        Self::UnresolvedReference,
        Self::CompositionChanged,
    ];

    /// The wire name, e.g. `FIELD_REMOVED`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::FieldRemoved => "FIELD_REMOVED",
            Self::FieldAdded => "FIELD_ADDED",
            Self::FieldRenamed => "FIELD_RENAMED",
            Self::TypeChanged => "TYPE_CHANGED",
            Self::OptionalMadeRequired => "OPTIONAL_MADE_REQUIRED",
            Self::RequiredMadeOptional => "REQUIRED_MADE_OPTIONAL",
            Self::RequiredFieldAdded => "REQUIRED_FIELD_ADDED",
            Self::EnumValueRemoved => "ENUM_VALUE_REMOVED",
            Self::EnumValueAdded => "ENUM_VALUE_ADDED",
            Self::ConstraintTightened => "CONSTRAINT_TIGHTENED",
            Self::ConstraintRelaxed => "CONSTRAINT_RELAXED",
            Self::UnresolvedReference => "UNRESOLVED_REFERENCE",
            Self::CompositionChanged => "COMPOSITION_CHANGED",
        }
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A rule name that is not one of [`Rule::ALL`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown compatibility rule '{0}'")]
pub struct UnknownRule(pub String);

impl FromStr for Rule {
    type Err = UnknownRule;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Self::ALL.into_iter().find(|rule| rule.as_str() == text).ok_or_else(|| UnknownRule(text.to_owned()))
    }
}

/// One way in which a schema change breaks a reader.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Violation {
    /// Where in the data, as a JSON path: `$`, `$.customer.name`, `$.items[].quantity`,
    /// `$.pair[0]` (a tuple position), `$.labels.*` (an undeclared property).
    pub path: String,
    pub rule: Rule,
    /// For people: what differs, in terms of the two schemas.
    pub message: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} at {}: {}", self.rule, self.path, self.message)
    }
}

/// The violations of `new` against the registered `previous` versions (oldest first) under
/// `mode`. Non-transitive levels compare with the last version only; an empty result means
/// compatible. In transitive levels comparing several versions, each message says which one.
/// Under FULL a (path, rule) both directions find is reported once per compared version.
pub fn check(mode: Compatibility, new: &Value, previous: &[Value]) -> Vec<Violation> {
    let against = match previous {
        [] => return Vec::new(),
        _ if mode == Compatibility::None => return Vec::new(),
        _ if mode.is_transitive() => previous,
        [.., last] => std::slice::from_ref(last),
    };
    let mut out = Vec::new();
    for (index, old) in against.iter().enumerate() {
        let mut found = Vec::new();
        if mode.checks_backward() {
            found.extend(Walker::new(new, old, Direction::Backward, "new schema", "old schema").run());
        }
        if mode.checks_forward() {
            let forward = Walker::new(old, new, Direction::Forward, "old schema", "new schema").run();
            // FULL: a finding both directions make (a rename, a removed required field) is
            // reported once, as the backward check saw it.
            let seen: HashSet<(String, Rule)> = found.iter().map(|v| (v.path.clone(), v.rule)).collect();
            found.extend(forward.into_iter().filter(|v| !seen.contains(&(v.path.clone(), v.rule))));
        }
        if against.len() > 1 {
            for violation in &mut found {
                violation.message.push_str(&format!(
                    " (against previous version {} of {}, oldest first)",
                    index + 1,
                    against.len()
                ));
            }
        }
        out.extend(found);
    }
    out
}

/// One direction: can a consumer using `reader` read every payload written with `writer`?
/// Rules are named as if `reader` were the newer schema (the BACKWARD question); [`check`] names
/// them by the actual change.
pub fn can_read(reader: &Value, writer: &Value) -> Vec<Violation> {
    Walker::new(reader, writer, Direction::Backward, "reader schema", "writer schema").run()
}

/// Which side of a comparison is the newer schema; decides only how findings are named.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Direction {
    /// The reader is the new schema.
    Backward,
    /// The reader is the old schema.
    Forward,
}

/// `true`: the schema that accepts everything.
static ANY: Value = Value::Bool(true);
static EMPTY: LazyLock<Map<String, Value>> = LazyLock::new(Map::new);

/// Keywords that carry no constraint; ignored when deciding whether two fields are "the same".
const ANNOTATIONS: [&str; 9] =
    ["title", "description", "default", "examples", "$comment", "deprecated", "readOnly", "writeOnly", "$id"];

struct Walker<'a> {
    reader_root: &'a Value,
    writer_root: &'a Value,
    direction: Direction,
    reader: &'static str,
    writer: &'static str,
    /// (reader node, writer node, writer types) pairs being compared further up the stack.
    active: HashSet<(usize, usize, u8)>,
    /// What the writer's value at the current data location is known to satisfy beyond what is
    /// walked: the unjudged keywords of every writer node passed on the way to the node being
    /// compared (its `$ref` chain, the union it is a branch of). Reset at each property or item.
    given: Vec<Unjudged<'a>>,
    /// The same for the reader: each must be among `given`, and the other way round.
    needed: Vec<Unjudged<'a>>,
    out: Vec<Violation>,
}

impl<'a> Walker<'a> {
    fn new(
        reader_root: &'a Value,
        writer_root: &'a Value,
        direction: Direction,
        reader: &'static str,
        writer: &'static str,
    ) -> Self {
        Self {
            reader_root,
            writer_root,
            direction,
            reader,
            writer,
            active: HashSet::new(),
            given: Vec::new(),
            needed: Vec::new(),
            out: Vec::new(),
        }
    }

    fn run(mut self) -> Vec<Violation> {
        let (reader, writer) = (self.reader_root, self.writer_root);
        self.descend(reader, writer, &Path::root());
        // The same finding reached twice (through each branch of a writer's union) is one.
        let mut seen = HashSet::new();
        self.out.retain(|v| seen.insert((v.path.clone(), v.rule, v.message.clone())));
        self.out
    }

    fn push(&mut self, path: &Path, rule: Rule, message: String) {
        self.out.push(Violation { path: path.render(), rule, message });
    }

    /// The rule for a finding: `backward` when the reader is the newer side, else `forward`.
    fn named(&self, backward: Rule, forward: Rule) -> Rule {
        match self.direction {
            Direction::Backward => backward,
            Direction::Forward => forward,
        }
    }

    /// Compares the schemas of a new data location (the root, a property, items): what the
    /// writer's ancestors guaranteed holds for the parent value, not for this one.
    fn descend(&mut self, reader: &'a Value, writer: &'a Value, path: &Path) {
        let given = std::mem::take(&mut self.given);
        let needed = std::mem::take(&mut self.needed);
        self.compare(reader, writer, path);
        self.given = given;
        self.needed = needed;
    }

    fn compare(&mut self, reader: &'a Value, writer: &'a Value, path: &Path) {
        let marks = (self.needed.len(), self.given.len());
        self.compare_within(reader, writer, path);
        self.needed.truncate(marks.0);
        self.given.truncate(marks.1);
    }

    fn compare_within(&mut self, reader: &'a Value, writer: &'a Value, path: &Path) {
        let (mut reader_refs, mut writer_refs) = (Vec::new(), Vec::new());
        let resolved = (
            resolve(self.reader_root, reader, &mut reader_refs),
            resolve(self.writer_root, writer, &mut writer_refs),
        );
        self.needed.extend(reader_refs.into_iter().filter_map(|node| beside(node, "$ref")));
        self.given.extend(writer_refs.into_iter().filter_map(|node| beside(node, "$ref")));
        let (reader, writer) = match resolved {
            (Ok(reader), Ok(writer)) => (reader, writer),
            (reader_found, writer_found) => {
                // The same foreign reference on both sides names the same schema.
                let same_name = matches!((ref_of(reader), ref_of(writer)), (Some(a), Some(b)) if a == b);
                if same_name {
                    self.check_unjudged(path);
                } else {
                    let mut problems = Vec::new();
                    if let Err(problem) = reader_found {
                        problems.push(format!("in the {}: {problem}", self.reader));
                    }
                    if let Err(problem) = writer_found {
                        problems.push(format!("in the {}: {problem}", self.writer));
                    }
                    self.push(path, Rule::UnresolvedReference, problems.join("; "));
                }
                return;
            }
        };
        self.given.extend(unjudged(writer));
        if let Some(branches) = union(writer) {
            for branch in branches {
                self.compare(reader, branch, path);
            }
            return;
        }
        self.compare_typed(reader, writer, writer_types(writer), path);
    }

    /// Composition the walk does not judge must be the same on both sides: every unjudged
    /// keyword the reader has at this point (`needed`) must be among the writer's (`given`), and
    /// the other way round. Not judged, a reader's `allOf` could refuse what the writer writes,
    /// and a writer's could declare fields the reader does not know.
    fn check_unjudged(&mut self, path: &Path) {
        let mut same = Same::new(self.reader_root, self.writer_root);
        let mut differences = Vec::new();
        for needed in &self.needed {
            if !self.given.iter().any(|given| same.unjudged(needed, given)) {
                differences.push(format!(
                    "the {} has {} here and the {} has no identical one",
                    self.reader, needed.what, self.writer
                ));
            }
        }
        let mut same = Same::new(self.writer_root, self.reader_root);
        for given in &self.given {
            if !self.needed.iter().any(|needed| same.unjudged(given, needed)) {
                differences.push(format!(
                    "the {} has {} here and the {} has no identical one",
                    self.writer, given.what, self.reader
                ));
            }
        }
        if differences.is_empty() {
            return;
        }
        self.out.push(Violation {
            path: path.render(),
            rule: Rule::CompositionChanged,
            message: format!(
                "{}: the diff does not judge this composition, so any change to it is refused (keep it \
                 the same in both versions)",
                differences.join("; ")
            ),
        });
    }

    /// Compares resolved schemas, the writer restricted to `types`.
    fn compare_typed(&mut self, reader: &'a Value, writer: &'a Value, types: Types, path: &Path) {
        // Coinduction: a pair already under comparison further up is assumed to hold; whatever
        // breaks inside it is reported there.
        let key = (reader as *const Value as usize, writer as *const Value as usize, types.0);
        if !self.active.insert(key) {
            return;
        }
        self.compare_schemas(reader, writer, types, path);
        self.active.remove(&key);
    }

    fn compare_schemas(&mut self, reader: &'a Value, writer: &'a Value, wtypes: Types, path: &Path) {
        if wtypes.is_empty() {
            return; // the writer writes nothing here
        }
        // The union's siblings hold whichever branch is taken; the branches are checked (with
        // their own unjudged keywords) in `best_branch`.
        let mark = self.needed.len();
        self.needed.extend(unjudged(reader));
        if let Some(branches) = union(reader) {
            let singles = if wtypes.count() > 1 { wtypes.singles() } else { vec![wtypes] };
            for types in singles {
                self.best_branch(branches, writer, types, path);
            }
            self.needed.truncate(mark);
            return;
        }
        self.check_unjudged(path);
        self.needed.truncate(mark);
        let r = match reader {
            Value::Object(r) => r,
            Value::Bool(false) => {
                let message =
                    format!("the {} accepts no value here but the {} does", self.reader, self.writer);
                self.push(path, Rule::TypeChanged, message);
                return;
            }
            _ => return, // `true`, or not a schema at all
        };
        let w = match writer {
            Value::Object(w) => w,
            _ => &*EMPTY,
        };

        let rtypes = Types::keyword(r.get("type"));
        let accepted = rtypes.accepted();
        let missing = wtypes.minus(accepted);
        if !missing.is_empty() {
            let unreadable = if missing == Types::NUMBER && accepted.intersects(Types::INTEGER) {
                "non-integer numbers".to_owned()
            } else {
                format!("{missing} values")
            };
            let message = format!(
                "the {} accepts {rtypes} but the {} allows {wtypes}: {unreadable} cannot be read",
                self.reader, self.writer
            );
            self.push(path, Rule::TypeChanged, message);
        }
        let common = wtypes.intersect(accepted);
        if common.is_empty() {
            return;
        }
        let writer_values = enumerated(w);
        self.compare_values(r, writer_values.as_deref(), common, path);
        if writer_values.is_none() {
            if common.intersects(Types::NUMBER.union(Types::INTEGER)) {
                self.compare_bound(path, "minimum", lower_bound(r), lower_bound(w), Side::Lower);
                self.compare_bound(path, "maximum", upper_bound(r), upper_bound(w), Side::Upper);
            }
            if common.intersects(Types::STRING) {
                self.compare_bound(
                    path,
                    "minLength",
                    inclusive(r, "minLength"),
                    inclusive(w, "minLength"),
                    Side::Lower,
                );
                self.compare_bound(
                    path,
                    "maxLength",
                    inclusive(r, "maxLength"),
                    inclusive(w, "maxLength"),
                    Side::Upper,
                );
            }
        }
        if common.intersects(Types::OBJECT) {
            self.compare_object(r, w, path);
        }
        if common.intersects(Types::ARRAY) {
            self.compare_array(r, w, path);
        }
    }

    /// A reader union: the writer (restricted to `types`) must fit some branch. When none fits,
    /// the branch with the fewest violations is taken to be the one meant, and they are reported.
    fn best_branch(&mut self, branches: &'a [Value], writer: &'a Value, types: Types, path: &Path) {
        let mut best: Option<Vec<Violation>> = None;
        for branch in branches {
            let saved = std::mem::take(&mut self.out);
            let mark = self.needed.len();
            let mut refs = Vec::new();
            let resolved = resolve(self.reader_root, branch, &mut refs);
            self.needed.extend(refs.into_iter().filter_map(|node| beside(node, "$ref")));
            match resolved {
                Ok(branch) => self.compare_typed(branch, writer, types, path),
                Err(problem) => {
                    self.push(path, Rule::UnresolvedReference, format!("in the {}: {problem}", self.reader))
                }
            }
            self.needed.truncate(mark);
            let found = std::mem::replace(&mut self.out, saved);
            if found.is_empty() {
                return;
            }
            if best.as_ref().is_none_or(|best| found.len() < best.len()) {
                best = Some(found);
            }
        }
        self.out.extend(best.unwrap_or_default());
    }

    fn compare_values(
        &mut self,
        r: &'a Map<String, Value>,
        writer_values: Option<&[&Value]>,
        common: Types,
        path: &Path,
    ) {
        let Some(reader_values) = enumerated(r) else { return };
        match writer_values {
            Some(writer_values) => {
                let missing: Vec<&Value> = writer_values
                    .iter()
                    .copied()
                    .filter(|value| common.intersects(Types::of_value(value)))
                    .filter(|value| !reader_values.iter().any(|known| same_value(known, value)))
                    .collect();
                if !missing.is_empty() {
                    let rule = self.named(Rule::EnumValueRemoved, Rule::EnumValueAdded);
                    let message = format!(
                        "the {} allows {} but the {} does not accept {}",
                        self.writer,
                        list(&missing),
                        self.reader,
                        if missing.len() == 1 { "it" } else { "them" }
                    );
                    self.push(path, rule, message);
                }
            }
            None => {
                let rule = self.named(Rule::ConstraintTightened, Rule::ConstraintRelaxed);
                let message = format!(
                    "the {} accepts only {} but the {} allows any {common} value",
                    self.reader,
                    list(&reader_values),
                    self.writer
                );
                self.push(path, rule, message);
            }
        }
    }

    fn compare_bound(
        &mut self,
        path: &Path,
        keyword: &str,
        reader: Option<Bound>,
        writer: Option<Bound>,
        side: Side,
    ) {
        let Some(reader_bound) = reader else { return };
        if writer.is_some_and(|writer_bound| !reader_bound.tighter_than(writer_bound, side)) {
            return;
        }
        let allowed = match writer {
            Some(writer_bound) => format!("allows {}", writer_bound.render(side)),
            None => "has no such bound".to_owned(),
        };
        let rule = self.named(Rule::ConstraintTightened, Rule::ConstraintRelaxed);
        let message = format!(
            "{keyword}: the {} requires {} where the {} {allowed}",
            self.reader,
            reader_bound.render(side),
            self.writer
        );
        self.push(path, rule, message);
    }

    fn compare_object(&mut self, r: &'a Map<String, Value>, w: &'a Map<String, Value>, path: &Path) {
        let reader_props = properties(r);
        let writer_props = properties(w);
        let reader_required = required(r);
        let writer_required = required(w);
        let reader_extra = extra(r);

        let only_reader: Vec<&str> =
            reader_props.keys().copied().filter(|name| !writer_props.contains_key(name)).collect();
        let only_writer: Vec<&str> =
            writer_props.keys().copied().filter(|name| !reader_props.contains_key(name)).collect();
        let rename = match (only_reader.as_slice(), only_writer.as_slice()) {
            ([in_reader], [in_writer]) if same_schema(reader_props[in_reader], writer_props[in_writer]) => {
                Some((*in_reader, *in_writer))
            }
            _ => None,
        };

        let names: BTreeSet<&str> =
            reader_props.keys().chain(writer_props.keys()).chain(reader_required.iter()).copied().collect();
        let mut from_rename = Vec::new();
        for name in names {
            let in_rename = rename.is_some_and(|(a, b)| name == a || name == b);
            let saved = in_rename.then(|| std::mem::take(&mut self.out));
            let field_path = path.field(name);
            let (reader_prop, writer_prop) = (reader_props.get(name), writer_props.get(name));
            match (reader_prop, writer_prop) {
                (Some(reader_prop), Some(writer_prop)) => self.descend(reader_prop, writer_prop, &field_path),
                (None, Some(writer_prop)) => match reader_extra {
                    Extra::Closed => {
                        let rule = self.named(Rule::FieldRemoved, Rule::FieldAdded);
                        let message = format!(
                            "the {} declares '{name}' but the {} does not and allows no undeclared ones",
                            self.writer, self.reader
                        );
                        self.push(&field_path, rule, message);
                    }
                    Extra::Open(schema) => self.descend(schema, writer_prop, &field_path),
                },
                _ => {}
            }
            if reader_required.contains(name) && !writer_required.contains(name) {
                let (rule, how) = if writer_prop.is_some() {
                    (self.named(Rule::OptionalMadeRequired, Rule::RequiredMadeOptional), "leaves it optional")
                } else {
                    (self.named(Rule::RequiredFieldAdded, Rule::FieldRemoved), "does not declare it")
                };
                let message = format!("the {} requires '{name}' but the {} {how}", self.reader, self.writer);
                self.push(&field_path, rule, message);
            }
            if let Some(saved) = saved {
                from_rename.extend(std::mem::replace(&mut self.out, saved));
            }
        }
        match rename {
            Some((in_reader, in_writer)) if !from_rename.is_empty() => {
                let (old, new) = match self.direction {
                    Direction::Backward => (in_writer, in_reader),
                    Direction::Forward => (in_reader, in_writer),
                };
                let message = format!(
                    "renamed '{old}' to '{new}'? the {} has '{in_writer}' where the {} expects '{in_reader}'",
                    self.writer, self.reader
                );
                self.push(&path.field(old), Rule::FieldRenamed, message);
            }
            _ => self.out.extend(from_rename),
        }

        match (extra(w), reader_extra) {
            (Extra::Closed, _) => {}
            (Extra::Open(_), Extra::Closed) => {
                let rule = self.named(Rule::ConstraintTightened, Rule::ConstraintRelaxed);
                let message = format!(
                    "the {} allows properties it does not declare but the {} does not",
                    self.writer, self.reader
                );
                self.push(path, rule, message);
            }
            (Extra::Open(writer_extra), Extra::Open(reader_extra)) => {
                self.descend(reader_extra, writer_extra, &path.child(Segment::Additional))
            }
        }
    }

    fn compare_array(&mut self, r: &'a Map<String, Value>, w: &'a Map<String, Value>, path: &Path) {
        let (reader_tuple, reader_rest) = tuple(r);
        let (writer_tuple, writer_rest) = tuple(w);
        for index in 0..reader_tuple.len().max(writer_tuple.len()) {
            let reader_item = reader_tuple.get(index).unwrap_or(reader_rest);
            let writer_item = writer_tuple.get(index).unwrap_or(writer_rest);
            self.descend(reader_item, writer_item, &path.child(Segment::Index(index)));
        }
        self.descend(reader_rest, writer_rest, &path.child(Segment::Items));
        self.compare_bound(path, "minItems", inclusive(r, "minItems"), inclusive(w, "minItems"), Side::Lower);
        self.compare_bound(path, "maxItems", inclusive(r, "maxItems"), inclusive(w, "maxItems"), Side::Upper);
    }
}

/// Follows `$ref`s from `schema` within `root` until a schema without one; `passed` gets each
/// schema with a `$ref` on the way (their other keywords are not walked).
fn resolve<'a>(root: &'a Value, schema: &'a Value, passed: &mut Vec<&'a Value>) -> Result<&'a Value, String> {
    let mut current = schema;
    let mut seen: Vec<&str> = Vec::new();
    while let Some(reference) = ref_of(current) {
        if seen.contains(&reference) {
            return Err(format!("'{reference}' refers to itself through bare references"));
        }
        seen.push(reference);
        passed.push(current);
        current = lookup(root, reference).ok_or_else(|| {
            format!("cannot resolve '{reference}' (only local references like '#/$defs/Name' are followed)")
        })?;
    }
    Ok(current)
}

fn ref_of(schema: &Value) -> Option<&str> {
    schema.get("$ref").and_then(Value::as_str)
}

fn lookup<'a>(root: &'a Value, reference: &str) -> Option<&'a Value> {
    let pointer = reference.strip_prefix('#')?;
    if pointer.is_empty() {
        return Some(root);
    }
    if !pointer.starts_with('/') {
        return None; // an `$anchor`: not followed
    }
    root.pointer(&percent_decode(pointer)?)
}

/// URI fragments may percent-encode pointer characters (`#/$defs/Order%20Line`).
fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        if bytes[index] == b'%' {
            let hex = text.get(index + 1..index + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            index += 3;
        } else {
            out.push(bytes[index]);
            index += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// The branches of an `anyOf` / `oneOf` (its siblings are [`unjudged`]).
fn union(schema: &Value) -> Option<&[Value]> {
    union_keyword(schema).and_then(|keyword| schema.get(keyword)).and_then(Value::as_array).map(Vec::as_slice)
}

/// Which keyword [`union`] takes the branches of: `anyOf`, else `oneOf`, with at least one branch.
fn union_keyword(schema: &Value) -> Option<&'static str> {
    ["anyOf", "oneOf"].into_iter().find(|keyword| match schema.get(*keyword) {
        Some(Value::Array(branches)) => !branches.is_empty(),
        _ => false,
    })
}

/// Keywords that are neither walked nor a constraint of their own beside another keyword:
/// declarations (`$defs`) and identifiers. Annotations ([`ANNOTATIONS`]) are not either.
const DECLARATIONS: [&str; 7] =
    ["$schema", "$defs", "definitions", "$anchor", "$dynamicAnchor", "$recursiveAnchor", "$vocabulary"];

/// In-place applicators the walk does not judge, each a constraint on the value where it stands
/// (`if`/`then`/`else` are one, see [`unjudged`]). `anyOf` / `oneOf` are here only when they are
/// not a [`union`] (an empty or malformed list, or the second of the two).
const UNJUDGED: [&str; 8] =
    ["allOf", "not", "dependentSchemas", "dependencies", "$dynamicRef", "$recursiveRef", "anyOf", "oneOf"];

/// Keywords of one schema the walk does not judge, kept together to be compared whole with the
/// other side's.
#[derive(Debug)]
struct Unjudged<'a> {
    /// For people: `allOf`, `if/then/else`, `keywords beside $ref (required)`.
    what: String,
    /// (keyword, value), in keyword order.
    parts: Vec<(&'a str, &'a Value)>,
}

/// The keywords of `schema` the walk does not judge: beside a `$ref` or a [`union`], every
/// constraint (the walk follows the reference or the branches only); otherwise the [`UNJUDGED`]
/// applicators and `if`/`then`/`else` (one, together).
fn unjudged(schema: &Value) -> Vec<Unjudged<'_>> {
    let Value::Object(map) = schema else { return Vec::new() };
    if ref_of(schema).is_some() {
        return beside(schema, "$ref").into_iter().collect();
    }
    if let Some(keyword) = union_keyword(schema) {
        return beside(schema, keyword).into_iter().collect();
    }
    let mut found = Vec::new();
    let conditional: Vec<(&str, &Value)> =
        ["else", "if", "then"].into_iter().filter_map(|k| map.get(k).map(|v| (k, v))).collect();
    if !conditional.is_empty() {
        found.push(Unjudged { what: "if/then/else".to_owned(), parts: conditional });
    }
    for keyword in UNJUDGED {
        if let Some(value) = map.get(keyword) {
            found.push(Unjudged { what: format!("`{keyword}`"), parts: vec![(keyword, value)] });
        }
    }
    found
}

/// The constraints beside `keyword` (a `$ref`, or the keyword of a [`union`]), if there are any.
fn beside<'a>(schema: &'a Value, keyword: &str) -> Option<Unjudged<'a>> {
    let Value::Object(map) = schema else { return None };
    let mut parts: Vec<(&str, &Value)> = map
        .iter()
        .map(|(name, value)| (name.as_str(), value))
        .filter(|(name, _)| *name != keyword && !ANNOTATIONS.contains(name) && !DECLARATIONS.contains(name))
        .collect();
    if parts.is_empty() {
        return None;
    }
    parts.sort_by_key(|(name, _)| *name);
    let names: Vec<&str> = parts.iter().map(|(name, _)| *name).collect();
    Some(Unjudged { what: format!("keywords beside `{keyword}` ({})", names.join(", ")), parts })
}

/// Whether two schemas, each in its own document, are the same constraint: equal keyword for
/// keyword, annotations aside, and local `$ref`s followed on both sides (a pair of targets
/// already being compared further up is taken as the same, so recursive definitions terminate).
struct Same<'a> {
    a_root: &'a Value,
    b_root: &'a Value,
    assumed: HashSet<(usize, usize)>,
}

impl<'a> Same<'a> {
    fn new(a_root: &'a Value, b_root: &'a Value) -> Self {
        Self { a_root, b_root, assumed: HashSet::new() }
    }

    fn unjudged(&mut self, a: &Unjudged<'_>, b: &Unjudged<'_>) -> bool {
        a.parts.len() == b.parts.len()
            && a.parts.iter().zip(&b.parts).all(|((ka, va), (kb, vb))| ka == kb && self.keyword(ka, va, vb))
    }

    fn schemas(&mut self, a: &Value, b: &Value) -> bool {
        match (a, b) {
            (Value::Object(a), Value::Object(b)) => {
                let constraints = |map: &Map<String, Value>| {
                    map.keys().filter(|k| !ANNOTATIONS.contains(&k.as_str())).count()
                };
                constraints(a) == constraints(b)
                    && a.iter()
                        .filter(|(k, _)| !ANNOTATIONS.contains(&k.as_str()))
                        .all(|(k, va)| b.get(k).is_some_and(|vb| self.keyword(k, va, vb)))
            }
            _ => a == b,
        }
    }

    fn keyword(&mut self, keyword: &str, a: &Value, b: &Value) -> bool {
        match keyword {
            "$ref" => self.references(a, b),
            // Values, not schemas.
            "enum" | "const" | "required" | "type" | "dependentRequired" => a == b,
            // Names mapped to schemas.
            "properties" | "patternProperties" | "$defs" | "definitions" | "dependentSchemas" => {
                match (a, b) {
                    (Value::Object(a), Value::Object(b)) => {
                        a.len() == b.len()
                            && a.iter().all(|(name, va)| b.get(name).is_some_and(|vb| self.schemas(va, vb)))
                    }
                    _ => a == b,
                }
            }
            _ => self.values(a, b),
        }
    }

    /// A keyword's value: a schema, a list of them, or a plain value.
    fn values(&mut self, a: &Value, b: &Value) -> bool {
        match (a, b) {
            (Value::Object(_), Value::Object(_)) => self.schemas(a, b),
            (Value::Array(a), Value::Array(b)) => {
                a.len() == b.len() && a.iter().zip(b).all(|(a, b)| self.values(a, b))
            }
            _ => same_value(a, b),
        }
    }

    fn references(&mut self, a: &Value, b: &Value) -> bool {
        let (Some(a_ref), Some(b_ref)) = (a.as_str(), b.as_str()) else { return a == b };
        match (lookup(self.a_root, a_ref), lookup(self.b_root, b_ref)) {
            (Some(a), Some(b)) => {
                let pair = (a as *const Value as usize, b as *const Value as usize);
                if !self.assumed.insert(pair) {
                    return true; // being compared further up
                }
                let same = self.schemas(a, b);
                self.assumed.remove(&pair);
                same
            }
            // References that are not followed are the same when they name the same schema.
            (None, None) => a_ref == b_ref,
            _ => false,
        }
    }
}

/// The values of `const` (one) or `enum`, if the schema lists them.
fn enumerated(schema: &Map<String, Value>) -> Option<Vec<&Value>> {
    if let Some(value) = schema.get("const") {
        return Some(vec![value]);
    }
    match schema.get("enum") {
        Some(Value::Array(values)) => Some(values.iter().collect()),
        _ => None,
    }
}

/// The types a writer can produce: its `type`, narrowed by its `enum` / `const` values.
fn writer_types(schema: &Value) -> Types {
    let schema = match schema {
        Value::Bool(false) => return Types::NONE,
        Value::Object(schema) => schema,
        _ => return Types::ALL,
    };
    let declared = Types::keyword(schema.get("type"));
    match enumerated(schema) {
        Some(values) => values
            .iter()
            .fold(Types::NONE, |all, value| all.union(Types::of_value(value)))
            .intersect(declared.accepted()),
        None => declared,
    }
}

fn same_value(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(a), Value::Number(b)) => a.as_f64() == b.as_f64(),
        _ => a == b,
    }
}

fn list(values: &[&Value]) -> String {
    values.iter().map(|value| value.to_string()).collect::<Vec<_>>().join(", ")
}

fn properties(schema: &Map<String, Value>) -> BTreeMap<&str, &Value> {
    match schema.get("properties") {
        Some(Value::Object(properties)) => {
            properties.iter().map(|(name, schema)| (name.as_str(), schema)).collect()
        }
        _ => BTreeMap::new(),
    }
}

fn required(schema: &Map<String, Value>) -> BTreeSet<&str> {
    match schema.get("required") {
        Some(Value::Array(names)) => names.iter().filter_map(Value::as_str).collect(),
        _ => BTreeSet::new(),
    }
}

/// What an object does with properties it does not declare.
#[derive(Clone, Copy)]
enum Extra<'a> {
    Closed,
    /// Accepted when valid against this schema.
    Open(&'a Value),
}

fn extra(schema: &Map<String, Value>) -> Extra<'_> {
    match schema.get("additionalProperties").or_else(|| schema.get("unevaluatedProperties")) {
        Some(Value::Bool(false)) => Extra::Closed,
        Some(allowed) => Extra::Open(allowed),
        // A list of fields is the whole contract (see the module docs).
        None if schema.contains_key("properties") => Extra::Closed,
        None => Extra::Open(&ANY),
    }
}

/// Positional item schemas and the schema for the items after them.
fn tuple(schema: &Map<String, Value>) -> (&[Value], &Value) {
    if let Some(Value::Array(prefix)) = schema.get("prefixItems") {
        return (prefix, schema.get("items").unwrap_or(&ANY));
    }
    match schema.get("items") {
        Some(Value::Array(items)) => (items, schema.get("additionalItems").unwrap_or(&ANY)),
        Some(items) => (&[], items),
        None => (&[], &ANY),
    }
}

/// Equal as constraints: annotations are ignored, property names are not.
fn same_schema(a: &Value, b: &Value) -> bool {
    strip_annotations(a) == strip_annotations(b)
}

fn strip_annotations(schema: &Value) -> Value {
    match schema {
        Value::Object(map) => Value::Object(
            map.iter()
                .filter(|(keyword, _)| !ANNOTATIONS.contains(&keyword.as_str()))
                .map(|(keyword, value)| {
                    let value = match (keyword.as_str(), value) {
                        // Maps of names to schemas: keep the names, strip the schemas.
                        (
                            "properties" | "patternProperties" | "$defs" | "definitions" | "dependentSchemas",
                            Value::Object(named),
                        ) => Value::Object(
                            named
                                .iter()
                                .map(|(name, schema)| (name.clone(), strip_annotations(schema)))
                                .collect(),
                        ),
                        ("enum" | "const", value) => value.clone(),
                        (_, Value::Array(items)) => {
                            Value::Array(items.iter().map(strip_annotations).collect())
                        }
                        (_, value) => strip_annotations(value),
                    };
                    (keyword.clone(), value)
                })
                .collect(),
        ),
        other => other.clone(),
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Side {
    Lower,
    Upper,
}

#[derive(Debug, Clone, Copy, PartialEq)]
struct Bound {
    value: f64,
    exclusive: bool,
}

impl Bound {
    /// Whether `self` admits strictly fewer values than `other` on this side.
    fn tighter_than(self, other: Bound, side: Side) -> bool {
        let further = match side {
            Side::Lower => self.value > other.value,
            Side::Upper => self.value < other.value,
        };
        further || (self.value == other.value && self.exclusive && !other.exclusive)
    }

    fn render(self, side: Side) -> String {
        let operator = match (side, self.exclusive) {
            (Side::Lower, false) => ">=",
            (Side::Lower, true) => ">",
            (Side::Upper, false) => "<=",
            (Side::Upper, true) => "<",
        };
        format!("{operator} {}", self.value)
    }
}

fn inclusive(schema: &Map<String, Value>, keyword: &str) -> Option<Bound> {
    schema.get(keyword).and_then(Value::as_f64).map(|value| Bound { value, exclusive: false })
}

fn exclusive(schema: &Map<String, Value>, keyword: &str) -> Option<Bound> {
    schema.get(keyword).and_then(Value::as_f64).map(|value| Bound { value, exclusive: true })
}

/// The tighter of `minimum` and `exclusiveMinimum`.
fn lower_bound(schema: &Map<String, Value>) -> Option<Bound> {
    tighter(inclusive(schema, "minimum"), exclusive(schema, "exclusiveMinimum"), Side::Lower)
}

fn upper_bound(schema: &Map<String, Value>) -> Option<Bound> {
    tighter(inclusive(schema, "maximum"), exclusive(schema, "exclusiveMaximum"), Side::Upper)
}

fn tighter(a: Option<Bound>, b: Option<Bound>, side: Side) -> Option<Bound> {
    match (a, b) {
        (Some(a), Some(b)) => Some(if b.tighter_than(a, side) { b } else { a }),
        (a, b) => a.or(b),
    }
}

/// A set of JSON Schema type names. `number` as a writer type includes integers; as a reader
/// type it accepts them ([`Types::accepted`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Types(u8);

impl Types {
    const NONE: Types = Types(0);
    const NULL: Types = Types(1);
    const BOOLEAN: Types = Types(2);
    const OBJECT: Types = Types(4);
    const ARRAY: Types = Types(8);
    const NUMBER: Types = Types(16);
    const INTEGER: Types = Types(32);
    const STRING: Types = Types(64);
    const ALL: Types = Types(127);
    const NAMES: [(&'static str, Types); 7] = [
        ("null", Self::NULL),
        ("boolean", Self::BOOLEAN),
        ("object", Self::OBJECT),
        ("array", Self::ARRAY),
        ("number", Self::NUMBER),
        ("integer", Self::INTEGER),
        ("string", Self::STRING),
    ];

    /// The `type` keyword: a name, an array of names, or absent (anything).
    fn keyword(keyword: Option<&Value>) -> Types {
        let named =
            |name: &str| Self::NAMES.iter().find(|(known, _)| *known == name).map_or(Self::NONE, |(_, t)| *t);
        match keyword {
            Some(Value::String(name)) => named(name),
            Some(Value::Array(names)) => {
                names.iter().filter_map(Value::as_str).fold(Self::NONE, |all, name| all.union(named(name)))
            }
            _ => Self::ALL,
        }
    }

    fn of_value(value: &Value) -> Types {
        match value {
            Value::Null => Self::NULL,
            Value::Bool(_) => Self::BOOLEAN,
            Value::Object(_) => Self::OBJECT,
            Value::Array(_) => Self::ARRAY,
            Value::String(_) => Self::STRING,
            Value::Number(n) if n.is_i64() || n.is_u64() || n.as_f64().is_some_and(|f| f.fract() == 0.0) => {
                Self::INTEGER
            }
            Value::Number(_) => Self::NUMBER,
        }
    }

    /// The writer types a reader declaring `self` accepts.
    fn accepted(self) -> Types {
        if self.intersects(Self::NUMBER) { self.union(Self::INTEGER) } else { self }
    }

    fn union(self, other: Types) -> Types {
        Types(self.0 | other.0)
    }

    fn intersect(self, other: Types) -> Types {
        Types(self.0 & other.0)
    }

    fn minus(self, other: Types) -> Types {
        Types(self.0 & !other.0)
    }

    fn intersects(self, other: Types) -> bool {
        self.0 & other.0 != 0
    }

    fn is_empty(self) -> bool {
        self.0 == 0
    }

    fn count(self) -> u32 {
        self.0.count_ones()
    }

    fn singles(self) -> Vec<Types> {
        Self::NAMES.iter().map(|(_, t)| *t).filter(|t| self.intersects(*t)).collect()
    }
}

impl fmt::Display for Types {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if *self == Self::ALL {
            return f.write_str("any type");
        }
        let names: Vec<&str> =
            Self::NAMES.iter().filter(|(_, t)| self.intersects(*t)).map(|(name, _)| *name).collect();
        match names.as_slice() {
            [] => f.write_str("no type"),
            [one] => f.write_str(one),
            many => write!(f, "[{}]", many.join(", ")),
        }
    }
}

/// A location in the data (not in the schema), rendered as a JSON path.
#[derive(Debug, Clone, PartialEq)]
struct Path(Vec<Segment>);

#[derive(Debug, Clone, PartialEq)]
enum Segment {
    Field(String),
    /// Every item of an array: `[]`.
    Items,
    /// A tuple position: `[0]`.
    Index(usize),
    /// Any property the object does not declare: `.*`.
    Additional,
}

impl Path {
    fn root() -> Path {
        Path(Vec::new())
    }

    fn child(&self, segment: Segment) -> Path {
        let mut segments = self.0.clone();
        segments.push(segment);
        Path(segments)
    }

    fn field(&self, name: &str) -> Path {
        self.child(Segment::Field(name.to_owned()))
    }

    fn render(&self) -> String {
        let mut out = String::from("$");
        for segment in &self.0 {
            match segment {
                Segment::Field(name) if is_identifier(name) => {
                    out.push('.');
                    out.push_str(name);
                }
                Segment::Field(name) => {
                    out.push_str("['");
                    for c in name.chars() {
                        if c == '\'' || c == '\\' {
                            out.push('\\');
                        }
                        out.push(c);
                    }
                    out.push_str("']");
                }
                Segment::Items => out.push_str("[]"),
                Segment::Index(index) => out.push_str(&format!("[{index}]")),
                Segment::Additional => out.push_str(".*"),
            }
        }
        out
    }
}

fn is_identifier(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == '$')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '$')
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn pairs(violations: &[Violation]) -> Vec<(String, Rule)> {
        violations.iter().map(|v| (v.path.clone(), v.rule)).collect()
    }

    #[test]
    fn paths_render_as_json_paths() {
        let root = Path::root();
        assert_eq!(root.render(), "$");
        assert_eq!(root.field("customer").field("name").render(), "$.customer.name");
        assert_eq!(
            root.field("items").child(Segment::Items).field("quantity").render(),
            "$.items[].quantity"
        );
        assert_eq!(root.field("pair").child(Segment::Index(1)).render(), "$.pair[1]");
        assert_eq!(root.field("labels").child(Segment::Additional).render(), "$.labels.*");
        assert_eq!(root.field("first name").render(), "$['first name']");
        assert_eq!(root.field("it's").field("a\\b").render(), r"$['it\'s']['a\\b']");
        assert_eq!(root.field("2fa").field("_x$1").render(), "$['2fa']._x$1");
        assert_eq!(root.field("").render(), "$['']");
    }

    #[test]
    fn violations_carry_their_data_path() {
        let old = json!({"type": "object", "properties": {"items": {"type": "array", "items": {
            "type": "object", "properties": {"quantity": {"type": "integer"}}}}}});
        let new = json!({"type": "object", "properties": {"items": {"type": "array", "items": {
            "type": "object", "properties": {"quantity": {"type": "string"}}}}}});
        assert_eq!(pairs(&can_read(&new, &old)), [("$.items[].quantity".to_owned(), Rule::TypeChanged)]);
    }

    fn tree(name_type: &str) -> Value {
        json!({
            "$ref": "#/$defs/Category",
            "$defs": {"Category": {"type": "object", "properties": {
                "name": {"type": name_type},
                "children": {"type": "array", "items": {"$ref": "#/$defs/Category"}}
            }}}
        })
    }

    #[test]
    fn recursive_refs_terminate() {
        assert!(can_read(&tree("string"), &tree("string")).is_empty());
        // Reported once, where the recursion starts; the guard stops the descent there.
        assert_eq!(
            pairs(&can_read(&tree("integer"), &tree("string"))),
            [("$.name".to_owned(), Rule::TypeChanged)]
        );
    }

    #[test]
    fn a_change_inside_a_recursive_branch_is_found() {
        let old = json!({"$defs": {"Node": {"type": "object", "properties": {
            "next": {"$ref": "#/$defs/Node"}, "value": {"type": "integer"}}}},
            "type": "object", "properties": {"head": {"$ref": "#/$defs/Node"}}});
        let mut new = old.clone();
        new["$defs"]["Node"]["properties"]["value"] = json!({"type": "string"});
        assert_eq!(pairs(&can_read(&new, &old)), [("$.head.value".to_owned(), Rule::TypeChanged)]);
    }

    #[test]
    fn mutually_recursive_refs_terminate() {
        let schema = json!({"$defs": {
            "A": {"type": "object", "properties": {"b": {"$ref": "#/$defs/B"}}},
            "B": {"type": "object", "properties": {"a": {"$ref": "#/$defs/A"}}}
        }, "$ref": "#/$defs/A"});
        assert!(can_read(&schema, &schema).is_empty());
        // The root itself, referenced from inside.
        let rooted = json!({"type": "object", "properties": {"parent": {"$ref": "#"}}});
        assert!(can_read(&rooted, &rooted).is_empty());
    }

    #[test]
    fn a_cycle_of_bare_refs_is_unresolved_not_a_hang() {
        let looping = json!({"$defs": {"A": {"$ref": "#/$defs/B"}, "B": {"$ref": "#/$defs/A"}},
            "type": "object", "properties": {"x": {"$ref": "#/$defs/A"}}});
        let plain = json!({"type": "object", "properties": {"x": {"type": "string"}}});
        assert_eq!(pairs(&can_read(&looping, &plain)), [("$.x".to_owned(), Rule::UnresolvedReference)]);
    }

    #[test]
    fn refs_resolve_through_definitions_and_escapes() {
        let inline = json!({"type": "object", "properties": {"line": {"type": "string"}}});
        let referenced = json!({"definitions": {"Order Line/v1": {"type": "string"}},
            "type": "object", "properties": {"line": {"$ref": "#/definitions/Order%20Line~1v1"}}});
        assert!(can_read(&inline, &referenced).is_empty());
        assert!(can_read(&referenced, &inline).is_empty());
        // The same foreign reference on both sides is taken as the same schema.
        let foreign =
            json!({"type": "object", "properties": {"m": {"$ref": "https://example.com/money.json"}}});
        assert!(can_read(&foreign, &foreign).is_empty());
    }

    #[test]
    fn levels_and_rules_round_trip_their_wire_names() {
        for level in Compatibility::ALL {
            assert_eq!(level.to_string().parse::<Compatibility>(), Ok(level));
        }
        assert_eq!("full_transitive".parse::<Compatibility>(), Ok(Compatibility::FullTransitive));
        assert!("SIDEWAYS".parse::<Compatibility>().is_err());
        for rule in Rule::ALL {
            assert_eq!(rule.to_string().parse::<Rule>(), Ok(rule));
            assert_eq!(serde_json::to_value(rule).unwrap(), json!(rule.as_str()));
        }
        assert_eq!(
            serde_json::to_value(Compatibility::BackwardTransitive).unwrap(),
            json!("BACKWARD_TRANSITIVE")
        );
    }

    #[test]
    fn nullable_unions_and_type_arrays_are_interchangeable() {
        let array = json!({"type": ["string", "null"]});
        let union = json!({"anyOf": [{"type": "string"}, {"type": "null"}]});
        assert!(can_read(&array, &union).is_empty());
        assert!(can_read(&union, &array).is_empty());
        assert_eq!(
            pairs(&can_read(&json!({"type": "string"}), &union)),
            [("$".to_owned(), Rule::TypeChanged)]
        );
    }

    #[test]
    fn bounds_compare_exclusive_and_inclusive_forms() {
        let inclusive = json!({"type": "number", "minimum": 0});
        let exclusive = json!({"type": "number", "exclusiveMinimum": 0});
        assert!(can_read(&inclusive, &exclusive).is_empty());
        assert_eq!(pairs(&can_read(&exclusive, &inclusive)), [("$".to_owned(), Rule::ConstraintTightened)]);
    }

    #[test]
    fn full_reports_a_finding_of_both_directions_once() {
        let old = json!({"type": "object", "properties": {"fullName": {"type": "string"}},
            "required": ["fullName"]});
        let new = json!({"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]});
        let found = check(Compatibility::Full, &new, &[old]);
        assert_eq!(pairs(&found), [("$.fullName".to_owned(), Rule::FieldRenamed)]);
    }

    #[test]
    fn narrowing_to_integer_names_the_lost_values() {
        let found = can_read(&json!({"type": "integer"}), &json!({"type": "number"}));
        assert!(found[0].message.ends_with("non-integer numbers cannot be read"), "{}", found[0]);
    }

    #[test]
    fn composition_is_refused_unless_the_same_on_both_sides() {
        let old = json!({"properties": {"v": {"type": "string"}}});
        let new = json!({"allOf": [{"properties": {"v": {"type": "integer"}}, "required": ["v"]}]});
        let found = check(Compatibility::Backward, &new, std::slice::from_ref(&old));
        assert_eq!(pairs(&found), [("$".to_owned(), Rule::CompositionChanged)]);
        assert!(found[0].message.starts_with("the new schema has `allOf` here"), "{}", found[0]);
        // The same keyword on both sides is no change, wherever its references point alike.
        let with = |maximum: u32| {
            json!({"$defs": {"Small": {"maximum": maximum}}, "type": "object",
                "properties": {"n": {"type": "integer", "not": {"$ref": "#/$defs/Small"}}}})
        };
        assert!(check(Compatibility::Full, &with(5), &[with(5)]).is_empty());
        assert_eq!(
            pairs(&check(Compatibility::Full, &with(6), &[with(5)])),
            [("$.n".to_owned(), Rule::CompositionChanged)]
        );
        // A union's siblings hold for every branch the writer's union may take.
        let union =
            |sibling: Value| json!({"anyOf": [{"type": "string"}, {"type": "null"}], "maxLength": sibling});
        assert!(can_read(&union(json!(3)), &union(json!(3))).is_empty());
        assert_eq!(
            pairs(&can_read(&union(json!(3)), &union(json!(4)))),
            [("$".to_owned(), Rule::CompositionChanged)]
        );
    }

    #[test]
    fn transitive_messages_name_the_version() {
        let v1 = json!({"type": "object", "properties": {"a": {"type": "integer"}}});
        let v2 = json!({"type": "object", "properties": {}});
        let new = json!({"type": "object", "properties": {"a": {"type": "string"}}});
        let found = check(Compatibility::BackwardTransitive, &new, &[v1, v2]);
        assert_eq!(pairs(&found), [("$.a".to_owned(), Rule::TypeChanged)]);
        assert!(
            found[0].message.ends_with("(against previous version 1 of 2, oldest first)"),
            "{}",
            found[0]
        );
    }
}
