//! Actions: closing opportunities (`WinOpportunity`, `LoseOpportunity`) and qualifying leads
//! (`QualifyLead`).

use chrono::{DateTime, SecondsFormat, Utc};
use cosell_http::http::{HeaderMap, Method};
use serde_json::{Map, Value, json};
use uuid::Uuid;

use crate::client::DataverseClient;
use crate::error::Error;
use crate::model::{
    CustomerRef, EntityRef, LeadState, LeadStatus, OpportunityState, OpportunityStatus,
};
use crate::ops::decode_body;

/// The `opportunityclose` activity that `WinOpportunity` / `LoseOpportunity` create.
///
/// ```
/// let close = dataverse_client::OpportunityClose::new("Won via Partner Center");
/// # let _ = close;
/// ```
#[derive(Debug, Clone, Default, PartialEq)]
pub struct OpportunityClose {
    /// `subject` (required by Dataverse).
    pub subject: String,
    /// `actualrevenue`.
    pub actual_revenue: Option<f64>,
    /// `actualend`: a UserLocal date and time, so an `Edm.DateTimeOffset` on the wire
    /// (`2026-09-30T17:00:00Z`), never a bare date.
    pub actual_end: Option<DateTime<Utc>>,
    /// `description`.
    pub description: Option<String>,
    /// Any other `opportunityclose` columns, written as given.
    pub extra: Map<String, Value>,
}

impl OpportunityClose {
    /// A close activity with `subject`.
    pub fn new(subject: impl Into<String>) -> Self {
        OpportunityClose {
            subject: subject.into(),
            ..Default::default()
        }
    }

    fn to_json(&self, opportunity_id: Uuid) -> Value {
        let mut m = self.extra.clone();
        m.insert("subject".into(), Value::String(self.subject.clone()));
        if let Some(r) = self.actual_revenue {
            m.insert("actualrevenue".into(), json!(r));
        }
        if let Some(d) = self.actual_end {
            m.insert(
                "actualend".into(),
                Value::String(d.to_rfc3339_opts(SecondsFormat::Secs, true)),
            );
        }
        if let Some(d) = &self.description {
            m.insert("description".into(), Value::String(d.clone()));
        }
        EntityRef::new("opportunities", opportunity_id).bind_into(&mut m, "opportunityid");
        Value::Object(m)
    }
}

/// The input of `QualifyLead`.
///
/// ```
/// use dataverse_client::QualifyLead;
/// let q = QualifyLead { create_opportunity: true, ..QualifyLead::default() };
/// # let _ = q;
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct QualifyLead {
    /// `CreateAccount`.
    pub create_account: bool,
    /// `CreateContact`.
    pub create_contact: bool,
    /// `CreateOpportunity`.
    pub create_opportunity: bool,
    /// `Status`: the lead's new status reason (default 3 Qualified).
    pub status: LeadStatus,
    /// `OpportunityCurrencyId`.
    pub opportunity_currency_id: Option<Uuid>,
    /// `OpportunityCustomerId` (an account or contact).
    pub opportunity_customer: Option<CustomerRef>,
    /// `SourceCampaignId`.
    pub source_campaign_id: Option<Uuid>,
}

impl Default for QualifyLead {
    fn default() -> Self {
        QualifyLead {
            create_account: false,
            create_contact: false,
            create_opportunity: true,
            status: LeadStatus::Qualified,
            opportunity_currency_id: None,
            opportunity_customer: None,
            source_campaign_id: None,
        }
    }
}

impl QualifyLead {
    fn to_json(&self) -> Value {
        let mut m = Map::new();
        m.insert("CreateAccount".into(), Value::Bool(self.create_account));
        m.insert("CreateContact".into(), Value::Bool(self.create_contact));
        m.insert(
            "CreateOpportunity".into(),
            Value::Bool(self.create_opportunity),
        );
        m.insert("Status".into(), json!(self.status.code()));
        if let Some(id) = self.opportunity_currency_id {
            m.insert(
                "OpportunityCurrencyId".into(),
                typed_ref("transactioncurrency", id),
            );
        }
        if let Some(c) = self.opportunity_customer {
            m.insert(
                "OpportunityCustomerId".into(),
                typed_ref(c.logical_name(), c.id()),
            );
        }
        if let Some(id) = self.source_campaign_id {
            m.insert("SourceCampaignId".into(), typed_ref("campaign", id));
        }
        Value::Object(m)
    }
}

