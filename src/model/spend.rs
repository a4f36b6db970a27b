//! What an agent's model calls cost: the tokens one response used, a model API host's prices, a
//! job's budget (dollars, tokens, requests; any of them) and the spend counted against it.

use serde::{Deserialize, Serialize};

use super::Invalid;

/// Which API a model host speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ApiKind {
    /// The Messages API.
    Anthropic,
    /// Chat Completions and Responses.
    Openai,
}

/// The tokens one response used, as the API reported them (or as kiln estimated them).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    /// Input tokens billed at the full price (cache reads not among them).
    pub input: u64,
    /// Input tokens read from the provider's prompt cache.
    pub cached: u64,
    pub output: u64,
}

impl Usage {
    pub fn tokens(&self) -> u64 {
        self.input
            .saturating_add(self.cached)
            .saturating_add(self.output)
    }
}

/// A model API host's prices, in US dollars per million tokens.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Price {
    pub input_per_mtok: f64,
    pub output_per_mtok: f64,
    /// Cache reads; default: the input price.
    #[serde(default)]
    pub cached_per_mtok: Option<f64>,
}

impl Price {
    /// What `usage` costs at these prices.
    pub fn cost(&self, usage: &Usage) -> f64 {
        let cached = self.cached_per_mtok.unwrap_or(self.input_per_mtok);
        (usage.input as f64 * self.input_per_mtok
            + usage.cached as f64 * cached
            + usage.output as f64 * self.output_per_mtok)
            / 1_000_000.0
    }

    /// Refuses a negative or non-finite price, naming it.
    pub fn check(&self, host: &str) -> Result<(), Invalid> {
        let prices = [
            ("input_per_mtok", Some(self.input_per_mtok)),
            ("output_per_mtok", Some(self.output_per_mtok)),
            ("cached_per_mtok", self.cached_per_mtok),
        ];
        for (name, price) in prices {
            if let Some(p) = price
                && !(p.is_finite() && p >= 0.0)
            {
                return Err(Invalid(format!(
                    "`{name}` of {host}: {p} is not a price (dollars per million tokens, 0 or more)"
                )));
            }
        }
        Ok(())
    }
}

/// What a job may spend on model calls, across all its attempts; a field left out is no limit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Budget {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usd: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests: Option<u64>,
}

impl Budget {
    /// Whether the budget sets no limit at all.
    pub fn is_unlimited(&self) -> bool {
        self.usd.is_none() && self.tokens.is_none() && self.requests.is_none()
    }

    /// This budget with each field left out taken from `default`.
    pub fn or(self, default: Budget) -> Budget {
        Budget {
            usd: self.usd.or(default.usd),
            tokens: self.tokens.or(default.tokens),
            requests: self.requests.or(default.requests),
        }
    }

    /// Refuses a budget that is not a budget, or one over `ceiling` (the operator's), naming
    /// the field.
    pub fn check(&self, ceiling: &Budget) -> Result<(), Invalid> {
        if let Some(usd) = self.usd
            && !(usd.is_finite() && usd >= 0.0)
        {
            return Err(Invalid(format!(
                "`budget.usd`: {usd} is not an amount of dollars (0 or more)"
            )));
        }
        let over = |name: &str, asked: Option<f64>, most: Option<f64>| match (asked, most) {
            (Some(asked), Some(most)) if asked > most => Err(Invalid(format!(
                "`budget.{name}`: {asked} is over the operator's ceiling of {most}"
            ))),
            _ => Ok(()),
        };
        over("usd", self.usd, ceiling.usd)?;
        over(
            "tokens",
            self.tokens.map(|t| t as f64),
            ceiling.tokens.map(|t| t as f64),
        )?;
        over(
            "requests",
            self.requests.map(|r| r as f64),
            ceiling.requests.map(|r| r as f64),
        )
    }
}

/// Model calls counted: how many, their tokens, their cost, and how many were estimated
/// (their usage could not be read).
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Spend {
    pub requests: u64,
    pub usage: Usage,
    pub usd: f64,
    pub estimated: u64,
}

impl Spend {
    /// Adds one call.
    pub fn add(&mut self, usage: Usage, usd: f64, estimated: bool) {
        self.requests += 1;
        self.usage.input = self.usage.input.saturating_add(usage.input);
        self.usage.cached = self.usage.cached.saturating_add(usage.cached);
        self.usage.output = self.usage.output.saturating_add(usage.output);
        self.usd += usd;
        self.estimated += u64::from(estimated);
    }

