//! Actions: `WhoAmI`, `WinOpportunity`, `LoseOpportunity` and `QualifyLead`.

use axum::http::StatusCode;
use chrono::Utc;
use serde_json::{Map, Value, json};
use uuid::Uuid;

use super::error::{DvError, DvResult, codes};
use super::ops::{Ctx, create_row, json_response, resolve_ref, update_row};
use super::request::OpResponse;
use super::store::{Model, Table};

pub(crate) fn who_am_i(ctx: &Ctx<'_>) -> OpResponse {
    json_response(
        StatusCode::OK,
        json!({
            "@odata.context": format!("{}$metadata#Microsoft.Dynamics.CRM.WhoAmIResponse", ctx.api_base),
            "BusinessUnitId": ctx.identity.business_unit_id.to_string(),
            "UserId": ctx.identity.user_id.to_string(),
            "OrganizationId": ctx.identity.organization_id.to_string(),
        }),
    )
}

fn table<'m>(model: &'m Model, name: &str) -> DvResult<&'m Table> {
    model
        .table(name)
        .ok_or_else(|| DvError::unknown_segment(name))
}

fn unresolved(name: &str) -> DvError {
    DvError::odata(format!(
        "Request message has unresolved parameters: the parameter '{name}' is required."
    ))
}

/// `WinOpportunity` (`win`) / `LoseOpportunity`: closes the opportunity with `Status` and
/// creates the `opportunityclose` activity.
pub(crate) fn close_opportunity(
    ctx: &mut Ctx<'_>,
    body: &Map<String, Value>,
    win: bool,
) -> DvResult<OpResponse> {
    let model: &Model = ctx.model;
    let opp_table = table(model, "opportunity")?;
    let close_table = table(model, "opportunityclose")?;
    let status = body
        .get("Status")
        .and_then(Value::as_i64)
        .ok_or_else(|| unresolved("Status"))?;
    let Some(Value::Object(close)) = body.get("OpportunityClose") else {
        return Err(unresolved("OpportunityClose"));
    };
    let reference = close
        .get("opportunityid@odata.bind")
        .and_then(Value::as_str)
        .ok_or_else(|| {
            DvError::bad_request(
                codes::INVALID_ARGUMENT,
                "OpportunityClose must reference the opportunity through 'opportunityid@odata.bind'.",
            )
        })?;
    let (t, opp_id) = resolve_ref(ctx, reference)?;
    if t.logical() != "opportunity" {
        return Err(DvError::bad_request(
            codes::INVALID_ARGUMENT,
            "'opportunityid@odata.bind' must reference an opportunity.",
        ));
    }
    let Some(opp) = ctx.store.get("opportunity", &opp_id).cloned() else {
        return Err(DvError::row_not_found("opportunity", &opp_id.to_string()));
    };
    let state = opp.get("statecode").and_then(Value::as_i64).unwrap_or(0);
    if state != 0 {
        return Err(DvError::bad_request(
            codes::OPPORTUNITY_CLOSED,
            "The opportunity is already closed.",
        ));
    }
    let target_state = if win { 1 } else { 2 };
    let valid = opp_table
        .state_model()
        .and_then(|m| m.state(target_state))
        .is_some_and(|s| s.statuses.iter().any(|(v, _)| *v == status));
    if !valid {
        return Err(DvError::bad_request(
            codes::OPPORTUNITY_CANNOT_BE_CLOSED,
            format!(
                "{status} is not a valid status code for state code OpportunityState.{} on opportunity.",
                if win { "Won" } else { "Lost" }
            ),
        ));
    }
    // The activity: every OpportunityClose field except the binding is copied as given.
    let mut activity = close.clone();
    activity.insert("statecode".into(), Value::from(1));
    activity.insert("statuscode".into(), Value::from(2));
    let actual_end = close
        .get("actualend")
        .and_then(Value::as_str)
        .map(|s| s.chars().take(10).collect::<String>())
        .unwrap_or_else(|| Utc::now().format("%Y-%m-%d").to_string());
    create_row(ctx, close_table, &activity, None, &[])?;
    // Closing is a state change the update path forbids; write it directly.
    let mut row = opp;
    row.insert("statecode".into(), Value::from(target_state));
    row.insert("statuscode".into(), Value::from(status));
    row.insert("actualclosedate".into(), Value::String(actual_end));
    let revenue = close
        .get("actualrevenue")
        .cloned()
        .filter(|v| v.is_number())
        .or_else(|| win.then(|| row.get("estimatedvalue").cloned()).flatten());
    if let Some(r) = revenue {
        row.insert("actualvalue".into(), r);
    }
    if opp_table.column("msdyn_forecastcategory").is_some() {
        row.insert(
            "msdyn_forecastcategory".into(),
            Value::from(if win { 100000005 } else { 100000006 }),
        );
    }
    ctx.store.put("opportunity", opp_id, row);
    Ok(OpResponse::new(StatusCode::NO_CONTENT))
}