/// An entity-typed action parameter: `{"@odata.type": "Microsoft.Dynamics.CRM.x", "xid": id}`.
fn typed_ref(logical_name: &str, id: Uuid) -> Value {
    let mut m = Map::new();
    m.insert(
        "@odata.type".into(),
        Value::String(format!("Microsoft.Dynamics.CRM.{logical_name}")),
    );
    m.insert(
        format!("{logical_name}id"),
        Value::String(id.hyphenated().to_string()),
    );
    Value::Object(m)
}

/// The records `QualifyLead` created.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct QualifiedLead {
    /// The created account.
    pub account_id: Option<Uuid>,
    /// The created contact.
    pub contact_id: Option<Uuid>,
    /// The created opportunity.
    pub opportunity_id: Option<Uuid>,
    /// The returned records as sent.
    pub records: Vec<Value>,
}

fn record_kind(row: &Map<String, Value>) -> Option<&'static str> {
    let by_type = row.get("@odata.type").and_then(Value::as_str).map(|t| {
        t.trim_start_matches('#')
            .trim_start_matches("Microsoft.Dynamics.CRM.")
    });
    match by_type {
        Some("account") => return Some("account"),
        Some("contact") => return Some("contact"),
        Some("opportunity") => return Some("opportunity"),
        Some(_) => return None,
        None => {}
    }
    ["opportunity", "contact", "account"]
        .into_iter()
        .find(|k| row.contains_key(&format!("{k}id")))
}

impl QualifiedLead {
    pub(crate) fn from_response(body: &[u8]) -> Result<Self, Error> {
        #[derive(serde::Deserialize)]
        struct Body {
            #[serde(default)]
            value: Vec<Map<String, Value>>,
        }
        let body: Body = decode_body(body, "QualifyLead response")?;
        let mut out = QualifiedLead::default();
        for (i, row) in body.value.into_iter().enumerate() {
            if let Some(kind) = record_kind(&row) {
                let key = format!("{kind}id");
                let id = match row.get(&key) {
                    Some(Value::String(s)) => Uuid::parse_str(s).map_err(|e| {
                        Error::decode(
                            "QualifyLead response",
                            format!("value[{i}].{key}"),
                            format!("`{s}` is not a GUID: {e}"),
                        )
                    })?,
                    _ => {
                        return Err(Error::decode(
                            "QualifyLead response",
                            format!("value[{i}].{key}"),
                            "missing the record id",
                        ));
                    }
                };
                match kind {
                    "account" => out.account_id = Some(id),
                    "contact" => out.contact_id = Some(id),
                    _ => out.opportunity_id = Some(id),
                }
            }
            out.records.push(Value::Object(row));
        }
        Ok(out)
    }
}

impl DataverseClient {
    /// Wins an opportunity (`POST WinOpportunity`): creates the close activity and sets the row
    /// to Won with `status` (3 Won, or a custom Won-state status reason).
    ///
    /// ```no_run
    /// # async fn demo(client: dataverse_client::DataverseClient) -> Result<(), dataverse_client::Error> {
    /// use dataverse_client::{OpportunityClose, OpportunityStatus};
    /// let id = uuid::Uuid::parse_str("b3828ac8-917a-e511-80d2-00155d2a68d2").unwrap();
    /// client.win_opportunity(id, &OpportunityClose::new("Won Opportunity"), OpportunityStatus::Won).await?;
    /// # Ok(()) }
    /// ```
    #[tracing::instrument(skip_all, fields(entity_set = "opportunities"))]
    pub async fn win_opportunity(
        &self,
        opportunity_id: Uuid,
        close: &OpportunityClose,
        status: OpportunityStatus,
    ) -> Result<(), Error> {
        if matches!(
            status.state(),
            Some(OpportunityState::Open | OpportunityState::Lost)
        ) {
            return Err(Error::invalid(format!(
                "status reason {} is not a Won status",
                status.code()
            )));
        }
        self.close_opportunity("WinOpportunity", opportunity_id, close, status)
            .await
    }

    /// Loses an opportunity (`POST LoseOpportunity`) with `status` (4 Canceled, 5 Out-Sold, or a
    /// custom Lost-state status reason).
    #[tracing::instrument(skip_all, fields(entity_set = "opportunities"))]
    pub async fn lose_opportunity(
        &self,
        opportunity_id: Uuid,
        close: &OpportunityClose,
        status: OpportunityStatus,
    ) -> Result<(), Error> {
        if matches!(
            status.state(),
            Some(OpportunityState::Open | OpportunityState::Won)
        ) {
            return Err(Error::invalid(format!(
                "status reason {} is not a Lost status",
                status.code()
            )));
        }
        self.close_opportunity("LoseOpportunity", opportunity_id, close, status)
            .await
    }

