//! Web Push message encryption: RFC 8291 key derivation over the RFC 8188 `aes128gcm`
//! content coding, always as one record.
//!
//! The sender side ([`encrypt`]) runs once per message and per subscription, so it uses ring
//! throughout: a fresh ephemeral P-256 key pair and ECDH (about four times cheaper than the
//! `p256` crate's), HKDF-SHA256 and AES-128-GCM. The receiver side ([`decrypt`]) and the
//! deterministic [`encrypt_with`] need ECDH with a *stored* private key, which ring does not
//! offer; they use `p256` for that one step and share everything after the shared secret.
//!
//! Layout of the body (RFC 8188 §2.1 with RFC 8291 §4's key id):
//!
//! ```text
//! salt (16) | rs (4, big-endian, 4096) | idlen (1) = 65 | keyid = sender public key (65)
//! | AES-128-GCM( plaintext | 0x02 ) | tag (16)
//! ```

use bytes::Bytes;
use ring::aead::{self, Aad, LessSafeKey, Nonce, UnboundKey};
use ring::agreement::{self, EphemeralPrivateKey, UnparsedPublicKey};
use ring::hkdf::{KeyType, Prk, Salt, HKDF_SHA256};
use ring::rand::{SecureRandom, SystemRandom};

/// Record size written in the header: push services accept 4096-byte bodies.
pub const RECORD_SIZE: u32 = 4096;
/// Bytes before the ciphertext: salt, rs, idlen and the 65-byte sender key.
pub const HEADER_LEN: usize = 16 + 4 + 1 + PUBLIC_KEY_LEN;
/// AES-GCM tag length.
pub const TAG_LEN: usize = 16;
/// The largest plaintext that fits one 4096-byte body: 4096 − 86 (header) − 16 (tag) − 1
/// (padding delimiter).
pub const MAX_PLAINTEXT: usize = 3993;

const PUBLIC_KEY_LEN: usize = 65;
/// The delimiter that ends the last (here: only) record's plaintext (RFC 8188 §2).
const LAST_RECORD: u8 = 0x02;
const NOT_LAST_RECORD: u8 = 0x01;

const KEY_INFO_PREFIX: &[u8] = b"WebPush: info\0";
const CEK_INFO: &[u8] = b"Content-Encoding: aes128gcm\0";
const NONCE_INFO: &[u8] = b"Content-Encoding: nonce\0";

/// Why a message could not be encrypted or decrypted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EceError {
    /// The plaintext does not fit one record of a 4096-byte body.
    #[error("plaintext is {len} bytes: at most {MAX_PLAINTEXT} fit in one web push message")]
    PlaintextTooLong {
        /// The plaintext length.
        len: usize,
    },
    /// The subscription's `p256dh` key is not a point on P-256.
    #[error("the subscription's p256dh key is not a valid P-256 point")]
    InvalidUaPublicKey,
    /// A private key given in full is not a valid P-256 scalar.
    #[error("the private key is not a valid P-256 scalar")]
    InvalidPrivateKey,
    /// The system random number generator failed.
    #[error("the system random number generator failed")]
    Random,
    /// The body is shorter than a header and the smallest record.
    #[error(
        "body is {len} bytes: an aes128gcm body has an 86-byte header and at least 17 bytes of record"
    )]
    Truncated {
        /// The body length.
        len: usize,
    },
    /// The header's record size is below RFC 8188's minimum.
    #[error("record size is {rs}: it must be at least 18")]
    RecordSize {
        /// The record size read from the header.
        rs: u32,
    },
    /// The key id is not a 65-byte uncompressed point, as RFC 8291 requires.
    #[error(
        "key id is {len} bytes: web push puts the sender's 65-byte uncompressed P-256 key there"
    )]
    KeyIdLength {
        /// The key id length read from the header.
        len: u8,
    },
    /// The key id is 65 bytes but not a point on P-256.
    #[error("the sender key in the header is not a valid P-256 point")]
    InvalidSenderKey,
    /// The ciphertext is longer than one record: web push messages are a single record.
    #[error(
        "ciphertext is {len} bytes, more than the record size {rs}: web push allows one record"
    )]
    MultipleRecords {
        /// The ciphertext length, tag included.
        len: usize,
        /// The record size read from the header.
        rs: u32,
    },
    /// AES-GCM refused the record: wrong keys, or a body altered on the way.
    #[error("decryption failed: the body was not encrypted for these keys or was altered")]
    Decrypt,
    /// The record's padding ends in 0x01, which marks a record that is not the last.
    #[error("padding delimiter is 0x01: the record is marked as not the last one")]
    NotLastRecord,
    /// The record holds no padding delimiter at all (only zero bytes after decryption).
    #[error("the record has no padding delimiter")]
    MissingDelimiter,
    /// The record's last non-zero byte is neither delimiter.
    #[error("padding delimiter is {0:#04x}, not 0x02")]
    BadDelimiter(u8),
}

