//! Credentials the fake accepts: fresh APNs signing keys and a fixed test service account.

/// An APNs provider-token signing key (what Apple hands out as a `.p8` file).
pub struct ApnsKey {
    /// The private key, PKCS#8 PEM (the `.p8` contents).
    pub private_pem: String,
    /// The matching public key, SPKI PEM, for [`crate::FakeConfig::apns_jwt_public_key_pem`].
    pub public_pem: String,
}

/// Generates a fresh P-256 key pair.
pub fn generate_apns_key() -> ApnsKey {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
        .expect("ring generates P-256 keys");
    ApnsKey {
        private_pem: key.serialize_pem(),
        public_pem: key.public_key_pem(),
    }
}

/// Mints an APNs provider token (ES256 JWT with `kid`, claims `iss` and `iat`) signed with `key`,
/// as a client would; handy for tests and load generators that have no APNs client of their own.
pub fn apns_provider_token(key: &ApnsKey, key_id: &str, team_id: &str, iat: u64) -> String {
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
    header.kid = Some(key_id.to_string());
    let claims = serde_json::json!({ "iss": team_id, "iat": iat });
    let signing_key = jsonwebtoken::EncodingKey::from_ec_pem(key.private_pem.as_bytes())
        .expect("a generated key is valid PKCS#8");
    jsonwebtoken::encode(&header, &claims, &signing_key).expect("ES256 signing does not fail")
}

/// The private key of the test service account. TEST ONLY: committed on purpose, belongs to no
/// real Google service account (see testdata/README.md).
const TEST_SERVICE_ACCOUNT_PRIVATE_KEY_PEM: &str =
    include_str!("../testdata/test-service-account-key.pem");

/// The public key of [`test_service_account`], for [`crate::FakeConfig::fcm_oauth_public_key_pem`].
pub const TEST_SERVICE_ACCOUNT_PUBLIC_KEY_PEM: &str =
    include_str!("../testdata/test-service-account-public.pem");

/// The `client_email` of [`test_service_account`].
pub const TEST_SERVICE_ACCOUNT_EMAIL: &str =
    "volley-fake-test@volley-fake-test.iam.gserviceaccount.com";

/// A service-account JSON file, shaped like Google's, holding the fixed test RSA key.
pub fn test_service_account(token_uri: &str, project_id: &str) -> String {
    serde_json::json!({
        "type": "service_account",
        "project_id": project_id,
        "private_key_id": "0123456789abcdef0123456789abcdef01234567",
        "private_key": TEST_SERVICE_ACCOUNT_PRIVATE_KEY_PEM,
        "client_email": TEST_SERVICE_ACCOUNT_EMAIL,
        "client_id": "100000000000000000001",
        "auth_uri": "https://accounts.google.com/o/oauth2/auth",
        "token_uri": token_uri,
    })
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};

    #[derive(serde::Serialize, serde::Deserialize)]
    struct Claims {
        iss: String,
        iat: u64,
    }

    fn round_trip(alg: Algorithm, enc: EncodingKey, dec: DecodingKey) {
        let claims = Claims {
            iss: "team".into(),
            iat: 1,
        };
        let jwt = jsonwebtoken::encode(&Header::new(alg), &claims, &enc).unwrap();
        let mut validation = Validation::new(alg);
        validation.validate_exp = false;
        validation.required_spec_claims.clear();
        let back = jsonwebtoken::decode::<Claims>(&jwt, &dec, &validation).unwrap();
        assert_eq!(back.claims.iss, "team");
    }

    #[test]
    fn apns_key_signs_what_its_public_half_verifies() {
        let key = generate_apns_key();
        assert!(key.private_pem.starts_with("-----BEGIN PRIVATE KEY-----"));
        round_trip(
            Algorithm::ES256,
            EncodingKey::from_ec_pem(key.private_pem.as_bytes()).unwrap(),
            DecodingKey::from_ec_pem(key.public_pem.as_bytes()).unwrap(),
        );
    }

    #[test]
    fn service_account_key_signs_what_the_public_constant_verifies() {
        let json: serde_json::Value =
            serde_json::from_str(&test_service_account("https://x/token", "p")).unwrap();
        assert_eq!(json["type"], "service_account");
        assert_eq!(json["token_uri"], "https://x/token");
        assert_eq!(json["client_email"], TEST_SERVICE_ACCOUNT_EMAIL);
        let private = json["private_key"].as_str().unwrap();
        round_trip(
            Algorithm::RS256,
            EncodingKey::from_rsa_pem(private.as_bytes()).unwrap(),
            DecodingKey::from_rsa_pem(TEST_SERVICE_ACCOUNT_PUBLIC_KEY_PEM.as_bytes()).unwrap(),
        );
    }
}