    /// Adds another spend.
    pub fn merge(&mut self, other: &Spend) {
        self.requests += other.requests;
        self.usage.input = self.usage.input.saturating_add(other.usage.input);
        self.usage.cached = self.usage.cached.saturating_add(other.usage.cached);
        self.usage.output = self.usage.output.saturating_add(other.usage.output);
        self.usd += other.usd;
        self.estimated += other.estimated;
    }

    /// What was spent after `earlier` (a reading of the same, growing spend).
    pub fn since(&self, earlier: &Spend) -> Spend {
        Spend {
            requests: self.requests.saturating_sub(earlier.requests),
            usage: Usage {
                input: self.usage.input.saturating_sub(earlier.usage.input),
                cached: self.usage.cached.saturating_sub(earlier.usage.cached),
                output: self.usage.output.saturating_sub(earlier.usage.output),
            },
            usd: (self.usd - earlier.usd).max(0.0),
            estimated: self.estimated.saturating_sub(earlier.estimated),
        }
    }

    /// What of `budget` this spend has used up, if anything: the next request is refused.
    pub fn exhausted(&self, budget: &Budget) -> Option<String> {
        if let Some(most) = budget.requests
            && self.requests >= most
        {
            return Some(format!("{} of {most} requests made", self.requests));
        }
        if let Some(most) = budget.tokens
            && self.usage.tokens() >= most
        {
            return Some(format!("{} of {most} tokens used", self.usage.tokens()));
        }
        if let Some(most) = budget.usd
            && self.usd >= most
        {
            return Some(format!("${:.4} of ${most:.2} spent", self.usd));
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cost_is_per_million_tokens_with_cache_reads_at_their_own_price() {
        let price = Price {
            input_per_mtok: 3.0,
            output_per_mtok: 15.0,
            cached_per_mtok: Some(0.3),
        };
        let usage = Usage {
            input: 1_000_000,
            cached: 1_000_000,
            output: 100_000,
        };
        assert!((price.cost(&usage) - (3.0 + 0.3 + 1.5)).abs() < 1e-9);
        let no_cache_price = Price {
            cached_per_mtok: None,
            ..price
        };
        assert!((no_cache_price.cost(&usage) - (3.0 + 3.0 + 1.5)).abs() < 1e-9);
        assert!(
            Price {
                input_per_mtok: -1.0,
                ..price
            }
            .check("h")
            .is_err()
        );
        assert!(
            Price {
                output_per_mtok: f64::NAN,
                ..price
            }
            .check("h")
            .is_err()
        );
    }

    #[test]
    fn a_budget_is_exhausted_by_whichever_limit_comes_first() {
        let budget = Budget {
            usd: Some(1.0),
            tokens: Some(1000),
            requests: Some(3),
        };
        let mut spend = Spend::default();
        let small = Usage {
            input: 100,
            cached: 0,
            output: 50,
        };
        spend.add(small, 0.1, false);
        assert_eq!(spend.exhausted(&budget), None);
        spend.add(small, 0.1, false);
        spend.add(small, 0.1, true);
        assert_eq!(spend.exhausted(&budget).unwrap(), "3 of 3 requests made");
        assert_eq!(spend.estimated, 1);
        let mut dear = Spend::default();
        dear.add(Usage::default(), 1.5, false);
        assert!(
            dear.exhausted(&budget)
                .unwrap()
                .contains("$1.5000 of $1.00")
        );
        assert_eq!(Spend::default().exhausted(&Budget::default()), None);
    }

    #[test]
    fn a_budget_over_the_ceiling_or_negative_is_refused_naming_the_field() {
        let ceiling = Budget {
            usd: Some(5.0),
            tokens: None,
            requests: Some(100),
        };
        let asked = Budget {
            usd: Some(10.0),
            ..Budget::default()
        };
        assert!(
            asked
                .check(&ceiling)
                .unwrap_err()
                .0
                .contains("`budget.usd`")
        );
        let asked = Budget {
            requests: Some(101),
            ..Budget::default()
        };
        assert!(
            asked
                .check(&ceiling)
                .unwrap_err()
                .0
                .contains("`budget.requests`")
        );
        let asked = Budget {
            usd: Some(-1.0),
            ..Budget::default()
        };
        assert!(asked.check(&Budget::default()).is_err());
        let asked = Budget {
            tokens: Some(1),
            ..Budget::default()
        };
        assert_eq!(asked.or(ceiling).requests, Some(100));
        assert!(asked.check(&ceiling).is_ok());
    }
}
