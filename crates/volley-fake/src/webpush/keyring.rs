//! The subscriptions the fake hands out: deterministic per id, cheap to make, and decryptable.
//!
//! A browser makes one P-256 key pair and one auth secret per subscription. The fake cannot
//! afford a key generation per subscription (a benchmark makes 100,000), so it generates a few
//! key pairs at start-up and gives each id one of them, chosen by an HMAC of the id under a
//! secret seed; the same HMAC's first 16 bytes are the id's auth secret. Whatever id a push
//! arrives for, the fake recomputes both and can decrypt it.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use ring::hmac;

/// Key pairs generated at start-up, shared among all subscriptions.
const KEY_PAIRS: usize = 8;

/// One user-agent key pair (RFC 8291's `ua_private` / `ua_public`).
struct KeyPair {
    /// The private key, with its public key worked out once.
    receiver: volley_webpush::ece::Receiver,
    /// The public key, uncompressed, base64url without padding, as `p256dh` carries it.
    public_b64: String,
}

/// The keys of one subscription id.
pub(crate) struct SubscriptionKeys<'a> {
    /// The user agent's key pair.
    pub(crate) receiver: &'a volley_webpush::ece::Receiver,
    /// `p256dh`: the public key, base64url unpadded.
    pub(crate) public_b64: &'a str,
    /// The auth secret.
    pub(crate) auth: [u8; 16],
}

/// The seed and key pairs every subscription of one fake derives from.
pub(crate) struct Keyring {
    seed: hmac::Key,
    pairs: Vec<KeyPair>,
}

impl Keyring {
    /// A random seed and [`KEY_PAIRS`] fresh key pairs.
    pub(crate) fn generate() -> Self {
        let mut seed = [0u8; 32];
        rand::Rng::fill(&mut rand::thread_rng(), &mut seed[..]);
        let pairs = (0..KEY_PAIRS)
            .map(|_| {
                let (private, public) = volley_webpush::ece::generate_keypair();
                KeyPair {
                    receiver: volley_webpush::ece::Receiver::new(&private)
                        .expect("a generated private key is valid"),
                    public_b64: URL_SAFE_NO_PAD.encode(public),
                }
            })
            .collect();
        Keyring {
            seed: hmac::Key::new(hmac::HMAC_SHA256, &seed),
            pairs,
        }
    }

    /// The keys of subscription `id`: the same for the same id for as long as the fake runs.
    pub(crate) fn keys(&self, id: &str) -> SubscriptionKeys<'_> {
        let tag = hmac::sign(&self.seed, id.as_bytes());
        let tag = tag.as_ref();
        let mut auth = [0u8; 16];
        auth.copy_from_slice(&tag[..16]);
        let pick = usize::from(u16::from_be_bytes([tag[16], tag[17]])) % self.pairs.len();
        let pair = &self.pairs[pick];
        SubscriptionKeys {
            receiver: &pair.receiver,
            public_b64: &pair.public_b64,
            auth,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_id_always_gets_the_same_keys_and_ids_differ_in_auth() {
        let ring = Keyring::generate();
        let a = ring.keys("alice");
        let again = ring.keys("alice");
        assert_eq!(a.auth, again.auth);
        assert_eq!(a.public_b64, again.public_b64);
        assert_ne!(a.auth, ring.keys("bob").auth);
        assert_eq!(a.public_b64.len(), 87);
    }

    #[test]
    fn ids_spread_over_every_key_pair() {
        let ring = Keyring::generate();
        let used: std::collections::HashSet<_> = (0..200)
            .map(|i| ring.keys(&format!("id-{i}")).public_b64.to_owned())
            .collect();
        assert_eq!(used.len(), KEY_PAIRS);
    }
}
