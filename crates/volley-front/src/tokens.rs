//! Token arrays deserialised straight into a [`TokenList`], validated as they are read.
//!
//! A million-token body must not become a million `String`s: each element is borrowed from the
//! request body (or unescaped once into serde's scratch buffer), checked, and appended to one
//! shared buffer. The native API goes further ([`in_place`], [`settle`]): its arrays are read
//! as spans of the body, and the tokens are then moved to the front of the body's own buffer,
//! so that a 67 MB request is never held twice. A token that breaks its rule is not an error: it is left out of the list and
//! noted with its index in [`Tokens::rejected`], so that a request with a few malformed tokens
//! is accepted for the others (callers refuse it instead in strict mode). An element that is
//! not a string is an error raised inside the element, so `serde_path_to_error` names the
//! index (`targets.apns[17]`). The token itself is never part of a message.

use std::cell::Cell;
use std::fmt;
use std::marker::PhantomData;

use bytes::BytesMut;
use serde::de::DeserializeOwned;
use serde::de::{self, DeserializeSeed, Deserializer, SeqAccess, Visitor};
use serde::Deserialize;
use volley_contracts::{Platform, TokenList, TokenListBuilder};

use crate::error::{ApiError, Code};

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

thread_local! {
    /// The body being parsed in place ([`in_place`]): its address and length.
    static BODY: Cell<Option<(usize, usize)>> = const { Cell::new(None) };
}

/// Runs `parse` on `body` with its token arrays read as spans of the body rather than copied;
/// [`settle`] then makes their lists share the body's buffer.
pub(crate) fn in_place<T>(body: &[u8], parse: impl FnOnce(&[u8]) -> T) -> T {
    struct Reset;
    impl Drop for Reset {
        fn drop(&mut self) {
            BODY.with(|body| body.set(None));
        }
    }
    BODY.with(|slot| slot.set(Some((body.as_ptr() as usize, body.len()))));
    let _reset = Reset;
    parse(body)
}

/// Where a token is in the body being parsed, or `None` when it is not there as it reads
/// (it had escapes, or it comes from elsewhere).
fn in_body(token: &str) -> Option<Span> {
    let (base, len) = BODY.with(Cell::get)?;
    let at = (token.as_ptr() as usize).checked_sub(base)?;
    let end = at.checked_add(token.len())?;
    if end > len {
        return None;
    }
    Some(Span {
        start: u32::try_from(at).ok()?,
        end: u32::try_from(end).ok()?,
    })
}

/// A token parsed in place: its bytes in the body, or, with `start == u32::MAX`, the next
/// token of [`Tokens::unescaped`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct Span {
    start: u32,
    end: u32,
}

const UNESCAPED: u32 = u32::MAX;

/// A JSON array of tokens, read into a [`TokenList`] under `R`'s rule.
pub(crate) struct Tokens<R> {
    /// The tokens that pass the rule, in order (parsed in place: once [`settle`]d).
    pub list: TokenList,
    /// The ones that do not, by index in the array.
    pub rejected: Vec<Rejection>,
    /// Parsed in place: where each token that passes is, until [`settle`].
    spans: Vec<Span>,
    /// Parsed in place: the tokens that had escapes, unescaped.
    unescaped: TokenListBuilder,
    rule: PhantomData<R>,
}

impl<R> Tokens<R> {
    /// Whether the array had any element, well-formed or not.
    pub fn given(&self) -> bool {
        !self.list.is_empty() || !self.spans.is_empty() || !self.rejected.is_empty()
    }
}

impl<R> Default for Tokens<R> {
    fn default() -> Self {
        Tokens {
            list: TokenList::default(),
            rejected: Vec::new(),
            spans: Vec::new(),
            unescaped: TokenListBuilder::default(),
            rule: PhantomData,
        }
    }
}

/// The lists of arrays parsed in place from `body` ([`in_place`]), sharing its buffer: each
/// token moves to the front of the body, over the JSON it was read from, in the order of the
/// body. A token never moves right (what precedes it in the body is at least as long as the
/// tokens before it), so nothing is overwritten before it is read, and the buffer holds the
/// tokens and no copy of them. An array with escaped tokens (which read shorter than they
/// are written) is the exception: then every list is copied out.
pub(crate) fn settle(mut body: BytesMut, mut arrays: Vec<&mut dyn InPlace>) {
    let escaped = arrays.iter_mut().any(|array| !array.parts().2.is_empty());
    if escaped {
        for array in arrays {
            let (spans, list, unescaped) = array.parts();
            let mut builder = TokenListBuilder::default();
            let unescaped = std::mem::take(unescaped).finish();
            let mut next = 0;
            for span in spans.drain(..) {
                if span.start == UNESCAPED {
                    builder.push(unescaped.get(next).unwrap_or_default());
                    next += 1;
                } else {
                    let token = &body[span.start as usize..span.end as usize];
                    builder.push(std::str::from_utf8(token).unwrap_or_default());
                }
            }
            *list = builder.finish();
        }
        return;
    }
    arrays.sort_by_key(|array| array.start());
    let mut cursor = 0;
    let mut placed = Vec::with_capacity(arrays.len());
    for array in arrays.iter_mut() {
        let (spans, _, _) = array.parts();
        let begin = cursor;
        let mut ends = Vec::with_capacity(spans.len());
        for span in spans.drain(..) {
            let (start, end) = (span.start as usize, span.end as usize);
            body.copy_within(start..end, cursor);
            cursor += end - start;
            ends.push((cursor - begin) as u32);
        }
        placed.push((begin, cursor, ends));
    }
    body.truncate(cursor);
    let data = body.freeze();
    for (array, (begin, end, ends)) in arrays.into_iter().zip(placed) {
        *array.parts().1 = TokenList::from_raw_parts(data.slice(begin..end), ends)
            .expect("the ends of settled tokens fit their buffer");
    }
}

