//! Countries: ISO 3166-1 alpha-2 codes. A payer's country is checked
//! against the codes assigned, not just their shape: `XX` or `ZZ` would
//! slip past a block list of real countries unnoticed.

/// The officially assigned ISO 3166-1 alpha-2 codes (249), and `XK`
/// (Kosovo: user-assigned, but what the EU, SWIFT and card networks use),
/// sorted.
const ASSIGNED: [&str; 250] = [
    "AD", "AE", "AF", "AG", "AI", "AL", "AM", "AO", "AQ", "AR", "AS", "AT", "AU", "AW", "AX", "AZ",
    "BA", "BB", "BD", "BE", "BF", "BG", "BH", "BI", "BJ", "BL", "BM", "BN", "BO", "BQ", "BR", "BS",
    "BT", "BV", "BW", "BY", "BZ", "CA", "CC", "CD", "CF", "CG", "CH", "CI", "CK", "CL", "CM", "CN",
    "CO", "CR", "CU", "CV", "CW", "CX", "CY", "CZ", "DE", "DJ", "DK", "DM", "DO", "DZ", "EC", "EE",
    "EG", "EH", "ER", "ES", "ET", "FI", "FJ", "FK", "FM", "FO", "FR", "GA", "GB", "GD", "GE", "GF",
    "GG", "GH", "GI", "GL", "GM", "GN", "GP", "GQ", "GR", "GS", "GT", "GU", "GW", "GY", "HK", "HM",
    "HN", "HR", "HT", "HU", "ID", "IE", "IL", "IM", "IN", "IO", "IQ", "IR", "IS", "IT", "JE", "JM",
    "JO", "JP", "KE", "KG", "KH", "KI", "KM", "KN", "KP", "KR", "KW", "KY", "KZ", "LA", "LB", "LC",
    "LI", "LK", "LR", "LS", "LT", "LU", "LV", "LY", "MA", "MC", "MD", "ME", "MF", "MG", "MH", "MK",
    "ML", "MM", "MN", "MO", "MP", "MQ", "MR", "MS", "MT", "MU", "MV", "MW", "MX", "MY", "MZ", "NA",
    "NC", "NE", "NF", "NG", "NI", "NL", "NO", "NP", "NR", "NU", "NZ", "OM", "PA", "PE", "PF", "PG",
    "PH", "PK", "PL", "PM", "PN", "PR", "PS", "PT", "PW", "PY", "QA", "RE", "RO", "RS", "RU", "RW",
    "SA", "SB", "SC", "SD", "SE", "SG", "SH", "SI", "SJ", "SK", "SL", "SM", "SN", "SO", "SR", "SS",
    "ST", "SV", "SX", "SY", "SZ", "TC", "TD", "TF", "TG", "TH", "TJ", "TK", "TL", "TM", "TN", "TO",
    "TR", "TT", "TV", "TW", "TZ", "UA", "UG", "UM", "US", "UY", "UZ", "VA", "VC", "VE", "VG", "VI",
    "VN", "VU", "WF", "WS", "XK", "YE", "YT", "ZA", "ZM", "ZW",
];

/// `text` as an assigned country code, upper-cased (codes are compared
/// whatever their case); `None` for anything else.
pub fn country_code(text: &str) -> Option<String> {
    let upper = text.to_ascii_uppercase();
    ASSIGNED.binary_search(&upper.as_str()).ok().map(|_| upper)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn assigned_codes_in_any_case_and_nothing_else() {
        assert!(
            ASSIGNED.windows(2).all(|pair| pair[0] < pair[1]),
            "sorted, once each"
        );
        assert_eq!(country_code("DE").as_deref(), Some("DE"));
        assert_eq!(country_code("de").as_deref(), Some("DE"));
        assert_eq!(country_code("kP").as_deref(), Some("KP"));
        for refused in ["XX", "ZZ", "AA", "UK", "D", "DEU", "", "D3", "ÄÖ"] {
            assert_eq!(country_code(refused), None, "{refused}");
        }
    }
}
