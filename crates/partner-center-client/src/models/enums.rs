//! Service enums. Every one keeps values it does not know in `Other(String)`, so a value Microsoft
//! adds tomorrow never fails a decode and survives a round trip.

/// Declares a string enum with known variants, an `Other(String)` catch-all, and the impls every
/// service enum needs (`as_str`, `Display`, `FromStr`, `From<&str>`, serde).
///
/// Matching is exact first, then ASCII case-insensitive (the service binds enum values
/// case-insensitively); anything else is kept verbatim in `Other`.
macro_rules! string_enum {
    (
        $(#[$meta:meta])*
        $name:ident, default = $default:ident {
            $( $(#[$vmeta:meta])* $variant:ident => $wire:literal ),+ $(,)?
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash)]
        #[non_exhaustive]
        pub enum $name {
            $( $(#[$vmeta])* $variant, )+
            /// A value this version of the client does not know, kept as sent.
            Other(String),
        }

        impl $name {
            /// Every known value, in declaration order.
            pub const KNOWN: &'static [$name] = &[ $( $name::$variant ),+ ];

            /// The wire spelling.
            pub fn as_str(&self) -> &str {
                match self {
                    $( $name::$variant => $wire, )+
                    $name::Other(s) => s.as_str(),
                }
            }

            /// Whether this is a value the client knows (not `Other`).
            pub fn is_known(&self) -> bool {
                !matches!(self, $name::Other(_))
            }
        }

        impl Default for $name {
            fn default() -> Self {
                $name::$default
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl From<&str> for $name {
            fn from(s: &str) -> Self {
                $( if s == $wire { return $name::$variant; } )+
                $( if s.eq_ignore_ascii_case($wire) { return $name::$variant; } )+
                $name::Other(s.to_string())
            }
        }

        impl From<String> for $name {
            fn from(s: String) -> Self {
                match $name::from(s.as_str()) {
                    $name::Other(_) => $name::Other(s),
                    known => known,
                }
            }
        }

        impl std::str::FromStr for $name {
            type Err = std::convert::Infallible;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Ok($name::from(s))
            }
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(self.as_str())
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let s = <std::borrow::Cow<'de, str> as serde::Deserialize>::deserialize(deserializer)?;
                Ok($name::from(s.into_owned()))
            }
        }
    };
}

pub(crate) use string_enum;

string_enum! {
    /// `status` of a referral (reference §2.6).
    ///
    /// ```
    /// use partner_center_client::models::ReferralStatus;
    /// assert_eq!("Active".parse::<ReferralStatus>().unwrap(), ReferralStatus::Active);
    /// assert_eq!(ReferralStatus::from("Paused"), ReferralStatus::Other("Paused".into()));
    /// ```
    ReferralStatus, default = None {
        /// No status.
        None => "None",
        /// New (pending or received, not yet accepted).
        New => "New",
        /// Accepted and being worked.
        Active => "Active",
        /// Closed (won, lost, declined or expired).
        Closed => "Closed",
    }
}

string_enum! {
    /// `substatus` of a referral (reference §2.6).
    ReferralSubstatus, default = None {
        /// No substatus.
        None => "None",
        /// Sent, waiting for the other party.
        Pending => "Pending",
        /// Received, not yet accepted.
        Received => "Received",
        /// Accepted.
        Accepted => "Accepted",
        /// Closed as won (terminal).
        Won => "Won",
        /// Closed as lost (terminal).
        Lost => "Lost",
        /// Declined (terminal).
        Declined => "Declined",
        /// Expired without an answer (terminal).
        Expired => "Expired",
    }
}

impl ReferralSubstatus {
    /// Won, Lost, Declined and Expired: "terminal states from which no further updates to the
    /// deal are possible".
    pub fn is_terminal(&self) -> bool {
        matches!(
            self,
            ReferralSubstatus::Won
                | ReferralSubstatus::Lost
                | ReferralSubstatus::Declined
                | ReferralSubstatus::Expired
        )
    }
}

string_enum! {
    /// The customer's marketplace purchase intent, sent as the `CustomerMarketplaceIntent`
    /// attribute under `details.requirements.additionalRequirements.attributes` (Microsoft's
    /// minimal create example; Partner Center's bulk-operations page calls it required and lists
    /// Yes / No / Have not decided).
    CustomerMarketplaceIntent, default = HaveNotDecided {
        /// The customer intends to buy through the commercial marketplace.
        Yes => "Yes",
        /// The customer does not intend to buy through the marketplace.
        No => "No",
        /// Not decided (the value of Microsoft's example).
        HaveNotDecided => "HaveNotDecided",
    }
}

string_enum! {
    /// `type` of a referral.
    ReferralType, default = Independent {
        /// Visible to one partner.
        Independent => "Independent",
        /// Visible to two parties working together (for example Microsoft and the partner).
        Shared => "Shared",
    }
}

string_enum! {
    /// `qualification` of a referral.
    ReferralQualification, default = None {
        /// None.
        None => "None",
        /// Created by the customer.
        Direct => "Direct",
        /// Qualified by Microsoft marketing automation.
        MarketingQualified => "MarketingQualified",
        /// Qualified by a Microsoft sales agent.
        SalesQualified => "SalesQualified",
    }
}

string_enum! {
    /// `direction` of a referral, from the caller's point of view.
    ReferralDirection, default = Outgoing {
        /// Sent to the caller by Microsoft or another partner.
        Incoming => "Incoming",
        /// Created by the caller.
        Outgoing => "Outgoing",
    }
}

string_enum! {
    /// `inviteContext.assistanceRequestCode`: how Microsoft is asked to help ("help required").
    AssistanceRequestCode, default = Unknown {
        /// No help requested.
        Unknown => "Unknown",
        /// General or other help.
        GeneralOrOther => "GeneralOrOther",
        /// Customer technical architecture.
        CustomerTechnicalArchitecture => "CustomerTechnicalArchitecture",
        /// Proof of concept or demo.
        ProofOfConceptOrDemo => "ProofOfConceptOrDemo",
        /// Quotes or licensing.
        QuotesOrLicensing => "QuotesOrLicensing",
        /// Post-sales customer success.
        PostSalesCustomerSuccess => "PostSalesCustomerSuccess",
        /// Workload-specific value proposition.
        WorkloadSpecificValueProposition => "WorkloadSpecificValueProposition",
    }
}

string_enum! {
    /// `target[].type`.
    TargetType, default = None {
        /// None.
        None => "None",
        /// A location of a partner business profile (`msft` targets Microsoft).
        BusinessProfileLocation => "BusinessProfileLocation",
        /// A solution profile of the partner.
        SolutionProfile => "SolutionProfile",
    }
}

string_enum! {
    /// `details.requirements.solutions[].type`.
    SolutionType, default = None {
        /// None.
        None => "None",
        /// A pre-defined category name.
        Category => "Category",
        /// A reference to the Microsoft catalog (co-sell ready or Microsoft solution).
        Name => "Name",
    }
}

string_enum! {
    /// `customerProfile.ids[].profileType`.
    CustomerProfileType, default = Duns {
        /// A D-U-N-S number.
        Duns => "Duns",
        /// An external identifier.
        External => "External",
    }
}

string_enum! {
    /// `salesStage`. Sources disagree (swagger enum vs UI stage names vs observed `"100"`), so
    /// any string is kept.
    SalesStage, default = Qualify {
        /// Qualify.
        Qualify => "Qualify",
        /// Develop.
        Develop => "Develop",
        /// Propose.
        Propose => "Propose",
        /// Close.
        Close => "Close",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_then_case_insensitive_then_other() {
        assert_eq!(ReferralStatus::from("Closed"), ReferralStatus::Closed);
        assert_eq!(ReferralStatus::from("closed"), ReferralStatus::Closed);
        let other = ReferralStatus::from("Archived");
        assert_eq!(other, ReferralStatus::Other("Archived".into()));
        assert_eq!(other.as_str(), "Archived");
        assert!(!other.is_known());
        assert_eq!(ReferralStatus::default(), ReferralStatus::None);
        assert_eq!(ReferralSubstatus::KNOWN.len(), 8);
    }

    #[test]
    fn serde_keeps_unknown_values() {
        let v: AssistanceRequestCode = serde_json::from_str("\"CoffeeChat\"").unwrap();
        assert_eq!(v, AssistanceRequestCode::Other("CoffeeChat".into()));
        assert_eq!(serde_json::to_string(&v).unwrap(), "\"CoffeeChat\"");
        assert!(serde_json::from_str::<ReferralStatus>("7").is_err());
    }
}
