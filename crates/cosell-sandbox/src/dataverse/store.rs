//! The compiled schema (system columns, property and navigation maps, intersect tables) and
//! the row store with its undo journal (for atomic change sets) and change-tracking history.

use std::collections::{BTreeMap, HashMap};
use std::ops::Bound as RangeBound;

use chrono::{SecondsFormat, Utc};
use rand::rngs::StdRng;
use rand::{RngCore, SeedableRng};
use serde_json::{Map, Value};
use uuid::Uuid;

use super::query::{Kind, V, fold};
use super::schema::{ColumnDef, ColumnType, DataverseSchema, ManyToMany, StateModel, TableDef};

/// A stored row: property name → JSON value (lookups as `_x_value` plus their
/// `…@Microsoft.Dynamics.CRM.lookuplogicalname` annotation).
pub(crate) type Row = Map<String, Value>;

/// Annotation key holding a lookup's target table.
pub(crate) const LOOKUP_LOGICAL_NAME: &str = "@Microsoft.Dynamics.CRM.lookuplogicalname";

/// A collection-valued (N:N) navigation property of a table.
#[derive(Debug, Clone)]
pub(crate) struct CollectionNav {
    /// Intersect table logical name.
    pub(crate) intersect: String,
    /// Intersect column pointing at this table.
    pub(crate) self_column: String,
    /// The other table.
    pub(crate) other_table: String,
    /// Intersect column pointing at the other table.
    pub(crate) other_column: String,
}

/// A table with everything resolved.
#[derive(Debug, Clone)]
pub(crate) struct Table {
    pub(crate) def: TableDef,
    /// Every column (declared and system) by logical name, in declaration order.
    pub(crate) columns: Vec<ColumnDef>,
    /// Property name (`name`, `_customerid_value`) → index into `columns`.
    pub(crate) props: HashMap<String, usize>,
    /// Single-valued navigation property → (column logical name, target table).
    pub(crate) navs: HashMap<String, (String, String)>,
    /// Collection-valued navigation properties (N:N).
    pub(crate) collections: HashMap<String, CollectionNav>,
}

impl Table {
    /// The properties the store keeps an equality index on: alternate-key columns, lookups,
    /// the primary name and, on an intersect table, both of its columns. These are what
    /// upserts, duplicate-key checks, `$expand` and the sync's `$filter … eq …` look up.
    pub(crate) fn indexed_properties(&self) -> Vec<(String, Kind)> {
        let mut out: Vec<(String, Kind)> = Vec::new();
        let mut add = |col: &ColumnDef| {
            let p = col.property_name();
            if col.logical_name != self.def.primary_key && !out.iter().any(|(q, _)| *q == p) {
                out.push((p, Kind::of(&col.column_type)));
            }
        };
        for key in &self.def.alternate_keys {
            for c in &key.columns {
                if let Some(col) = self.column(c) {
                    add(col);
                }
            }
        }
        for col in &self.columns {
            let is_lookup = matches!(col.column_type, ColumnType::Lookup { .. });
            let is_name = self.def.primary_name.as_deref() == Some(col.logical_name.as_str());
            if is_lookup
                || is_name
                || (self.def.intersect && col.logical_name != self.def.primary_key)
            {
                add(col);
            }
        }
        out
    }
}

impl Table {
    fn compile(def: TableDef) -> Table {
        let mut columns = vec![ColumnDef::new(
            def.primary_key.clone(),
            ColumnType::Uniqueidentifier,
        )];
        columns.extend(def.columns.iter().cloned());
        if def.state_model.is_some() {
            columns.push(ColumnDef::new("statecode", ColumnType::State));
            columns.push(ColumnDef::new("statuscode", ColumnType::Status));
        }
        columns.push(ColumnDef::date_time("createdon").read_only());
        columns.push(ColumnDef::date_time("modifiedon").read_only());
        columns.push(ColumnDef::new("versionnumber", ColumnType::BigInt).read_only());
        let mut seen = std::collections::HashSet::new();
        columns.retain(|c| seen.insert(c.logical_name.clone()));
        let mut props = HashMap::new();
        let mut navs = HashMap::new();
        for (i, c) in columns.iter().enumerate() {
            props.insert(c.property_name(), i);
            if let ColumnType::Lookup { targets } = &c.column_type {
                for t in targets {
                    navs.insert(
                        t.navigation_property.clone(),
                        (c.logical_name.clone(), t.table.clone()),
                    );
                }
            }
        }
        Table {
            def,
            columns,
            props,
            navs,
            collections: HashMap::new(),
        }
    }

