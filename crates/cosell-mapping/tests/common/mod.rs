//! Referral fixtures shared by the test files.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used)]

use partner_center_client::models::Referral;
use serde_json::json;

pub fn referral(v: serde_json::Value) -> Referral {
    serde_json::from_value(v).unwrap()
}

/// A co-sell referral Microsoft sent us, accepted (reference §6.1 shape).
pub fn co_sell_incoming() -> Referral {
    referral(json!({
        "id": "4111fffc-f9ee-4d53-bba6-569135228642",
        "engagementId": "37ef26aa-1d15-4533-9f93-a69bd33ab1e5",
        "name": "Contoso supply chain modernization",
        "status": "Active", "substatus": "Accepted",
        "type": "Shared", "qualification": "SalesQualified", "direction": "Incoming",
        "customerProfile": {
            "name": "Contoso Customer Inc",
            "address": { "addressLine1": "One Microsoft Way", "addressLine2": "34", "city": "Redmond",
                         "state": "WA", "postalCode": "98052", "country": "US" },
            "team": [ { "firstName": "Sue", "lastName": "Smith", "phoneNumber": "1234567890",
                        "email": "sue.smith@contoso.com" } ]
        },
        "consent": { "consentToShareReferralWithMicrosoftSellers": true },
        "details": {
            "notes": "Customer wants Dynamics 365 for supply chain.",
            "dealValue": 50000, "currency": "USD", "closingDateTime": "2024-11-14T00:00:00Z",
            "requirements": { "solutions": [ { "id": "SOL-34104-EBB", "name": "Contoso Supply Chain Suite",
                                               "type": "Name", "publisherName": "Contoso" } ] }
        },
        "inviteContext": { "assistanceRequestCode": "CustomerTechnicalArchitecture",
                           "invitedBy": { "organizationId": "msft", "organizationName": "Microsoft" } },
        "trackingInfo": { "microsoftMsxId": "7-3JXK2Q9ABC" }
    }))
}

/// A private outgoing deal: no help, not shared (reference §6.2).
pub fn private_outgoing() -> Referral {
    referral(json!({
        "id": "a6f1d3c2-0000-4000-8000-000000000002",
        "engagementId": "b7e2c4d3-0000-4000-8000-000000000002",
        "name": "Fabrikam - Dynamics 365 rollout",
        "status": "Active", "substatus": "Accepted",
        "type": "Independent", "direction": "Outgoing",
        "externalReferenceId": "OPP-00042",
        "customerProfile": {
            "name": "Fabrikam, Inc.",
            "address": { "addressLine1": "1 Fabrikam Road", "city": "Zürich",
                         "postalCode": "8001", "country": "CH" },
            "team": [ { "firstName": "Hans", "lastName": "Muster", "email": "hans@fabrikam.ch" } ]
        },
        "consent": { "consentToShareReferralWithMicrosoftSellers": false },
        "details": { "notes": "Private deal.", "dealValue": 12345.67, "currency": "CHF",
                     "closingDateTime": "2025-03-31T00:00:00Z" },
        "inviteContext": { "assistanceRequestCode": "Unknown" }
    }))
}

/// A won deal.
pub fn won_deal() -> Referral {
    referral(json!({
        "id": "c3d4e5f6-0000-4000-8000-000000000003",
        "name": "✔ Northwind Azure migration",
        "status": "Closed", "substatus": "Won",
        "customerProfile": {
            "name": "Northwind Traders",
            "address": { "city": "London", "postalCode": "EC1A 1BB", "country": "GB" },
            "team": [ { "firstName": "Ann", "lastName": "Lee", "email": "ann@northwind.co.uk" },
                      { "firstName": "Bob", "lastName": "Ray", "email": "bob@northwind.co.uk" } ]
        },
        "consent": { "consentToShareReferralWithMicrosoftSellers": true },
        "details": { "dealValue": "250000.00", "currency": "GBP", "closingDateTime": "2025-01-15T00:00:00Z",
                     "requirements": { "solutions": [
                        { "id": "e5b1c6a0-1111-4111-8111-111111111111", "name": "M365 E5 Compliance | Non-specific", "type": "Name" },
                        { "id": "SOL-6115380-IPC", "name": "Northwind Migrator", "type": "Name" } ] } },
        "inviteContext": { "assistanceRequestCode": "ProofOfConceptOrDemo" }
    }))
}

/// An incoming lead not yet accepted.
pub fn lead() -> Referral {
    referral(json!({
        "id": "d4e5f6a7-0000-4000-8000-000000000004",
        "name": "Tailspin Toys - marketplace lead",
        "status": "New", "substatus": "Received",
        "type": "Independent", "qualification": "Direct", "direction": "Incoming",
        "customerProfile": {
            "name": "Tailspin Toys",
            "address": { "city": "Paris", "postalCode": "75001", "country": "FR" },
            "team": [ { "firstName": "Marie", "lastName": "Curie", "email": "marie@tailspin.fr",
                        "phoneNumber": "+33 1 23 45 67 89", "title": "CTO" } ]
        },
        "details": { "notes": "Came in through AppSource.", "dealValue": 1000, "currency": "EUR" },
        "inviteContext": { "assistanceRequestCode": "Unknown",
                           "invitedBy": { "organizationId": "msft" } }
    }))
}
