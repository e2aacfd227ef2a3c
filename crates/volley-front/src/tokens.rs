//! Token arrays deserialised straight into a [`TokenList`], validated as they are read.
//!
//! A million-token body must not become a million `String`s: each element is borrowed from the
//! request body (or unescaped once into serde's scratch buffer), checked, and appended to one
//! shared buffer. A token that breaks its rule is not an error: it is left out of the list and
//! noted with its index in [`Tokens::rejected`], so that a request with a few malformed tokens
//! is accepted for the others (callers refuse it instead in strict mode). An element that is
//! not a string is an error raised inside the element, so `serde_path_to_error` names the
//! index (`targets.apns[17]`). The token itself is never part of a message.

use std::fmt;
use std::marker::PhantomData;

use serde::de::{self, DeserializeSeed, Deserializer, SeqAccess, Visitor};
use serde::Deserialize;
use volley_contracts::{Platform, TokenList, TokenListBuilder};

use crate::error::Code;

/// How a token array checks its elements.
pub(crate) trait TokenRule {
    /// What the array is called in "expected ..." messages.
    const WHAT: &'static str;
    /// Checks one token; the error text never includes the token.
    fn check(token: &str) -> Result<(), String>;
}

/// APNs device tokens, checked with [`volley_apns::validate_token`].
pub(crate) struct ApnsRule;
/// FCM registration tokens, checked with [`volley_fcm::validate_token`].
pub(crate) struct FcmRule;
/// Tokens whose platform is not known yet (compatible APIs name it after the tokens); checked
/// later with [`validate`].
pub(crate) struct NoRule;

impl TokenRule for ApnsRule {
    const WHAT: &'static str = "an array of apns device tokens";
    fn check(token: &str) -> Result<(), String> {
        volley_apns::validate_token(token).map_err(|e| e.to_string())
    }
}

impl TokenRule for FcmRule {
    const WHAT: &'static str = "an array of fcm registration tokens";
    fn check(token: &str) -> Result<(), String> {
        volley_fcm::validate_token(token).map_err(|e| e.to_string())
    }
}

impl TokenRule for NoRule {
    const WHAT: &'static str = "an array of device tokens";
    fn check(_: &str) -> Result<(), String> {
        Ok(())
    }
}

/// A token left out of a list: its index in the array and why (never the token).
pub(crate) type Rejection = (usize, String);

/// A JSON array of tokens, read into a [`TokenList`] under `R`'s rule.
pub(crate) struct Tokens<R> {
    /// The tokens that pass the rule, in order.
    pub list: TokenList,
    /// The ones that do not, by index in the array.
    pub rejected: Vec<Rejection>,
    rule: PhantomData<R>,
}

impl<R> Tokens<R> {
    /// Whether the array had any element, well-formed or not.
    pub fn given(&self) -> bool {
        !self.list.is_empty() || !self.rejected.is_empty()
    }
}

impl<R> Default for Tokens<R> {
    fn default() -> Self {
        Tokens {
            list: TokenList::default(),
            rejected: Vec::new(),
            rule: PhantomData,
        }
    }
}

impl<'de, R: TokenRule> Deserialize<'de> for Tokens<R> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let (list, rejected) = deserializer.deserialize_seq(ArrayVisitor::<R>(PhantomData))?;
        Ok(Tokens {
            list,
            rejected,
            rule: PhantomData,
        })
    }
}

struct ArrayVisitor<R>(PhantomData<R>);

impl<'de, R: TokenRule> Visitor<'de> for ArrayVisitor<R> {
    type Value = (TokenList, Vec<Rejection>);

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(R::WHAT)
    }

    // A lone string where an array belongs is most likely a token: say so without echoing it.
    fn visit_str<E: de::Error>(self, _: &str) -> Result<Self::Value, E> {
        Err(E::custom(format_args!(
            "expected {}, got a single string",
            R::WHAT
        )))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut builder = match seq.size_hint() {
            Some(n) => TokenListBuilder::with_capacity(n, n * 64),
            None => TokenListBuilder::default(),
        };
        let mut rejected = Vec::new();
        let mut index = 0;
        while seq
            .next_element_seed(Element::<R> {
                builder: &mut builder,
                rejected: &mut rejected,
                index,
                rule: PhantomData,
            })?
            .is_some()
        {
            index += 1;
        }
        Ok((builder.finish(), rejected))
    }
}

struct Element<'b, R> {
    builder: &'b mut TokenListBuilder,
    rejected: &'b mut Vec<Rejection>,
    index: usize,
    rule: PhantomData<R>,
}

impl<'de, R: TokenRule> DeserializeSeed<'de> for Element<'_, R> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl<'de, R: TokenRule> Visitor<'de> for Element<'_, R> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a token string")
    }

    fn visit_str<E: de::Error>(self, token: &str) -> Result<(), E> {
        match R::check(token) {
            Ok(()) => self.builder.push(token),
            Err(reason) => self.rejected.push((self.index, reason)),
        }
        Ok(())
    }
}