    pub(crate) fn logical(&self) -> &str {
        &self.def.logical_name
    }

    pub(crate) fn set(&self) -> &str {
        &self.def.entity_set_name
    }

    pub(crate) fn pk(&self) -> &str {
        &self.def.primary_key
    }

    /// The column behind a property name.
    pub(crate) fn prop(&self, property: &str) -> Option<&ColumnDef> {
        self.props.get(property).map(|i| &self.columns[*i])
    }

    /// The column with this logical name.
    pub(crate) fn column(&self, logical_name: &str) -> Option<&ColumnDef> {
        self.columns.iter().find(|c| c.logical_name == logical_name)
    }

    pub(crate) fn state_model(&self) -> Option<&StateModel> {
        self.def.state_model.as_ref()
    }
}

/// The compiled schema.
#[derive(Debug, Clone)]
pub(crate) struct Model {
    pub(crate) schema: DataverseSchema,
    pub(crate) tables: BTreeMap<String, Table>,
    by_set: HashMap<String, String>,
}

impl Model {
    pub(crate) fn compile(schema: DataverseSchema) -> Model {
        let mut tables: BTreeMap<String, Table> = schema
            .tables()
            .map(|t| (t.logical_name.clone(), Table::compile(t.clone())))
            .collect();
        for ManyToMany {
            schema_name,
            table1,
            table2,
        } in schema.relationships()
        {
            if !tables.contains_key(table1) || !tables.contains_key(table2) {
                continue;
            }
            let col1 = format!("{table1}id");
            let col2 = if table1 == table2 {
                format!("{table2}idtwo")
            } else {
                format!("{table2}id")
            };
            let mut def = TableDef::new(schema_name.clone(), format!("{schema_name}set"))
                .column(ColumnDef::new(col1.clone(), ColumnType::Uniqueidentifier).read_only())
                .column(ColumnDef::new(col2.clone(), ColumnType::Uniqueidentifier).read_only());
            def.state_model = None;
            def.intersect = true;
            tables.insert(schema_name.clone(), Table::compile(def));
            for (me, my_col, other, other_col) in [
                (table1, &col1, table2, &col2),
                (table2, &col2, table1, &col1),
            ] {
                if let Some(t) = tables.get_mut(me.as_str()) {
                    t.collections.insert(
                        schema_name.clone(),
                        CollectionNav {
                            intersect: schema_name.clone(),
                            self_column: my_col.clone(),
                            other_table: other.clone(),
                            other_column: other_col.clone(),
                        },
                    );
                }
            }
        }
        let by_set = tables
            .values()
            .map(|t| (t.set().to_string(), t.logical().to_string()))
            .collect();
        Model {
            schema,
            tables,
            by_set,
        }
    }

    pub(crate) fn table(&self, logical_name: &str) -> Option<&Table> {
        self.tables.get(logical_name)
    }

    pub(crate) fn table_by_set(&self, set: &str) -> Option<&Table> {
        self.by_set.get(set).and_then(|l| self.tables.get(l))
    }

    /// By logical name or entity set name.
    pub(crate) fn resolve(&self, name: &str) -> Option<&Table> {
        self.table(name).or_else(|| self.table_by_set(name))
    }
}

/// An equality-index key: a value as `$filter … eq …` compares it (text case-folded, as
/// [`V::compare`] does). Dates, date-times and nulls are not indexed; filters on them scan.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum IndexKey {
    Str(String),
    /// The bits of an `f64` (`-0` as `0`; NaN is never equal and so never indexed).
    Num(u64),
    Bool(bool),
    Guid(Uuid),
}

impl IndexKey {
    /// The key of a comparable value; `None` when the index cannot answer for it.
    pub(crate) fn of(v: &V) -> Option<IndexKey> {
        Some(match v {
            V::Str(s) => IndexKey::Str(fold(s)),
            V::Num(n) if n.is_nan() => return None,
            V::Num(n) => IndexKey::Num(if *n == 0.0 { 0f64 } else { *n }.to_bits()),
            V::Bool(b) => IndexKey::Bool(*b),
            V::Guid(g) => IndexKey::Guid(*g),
            V::Null | V::Date(_) | V::DateTime(_) => return None,
        })
    }
}

/// The equality index of one property: value → ids of the rows holding it, ascending (the
/// order a scan of the table visits them in).
#[derive(Debug, Clone)]
pub(crate) struct PropIndex {
    pub(crate) kind: Kind,
    pub(crate) postings: HashMap<IndexKey, Vec<Uuid>>,
}

