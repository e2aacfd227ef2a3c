//! A compact list of device tokens: one buffer and one offset per token.
//!
//! A million tokens as `Vec<String>` cost a million allocations on every hop; as a
//! [`TokenList`] they are two allocations, and a chunk is a zero-copy slice of the buffer.

use std::ops::Range;

use bytes::{Bytes, BytesMut};
use serde::{Deserialize, Serialize};

/// Device tokens, concatenated, with the end offset of each.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenList {
    /// Shared with a link's frame rather than copied (`crate::frames`).
    #[serde(
        serialize_with = "crate::frames::serialize_shared",
        deserialize_with = "crate::frames::shared_bytes"
    )]
    data: Bytes,
    ends: Vec<u32>,
}

impl TokenList {
    /// How many tokens.
    pub fn len(&self) -> usize {
        self.ends.len()
    }

    /// True when there is no token.
    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// Total bytes of all tokens.
    pub fn byte_len(&self) -> usize {
        self.data.len()
    }

    /// The token at `index`.
    ///
    /// Tokens are ASCII (the front validates them); a non-UTF-8 token reads as empty rather
    /// than panicking.
    pub fn get(&self, index: usize) -> Option<&str> {
        let end = *self.ends.get(index)? as usize;
        let start = if index == 0 {
            0
        } else {
            self.ends[index - 1] as usize
        };
        Some(std::str::from_utf8(&self.data[start..end]).unwrap_or(""))
    }

    /// Iterates over the tokens in order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = &str> + '_ {
        (0..self.len()).map(move |i| self.get(i).unwrap_or(""))
    }

    /// The tokens in `range`, sharing this list's buffer.
    pub fn slice(&self, range: Range<usize>) -> TokenList {
        assert!(range.start <= range.end && range.end <= self.len());
        if range.is_empty() {
            return TokenList::default();
        }
        let base = if range.start == 0 {
            0
        } else {
            self.ends[range.start - 1]
        };
        let end = self.ends[range.end - 1];
        TokenList {
            data: self.data.slice(base as usize..end as usize),
            ends: self.ends[range].iter().map(|e| e - base).collect(),
        }
    }

    /// The buffer of all tokens and the end offset of each, for storing the list without
    /// copying it into another format.
    pub fn raw_parts(&self) -> (&Bytes, &[u32]) {
        (&self.data, &self.ends)
    }

    /// Rebuilds a list from [`TokenList::raw_parts`]; `None` when the offsets do not fit the
    /// buffer.
    pub fn from_raw_parts(data: Bytes, ends: Vec<u32>) -> Option<TokenList> {
        let ordered = ends.windows(2).all(|pair| pair[0] <= pair[1]);
        let fits = ends.last().is_none_or(|&end| end as usize == data.len());
        (ordered && fits).then_some(TokenList { data, ends })
    }

    /// Splits the list into consecutive slices of at most `size` tokens.
    pub fn chunks(&self, size: usize) -> impl Iterator<Item = TokenList> + '_ {
        let size = size.max(1);
        (0..self.len())
            .step_by(size)
            .map(move |start| self.slice(start..(start + size).min(self.len())))
    }
}

impl<S: AsRef<str>> FromIterator<S> for TokenList {
    fn from_iter<I: IntoIterator<Item = S>>(iter: I) -> Self {
        let mut builder = TokenListBuilder::default();
        for token in iter {
            builder.push(token.as_ref());
        }
        builder.finish()
    }
}

/// Builds a [`TokenList`] one token at a time.
#[derive(Debug, Default)]
pub struct TokenListBuilder {
    data: BytesMut,
    ends: Vec<u32>,
}

impl TokenListBuilder {
    /// A builder with room for `tokens` tokens of about `bytes` bytes in all.
    pub fn with_capacity(tokens: usize, bytes: usize) -> Self {
        TokenListBuilder {
            data: BytesMut::with_capacity(bytes),
            ends: Vec::with_capacity(tokens),
        }
    }

    /// Appends a token.
    ///
    /// # Panics
    /// When the list would exceed 4 GiB of token bytes; the front's body limit stops far earlier.
    pub fn push(&mut self, token: &str) {
        self.data.extend_from_slice(token.as_bytes());
        let end = u32::try_from(self.data.len()).expect("token list exceeds 4 GiB");
        self.ends.push(end);
    }

    /// How many tokens so far.
    pub fn len(&self) -> usize {
        self.ends.len()
    }

    /// True when no token was pushed.
    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// The finished list.
    pub fn finish(self) -> TokenList {
        TokenList {
            data: self.data.freeze(),
            ends: self.ends,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn tokens_round_trip_and_slice() {
        let list: TokenList = ["aa", "bbb", "", "c"].into_iter().collect();
        assert_eq!(list.len(), 4);
        assert_eq!(list.iter().collect::<Vec<_>>(), ["aa", "bbb", "", "c"]);
        let mid = list.slice(1..3);
        assert_eq!(mid.iter().collect::<Vec<_>>(), ["bbb", ""]);
        assert_eq!(list.get(4), None);
        let (data, ends) = list.raw_parts();
        assert_eq!(
            TokenList::from_raw_parts(data.clone(), ends.to_vec()),
            Some(list.clone())
        );
        assert_eq!(TokenList::from_raw_parts(data.clone(), vec![3, 2]), None);
        assert_eq!(
            TokenList::from_raw_parts(bytes::Bytes::new(), vec![1]),
            None
        );
    }

    proptest! {
        #[test]
        fn chunks_cover_every_token_once_in_order(
            tokens in proptest::collection::vec("[0-9a-f]{0,12}", 0..200),
            size in 1usize..50,
        ) {
            let list: TokenList = tokens.iter().collect();
            let chunks: Vec<TokenList> = list.chunks(size).collect();
            prop_assert!(chunks.iter().all(|c| !c.is_empty() && c.len() <= size));
            let rejoined: Vec<String> = chunks.iter().flat_map(|c| c.iter().map(str::to_owned).collect::<Vec<_>>()).collect();
            prop_assert_eq!(rejoined, tokens);
        }
    }
}
