//! Token arrays deserialised straight into a [`TokenList`], validated as they are read.
//!
//! A million-token body must not become a million `String`s: each element is borrowed from the
//! request body (or unescaped once into serde's scratch buffer), checked, and appended to one
//! shared buffer. Errors are raised inside the element, so `serde_path_to_error` names the index
//! (`targets.apns[17]`); the token itself is never part of the message.

use std::fmt;
use std::marker::PhantomData;

use serde::de::{self, DeserializeSeed, Deserializer, SeqAccess, Visitor};
use serde::Deserialize;
use volley_contracts::{Platform, TokenList, TokenListBuilder};

use crate::error::{unprocessable, Code};

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

/// A JSON array of tokens, read into a [`TokenList`] under `R`'s rule.
pub(crate) struct Tokens<R> {
    /// The tokens.
    pub list: TokenList,
    rule: PhantomData<R>,
}

impl<R> Default for Tokens<R> {
    fn default() -> Self {
        Tokens {
            list: TokenList::default(),
            rule: PhantomData,
        }
    }
}

impl<'de, R: TokenRule> Deserialize<'de> for Tokens<R> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let list = deserializer.deserialize_seq(ArrayVisitor::<R>(PhantomData))?;
        Ok(Tokens {
            list,
            rule: PhantomData,
        })
    }
}

struct ArrayVisitor<R>(PhantomData<R>);

impl<'de, R: TokenRule> Visitor<'de> for ArrayVisitor<R> {
    type Value = TokenList;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(R::WHAT)
    }

    // A lone string where an array belongs is most likely a token: say so without echoing it.
    fn visit_str<E: de::Error>(self, _: &str) -> Result<TokenList, E> {
        Err(E::custom(format_args!(
            "expected {}, got a single string",
            R::WHAT
        )))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<TokenList, A::Error> {
        let mut builder = match seq.size_hint() {
            Some(n) => TokenListBuilder::with_capacity(n, n * 64),
            None => TokenListBuilder::default(),
        };
        while seq
            .next_element_seed(Element::<R> {
                builder: &mut builder,
                rule: PhantomData,
            })?
            .is_some()
        {}
        Ok(builder.finish())
    }
}

struct Element<'b, R> {
    builder: &'b mut TokenListBuilder,
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
        if let Err(reason) = R::check(token) {
            return Err(unprocessable(Code::InvalidToken, reason));
        }
        self.builder.push(token);
        Ok(())
    }
}

/// Checks every token of `list` for `platform`, naming the first bad one as `field[index]`.
pub(crate) fn validate(
    list: &TokenList,
    platform: Platform,
    field: &str,
) -> Result<(), crate::error::ApiError> {
    let check: fn(&str) -> Result<(), String> = match platform {
        Platform::Apns => ApnsRule::check,
        Platform::Fcm => FcmRule::check,
    };
    for (index, token) in list.iter().enumerate() {
        if let Err(reason) = check(token) {
            return Err(crate::error::ApiError::new(Code::InvalidToken, reason)
                .field(format!("{field}[{index}]")));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ApiError;

    fn parse<R: TokenRule>(json: &str) -> Result<TokenList, ApiError> {
        let mut de = serde_json::Deserializer::from_str(json);
        serde_path_to_error::deserialize::<_, Tokens<R>>(&mut de)
            .map(|t| t.list)
            .map_err(ApiError::from_json)
    }

    #[test]
    fn valid_tokens_land_in_the_list_in_order() {
        let a = "a".repeat(64);
        let b = "B".repeat(64);
        let list = parse::<ApnsRule>(&format!(r#"["{a}", "{b}"]"#)).unwrap();
        assert_eq!(list.iter().collect::<Vec<_>>(), [a.as_str(), b.as_str()]);
        // Escaped strings are unescaped before the check.
        let list = parse::<FcmRule>(r#"["a\u0062c"]"#).unwrap();
        assert_eq!(list.get(0), Some("abc"));
    }

    #[test]
    fn a_bad_token_is_named_by_index_and_never_echoed() {
        let good = "a".repeat(64);
        let error =
            parse::<ApnsRule>(&format!(r#"["{good}", "{good}", "secret-zz"]"#)).unwrap_err();
        assert_eq!(error.code, Code::InvalidToken);
        assert_eq!(error.field.as_deref(), Some("[2]"));
        assert!(!error.message.contains("secret"), "{}", error.message);

        let error = parse::<FcmRule>(r#""secret-token""#).unwrap_err();
        assert_eq!(error.code, Code::BadRequest);
        assert!(!error.message.contains("secret"), "{}", error.message);

        let error = parse::<FcmRule>("[1]").unwrap_err();
        assert_eq!(error.code, Code::BadRequest);
        assert_eq!(error.field.as_deref(), Some("[0]"));
    }

    proptest::proptest! {
        #[test]
        fn any_token_array_round_trips_or_names_its_first_bad_index(
            tokens in proptest::collection::vec("[A-Za-z0-9_:.-]{1,40}", 0..60),
            bad in proptest::option::of(("SECRET[ \"\\\\/é]{1,3}", 0usize..60)),
        ) {
            let mut tokens = tokens;
            let bad_at = bad.map(|(text, at)| {
                let at = at.min(tokens.len());
                tokens.insert(at, text);
                at
            });
            let json = serde_json::to_string(&tokens).unwrap();
            match (parse::<FcmRule>(&json), bad_at) {
                (Ok(list), None) => {
                    proptest::prop_assert_eq!(list.iter().collect::<Vec<_>>(), tokens.clone());
                }
                (Err(error), Some(at)) => {
                    proptest::prop_assert_eq!(error.code, Code::InvalidToken);
                    let expected = format!("[{at}]");
                    proptest::prop_assert_eq!(error.field.as_deref(), Some(expected.as_str()));
                    proptest::prop_assert!(!error.message.contains("SECRET"));
                }
                (result, bad_at) => {
                    proptest::prop_assert!(false, "{:?} for bad token at {:?}", result.map(|l| l.len()), bad_at);
                }
            }
        }
    }

    #[test]
    fn later_validation_names_the_field() {
        let list: TokenList = ["ok", "not ok"].into_iter().collect();
        let error = validate(&list, Platform::Fcm, "notifications[0].tokens").unwrap_err();
        assert_eq!(error.field.as_deref(), Some("notifications[0].tokens[1]"));
    }
}
