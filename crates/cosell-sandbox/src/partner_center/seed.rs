//! Realistic generated referrals from the seeded generator: company names, addresses with valid
//! ISO 3166 country codes and matching currencies, contacts, co-sell solutions such as
//! `SOL-34104-EBB`, deal values, statuses.

use chrono::{Duration, Utc};
use rand::Rng;
use rand::rngs::StdRng;
use rand::seq::IndexedRandom;
use serde_json::{Map, Value, json};

use super::referrals::stamp_new;
use super::{
    MICROSOFT_ORGANIZATION_ID, PENDING_EXPIRY_DAYS, PartnerCenterEmulator, Party, SANDBOX_MPN_ID,
    SANDBOX_ORGANIZATION_ID, SANDBOX_ORGANIZATION_NAME, Stored, format_timestamp,
};

const COMPANIES: &[&str] = &[
    "Contoso",
    "Fabrikam",
    "Northwind Traders",
    "Adventure Works",
    "Tailspin Toys",
    "Wingtip Toys",
    "Litware",
    "Proseware",
    "Alpine Ski House",
    "Woodgrove Bank",
    "Coho Winery",
    "Lamna Healthcare",
    "Trey Research",
    "Wide World Importers",
    "Relecloud",
    "Margie's Travel",
    "Humongous Insurance",
    "Lucerne Publishing",
    "VanArsdel",
    "Fourth Coffee",
    "Blue Yonder Airlines",
    "City Power & Light",
    "Consolidated Messenger",
    "Southridge Video",
    "Bellows College",
    "First Up Consultants",
    "Munson's Pickles",
    "Graphic Design Institute",
    "Best For You Organics",
    "Datum Corporation",
];
const SUFFIXES: &[&str] = &[
    "Inc", "Ltd", "GmbH", "SA", "BV", "Pty Ltd", "AB", "LLC", "Group",
];

/// Country, city, state, postal code, currency, locale.
const PLACES: &[(&str, &str, &str, &str, &str, &str)] = &[
    ("US", "Redmond", "WA", "98052", "USD", "en-us"),
    ("US", "New York", "NY", "10001", "USD", "en-us"),
    ("US", "Austin", "TX", "78701", "USD", "en-us"),
    ("GB", "London", "", "EC1A 1BB", "GBP", "en-gb"),
    ("DE", "Berlin", "BE", "10115", "EUR", "de-de"),
    ("FR", "Paris", "", "75001", "EUR", "fr-fr"),
    ("NL", "Amsterdam", "NH", "1012 AB", "EUR", "nl-nl"),
    ("JP", "Tokyo", "13", "100-0001", "JPY", "ja-jp"),
    ("AU", "Sydney", "NSW", "2000", "AUD", "en-au"),
    ("CA", "Toronto", "ON", "M5H 2N2", "CAD", "en-ca"),
    ("IN", "Bengaluru", "KA", "560001", "INR", "en-in"),
    ("BR", "São Paulo", "SP", "01000-000", "BRL", "pt-br"),
    ("SE", "Stockholm", "", "111 22", "SEK", "sv-se"),
    ("ES", "Madrid", "M", "28001", "EUR", "es-es"),
    ("IT", "Milan", "MI", "20121", "EUR", "it-it"),
    ("SG", "Singapore", "", "018956", "SGD", "en-sg"),
    ("CH", "Zurich", "ZH", "8001", "CHF", "de-ch"),
    ("ZA", "Johannesburg", "GP", "2001", "ZAR", "en-za"),
    ("MX", "Mexico City", "CMX", "06000", "MXN", "es-mx"),
];
const STREETS: &[&str] = &[
    "Main Street",
    "Market Street",
    "Harbour Road",
    "Station Road",
    "Park Avenue",
    "King Street",
    "Mill Lane",
    "High Street",
    "Lakeview Drive",
    "Innovation Way",
];
const FIRST: &[&str] = &[
    "Sue", "John", "Ana", "Kenji", "Priya", "Lars", "Chloé", "Mateo", "Aisha", "Tom", "Mei",
    "Olga", "Diego", "Fatima", "Noah", "Ingrid", "Ravi", "Zoe",
];
const LAST: &[&str] = &[
    "Smith", "Doe", "García", "Tanaka", "Patel", "Nilsson", "Dubois", "Rossi", "Okafor", "Müller",
    "Chen", "Ivanova", "Silva", "Haddad", "Brown", "Larsen", "Kumar", "O'Neil",
];
const PRODUCTS: &[&str] = &[
    "Supply Chain Suite",
    "Field Service Hub",
    "Secure Analytics",
    "Retail Insights",
    "Claims Automation",
    "Data Estate Migration",
    "Copilot Accelerator",
    "IoT Fleet Monitor",
];
const ASSISTANCE: &[&str] = &[
    "CustomerTechnicalArchitecture",
    "ProofOfConceptOrDemo",
    "QuotesOrLicensing",
    "WorkloadSpecificValueProposition",
    "GeneralOrOther",
];
const INDUSTRIES: &[&str] = &[
    "Manufacturing",
    "Financial Services",
    "Healthcare",
    "Retail & Consumer Goods",
    "Education",
    "Government",
    "Travel & Transportation",
];
const SIZES: &[&str] = &[
    "1to9employees",
    "10to50employees",
    "51to250employees",
    "251to1000employees",
    "1001to5000employees",
    "Morethan20000employees",
];

