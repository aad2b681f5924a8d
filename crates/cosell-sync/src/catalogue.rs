//! The solution catalogue: co-sell ready solutions imported ahead of time, so sellers pick a
//! solution rather than type one, idempotently by solution id (an upsert on the catalogue's
//! alternate key; a row that already says the same is not written).

use cosell_mapping::FieldMap;
use dataverse_client::{DataverseClient, Key, RetrieveOptions, UpsertMode, UpsertOptions};
use serde_json::{Map, Value};

use crate::provision::SetupError;

/// One solution of the catalogue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CatalogueEntry {
    /// 1-based line of the file it came from (0 when built in code).
    pub line: usize,
    /// The Partner Center solution id.
    pub solution_id: String,
    /// Name.
    pub name: String,
    /// Publisher.
    pub publisher: String,
    /// Solution type.
    pub solution_type: String,
}

/// Parses a catalogue CSV (RFC 4180) with a header naming the columns `id`, `name`,
/// `publisher` and `type` (any order, any case; others ignored). Every bad record is returned as
/// an error with its line number; the good ones are kept.
pub fn parse_catalogue_csv(text: &str) -> (Vec<CatalogueEntry>, Vec<SetupError>) {
    let mut reader = csv::ReaderBuilder::new()
        .trim(csv::Trim::All)
        .flexible(true)
        .from_reader(text.as_bytes());
    let invalid = |line: u64, message: String| SetupError::InvalidRow {
        line: usize::try_from(line).unwrap_or(usize::MAX),
        message,
    };
    let header: Vec<String> = match reader.headers() {
        Ok(h) if !h.is_empty() && h.iter().any(|f| !f.is_empty()) => {
            h.iter().map(|f| f.to_ascii_lowercase()).collect()
        }
        Ok(_) => {
            return (
                Vec::new(),
                vec![invalid(
                    1,
                    "the file is empty; expected a header `id,name,publisher,type`".into(),
                )],
            );
        }
        Err(e) => return (Vec::new(), vec![invalid(1, format!("the header: {e}"))]),
    };
    let position = |name: &str| header.iter().position(|h| h == name);
    let (Some(id), Some(name), Some(publisher), Some(kind)) = (
        position("id"),
        position("name"),
        position("publisher"),
        position("type"),
    ) else {
        return (
            Vec::new(),
            vec![invalid(
                1,
                format!(
                    "the header `{}` must name the columns id, name, publisher and type",
                    header.join(",")
                ),
            )],
        );
    };
    let mut errors = Vec::new();
    let mut entries: Vec<CatalogueEntry> = Vec::new();
    for record in reader.records() {
        let record = match record {
            Ok(r) => r,
            Err(e) => {
                let line = e.position().map_or(0, |p| p.line());
                errors.push(invalid(line, e.to_string()));
                continue;
            }
        };
        let line = record.position().map_or(0, |p| p.line());
        if record.iter().all(str::is_empty) {
            continue;
        }
        let get = |i: usize| record.get(i).unwrap_or_default().to_string();
        let entry = CatalogueEntry {
            line: usize::try_from(line).unwrap_or(usize::MAX),
            solution_id: get(id),
            name: get(name),
            publisher: get(publisher),
            solution_type: get(kind),
        };
        if entry.solution_id.is_empty() {
            errors.push(invalid(line, "`id` is empty".into()));
        } else if entry.name.is_empty() {
            errors.push(invalid(
                line,
                format!("`name` is empty for solution `{}`", entry.solution_id),
            ));
        } else if let Some(first) = entries.iter().find(|e| e.solution_id == entry.solution_id) {
            errors.push(invalid(
                line,
                format!(
                    "solution `{}` is listed already on line {}",
                    entry.solution_id, first.line
                ),
            ));
        } else {
            entries.push(entry);
        }
    }
    (entries, errors)
}