fn flag(body: &Map<String, Value>, name: &str) -> DvResult<bool> {
    body.get(name)
        .and_then(Value::as_bool)
        .ok_or_else(|| unresolved(name))
}

/// The id of an entity parameter (`{"@odata.type": "...", "transactioncurrencyid": "…"}`).
fn entity_param(model: &Model, v: &Value) -> Option<(String, Uuid)> {
    let obj = v.as_object()?;
    let logical = obj.get("@odata.type").and_then(Value::as_str).map(|t| {
        t.trim_start_matches('#')
            .trim_start_matches("Microsoft.Dynamics.CRM.")
            .to_string()
    })?;
    let t = model.table(&logical)?;
    let id = obj
        .get(t.pk())
        .and_then(Value::as_str)
        .and_then(|s| Uuid::parse_str(s).ok())?;
    Some((logical, id))
}

/// `QualifyLead`: creates the requested account, contact and opportunity from the lead, marks
/// the lead qualified and answers the created rows.
pub(crate) fn qualify_lead(
    ctx: &mut Ctx<'_>,
    lead_id: Uuid,
    body: &Map<String, Value>,
) -> DvResult<OpResponse> {
    let model: &Model = ctx.model;
    let create_account = flag(body, "CreateAccount")?;
    let create_contact = flag(body, "CreateContact")?;
    let create_opportunity = flag(body, "CreateOpportunity")?;
    let status = body
        .get("Status")
        .and_then(Value::as_i64)
        .ok_or_else(|| unresolved("Status"))?;
    let lead_table = table(model, "lead")?;
    let Some(lead) = ctx.store.get("lead", &lead_id).cloned() else {
        return Err(DvError::row_not_found("lead", &lead_id.to_string()));
    };
    if lead.get("statecode").and_then(Value::as_i64).unwrap_or(0) != 0 {
        return Err(DvError::bad_request(
            codes::INVALID_ARGUMENT,
            "The lead is closed. You cannot convert or qualify a lead that is closed.",
        ));
    }
    let qualified = lead_table
        .state_model()
        .and_then(|m| m.state(1))
        .is_some_and(|s| s.statuses.iter().any(|(v, _)| *v == status));
    if !qualified {
        return Err(DvError::bad_request(
            codes::INVALID_ARGUMENT,
            format!(
                "{status} is not a valid status code for state code LeadState.Qualified on lead."
            ),
        ));
    }
    let get = |k: &str| lead.get(k).filter(|v| !v.is_null()).cloned();
    let copy = |pairs: &[(&str, &str)]| {
        let mut m = Map::new();
        for (from, to) in pairs {
            if let Some(v) = get(from) {
                m.insert(to.to_string(), v);
            }
        }
        m
    };
    let mut created: Vec<(&str, Uuid)> = Vec::new();
    let mut account_id = None;
    if create_account {
        let t = table(model, "account")?;
        let mut a = copy(&[
            ("companyname", "name"),
            ("telephone1", "telephone1"),
            ("websiteurl", "websiteurl"),
            ("emailaddress1", "emailaddress1"),
            ("address1_line1", "address1_line1"),
            ("address1_city", "address1_city"),
            ("address1_stateorprovince", "address1_stateorprovince"),
            ("address1_postalcode", "address1_postalcode"),
            ("address1_country", "address1_country"),
        ]);
        a.retain(|k, _| t.column(k).is_some());
        let id = create_row(ctx, t, &a, None, &[])?;
        created.push(("account", id));
        account_id = Some(id);
    }
    let mut contact_id = None;
    if create_contact {
        let t = table(model, "contact")?;
        let mut c = copy(&[
            ("firstname", "firstname"),
            ("lastname", "lastname"),
            ("emailaddress1", "emailaddress1"),
            ("telephone1", "telephone1"),
            ("jobtitle", "jobtitle"),
            ("address1_line1", "address1_line1"),
            ("address1_city", "address1_city"),
            ("address1_postalcode", "address1_postalcode"),
            ("address1_country", "address1_country"),
        ]);
        c.retain(|k, _| t.column(k).is_some());
        if let Some(a) = account_id {
            c.insert(
                "parentcustomerid_account@odata.bind".into(),
                Value::String(format!("/accounts({a})")),
            );
        }
        let id = create_row(ctx, t, &c, None, &[])?;
        created.push(("contact", id));
        contact_id = Some(id);
    }
    let mut opportunity_id = None;
    if create_opportunity {
        let t = table(model, "opportunity")?;
        let mut o = copy(&[
            ("subject", "name"),
            ("description", "description"),
            // The lead's Money "Est. Value" becomes the opportunity's Money "Est. revenue"
            // (R-LEAD, R-OPP); the lead's `estimatedvalue` is a deprecated Double.
            ("estimatedamount", "estimatedvalue"),
            ("estimatedclosedate", "estimatedclosedate"),
        ]);
        for c in model.schema.qualify_lead_copies() {
            if t.column(c).is_some()
                && let Some(v) = get(c)
            {
                o.insert(c.clone(), v);
            }
        }
        o.retain(|k, _| t.column(k).is_some());
        o.insert(
            "originatingleadid@odata.bind".into(),
            Value::String(format!("/leads({lead_id})")),
        );
        let set_of = |logical: &str| model.table(logical).map(|t| t.set().to_string());
        let customer = body
            .get("OpportunityCustomerId")
            .and_then(|v| entity_param(model, v))
            .or_else(|| account_id.map(|a| ("account".to_string(), a)))
            .or_else(|| contact_id.map(|c| ("contact".to_string(), c)));
        if let Some((logical, id)) = customer
            && let Some(set) = set_of(&logical)
        {
            o.insert(
                format!("customerid_{logical}@odata.bind"),
                Value::String(format!("/{set}({id})")),
            );
        }
        if let Some(a) = account_id {
            o.insert(
                "parentaccountid@odata.bind".into(),
                Value::String(format!("/accounts({a})")),
            );
        }
        if let Some(c) = contact_id {
            o.insert(
                "parentcontactid@odata.bind".into(),
                Value::String(format!("/contacts({c})")),
            );
        }
        let currency = body
            .get("OpportunityCurrencyId")
            .and_then(|v| entity_param(model, v))
            .map(|(_, id)| id)
            .or_else(|| {
                get("_transactioncurrencyid_value")
                    .and_then(|v| v.as_str().and_then(|s| Uuid::parse_str(s).ok()))
            });
        if let Some(cur) = currency {
            o.insert(
                "transactioncurrencyid@odata.bind".into(),
                Value::String(format!("/transactioncurrencies({cur})")),
            );
        }
        let id = create_row(ctx, t, &o, None, &[])?;
        created.push(("opportunity", id));
        opportunity_id = Some(id);
    }
    // Mark the lead qualified (a state change the read-only rule allows from Open).
    let mut upd = Map::new();
    upd.insert("statecode".into(), Value::from(1));
    upd.insert("statuscode".into(), Value::from(status));
    if let Some(o) = opportunity_id {
        upd.insert(
            "qualifyingopportunityid@odata.bind".into(),
            Value::String(format!("/opportunities({o})")),
        );
    }
    if let Some(a) = account_id {
        upd.insert(
            "parentaccountid@odata.bind".into(),
            Value::String(format!("/accounts({a})")),
        );
    }
    if let Some(c) = contact_id {
        upd.insert(
            "parentcontactid@odata.bind".into(),
            Value::String(format!("/contacts({c})")),
        );
    }
    update_row(ctx, lead_table, lead_id, &upd, &[])?;
    let value: Vec<Value> = created
        .iter()
        .filter_map(|(logical, id)| {
            let t = model.table(logical)?;
            let row = ctx.store.get(logical, id)?;
            let mut m = Map::new();
            m.insert(
                "@odata.type".into(),
                Value::String(format!("#Microsoft.Dynamics.CRM.{logical}")),
            );
            m.insert("@odata.etag".into(), Value::String(super::ops::etag(row)));
            m.insert(t.pk().to_string(), Value::String(id.to_string()));
            Some(Value::Object(m))
        })
        .collect();
    Ok(json_response(
        StatusCode::OK,
        json!({
            "@odata.context": format!("{}$metadata#Collection(Microsoft.Dynamics.CRM.crmbaseentity)", ctx.api_base),
            "value": value,
        }),
    ))
}