/// Encrypts `plaintext` for one subscription: a fresh ephemeral key pair and a random salt per
/// call, so two calls never produce the same body. Returns the whole `aes128gcm` body.
pub fn encrypt(plaintext: &[u8], ua_public: &[u8; 65], auth: &[u8; 16]) -> Result<Bytes, EceError> {
    check_length(plaintext)?;
    let rng = SystemRandom::new();
    let mut salt = [0u8; 16];
    rng.fill(&mut salt).map_err(|_| EceError::Random)?;
    let private =
        EphemeralPrivateKey::generate(&agreement::ECDH_P256, &rng).map_err(|_| EceError::Random)?;
    let public = private.compute_public_key().map_err(|_| EceError::Random)?;
    let as_public: &[u8; 65] = public
        .as_ref()
        .try_into()
        .expect("ring encodes P-256 public keys as 65-byte uncompressed points");
    let peer = UnparsedPublicKey::new(&agreement::ECDH_P256, ua_public);
    let keys = agreement::agree_ephemeral(private, &peer, |secret| {
        derive(secret, ua_public, as_public, auth, &salt)
    })
    .map_err(|_| EceError::InvalidUaPublicKey)?;
    Ok(Bytes::from(seal(&keys, as_public, &salt, plaintext)))
}

/// Encrypts with a given sender key and salt: deterministic, for test vectors (RFC 8291
/// Appendix A) only. Never reuse a key and salt for two real messages.
pub fn encrypt_with(
    plaintext: &[u8],
    ua_public: &[u8; 65],
    auth: &[u8; 16],
    as_private: &[u8; 32],
    salt: &[u8; 16],
) -> Result<Vec<u8>, EceError> {
    check_length(plaintext)?;
    let secret =
        p256::SecretKey::from_slice(as_private).map_err(|_| EceError::InvalidPrivateKey)?;
    let as_public = uncompressed(&secret.public_key());
    let shared = static_ecdh(&secret, ua_public).ok_or(EceError::InvalidUaPublicKey)?;
    let keys = derive(&shared, ua_public, &as_public, auth, salt);
    Ok(seal(&keys, &as_public, salt, plaintext))
}

/// Decrypts an `aes128gcm` body as the user agent does (the fake push service uses it), after
/// checking the header: record size, a 65-byte key id, a single record, delimiter 0x02.
///
/// Works out the public key from `ua_private` each time; a receiver of many messages keeps a
/// [`Receiver`] instead.
pub fn decrypt(body: &[u8], ua_private: &[u8; 32], auth: &[u8; 16]) -> Result<Vec<u8>, EceError> {
    Receiver::new(ua_private)?.decrypt(body, auth)
}

/// A user agent's key pair, ready to decrypt many messages: the public key, which every
/// message's key derivation needs, is worked out once (a scalar multiplication, as costly as
/// the ECDH itself).
pub struct Receiver {
    secret: p256::SecretKey,
    public: [u8; PUBLIC_KEY_LEN],
}

impl std::fmt::Debug for Receiver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Receiver").finish_non_exhaustive()
    }
}

impl Receiver {
    /// The key pair of `ua_private`.
    pub fn new(ua_private: &[u8; 32]) -> Result<Self, EceError> {
        let secret =
            p256::SecretKey::from_slice(ua_private).map_err(|_| EceError::InvalidPrivateKey)?;
        let public = uncompressed(&secret.public_key());
        Ok(Receiver { secret, public })
    }