impl PropIndex {
    fn key(&self, row: &Row, prop: &str) -> Option<IndexKey> {
        IndexKey::of(&V::from_json(row.get(prop), self.kind))
    }

    /// The ids holding `v` (empty when none); `None` when `v` cannot be looked up.
    pub(crate) fn lookup(&self, v: &V) -> Option<&[Uuid]> {
        let key = IndexKey::of(v)?;
        Some(self.postings.get(&key).map_or(&[][..], Vec::as_slice))
    }
}

/// Rows of one table, its deletions and the indexes kept beside them.
#[derive(Debug, Clone, Default)]
pub(crate) struct TableData {
    pub(crate) rows: BTreeMap<Uuid, Row>,
    /// `(id, version of the deletion)`, in deletion order (so ascending by version).
    pub(crate) tombstones: Vec<(Uuid, u64)>,
    /// `versionnumber` → id of every live row: a delta read visits only what changed.
    pub(crate) by_version: BTreeMap<u64, Uuid>,
    /// Equality indexes by property name ([`Table::indexed_properties`]).
    pub(crate) indexes: HashMap<String, PropIndex>,
}

fn version_of(row: &Row) -> Option<u64> {
    row.get("versionnumber").and_then(Value::as_u64)
}

impl TableData {
    fn index(&mut self, id: Uuid, row: &Row) {
        if let Some(v) = version_of(row) {
            self.by_version.insert(v, id);
        }
        for (prop, ix) in &mut self.indexes {
            if let Some(key) = ix.key(row, prop) {
                let ids = ix.postings.entry(key).or_default();
                if let Err(at) = ids.binary_search(&id) {
                    ids.insert(at, id);
                }
            }
        }
    }

    fn unindex(&mut self, id: Uuid, row: &Row) {
        if let Some(v) = version_of(row)
            && self.by_version.get(&v) == Some(&id)
        {
            self.by_version.remove(&v);
        }
        for (prop, ix) in &mut self.indexes {
            if let Some(key) = ix.key(row, prop)
                && let Some(ids) = ix.postings.get_mut(&key)
            {
                if let Ok(at) = ids.binary_search(&id) {
                    ids.remove(at);
                }
                if ids.is_empty() {
                    ix.postings.remove(&key);
                }
            }
        }
    }

    /// Adds an equality index on `prop` (filled from the rows) unless there is one.
    fn ensure_index(&mut self, prop: &str, kind: Kind) {
        if self.indexes.contains_key(prop) {
            return;
        }
        let mut ix = PropIndex {
            kind,
            postings: HashMap::new(),
        };
        for (id, row) in &self.rows {
            if let Some(key) = ix.key(row, prop) {
                // Rows are visited in id order, so each posting stays sorted.
                ix.postings.entry(key).or_default().push(*id);
            }
        }
        self.indexes.insert(prop.to_string(), ix);
    }

    /// Installs the equality indexes `props` and fills them (and the version index) from the
    /// rows.
    fn rebuild(&mut self, props: Vec<(String, Kind)>) {
        self.indexes = props
            .into_iter()
            .map(|(p, kind)| {
                (
                    p,
                    PropIndex {
                        kind,
                        postings: HashMap::new(),
                    },
                )
            })
            .collect();
        self.by_version.clear();
        let rows = std::mem::take(&mut self.rows);
        for (id, row) in &rows {
            self.index(*id, row);
        }
        self.rows = rows;
    }

    /// Live rows changed after version `after` up to `upto` (inclusive), by version.
    pub(crate) fn changed_between(
        &self,
        after: u64,
        upto: u64,
    ) -> impl Iterator<Item = (u64, &Row)> + '_ {
        // `BTreeMap::range` panics on an inverted range (a token from the future, say).
        let range = if after < upto {
            self.by_version
                .range((RangeBound::Excluded(after), RangeBound::Included(upto)))
        } else {
            self.by_version.range(0..0)
        };
        range.filter_map(|(v, id)| self.rows.get(id).map(|r| (*v, r)))
    }

    /// Deletions after version `after` up to `upto` (inclusive) of rows not created again
    /// since, by version.
    pub(crate) fn deleted_between(
        &self,
        after: u64,
        upto: u64,
    ) -> impl Iterator<Item = (u64, Uuid)> + '_ {
        let start = self.tombstones.partition_point(|(_, v)| *v <= after);
        self.tombstones[start..]
            .iter()
            .take_while(move |(_, v)| *v <= upto)
            .filter(|(id, _)| !self.rows.contains_key(id))
            .map(|(id, v)| (*v, *id))
    }
}