/// Every access right, in the order of the `AccessRights` enum.
const ACCESS_RIGHTS: [&str; 8] = [
    "ReadAccess",
    "WriteAccess",
    "AppendAccess",
    "AppendToAccess",
    "CreateAccess",
    "DeleteAccess",
    "ShareAccess",
    "AssignAccess",
];

/// `GET systemusers(id)/Microsoft.Dynamics.CRM.RetrievePrincipalAccess(Target=@t)?@t={"@odata.id":"set(id)"}`.
// Source: RetrievePrincipalAccess function
// (https://learn.microsoft.com/dotnet/api/microsoft.crm.sdk.messages.retrieveprincipalaccessrequest): bound to systemuser, the Target parameter names the
// record, the answer is a RetrievePrincipalAccessResponse with AccessRights (flags of the
// AccessRights enum). The emulated application user has every right unless a test denied one.
pub(crate) fn retrieve_principal_access(
    ctx: &Ctx<'_>,
    user: &str,
    args: &str,
    pairs: &[(String, String)],
) -> DvResult<OpResponse> {
    let user = Uuid::parse_str(user.trim())
        .map_err(|_| DvError::odata("systemusers must be addressed by id."))?;
    if user != ctx.identity.user_id {
        return Err(DvError::row_not_found("systemuser", &user.to_string()));
    }
    let alias = args
        .strip_prefix("Target=")
        .ok_or_else(|| DvError::odata("RetrievePrincipalAccess needs its Target parameter."))?;
    let value = pairs
        .iter()
        .find(|(k, _)| k == alias)
        .map(|(_, v)| v.as_str())
        .ok_or_else(|| DvError::odata(format!("The parameter alias '{alias}' has no value.")))?;
    let target: Value = serde_json::from_str(value)
        .map_err(|e| DvError::odata(format!("Target is not a JSON entity reference: {e}")))?;
    let reference = target
        .get("@odata.id")
        .and_then(Value::as_str)
        .ok_or_else(|| DvError::odata("Target needs an @odata.id."))?;
    let (table, _id) = resolve_ref(ctx, reference)?;
    let denied = ctx
        .store
        .meta
        .denied
        .get(table.logical())
        .cloned()
        .unwrap_or_default();
    let rights: Vec<&str> = ACCESS_RIGHTS
        .iter()
        .copied()
        .filter(|r| !denied.iter().any(|d| d == r))
        .collect();
    Ok(json_response(
        StatusCode::OK,
        json!({
            "@odata.context": format!("{}$metadata#Microsoft.Dynamics.CRM.RetrievePrincipalAccessResponse", ctx.api_base),
            "AccessRights": if rights.is_empty() { "None".to_string() } else { rights.join(", ") },
        }),
    ))
}
