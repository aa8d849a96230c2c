//! The engine's own tables: users, values, definitions and rule groups as
//! of its checkpoint, and the members it decided.

use userstream_eventlog::Migration;

const DDL: &str = "
    CREATE TABLE IF NOT EXISTS engine_state (
        name TEXT PRIMARY KEY,
        position BIGINT NOT NULL,
        inflight_from BIGINT,
        inflight_to BIGINT
    );
    CREATE TABLE IF NOT EXISTS engine_users (
        application_id TEXT NOT NULL,
        user_id TEXT NOT NULL,
        company_id TEXT NOT NULL,
        archived BIGINT NOT NULL,
        PRIMARY KEY (application_id, user_id)
    );
    CREATE TABLE IF NOT EXISTS engine_values (
        application_id TEXT NOT NULL,
        user_id TEXT NOT NULL,
        definition_id TEXT NOT NULL,
        value TEXT NOT NULL,
        PRIMARY KEY (application_id, user_id, definition_id)
    );
    CREATE INDEX IF NOT EXISTS engine_values_definition ON engine_values (application_id, definition_id);
    CREATE TABLE IF NOT EXISTS engine_definitions (
        application_id TEXT NOT NULL,
        definition_id TEXT NOT NULL,
        definition TEXT NOT NULL,
        PRIMARY KEY (application_id, definition_id)
    );
    CREATE TABLE IF NOT EXISTS engine_groups (
        application_id TEXT NOT NULL,
        group_id TEXT NOT NULL,
        company_id TEXT NOT NULL,
        conditions TEXT NOT NULL,
        rule_version BIGINT NOT NULL,
        PRIMARY KEY (application_id, group_id)
    );
    CREATE TABLE IF NOT EXISTS engine_group_definitions (
        application_id TEXT NOT NULL,
        definition_id TEXT NOT NULL,
        group_id TEXT NOT NULL,
        PRIMARY KEY (application_id, definition_id, group_id)
    );
    CREATE TABLE IF NOT EXISTS engine_members (
        group_id TEXT NOT NULL,
        user_id TEXT NOT NULL,
        PRIMARY KEY (group_id, user_id)
    );
    CREATE INDEX IF NOT EXISTS engine_members_user ON engine_members (user_id);";

/// Typed copies of each value (as the attributes read model has them) with
/// indexes, so a new rule is evaluated from an index range instead of every
/// stored value; filled in for the values already there.
const TYPED_SQLITE: &str = "
    ALTER TABLE engine_values ADD COLUMN num_value REAL;
    ALTER TABLE engine_values ADD COLUMN text_value TEXT;
    UPDATE engine_values SET
        num_value = CASE WHEN json_type(value) IN ('integer', 'real') THEN json_extract(value, '$') END,
        text_value = CASE json_type(value) WHEN 'text' THEN json_extract(value, '$') WHEN 'true' THEN 'true' WHEN 'false' THEN 'false' END;
    DROP INDEX IF EXISTS engine_values_definition;
    CREATE INDEX engine_values_definition ON engine_values (application_id, definition_id, user_id);
    CREATE INDEX engine_values_num ON engine_values (application_id, definition_id, num_value, user_id);
    CREATE INDEX engine_values_text ON engine_values (application_id, definition_id, text_value, user_id);";
const TYPED_POSTGRES: &str = "
    ALTER TABLE engine_values ADD COLUMN num_value DOUBLE PRECISION;
    ALTER TABLE engine_values ADD COLUMN text_value TEXT;
    UPDATE engine_values SET
        num_value = CASE WHEN jsonb_typeof(value::jsonb) = 'number' THEN (value::jsonb #>> '{}')::double precision END,
        text_value = CASE WHEN jsonb_typeof(value::jsonb) IN ('string', 'boolean') THEN value::jsonb #>> '{}' END;
    DROP INDEX IF EXISTS engine_values_definition;
    CREATE INDEX engine_values_definition ON engine_values (application_id, definition_id, user_id);
    CREATE INDEX engine_values_num ON engine_values (application_id, definition_id, num_value, user_id);
    CREATE INDEX engine_values_text ON engine_values (application_id, definition_id, text_value, user_id);";

/// The typed values beside each (definition, user), so a new rule reads
/// its users' index keys without a table row; archived users by index.
const COVERING: &str = "
    DROP INDEX IF EXISTS engine_values_definition;
    CREATE INDEX IF NOT EXISTS engine_values_by_definition ON engine_values (application_id, definition_id, user_id, num_value, text_value);
    CREATE INDEX IF NOT EXISTS engine_users_archived ON engine_users (application_id, archived);";

pub const MIGRATIONS: &[Migration] = &[
    Migration { version: 1, sqlite: DDL, postgres: DDL },
    Migration { version: 2, sqlite: TYPED_SQLITE, postgres: TYPED_POSTGRES },
    Migration { version: 3, sqlite: COVERING, postgres: COVERING },
];

/// The engine's tables, for rebuilds and comparisons.
pub const TABLES: &[&str] = &[
    "engine_state",
    "engine_users",
    "engine_values",
    "engine_definitions",
    "engine_groups",
    "engine_group_definitions",
    "engine_members",
];