#[derive(Debug)]
enum Undo {
    Row {
        table: String,
        id: Uuid,
        previous: Option<Row>,
    },
    Tombstone {
        table: String,
    },
}

/// Mutable state: rows, the version counter, the journal.
#[derive(Debug)]
pub(crate) struct Store {
    pub(crate) data: HashMap<String, TableData>,
    pub(crate) version: u64,
    pub(crate) rng: StdRng,
    journal: Vec<Undo>,
    in_transaction: bool,
    /// Delta tokens older than this version have expired.
    pub(crate) token_floor: u64,
    /// Metadata state that changes without a schema change (key indexes, publishing).
    pub(crate) meta: MetaState,
}

/// The index of an alternate key created through the metadata API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum KeyIndex {
    /// Queued; becomes `InProgress` then `Active` as the key's table definition is read.
    Pending {
        /// Reads of the key before it is Active.
        reads_left: u32,
    },
    /// The index job failed; `ReactivateEntityKey` queues it again.
    Failed,
}

/// Reads of a new key's metadata before its index is Active (Pending, InProgress, Active).
pub(crate) const KEY_INDEX_READS: u32 = 2;

/// Metadata state kept beside the compiled model.
#[derive(Debug, Default)]
pub(crate) struct MetaState {
    /// `table#key` → index state; a key absent here is Active.
    pub(crate) keys: HashMap<String, KeyIndex>,
    /// The next key created fails to index (a fault for tests).
    pub(crate) fail_next_key: bool,
    /// A schema the current operation produced, installed when it returns.
    pub(crate) schema_change: Option<DataverseSchema>,
    /// Metadata writes accepted (tables, columns, keys, relationships, definition updates).
    pub(crate) writes: u64,
    /// PublishXml / PublishAllXml calls.
    pub(crate) publishes: u64,
    /// `(solution unique name, component kind, component name)` added under
    /// `MSCRM.SolutionUniqueName`.
    pub(crate) components: Vec<(String, String, String)>,
    /// One-to-many relationship schema names by `referencing table.lookup column`.
    pub(crate) relationship_names: HashMap<String, String>,
    /// Access rights the application user lacks, by table (`WriteAccess`, …).
    pub(crate) denied: HashMap<String, Vec<String>>,
}

impl MetaState {
    /// `Pending`, `InProgress`, `Active` or `Failed`.
    pub(crate) fn key_status(&self, table: &str, key: &str) -> &'static str {
        match self.keys.get(&format!("{table}#{key}")) {
            None => "Active",
            Some(KeyIndex::Failed) => "Failed",
            Some(KeyIndex::Pending { reads_left }) if *reads_left >= KEY_INDEX_READS => "Pending",
            Some(KeyIndex::Pending { .. }) => "InProgress",
        }
    }

    /// One read of the key's metadata: the index job moves on.
    pub(crate) fn advance_key(&mut self, table: &str, key: &str) {
        let name = format!("{table}#{key}");
        if let Some(KeyIndex::Pending { reads_left }) = self.keys.get_mut(&name) {
            if *reads_left <= 1 {
                self.keys.remove(&name);
            } else {
                *reads_left -= 1;
            }
        }
    }
}

pub(crate) fn now_string() -> String {
    Utc::now().to_rfc3339_opts(SecondsFormat::Secs, true)
}

impl Store {
    pub(crate) fn new(model: &Model, seed: u64) -> Store {
        let mut store = Store {
            data: model
                .tables
                .keys()
                .map(|k| (k.clone(), TableData::default()))
                .collect(),
            // Start at a realistic-looking rowversion.
            version: 1_000_000,
            rng: StdRng::seed_from_u64(seed ^ 0x00d4_7a5e_u64),
            journal: Vec::new(),
            in_transaction: false,
            token_floor: 0,
            meta: MetaState::default(),
        };
        store.reindex(model);
        store
    }

