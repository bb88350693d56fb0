//! Property: splitting a job's requests into parts changes what it bills only
//! by the rounding of each part's record.

use proptest::prelude::*;
use rust_decimal::Decimal;

use super::*;

fn price() -> PriceEntry {
    let table: PriceTable = toml::from_str(include_str!("../../../config/prices.toml")).unwrap();
    table
        .latest("anthropic", "claude-haiku-4-5")
        .unwrap()
        .clone()
}

fn request_tokens() -> impl Strategy<Value = TokenCounts> {
    (0u64..5_000, 0u64..2_000, 0u64..500, 0u64..500, 0u64..1_000).prop_map(
        |(input, cached_input, cache_write, cache_write_1h, output)| TokenCounts {
            input,
            cached_input,
            cache_write,
            cache_write_1h,
            output,
        },
    )
}

fn unrounded(price: &PriceEntry, tokens: &TokenCounts) -> Decimal {
    rate_sum(&price.batch, tokens, false, (Decimal::ONE, Decimal::ONE)).unwrap()
}

proptest! {
    #[test]
    fn split_bills_same_total(
        requests in prop::collection::vec(request_tokens(), 1..200),
        cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..8),
    ) {
        let price = price();
        let mut boundaries: Vec<usize> = cuts.iter().map(|cut| cut.index(requests.len())).collect();
        boundaries.sort_unstable();
        boundaries.dedup();

        let mut whole = TokenCounts::default();
        requests.iter().for_each(|tokens| whole.add(tokens));
        let single = price.price(&whole).unwrap();

        let mut parts = Vec::new();
        let mut start = 0;
        for end in boundaries.iter().copied().chain([requests.len()]) {
            if end > start {
                let mut part = TokenCounts::default();
                requests[start..end].iter().for_each(|tokens| part.add(tokens));
                parts.push(part);
                start = end;
            }
        }
        let billed: i64 = parts.iter().map(|part| price.price(part).unwrap().billed.0).sum();
        let exact: Decimal = parts.iter().map(|part| unrounded(&price, part)).sum();

        // Before rounding, the parts add up to the whole exactly.
        prop_assert_eq!(exact, unrounded(&price, &whole));
        // Each record rounds once by at most half a micro-dollar.
        let difference = (billed - single.billed.0).abs();
        prop_assert!(difference * 2 <= parts.len() as i64 + 1, "difference {} over {} parts", difference, parts.len());
        for part in &parts {
            let cost = price.price(part).unwrap();
            prop_assert_eq!(cost.list - cost.discount(), cost.billed);
        }
    }
}