    /// The public key, uncompressed (`p256dh`).
    pub fn public_key(&self) -> &[u8; PUBLIC_KEY_LEN] {
        &self.public
    }

    /// Decrypts one message sent to this key pair with the subscription's `auth` secret; see
    /// [`decrypt`].
    pub fn decrypt(&self, body: &[u8], auth: &[u8; 16]) -> Result<Vec<u8>, EceError> {
        open(body, &self.secret, &self.public, auth)
    }
}

fn open(
    body: &[u8],
    secret: &p256::SecretKey,
    ua_public: &[u8; PUBLIC_KEY_LEN],
    auth: &[u8; 16],
) -> Result<Vec<u8>, EceError> {
    if body.len() < HEADER_LEN + TAG_LEN + 1 {
        // Read what there is of the header first, so that a wrong key id length is named
        // as such rather than as a short body.
        if body.len() > 20 && body[20] as usize != PUBLIC_KEY_LEN {
            return Err(EceError::KeyIdLength { len: body[20] });
        }
        return Err(EceError::Truncated { len: body.len() });
    }
    let salt: &[u8; 16] = body[..16].try_into().expect("16 bytes");
    let rs = u32::from_be_bytes(body[16..20].try_into().expect("4 bytes"));
    if rs < 18 {
        return Err(EceError::RecordSize { rs });
    }
    let idlen = body[20];
    if idlen as usize != PUBLIC_KEY_LEN {
        return Err(EceError::KeyIdLength { len: idlen });
    }
    let as_public: &[u8; 65] = body[21..HEADER_LEN].try_into().expect("65 bytes");
    let ciphertext = &body[HEADER_LEN..];
    if ciphertext.len() > rs as usize {
        return Err(EceError::MultipleRecords {
            len: ciphertext.len(),
            rs,
        });
    }
    let shared = static_ecdh(secret, as_public).ok_or(EceError::InvalidSenderKey)?;
    let keys = derive(&shared, ua_public, as_public, auth, salt);

    let mut record = ciphertext.to_vec();
    let opened = keys
        .key()
        .open_in_place(keys.nonce(), Aad::empty(), &mut record)
        .map_err(|_| EceError::Decrypt)?
        .len();
    record.truncate(opened);
    match record.iter().rposition(|&b| b != 0) {
        None => Err(EceError::MissingDelimiter),
        Some(at) => match record[at] {
            LAST_RECORD => {
                record.truncate(at);
                Ok(record)
            }
            NOT_LAST_RECORD => Err(EceError::NotLastRecord),
            other => Err(EceError::BadDelimiter(other)),
        },
    }
}

/// A fresh P-256 key pair as a subscription holds it: the private scalar and the 65-byte
/// uncompressed public point (what a browser reports as `keys.p256dh`).
pub fn generate_keypair() -> ([u8; 32], [u8; 65]) {
    let secret = random_secret_key();
    (secret.to_bytes().into(), uncompressed(&secret.public_key()))
}

/// A uniformly random valid P-256 scalar from the system RNG. A random 32-byte string is a
/// valid scalar except with probability about 2^-32; `p256` decides validity.
pub(crate) fn random_secret_key() -> p256::SecretKey {
    let rng = SystemRandom::new();
    loop {
        let mut bytes = [0u8; 32];
        rng.fill(&mut bytes)
            .expect("the system random number generator failed");
        if let Ok(secret) = p256::SecretKey::from_slice(&bytes) {
            return secret;
        }
    }
}

pub(crate) fn uncompressed(public: &p256::PublicKey) -> [u8; 65] {
    use p256::elliptic_curve::sec1::ToEncodedPoint;
    public
        .to_encoded_point(false)
        .as_bytes()
        .try_into()
        .expect("an uncompressed P-256 point is 65 bytes")
}

fn check_length(plaintext: &[u8]) -> Result<(), EceError> {
    if plaintext.len() > MAX_PLAINTEXT {
        return Err(EceError::PlaintextTooLong {
            len: plaintext.len(),
        });
    }
    Ok(())
}