    async fn close_opportunity(
        &self,
        action: &str,
        opportunity_id: Uuid,
        close: &OpportunityClose,
        status: OpportunityStatus,
    ) -> Result<(), Error> {
        let body = json!({
            "Status": status.code(),
            "OpportunityClose": close.to_json(opportunity_id),
        });
        let url = self.url_for(&[action], None)?;
        let bytes = cosell_http::json_body(&body, action).map_err(Error::Decode)?;
        self.execute(Method::POST, &url, HeaderMap::new(), Some(bytes), None)
            .await?;
        Ok(())
    }

    /// Qualifies a lead (`POST leads(<id>)/Microsoft.Dynamics.CRM.QualifyLead`) and returns the
    /// ids of the records it created.
    ///
    /// ```no_run
    /// # async fn demo(client: dataverse_client::DataverseClient) -> Result<(), dataverse_client::Error> {
    /// use dataverse_client::QualifyLead;
    /// let lead = uuid::Uuid::parse_str("b3828ac8-917a-e511-80d2-00155d2a68d2").unwrap();
    /// let created = client.qualify_lead(lead, &QualifyLead::default()).await?;
    /// println!("{:?}", created.opportunity_id);
    /// # Ok(()) }
    /// ```
    #[tracing::instrument(skip_all, fields(entity_set = "leads"))]
    pub async fn qualify_lead(
        &self,
        lead_id: Uuid,
        options: &QualifyLead,
    ) -> Result<QualifiedLead, Error> {
        if matches!(
            options.status.state(),
            Some(LeadState::Open | LeadState::Disqualified)
        ) {
            return Err(Error::invalid(format!(
                "status reason {} is not a Qualified status",
                options.status.code()
            )));
        }
        let url = self.url_for(
            &[
                &format!("leads({})", lead_id.hyphenated()),
                "Microsoft.Dynamics.CRM.QualifyLead",
            ],
            None,
        )?;
        let bytes =
            cosell_http::json_body(&options.to_json(), "QualifyLead").map_err(Error::Decode)?;
        let resp = self
            .execute(Method::POST, &url, HeaderMap::new(), Some(bytes), None)
            .await?;
        if resp.body().is_empty() {
            return Ok(QualifiedLead::default());
        }
        QualifiedLead::from_response(resp.body())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qualify_lead_body_and_response() {
        let q = QualifyLead {
            create_account: true,
            opportunity_currency_id: Some(Uuid::nil()),
            opportunity_customer: Some(CustomerRef::Contact(Uuid::nil())),
            ..QualifyLead::default()
        };
        assert_eq!(
            q.to_json(),
            json!({
                "CreateAccount": true, "CreateContact": false, "CreateOpportunity": true, "Status": 3,
                "OpportunityCurrencyId": {"@odata.type": "Microsoft.Dynamics.CRM.transactioncurrency",
                    "transactioncurrencyid": "00000000-0000-0000-0000-000000000000"},
                "OpportunityCustomerId": {"@odata.type": "Microsoft.Dynamics.CRM.contact",
                    "contactid": "00000000-0000-0000-0000-000000000000"}
            })
        );
        let r = QualifiedLead::from_response(
            br##"{"@odata.context":"x#Collection(Microsoft.Dynamics.CRM.crmbaseentity)","value":[
              {"@odata.type":"#Microsoft.Dynamics.CRM.account","accountid":"e73ffc82-e292-ed11-aad1-000d3a9933c9"},
              {"@odata.type":"#Microsoft.Dynamics.CRM.opportunity","opportunityid":"e83ffc82-e292-ed11-aad1-000d3a9933c9","contactid":"x"}]}"##,
        )
        .unwrap();
        assert_eq!(
            r.account_id.unwrap().to_string(),
            "e73ffc82-e292-ed11-aad1-000d3a9933c9"
        );
        assert_eq!(
            r.opportunity_id.unwrap().to_string(),
            "e83ffc82-e292-ed11-aad1-000d3a9933c9"
        );
        assert_eq!(r.contact_id, None);
        assert_eq!(r.records.len(), 2);
        let err = QualifiedLead::from_response(br#"{"value":[{"contactid":5}]}"#).unwrap_err();
        assert!(err.to_string().contains("value[0].contactid"), "{err}");
    }
}
