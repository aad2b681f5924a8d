//! Wire checks of the metadata writes: the exact requests the client sends.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use cosell_http::{RetryPolicy, StaticTokenCredential};
use dataverse_client::{ColumnDefinition, ColumnKind, DataverseClient};
use serde_json::{Value, json};
use url::Url;
use wiremock::matchers::{header, method, path};
use wiremock::{Mock, MockServer, Request, ResponseTemplate};

async fn setup() -> (MockServer, DataverseClient) {
    let server = MockServer::start().await;
    Mock::given(|_: &Request| true)
        .respond_with(ResponseTemplate::new(599))
        .with_priority(u8::MAX)
        .expect(0)
        .named("unexpected request")
        .mount(&server)
        .await;
    let client = DataverseClient::builder()
        .environment_url(Url::parse(&format!("{}/", server.uri())).unwrap())
        .credential(Arc::new(StaticTokenCredential::new("t")))
        .retry(RetryPolicy::default().with_max_attempts(1))
        .build()
        .unwrap();
    (server, client)
}

/// "Create and update table definitions using the Web API": the whole definition is PUT back,
/// with `MSCRM.MergeLabels: true` so labels in other languages survive.
#[tokio::test]
async fn change_tracking_is_enabled_by_putting_the_whole_definition_back_with_merged_labels() {
    let (server, client) = setup().await;
    let id = "70816501-edb9-4740-a16c-6a5efbc05d84";
    let definition = json!({
        "@odata.context": "https://org/api/data/v9.2/$metadata#EntityDefinitions/$entity",
        "MetadataId": id,
        "LogicalName": "lead",
        "SchemaName": "Lead",
        "EntitySetName": "leads",
        "PrimaryIdAttribute": "leadid",
        "ChangeTrackingEnabled": false,
        "DisplayName": {"LocalizedLabels": [{"Label": "Lead", "LanguageCode": 1033},
                                            {"Label": "Interessent", "LanguageCode": 1031}]},
    });
    Mock::given(method("GET"))
        .and(|r: &Request| r.url.path() == "/api/data/v9.2/EntityDefinitions(LogicalName='lead')")
        .respond_with(ResponseTemplate::new(200).set_body_json(definition.clone()))
        .expect(1)
        .mount(&server)
        .await;
    let mut expected = definition.as_object().unwrap().clone();
    expected.remove("@odata.context");
    expected.insert("ChangeTrackingEnabled".into(), json!(true));
    let expected = Value::Object(expected);
    Mock::given(method("PUT"))
        .and(path(format!("/api/data/v9.2/EntityDefinitions({id})")))
        .and(header("MSCRM.MergeLabels", "true"))
        .and(move |r: &Request| {
            serde_json::from_slice::<Value>(&r.body).ok() == Some(expected.clone())
        })
        .respond_with(ResponseTemplate::new(204))
        .expect(1)
        .mount(&server)
        .await;
    assert!(client.enable_change_tracking("lead").await.unwrap());
}

/// "Create and update column definitions using the Web API": a Yes/No column is a
/// BooleanAttributeMetadata with both options, created inside the named solution.
#[tokio::test]
async fn a_column_is_created_in_the_named_solution_with_its_metadata_type() {
    let (server, client) = setup().await;
    Mock::given(method("POST"))
        .and(|r: &Request| {
            r.url.path() == "/api/data/v9.2/EntityDefinitions(LogicalName='opportunity')/Attributes"
        })
        .and(header("MSCRM.SolutionUniqueName", "cosell"))
        .and(|r: &Request| {
            let b: Value = serde_json::from_slice(&r.body).unwrap_or_default();
            b["@odata.type"] == "Microsoft.Dynamics.CRM.BooleanAttributeMetadata"
                && b["SchemaName"] == "cosell_visibletomicrosoft"
                && b["OptionSet"]["TrueOption"]["Label"]["LocalizedLabels"][0]["Label"] == "Yes"
                && b["OptionSet"]["FalseOption"]["Value"] == 0
        })
        .respond_with(ResponseTemplate::new(204))
        .expect(1)
        .mount(&server)
        .await;
    let column = ColumnDefinition {
        schema_name: "cosell_visibletomicrosoft".into(),
        display_name: "Visible to Microsoft".into(),
        description: String::new(),
        kind: ColumnKind::YesNo {
            true_label: "Yes".into(),
            false_label: "No".into(),
        },
    };
    client
        .create_column("opportunity", &column, Some("cosell"))
        .await
        .unwrap();
}
