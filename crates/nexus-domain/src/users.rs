//! Users: registering a user, and the `users` read model.
//!
//! `UserRegistered` is at schema version 2 (`{firstName, lastName, email}`). Version 1
//! (`{fullName, email}`) exists in old event logs; the runtime upcasts it before the aggregate or
//! the projection sees it, so only the v2 shape is a variant here.

use nexus_core::{
    Aggregate, CommandSpec, DomainError, DomainEvent, EventSpec, Projection, ProjectionError, ReadDocument,
};
use serde::{Deserialize, Serialize};

use crate::read_event;

/// The JSON Schema of the historical `UserRegistered` v1 payload `{fullName, email}`, for the
/// schema registry and the v1 → v2 upcaster.
pub const USER_REGISTERED_V1_SCHEMA: &str = include_str!("../schemas/events/UserRegistered.v1.json");

/// `UserRegistered` v1 `{fullName, email}` → v2 `{firstName, lastName, email}`: the name splits at
/// its first space (a one-word name has an empty last name). Other fields pass through.
pub fn upcast_user_registered_v1(payload: serde_json::Value) -> serde_json::Value {
    let serde_json::Value::Object(mut fields) = payload else { return payload };
    let full_name = match fields.remove("fullName") {
        Some(serde_json::Value::String(name)) => name,
        _ => String::new(),
    };
    let (first, last) = full_name.trim().split_once(' ').unwrap_or((full_name.trim(), ""));
    fields.insert("firstName".into(), first.into());
    fields.insert("lastName".into(), last.trim().into());
    serde_json::Value::Object(fields)
}

/// A registered user. The only rule is that a user registers once.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct User {
    registered: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "commandType", content = "payload")]
pub enum UserCommand {
    RegisterUser(RegisterUser),
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RegisterUser {
    pub first_name: String,
    pub last_name: String,
    pub email: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "eventType", content = "payload")]
pub enum UserEvent {
    UserRegistered(UserRegistered),
}

/// `UserRegistered` v2.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UserRegistered {
    pub first_name: String,
    pub last_name: String,
    pub email: String,
}

const COMMANDS: &[CommandSpec] = &[CommandSpec {
    name: "RegisterUser",
    creates: true,
    schema: include_str!("../schemas/commands/RegisterUser.json"),
}];

const EVENTS: &[EventSpec] = &[EventSpec {
    name: "UserRegistered",
    schema_version: 2,
    schema: include_str!("../schemas/events/UserRegistered.v2.json"),
}];

impl Aggregate for User {
    const KIND: &'static str = "User";
    type Command = UserCommand;
    type Event = UserEvent;

    fn commands() -> &'static [CommandSpec] {
        COMMANDS
    }

    fn events() -> &'static [EventSpec] {
        EVENTS
    }

    fn decide(&self, command: UserCommand) -> Result<Vec<UserEvent>, DomainError> {
        match command {
            UserCommand::RegisterUser(RegisterUser { first_name, last_name, email }) => {
                if self.registered {
                    return Err(DomainError::rule("user is already registered"));
                }
                Ok(vec![UserEvent::UserRegistered(UserRegistered { first_name, last_name, email })])
            }
        }
    }

    fn apply(&mut self, event: UserEvent) {
        match event {
            UserEvent::UserRegistered(_) => self.registered = true,
        }
    }

    /// Snapshots are the state's serde form; bump `SNAPSHOT_VERSION` when its fields change.
    fn snapshot(&self) -> Option<serde_json::Value> {
        serde_json::to_value(self).ok()
    }

    fn restore(snapshot: serde_json::Value) -> Option<Self> {
        serde_json::from_value(snapshot).ok()
    }
}

/// Builds the `users` read model: fields `firstName`, `lastName`, `email`; status `ACTIVE`;
/// `searchableText` "first last email".
#[derive(Clone, Copy, Debug, Default)]
pub struct UsersProjection;

impl Projection for UsersProjection {
    fn name(&self) -> &'static str {
        "users"
    }

    fn handles(&self, event_type: &str) -> bool {
        EVENTS.iter().any(|spec| spec.name == event_type)
    }

    fn apply(&self, doc: &mut ReadDocument, event: &DomainEvent) -> Result<(), ProjectionError> {
        match read_event::<UserEvent>(event)? {
            UserEvent::UserRegistered(UserRegistered { first_name, last_name, email }) => {
                doc.status = "ACTIVE".to_owned();
                doc.searchable_text = format!("{first_name} {last_name} {email}");
                doc.set("firstName", first_name);
                doc.set("lastName", last_name);
                doc.set("email", email);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;
    use crate::testing::{check, command, event, stored};

    fn ada() -> Value {
        json!({"firstName": "Ada", "lastName": "Lovelace", "email": "ada@example.com"})
    }

    #[test]
    fn a_user_registers_once() {
        let register = command("RegisterUser", ada());
        let registered = event("UserRegistered", ada());
        check::<User>(&[], register.clone(), Ok(vec![registered.clone()]));
        check::<User>(&[registered], register, Err("user is already registered"));
    }

    #[test]
    fn the_read_model_shows_the_registered_user() {
        let mut doc = ReadDocument::empty("u-1", "u-1");
        let registered = stored("u-1", 1, "UserRegistered", ada());
        assert!(UsersProjection.handles(&registered.event_type));
        UsersProjection.apply(&mut doc, &registered).unwrap();
        assert_eq!(doc.status, "ACTIVE");
        assert_eq!(doc.searchable_text, "Ada Lovelace ada@example.com");
        assert_eq!(doc.fields["firstName"], "Ada");
        assert_eq!(doc.fields["lastName"], "Lovelace");
        assert_eq!(doc.fields["email"], "ada@example.com");
    }

    #[test]
    fn a_v1_event_that_was_not_upcast_is_refused() {
        let v1 = stored("u-1", 1, "UserRegistered", json!({"fullName": "Ada Lovelace", "email": "a@b"}));
        let mut doc = ReadDocument::empty("u-1", "u-1");
        assert!(UsersProjection.apply(&mut doc, &v1).is_err());
        assert!(serde_json::from_value::<UserEvent>(event("UserRegistered", (*v1.payload).clone())).is_err());
    }
}

#[cfg(test)]
mod upcast_tests {
    use super::upcast_user_registered_v1;
    use serde_json::json;

    #[test]
    fn v1_names_split_at_the_first_space() {
        let v2 =
            upcast_user_registered_v1(json!({"fullName": "Ada King Lovelace", "email": "ada@example.com"}));
        assert_eq!(v2, json!({"firstName": "Ada", "lastName": "King Lovelace", "email": "ada@example.com"}));
        let single = upcast_user_registered_v1(json!({"fullName": "Cher", "email": "c@example.com"}));
        assert_eq!(single, json!({"firstName": "Cher", "lastName": "", "email": "c@example.com"}));
    }
}