/// ECDH with a stored private key; `None` when `peer` is not a valid point.
fn static_ecdh(secret: &p256::SecretKey, peer: &[u8; 65]) -> Option<[u8; 32]> {
    let peer = p256::PublicKey::from_sec1_bytes(peer).ok()?;
    let shared = p256::ecdh::diffie_hellman(secret.to_nonzero_scalar(), peer.as_affine());
    Some((*shared.raw_secret_bytes()).into())
}

/// The content-encryption key and nonce of one message.
struct Keys {
    cek: [u8; 16],
    nonce: [u8; 12],
}

impl Keys {
    fn key(&self) -> LessSafeKey {
        LessSafeKey::new(
            UnboundKey::new(&aead::AES_128_GCM, &self.cek).expect("a 16-byte AES-128 key"),
        )
    }

    /// The nonce of record 0: RFC 8188 XORs the record sequence number into the derived
    /// nonce, and the only record is number 0.
    fn nonce(&self) -> Nonce {
        Nonce::assume_unique_for_key(self.nonce)
    }
}

/// HKDF output of a given length, for ring's `expand`.
struct Len(usize);

impl KeyType for Len {
    fn len(&self) -> usize {
        self.0
    }
}

/// RFC 8291 §3.3–3.4 and RFC 8188 §2.2: from the ECDH secret to the key and nonce.
fn derive(
    ecdh_secret: &[u8],
    ua_public: &[u8; 65],
    as_public: &[u8; 65],
    auth: &[u8; 16],
    salt: &[u8; 16],
) -> Keys {
    let prk_key = Salt::new(HKDF_SHA256, auth).extract(ecdh_secret);
    let mut ikm = [0u8; 32];
    expand(&prk_key, &[KEY_INFO_PREFIX, ua_public, as_public], &mut ikm);
    let prk = Salt::new(HKDF_SHA256, salt).extract(&ikm);
    let mut keys = Keys {
        cek: [0; 16],
        nonce: [0; 12],
    };
    expand(&prk, &[CEK_INFO], &mut keys.cek);
    expand(&prk, &[NONCE_INFO], &mut keys.nonce);
    keys
}

fn expand(prk: &Prk, info: &[&[u8]], out: &mut [u8]) {
    prk.expand(info, Len(out.len()))
        .and_then(|okm| okm.fill(out))
        .expect("HKDF-SHA256 output of at most 32 bytes is always possible");
}