fn pick<'a>(rng: &mut StdRng, items: &'a [&'a str]) -> &'a str {
    items.choose(rng).copied().unwrap_or_default()
}

fn slug(s: &str) -> String {
    s.chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .collect::<String>()
        .to_ascii_lowercase()
}

fn letters(rng: &mut StdRng, n: usize) -> String {
    (0..n)
        .map(|_| char::from(b'A' + rng.random_range(0..26u8)))
        .collect()
}

/// A solution id in the partner co-sell format, e.g. `SOL-34104-EBB`.
pub(crate) fn solution_id(rng: &mut StdRng) -> String {
    format!(
        "SOL-{}-{}",
        rng.random_range(10_000..100_000u32),
        letters(rng, 3)
    )
}

/// A Microsoft CRM (MSX) opportunity id, e.g. `7-3K9QJ4X2PB`.
pub(crate) fn msx_id(rng: &mut StdRng) -> String {
    const ALNUM: &[u8] = b"0123456789ABCDEFGHJKLMNPQRSTUVWXYZ";
    let tail: String = (0..10)
        .map(|_| char::from(*ALNUM.choose(rng).unwrap_or(&b'0')))
        .collect();
    format!("7-{tail}")
}

fn contact(rng: &mut StdRng, domain: &str, locale: &str) -> Value {
    let first = pick(rng, FIRST);
    let last = pick(rng, LAST);
    json!({
        "firstName": first,
        "lastName": last,
        "email": format!("{}.{}@{domain}", slug(first), slug(last)),
        "phoneNumber": format!("{}", rng.random_range(2_000_000_000u64..9_999_999_999)),
        "title": null,
        "contactPreference": { "locale": locale, "disableNotifications": false }
    })
}

/// A referral body as a client would POST it: customer, consent, details, team.
pub(crate) fn request_body(rng: &mut StdRng) -> Value {
    let company = format!("{} {}", pick(rng, COMPANIES), pick(rng, SUFFIXES));
    let place = PLACES.choose(rng).copied().unwrap_or(PLACES[0]);
    let (country, city, state, postal, currency, locale) = place;
    let domain = format!("{}.example", slug(&company));
    let product = pick(rng, PRODUCTS);
    let solution = solution_id(rng);
    let deal_value = rng.random_range(10..4_000u32) * 500;
    let close_days = rng.random_range(30..270i64);
    let shared = rng.random_bool(0.6);
    let customer_contact = contact(rng, &domain, locale);
    let seller = contact(rng, "fabrikam-partner.example", "en-us");
    json!({
        "name": format!("{company} - {product}"),
        "externalReferenceId": null,
        "type": if shared { "Shared" } else { "Independent" },
        "qualification": "SalesQualified",
        "customerProfile": {
            "name": company,
            "size": pick(rng, SIZES),
            "address": {
                "addressLine1": format!("{} {}", rng.random_range(1..999u32), pick(rng, STREETS)),
                "addressLine2": null,
                "city": city,
                "state": state,
                "postalCode": postal,
                "country": country,
                "region": null
            },
            "team": [customer_contact],
            "ids": []
        },
        "consent": {
            "consentToToShareInfoWithOthers": true,
            "consentToContact": true,
            "consentToShareReferralWithMicrosoftSellers": shared
        },
        "details": {
            "notes": format!("{company} is evaluating {product}."),
            "dealValue": deal_value,
            "currency": currency,
            "closingDateTime": format!("{}T00:00:00Z", (Utc::now() + Duration::days(close_days)).format("%Y-%m-%d")),
            "requirements": {
                "industries": [ { "id": pick(rng, INDUSTRIES) } ],
                "products": [],
                "services": [],
                "solutions": [ {
                    "id": solution,
                    "name": format!("Fabrikam {product}"),
                    "type": "Name",
                    "publisherName": SANDBOX_ORGANIZATION_NAME,
                    "solutionType": "3P"
                } ],
                "offers": [],
                "salesPlays": [],
                // Required on create (Microsoft's "minimal information required" example). A
                // constant, so the generator draws the same random sequence as before.
                "additionalRequirements": {
                    "attributes": [ { "id": "HaveNotDecided", "type": "CustomerMarketplaceIntent" } ]
                }
            }
        },
        "team": [seller],
        "target": if shared { json!([ { "type": "SolutionProfile", "id": solution } ]) } else { json!([]) },
        "inviteContext": if shared {
            json!({ "notes": "Requesting Microsoft's help.", "assistanceRequestCode": pick(rng, ASSISTANCE) })
        } else {
            json!(null)
        }
    })
}

/// Deep merge: objects merge member by member, `null` keeps the base, anything else replaces.
pub(crate) fn merge(base: &mut Value, over: Value) {
    match (base, over) {
        (_, Value::Null) => {}
        (Value::Object(b), Value::Object(o)) => {
            for (k, v) in o {
                match b.get_mut(&k) {
                    Some(slot) if slot.is_object() && v.is_object() => merge(slot, v),
                    _ if v.is_null() => {}
                    _ => {
                        b.insert(k, v);
                    }
                }
            }
        }
        (b, o) => *b = o,
    }
}

fn ours(body: &mut Map<String, Value>) {
    body.insert(
        "organizationId".into(),
        Value::from(SANDBOX_ORGANIZATION_ID),
    );
    body.insert(
        "organizationName".into(),
        Value::from(SANDBOX_ORGANIZATION_NAME),
    );
    body.insert("mpnId".into(), Value::from(SANDBOX_MPN_ID));
}

/// Makes `body` an incoming referral from Microsoft, pending for 14 days from `now`.
pub(crate) fn make_incoming(body: &mut Map<String, Value>, now: chrono::DateTime<Utc>) {
    ours(body);
    body.insert("direction".into(), Value::from("Incoming"));
    body.insert("status".into(), Value::from("New"));
    body.insert("substatus".into(), Value::from("Pending"));
    body.insert(
        "expirationDateTime".into(),
        Value::from(format_timestamp(now + Duration::days(PENDING_EXPIRY_DAYS))),
    );
    let invite = body.entry("inviteContext").or_insert(Value::Null);
    if !invite.is_object() {
        *invite = json!({});
    }
    if let Some(invite) = invite.as_object_mut() {
        invite.insert(
            "invitedBy".into(),
            json!({ "organizationId": MICROSOFT_ORGANIZATION_ID, "organizationName": "Microsoft" }),
        );
        invite
            .entry("notes")
            .or_insert_with(|| Value::from("Microsoft seller referral."));
    }
}

/// How far back seeded referrals were created: less than [`PENDING_EXPIRY_DAYS`], so the
/// seeded pending referrals are still pending.
const SEED_CREATED_DAYS: i64 = 10;
/// Seeded referrals were last updated within this many milliseconds before the seeding: less
/// than a reconcile's default overlap (5 minutes), so a running service's next reconcile lists
/// them whatever its checkpoint.
const SEED_UPDATED_MS: i64 = 60_000;

/// Seeds `n` referrals of ours without firing webhooks: created over the past
/// [`SEED_CREATED_DAYS`] days (in creation order, the newest an hour ago), each updated in the
/// last minute.
pub(crate) fn seed(pc: &PartnerCenterEmulator, n: usize) -> Vec<String> {
    let mut s = pc.lock();
    let now = Utc::now();
    let newest = now - Duration::hours(1);
    let span_ms: i64 = (SEED_CREATED_DAYS * 24 - 1) * 3600 * 1000;
    let step = span_ms / i64::try_from(n.max(1)).unwrap_or(1);
    let mut ids = Vec::with_capacity(n);
    for i in 0..n {
        let mut body = match request_body(&mut s.rng) {
            Value::Object(m) => m,
            _ => Map::new(),
        };
        let offset = span_ms - step * i64::try_from(i).unwrap_or(0);
        let jitter = s.rng.random_range(0..step.max(2) / 2);
        let created = newest - Duration::milliseconds(offset - jitter)
            + Duration::nanoseconds(i64::try_from(i % 10_000).unwrap_or(0) * 100);
        let updated = now - Duration::milliseconds(s.rng.random_range(0..SEED_UPDATED_MS));
        stamp_new(pc, &mut s, &mut body, created);
        ours(&mut body);
        let roll: u32 = s.rng.random_range(0..100);
        let (direction, status, substatus) = match roll {
            0..50 => ("Outgoing", "Active", "Accepted"),
            50..70 => ("Incoming", "New", "Pending"),
            70..80 => ("Incoming", "Active", "Accepted"),
            80..88 => ("Outgoing", "Closed", "Won"),
            88..94 => ("Outgoing", "Closed", "Lost"),
            94..97 => ("Incoming", "Closed", "Declined"),
            _ => ("Incoming", "Closed", "Expired"),
        };
        if direction == "Incoming" {
            make_incoming(&mut body, created);
        }
        body.insert("direction".into(), Value::from(direction));
        body.insert("status".into(), Value::from(status));
        body.insert("substatus".into(), Value::from(substatus));
        let created_s = Value::from(format_timestamp(created));
        let updated_s = Value::from(format_timestamp(updated));
        body.insert("createdDateTime".into(), created_s.clone());
        body.insert("updatedDateTime".into(), updated_s.clone());
        if status != "New" {
            body.insert(
                "acceptedDateTime".into(),
                if direction == "Outgoing" {
                    created_s
                } else {
                    updated_s.clone()
                },
            );
        }
        if status == "Closed" {
            body.insert("closedDateTime".into(), updated_s);
        }
        let id = body
            .get("id")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        s.insert(Stored {
            party: Party::Ours,
            body,
        });
        ids.push(id);
    }
    ids
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;

    use super::*;

    #[test]
    fn generated_data_is_plausible_and_seeded() {
        let mut a = StdRng::seed_from_u64(7);
        let mut b = StdRng::seed_from_u64(7);
        let one = request_body(&mut a);
        assert_eq!(one["name"], request_body(&mut b)["name"]);
        let country = one["customerProfile"]["address"]["country"]
            .as_str()
            .unwrap();
        assert!(celes::Country::from_alpha2(country).is_ok());
        let sol = one["details"]["requirements"]["solutions"][0]["id"]
            .as_str()
            .unwrap();
        assert!(sol.starts_with("SOL-") && sol.len() == 13, "{sol}");
        assert!(msx_id(&mut a).starts_with("7-"));
    }

    #[test]
    fn the_sandbox_crm_has_every_currency_the_generator_emits() {
        let crm = crate::dataverse::DataverseSchema::standard();
        for place in PLACES {
            assert!(
                crm.currencies().iter().any(|c| c.iso_code == place.4),
                "{} is not a sandbox CRM currency",
                place.4
            );
        }
    }

    #[test]
    fn seeded_referrals_are_recent_enough_for_a_running_service() {
        let sandbox = crate::Sandbox::builder().start_in_process().unwrap();
        let pc = sandbox.partner_center();
        let before = Utc::now();
        pc.seed_referrals(50);
        let after = Utc::now();
        let time = |r: &Value, k: &str| {
            chrono::DateTime::parse_from_rfc3339(r[k].as_str().unwrap())
                .unwrap()
                .with_timezone(&Utc)
        };
        for r in pc.referrals() {
            let (created, updated) = (time(&r, "createdDateTime"), time(&r, "updatedDateTime"));
            assert!(
                created >= before - Duration::days(SEED_CREATED_DAYS),
                "{created}"
            );
            assert!(created <= updated, "{created} {updated}");
            assert!(updated >= before - Duration::milliseconds(SEED_UPDATED_MS));
            assert!(updated <= after);
        }
    }

    #[test]
    fn merge_is_deep() {
        let mut base = json!({"a": {"b": 1, "c": 2}, "d": 3});
        merge(
            &mut base,
            json!({"a": {"b": 9, "e": null}, "d": null, "f": [1]}),
        );
        assert_eq!(base, json!({"a": {"b": 9, "c": 2}, "d": 3, "f": [1]}));
    }
}