/// What [`import_catalogue`] did.
#[derive(Debug, Default)]
pub struct ImportReport {
    /// Rows created.
    pub created: usize,
    /// Rows whose name, publisher or type changed.
    pub updated: usize,
    /// Rows that already said the same (nothing sent).
    pub unchanged: usize,
    /// Entries that failed, with why (the rest went on).
    pub failed: Vec<SetupError>,
}

/// Imports `entries` into the catalogue table of `map`, by solution id. Idempotent: a row that
/// already holds the same values is not written; one failing entry does not stop the rest.
pub async fn import_catalogue(
    client: &DataverseClient,
    map: &FieldMap,
    entries: &[CatalogueEntry],
) -> ImportReport {
    let s = &map.config().columns.solution;
    let mut report = ImportReport::default();
    for e in entries {
        let key = Key::alternate(s.solution_id.clone(), e.solution_id.clone());
        let mut body = Map::new();
        body.insert(s.solution_id.clone(), Value::String(e.solution_id.clone()));
        body.insert(s.name.clone(), Value::String(e.name.clone()));
        body.insert(s.publisher.clone(), Value::String(e.publisher.clone()));
        body.insert(
            s.solution_type.clone(),
            Value::String(e.solution_type.clone()),
        );
        let options = RetrieveOptions::default().select([
            s.name.as_str(),
            s.publisher.as_str(),
            s.solution_type.as_str(),
        ]);
        let existing = match client
            .try_retrieve::<Map<String, Value>>(&s.entity_set, &key, &options)
            .await
        {
            Ok(row) => row,
            Err(source) => {
                report.failed.push(SetupError::Dataverse {
                    step: format!("line {}: reading solution `{}`", e.line, e.solution_id),
                    source,
                });
                continue;
            }
        };
        if let Some(row) = &existing
            && [&s.name, &s.publisher, &s.solution_type]
                .iter()
                .all(|c| row.value.get(*c) == body.get(*c))
        {
            report.unchanged += 1;
            continue;
        }
        match client
            .upsert(
                &s.entity_set,
                &key,
                &body,
                &UpsertOptions::default().mode(UpsertMode::CreateOrUpdate),
            )
            .await
        {
            Ok(_) if existing.is_some() => report.updated += 1,
            Ok(_) => report.created += 1,
            Err(source) => report.failed.push(SetupError::Dataverse {
                step: format!("line {}: writing solution `{}`", e.line, e.solution_id),
                source,
            }),
        }
    }
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoted_fields_and_bad_lines_are_handled_line_by_line() {
        let (entries, errors) = parse_catalogue_csv(
            "Name,ID,Publisher,Type\n\"Contoso, Analytics\",sol-1,Contoso,\"IP \"\"co-sell\"\"\"\n,sol-2,X,Y\nNo id,,X,Y\nDup,sol-1,A,B\n",
        );
        assert_eq!(entries.len(), 1);
        assert_eq!(entries[0].name, "Contoso, Analytics");
        assert_eq!(entries[0].solution_type, "IP \"co-sell\"");
        let lines: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
        assert!(lines[0].starts_with("line 3: `name` is empty"), "{lines:?}");
        assert!(lines[1].starts_with("line 4: `id` is empty"), "{lines:?}");
        assert!(lines[2].contains("listed already on line 2"), "{lines:?}");
    }

    #[test]
    fn crlf_line_ends_and_a_quoted_field_over_two_lines_are_read_as_one_record() {
        let (entries, errors) = parse_catalogue_csv(
            "id,name,publisher,type\r\nsol-9,\"Two\nlines\",P,T\r\nsol-10,Ten,P,T\r\n",
        );
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(entries[0].name, "Two\nlines");
        assert_eq!(entries[1].solution_id, "sol-10");
    }

    #[test]
    fn a_header_without_the_columns_is_refused() {
        let (entries, errors) = parse_catalogue_csv("id,title\nsol-1,x\n");
        assert!(entries.is_empty());
        assert!(errors[0].to_string().contains("must name the columns"));
    }
}