/// Bodies from this size on have their token arrays settled within the body.
pub(crate) const IN_PLACE_BYTES: usize = 64 * 1024;

/// Names a request's token arrays, for [`parse_body`].
pub(crate) type Arrays<T> = fn(&mut T) -> Vec<&mut dyn InPlace>;

/// Parses a request body (`parse_json`). From [`IN_PLACE_BYTES`] on, the token arrays that
/// `arrays` names are read in place and settled within the body's buffer; below that they
/// are copied (for a few tokens the spans cost more than the copy, and there is nothing to
/// save).
pub(crate) fn parse_body<T: DeserializeOwned>(
    body: BytesMut,
    arrays: Arrays<T>,
) -> Result<T, ApiError> {
    if body.len() < IN_PLACE_BYTES {
        return crate::parse_json(&body);
    }
    let mut parsed: T = in_place(&body, crate::parse_json)?;
    settle(body, arrays(&mut parsed));
    Ok(parsed)
}

/// A token array as [`settle`] sees it: its spans, its list, its unescaped tokens.
pub(crate) trait InPlace {
    fn parts(&mut self) -> (&mut Vec<Span>, &mut TokenList, &mut TokenListBuilder);
    /// Where its first token is in the body.
    fn start(&self) -> u32;
}

impl<R> InPlace for Tokens<R> {
    fn parts(&mut self) -> (&mut Vec<Span>, &mut TokenList, &mut TokenListBuilder) {
        (&mut self.spans, &mut self.list, &mut self.unescaped)
    }

    fn start(&self) -> u32 {
        self.spans.first().map_or(0, |span| span.start)
    }
}

impl<'de, R: TokenRule> Deserialize<'de> for Tokens<R> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_seq(ArrayVisitor::<R>(PhantomData))
    }
}

struct ArrayVisitor<R>(PhantomData<R>);

impl<'de, R: TokenRule> Visitor<'de> for ArrayVisitor<R> {
    type Value = Tokens<R>;

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
        let in_place = BODY.with(Cell::get).is_some();
        let mut builder = match seq.size_hint() {
            Some(n) if !in_place => TokenListBuilder::with_capacity(n, n * 64),
            _ => TokenListBuilder::default(),
        };
        let mut tokens = Tokens::<R>::default();
        let mut index = 0;
        while seq
            .next_element_seed(Element::<R> {
                builder: &mut builder,
                tokens: &mut tokens,
                in_place,
                index,
            })?
            .is_some()
        {
            index += 1;
        }
        if in_place {
            tokens.unescaped = builder;
        } else {
            tokens.list = builder.finish();
        }
        Ok(tokens)
    }
}

struct Element<'b, R> {
    /// Copies of the tokens (parsed in place: of the escaped ones only).
    builder: &'b mut TokenListBuilder,
    tokens: &'b mut Tokens<R>,
    in_place: bool,
    index: usize,
}

impl<'de, R: TokenRule> DeserializeSeed<'de> for Element<'_, R> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl<R: TokenRule> Element<'_, R> {
    fn take(self, token: &str, span: Option<Span>) {
        if let Err(reason) = R::check(token) {
            self.tokens.rejected.push((self.index, reason));
            return;
        }
        match (self.in_place, span) {
            (false, _) => self.builder.push(token),
            (true, Some(span)) => self.tokens.spans.push(span),
            (true, None) => {
                self.builder.push(token);
                self.tokens.spans.push(Span {
                    start: UNESCAPED,
                    end: UNESCAPED,
                });
            }
        }
    }
}

impl<'de, R: TokenRule> Visitor<'de> for Element<'_, R> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a token string")
    }

    fn visit_borrowed_str<E: de::Error>(self, token: &'de str) -> Result<(), E> {
        let span = in_body(token);
        self.take(token, span);
        Ok(())
    }

    fn visit_str<E: de::Error>(self, token: &str) -> Result<(), E> {
        self.take(token, None);
        Ok(())
    }
}