/// Checks every token of `list` for `platform`: the ones that pass, and the others by index.
pub(crate) fn validate(list: TokenList, platform: Platform) -> (TokenList, Vec<Rejection>) {
    let check: fn(&str) -> Result<(), String> = match platform {
        Platform::Apns => ApnsRule::check,
        Platform::Fcm => FcmRule::check,
    };
    let Some(first) = list.iter().position(|token| check(token).is_err()) else {
        return (list, Vec::new());
    };
    // Only a list with a bad token is copied, and each token is checked once: the ones
    // before the first bad one passed already.
    let mut kept = TokenListBuilder::with_capacity(list.len() - 1, list.byte_len());
    let mut rejected = Vec::new();
    for (index, token) in list.iter().enumerate() {
        if index < first {
            kept.push(token);
            continue;
        }
        match check(token) {
            Ok(()) => kept.push(token),
            Err(reason) => rejected.push((index, reason)),
        }
    }
    (kept.finish(), rejected)
}

/// The error for a list whose tokens were all refused, or for the first refused one in
/// strict mode: `field[index]` and its reason.
pub(crate) fn refusal(field: &str, rejection: &Rejection) -> crate::error::ApiError {
    crate::error::ApiError::new(Code::InvalidToken, rejection.1.clone())
        .field(format!("{field}[{}]", rejection.0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ApiError;

    fn parse<R: TokenRule>(json: &str) -> Result<(TokenList, Vec<Rejection>), ApiError> {
        let mut de = serde_json::Deserializer::from_str(json);
        serde_path_to_error::deserialize::<_, Tokens<R>>(&mut de)
            .map(|t| (t.list, t.rejected))
            .map_err(ApiError::from_json)
    }

    #[test]
    fn valid_tokens_land_in_the_list_in_order() {
        let a = "a".repeat(64);
        let b = "B".repeat(64);
        let (list, rejected) = parse::<ApnsRule>(&format!(r#"["{a}", "{b}"]"#)).unwrap();
        assert_eq!(list.iter().collect::<Vec<_>>(), [a.as_str(), b.as_str()]);
        assert!(rejected.is_empty());
        // Escaped strings are unescaped before the check.
        let (list, _) = parse::<FcmRule>(r#"["a\u0062c"]"#).unwrap();
        assert_eq!(list.get(0), Some("abc"));
    }

    #[test]
    fn a_bad_token_is_left_out_by_index_and_never_echoed() {
        let good = "a".repeat(64);
        let (list, rejected) =
            parse::<ApnsRule>(&format!(r#"["{good}", "secret-zz", "{good}"]"#)).unwrap();
        assert_eq!(list.len(), 2);
        assert_eq!(rejected.len(), 1);
        assert_eq!(rejected[0].0, 1);
        assert!(!rejected[0].1.contains("secret"), "{}", rejected[0].1);

        let error = parse::<FcmRule>(r#""secret-token""#).unwrap_err();
        assert_eq!(error.code, Code::BadRequest);
        assert!(!error.message.contains("secret"), "{}", error.message);

        let error = parse::<FcmRule>("[1]").unwrap_err();
        assert_eq!(error.code, Code::BadRequest);
        assert_eq!(error.field.as_deref(), Some("[0]"));
    }

    proptest::proptest! {
        #[test]
        fn any_token_array_keeps_the_good_and_names_the_bad_by_index(
            tokens in proptest::collection::vec("[A-Za-z0-9_:.-]{1,40}", 0..60),
            bad in proptest::option::of(("SECRET[ \"\\\\/é]{1,3}", 0usize..60)),
        ) {
            let mut all = tokens.clone();
            let bad_at = bad.map(|(text, at)| {
                let at = at.min(all.len());
                all.insert(at, text);
                at
            });
            let json = serde_json::to_string(&all).unwrap();
            let (list, rejected) = parse::<FcmRule>(&json).unwrap();
            proptest::prop_assert_eq!(list.iter().collect::<Vec<_>>(), tokens);
            proptest::prop_assert_eq!(rejected.iter().map(|r| r.0).collect::<Vec<_>>(), bad_at.into_iter().collect::<Vec<_>>());
            proptest::prop_assert!(rejected.iter().all(|r| !r.1.contains("SECRET")));
        }
    }

    #[test]
    fn later_validation_splits_the_list() {
        let list: TokenList = ["ok", "not ok", "fine"].into_iter().collect();
        let (kept, rejected) = validate(list, Platform::Fcm);
        assert_eq!(kept.iter().collect::<Vec<_>>(), ["ok", "fine"]);
        assert_eq!(rejected.len(), 1);
        let error = refusal("notifications[0].tokens", &rejected[0]);
        assert_eq!(error.field.as_deref(), Some("notifications[0].tokens[1]"));
    }
}