/// Writes the header and the one sealed record into a single allocation.
fn seal(keys: &Keys, as_public: &[u8; 65], salt: &[u8; 16], plaintext: &[u8]) -> Vec<u8> {
    let mut body = Vec::with_capacity(HEADER_LEN + plaintext.len() + 1 + TAG_LEN);
    body.extend_from_slice(salt);
    body.extend_from_slice(&RECORD_SIZE.to_be_bytes());
    body.push(PUBLIC_KEY_LEN as u8);
    body.extend_from_slice(as_public);
    body.extend_from_slice(plaintext);
    body.push(LAST_RECORD);
    let tag = keys
        .key()
        .seal_in_place_separate_tag(keys.nonce(), Aad::empty(), &mut body[HEADER_LEN..])
        .expect("a record under 4 KiB is far below AES-GCM's length limit");
    body.extend_from_slice(tag.as_ref());
    body
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine;
    use proptest::prelude::*;

    fn b64<const N: usize>(text: &str) -> [u8; N] {
        URL_SAFE_NO_PAD
            .decode(text)
            .unwrap()
            .try_into()
            .unwrap_or_else(|v: Vec<u8>| panic!("{text} is {} bytes, not {N}", v.len()))
    }

    /// RFC 8291 Appendix A, verbatim.
    struct Rfc8291 {
        plaintext: &'static [u8],
        ua_public: [u8; 65],
        ua_private: [u8; 32],
        as_private: [u8; 32],
        as_public: [u8; 65],
        auth: [u8; 16],
        salt: [u8; 16],
        body: Vec<u8>,
    }

    fn rfc8291() -> Rfc8291 {
        Rfc8291 {
            plaintext: b"When I grow up, I want to be a watermelon",
            ua_public: b64("BCVxsr7N_eNgVRqvHtD0zTZsEc6-VV-JvLexhqUzORcxaOzi6-AYWXvTBHm4bjyPjs7Vd8pZGH6SRpkNtoIAiw4"),
            ua_private: b64("q1dXpw3UpT5VOmu_cf_v6ih07Aems3njxI-JWgLcM94"),
            as_private: b64("yfWPiYE-n46HLnH0KqZOF1fJJU3MYrct3AELtAQ-oRw"),
            as_public: b64("BP4z9KsN6nGRTbVYI_c7VJSPQTBtkgcy27mlmlMoZIIgDll6e3vCYLocInmYWAmS6TlzAC8wEqKK6PBru3jl7A8"),
            auth: b64("BTBZMqHH6r4Tts7J_aSIgg"),
            salt: b64("DGv6ra1nlYgDCS1FRnbzlw"),
            body: URL_SAFE_NO_PAD
                .decode(concat!(
                    "DGv6ra1nlYgDCS1FRnbzlwAAEABBBP4z9KsN6nGRTbVYI_c7VJSPQTBtkgcy27ml",
                    "mlMoZIIgDll6e3vCYLocInmYWAmS6TlzAC8wEqKK6PBru3jl7A_yl95bQpu6cVPT",
                    "pK4Mqgkf1CXztLVBSt2Ks3oZwbuwXPXLWyouBWLVWGNWQexSgSxsj_Qulcy4a-fN",
                ))
                .unwrap(),
        }
    }

    #[test]
    fn rfc8291_appendix_a_encrypts_to_the_published_body() {
        let v = rfc8291();
        let body =
            encrypt_with(v.plaintext, &v.ua_public, &v.auth, &v.as_private, &v.salt).unwrap();
        assert_eq!(body, v.body);
        assert_eq!(&body[21..HEADER_LEN], &v.as_public[..]);
    }

    #[test]
    fn rfc8291_appendix_a_decrypts_to_the_published_plaintext() {
        let v = rfc8291();
        assert_eq!(
            decrypt(&v.body, &v.ua_private, &v.auth).unwrap(),
            v.plaintext
        );
    }

    #[test]
    fn generated_keypairs_are_consistent() {
        let (private, public) = generate_keypair();
        let secret = p256::SecretKey::from_slice(&private).unwrap();
        assert_eq!(uncompressed(&secret.public_key()), public);
        assert_eq!(public[0], 0x04);
        assert_ne!(generate_keypair().0, private);
    }

    #[test]
    fn each_message_gets_a_fresh_key_and_salt() {
        let (_, public) = generate_keypair();
        let auth = [7u8; 16];
        let a = encrypt(b"same", &public, &auth).unwrap();
        let b = encrypt(b"same", &public, &auth).unwrap();
        assert_ne!(a[..16], b[..16], "salt");
        assert_ne!(a[21..HEADER_LEN], b[21..HEADER_LEN], "sender key");
    }

    #[test]
    fn the_largest_plaintext_makes_a_4096_byte_body_and_one_more_byte_is_refused() {
        let (private, public) = generate_keypair();
        let auth = [1u8; 16];
        let plaintext = vec![b'x'; MAX_PLAINTEXT];
        let body = encrypt(&plaintext, &public, &auth).unwrap();
        assert_eq!(body.len(), 4096);
        assert_eq!(decrypt(&body, &private, &auth).unwrap(), plaintext);
        let error = encrypt(&[0; MAX_PLAINTEXT + 1], &public, &auth).unwrap_err();
        assert_eq!(error, EceError::PlaintextTooLong { len: 3994 });
        assert_eq!(
            error.to_string(),
            "plaintext is 3994 bytes: at most 3993 fit in one web push message"
        );
    }

    #[test]
    fn keys_that_are_not_points_are_refused() {
        let mut not_a_point = rfc8291().ua_public;
        not_a_point[64] ^= 1;
        assert_eq!(
            encrypt(b"x", &not_a_point, &[0; 16]).unwrap_err(),
            EceError::InvalidUaPublicKey
        );
        let v = rfc8291();
        assert_eq!(
            encrypt_with(b"x", &not_a_point, &v.auth, &v.as_private, &v.salt).unwrap_err(),
            EceError::InvalidUaPublicKey
        );
        assert_eq!(
            encrypt_with(b"x", &v.ua_public, &v.auth, &[0; 32], &v.salt).unwrap_err(),
            EceError::InvalidPrivateKey
        );
    }

    #[test]
    fn tampered_bodies_are_refused_with_the_reason() {
        let v = rfc8291();
        let open = |body: &[u8]| decrypt(body, &v.ua_private, &v.auth);
        let with = |at: usize, byte: u8| {
            let mut body = v.body.clone();
            body[at] = byte;
            body
        };
        let flip = |at: usize| with(at, v.body[at] ^ 0x01);
        let last = v.body.len() - 1;

        assert_eq!(open(&flip(0)), Err(EceError::Decrypt), "salt");
        assert_eq!(
            open(&flip(HEADER_LEN + 3)),
            Err(EceError::Decrypt),
            "ciphertext"
        );
        assert_eq!(open(&flip(last)), Err(EceError::Decrypt), "tag");
        assert_eq!(open(&with(20, 64)), Err(EceError::KeyIdLength { len: 64 }));
        let mut tiny_rs = v.body.clone();
        tiny_rs[16..20].copy_from_slice(&17u32.to_be_bytes());
        assert_eq!(open(&tiny_rs), Err(EceError::RecordSize { rs: 17 }));
        let mut small_rs = v.body.clone();
        small_rs[16..20].copy_from_slice(&40u32.to_be_bytes());
        assert_eq!(
            open(&small_rs),
            Err(EceError::MultipleRecords { len: 58, rs: 40 })
        );
        let mut not_a_point = v.body.clone();
        not_a_point[HEADER_LEN - 1] ^= 1;
        assert_eq!(open(&not_a_point), Err(EceError::InvalidSenderKey));
        assert_eq!(open(&v.body[..50]), Err(EceError::Truncated { len: 50 }));
        assert_eq!(
            open(&v.body[..HEADER_LEN + 16]),
            Err(EceError::Truncated { len: 102 })
        );
        let other_auth = decrypt(&v.body, &v.ua_private, &[0; 16]);
        assert_eq!(other_auth, Err(EceError::Decrypt));
    }

    #[test]
    fn records_with_a_wrong_delimiter_are_refused() {
        let v = rfc8291();
        // Seal records by hand with the vector's keys, each ending in another delimiter.
        let shared = static_ecdh(
            &p256::SecretKey::from_slice(&v.as_private).unwrap(),
            &v.ua_public,
        )
        .unwrap();
        let keys = derive(&shared, &v.ua_public, &v.as_public, &v.auth, &v.salt);
        let sealed = |record: &[u8]| {
            let mut body = v.body[..HEADER_LEN].to_vec();
            let mut inner = record.to_vec();
            let tag = keys
                .key()
                .seal_in_place_separate_tag(keys.nonce(), Aad::empty(), &mut inner)
                .unwrap();
            body.extend_from_slice(&inner);
            body.extend_from_slice(tag.as_ref());
            body
        };
        let open = |body: &[u8]| decrypt(body, &v.ua_private, &v.auth);
        assert_eq!(open(&sealed(b"hi\x02\0\0\0")).unwrap(), b"hi");
        assert_eq!(open(&sealed(b"hi\x01")), Err(EceError::NotLastRecord));
        assert_eq!(open(&sealed(b"\0\0\0")), Err(EceError::MissingDelimiter));
        assert_eq!(open(&sealed(b"hi\x03\0")), Err(EceError::BadDelimiter(3)));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn round_trip(plaintext in proptest::collection::vec(any::<u8>(), 0..=MAX_PLAINTEXT), auth in any::<[u8; 16]>()) {
            let (private, public) = generate_keypair();
            let body = encrypt(&plaintext, &public, &auth).unwrap();
            prop_assert_eq!(body.len(), HEADER_LEN + plaintext.len() + 1 + TAG_LEN);
            prop_assert_eq!(&body[16..21], &[0, 0, 0x10, 0, 65][..]);
            prop_assert_eq!(decrypt(&body, &private, &auth).unwrap(), plaintext);
        }

        #[test]
        fn decrypt_never_panics(body in proptest::collection::vec(any::<u8>(), 0..300)) {
            let v = rfc8291();
            let _ = decrypt(&body, &v.ua_private, &v.auth);
        }
    }
}
