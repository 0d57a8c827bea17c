//! The checkout's request vocabulary that more than one service takes: line items (inventory
//! reserves them, shipping ships them), their bounds and their validation.

use serde::{Deserialize, Serialize};

use crate::problem::Issues;

pub const MAX_SKU_LEN: usize = 64;
pub const MAX_QUANTITY: i64 = 1_000_000;
pub const MAX_ITEMS: usize = 100;

/// One line of an order.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Item {
    pub sku: String,
    pub quantity: i64,
}

/// `/items`: one to [`MAX_ITEMS`] lines, each a SKU and a quantity in 1..=[`MAX_QUANTITY`].
pub fn validate_items(items: &[Item], issues: &mut Issues) {
    if items.is_empty() {
        issues.add("/items", "must contain at least one item");
    } else if items.len() > MAX_ITEMS {
        issues.add("/items", format!("must contain at most {MAX_ITEMS} items"));
    }
    for (i, item) in items.iter().enumerate() {
        issues.text(&format!("/items/{i}/sku"), &item.sku, MAX_SKU_LEN);
        if !(1..=MAX_QUANTITY).contains(&item.quantity) {
            issues.add(
                format!("/items/{i}/quantity"),
                format!("must be between 1 and {MAX_QUANTITY}"),
            );
        }
    }
}