    /// Makes the indexes match `model` (after a metadata write changed the schema: a new
    /// alternate key or lookup is indexed over the rows already there).
    pub(crate) fn reindex(&mut self, model: &Model) {
        for (name, table) in &model.tables {
            let mut props = table.indexed_properties();
            let data = self.data.entry(name.clone()).or_default();
            // Keep the indexes added on first use whose columns still exist.
            for p in data.indexes.keys() {
                if let Some(col) = table.prop(p)
                    && !props.iter().any(|(q, _)| q == p)
                {
                    props.push((p.clone(), Kind::of(&col.column_type)));
                }
            }
            let same = data.indexes.len() == props.len()
                && props
                    .iter()
                    .all(|(p, k)| data.indexes.get(p).is_some_and(|ix| ix.kind == *k));
            if !same || data.by_version.len() != data.rows.len() {
                data.rebuild(props);
            }
        }
    }

    /// Indexes every property `filter` compares for equality on `table` that is not indexed
    /// yet: the first such query scans once, later ones look up.
    pub(crate) fn index_filter(&mut self, table: &str, filter: &super::query::Bound) {
        let mut props = Vec::new();
        super::query::eq_properties(filter, &mut props);
        if let Some(data) = self.data.get_mut(table) {
            for (p, k) in props {
                data.ensure_index(&p, k);
            }
        }
    }

    /// The data of a table, with its indexes.
    pub(crate) fn table_data(&self, table: &str) -> Option<&TableData> {
        self.data.get(table)
    }

    pub(crate) fn new_id(&mut self) -> Uuid {
        let mut bytes = [0u8; 16];
        self.rng.fill_bytes(&mut bytes);
        uuid::Builder::from_random_bytes(bytes).into_uuid()
    }

    pub(crate) fn next_version(&mut self) -> u64 {
        self.version += 1;
        self.version
    }

    pub(crate) fn rows(&self, table: &str) -> Option<&BTreeMap<Uuid, Row>> {
        self.data.get(table).map(|d| &d.rows)
    }

    pub(crate) fn get(&self, table: &str, id: &Uuid) -> Option<&Row> {
        self.data.get(table).and_then(|d| d.rows.get(id))
    }

    /// Stores `row` (created or replaced), stamping `versionnumber`, `modifiedon` and, for a new
    /// row, `createdon`.
    pub(crate) fn put(&mut self, table: &str, id: Uuid, mut row: Row) -> u64 {
        let version = self.next_version();
        let now = Value::String(now_string());
        let data = self.data.entry(table.to_string()).or_default();
        let previous = data.rows.remove(&id);
        if let Some(p) = &previous {
            data.unindex(id, p);
        }
        if previous.is_none() && !row.contains_key("createdon") {
            row.insert("createdon".into(), now.clone());
        }
        row.insert("modifiedon".into(), now);
        row.insert("versionnumber".into(), Value::from(version));
        data.index(id, &row);
        data.rows.insert(id, row);
        if self.in_transaction {
            self.journal.push(Undo::Row {
                table: table.to_string(),
                id,
                previous,
            });
        }
        version
    }

    /// Deletes a row, leaving a tombstone for change tracking.
    pub(crate) fn remove(&mut self, table: &str, id: &Uuid) -> Option<Row> {
        let version = self.next_version();
        let data = self.data.get_mut(table)?;
        let previous = data.rows.remove(id)?;
        data.unindex(*id, &previous);
        data.tombstones.push((*id, version));
        if self.in_transaction {
            self.journal.push(Undo::Row {
                table: table.to_string(),
                id: *id,
                previous: Some(previous.clone()),
            });
            self.journal.push(Undo::Tombstone {
                table: table.to_string(),
            });
        }
        Some(previous)
    }

    /// Whether writes are being journaled.
    pub(crate) fn in_transaction(&self) -> bool {
        self.in_transaction
    }

    /// Starts journaling writes so they can be rolled back.
    pub(crate) fn begin(&mut self) {
        self.journal.clear();
        self.in_transaction = true;
    }

    /// Keeps the journaled writes.
    pub(crate) fn commit(&mut self) {
        self.journal.clear();
        self.in_transaction = false;
    }

    /// Undoes every journaled write, newest first.
    pub(crate) fn rollback(&mut self) {
        while let Some(undo) = self.journal.pop() {
            match undo {
                Undo::Row {
                    table,
                    id,
                    previous,
                } => {
                    if let Some(d) = self.data.get_mut(&table) {
                        if let Some(current) = d.rows.remove(&id) {
                            d.unindex(id, &current);
                        }
                        if let Some(row) = previous {
                            d.index(id, &row);
                            d.rows.insert(id, row);
                        }
                    }
                }
                Undo::Tombstone { table } => {
                    if let Some(d) = self.data.get_mut(&table) {
                        d.tombstones.pop();
                    }
                }
            }
        }
        self.in_transaction = false;
    }
}