/// Checks every token of `list` for `platform`: the ones that pass, and the others by index.
pub(crate) fn validate(list: TokenList, platform: Platform) -> (TokenList, Vec<Rejection>) {
    let check: fn(&str) -> Result<(), String> = match platform {
        Platform::Apns => ApnsRule::check,
        Platform::Fcm => FcmRule::check,
        Platform::WebPush => |token| {
            volley_webpush::subscription::decode(token)
                .map(drop)
                .map_err(|e| e.to_string())
        },
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
pub(crate) fn refusal(field: &str, rejection: &Rejection) -> ApiError {
    ApiError::new(Code::InvalidToken, rejection.1.clone())
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

    /// Two arrays' lists and rejections, and whether the lists share the body's buffer.
    type Settled = (
        (TokenList, TokenList),
        (Vec<Rejection>, Vec<Rejection>),
        bool,
    );

    /// Two arrays parsed in place from one body (the second before the first in the body)
    /// and settled.
    fn settled(json: &str) -> Settled {
        #[derive(Deserialize)]
        struct Body {
            fcm: Tokens<FcmRule>,
            apns: Tokens<ApnsRule>,
        }
        let body = BytesMut::from(json);
        let range = body.as_ptr() as usize..body.as_ptr() as usize + body.len();
        let mut parsed: Body = in_place(&body, |body| serde_json::from_slice(body)).unwrap();
        settle(body, vec![&mut parsed.apns, &mut parsed.fcm]);
        let shared = [&parsed.apns.list, &parsed.fcm.list]
            .iter()
            .filter(|list| !list.is_empty())
            .all(|list| range.contains(&(list.raw_parts().0.as_ptr() as usize)));
        (
            (parsed.apns.list, parsed.fcm.list),
            (parsed.apns.rejected, parsed.fcm.rejected),
            shared,
        )
    }

    #[test]
    fn tokens_parsed_in_place_are_moved_within_the_body_in_order() {
        let a = "a".repeat(64);
        let b = "b".repeat(64);
        let json = format!(
            r#"{{ "fcm" : [ "one", "bad token",  "two:x" ],"apns":["{a}","nope","{b}"] }}"#
        );
        let ((apns, fcm), (apns_bad, fcm_bad), shared) = settled(&json);
        assert!(shared, "the lists were copied");
        assert_eq!(apns.iter().collect::<Vec<_>>(), [a.as_str(), b.as_str()]);
        assert_eq!(fcm.iter().collect::<Vec<_>>(), ["one", "two:x"]);
        assert_eq!(apns_bad.iter().map(|r| r.0).collect::<Vec<_>>(), [1]);
        assert_eq!(fcm_bad.iter().map(|r| r.0).collect::<Vec<_>>(), [1]);
        // Empty arrays and tokens with escapes (read shorter than written: copied instead).
        let ((apns, fcm), _, _) = settled(r#"{"fcm":[],"apns":[]}"#);
        assert!(apns.is_empty() && fcm.is_empty());
        let ((apns, fcm), _, shared) = settled(&format!(
            r#"{{"fcm":["x", "a\u0062c", "y"],"apns":["{a}"]}}"#
        ));
        assert!(!shared);
        assert_eq!(fcm.iter().collect::<Vec<_>>(), ["x", "abc", "y"]);
        assert_eq!(apns.iter().collect::<Vec<_>>(), [a.as_str()]);
    }

    proptest::proptest! {
        #[test]
        fn any_two_arrays_settle_to_what_a_copy_would_give(
            first in proptest::collection::vec("[A-Za-z0-9_:.-]{0,40}|[a\\\"é]{1,4}", 0..40),
            second in proptest::collection::vec("[A-Za-z0-9_:.-]{0,40}", 0..40),
            space in "[ \n]{0,3}",
        ) {
            let json = format!(
                "{{{space}\"fcm\":{space}{}{space},\"apns\":{}}}",
                serde_json::to_string(&first).unwrap(),
                serde_json::to_string(&second).unwrap(),
            );
            let apns_copy: Tokens<ApnsRule> = serde_json::from_str(&serde_json::to_string(&second).unwrap()).unwrap();
            let fcm_copy: Tokens<FcmRule> = serde_json::from_str(&serde_json::to_string(&first).unwrap()).unwrap();
            let ((apns, fcm), (apns_bad, fcm_bad), _) = settled(&json);
            proptest::prop_assert_eq!(apns, apns_copy.list);
            proptest::prop_assert_eq!(fcm, fcm_copy.list);
            proptest::prop_assert_eq!(apns_bad, apns_copy.rejected);
            proptest::prop_assert_eq!(fcm_bad, fcm_copy.rejected);
        }
    }
}
