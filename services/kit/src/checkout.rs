//! The checkout's request vocabulary that more than one service takes: line items (inventory
//! reserves them, shipping ships them) and the shipping address (shipping, and the orders entry
//! point of the choreographed checkout), their bounds and their validation.

use serde::{Deserialize, Serialize};

use crate::problem::Issues;

pub const MAX_SKU_LEN: usize = 64;
pub const MAX_QUANTITY: i64 = 1_000_000;
pub const MAX_ITEMS: usize = 100;

/// One line of an order.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Item {
    #[schema(
        min_length = 1,
        max_length = 64,
        pattern = r"^[^\u0000-\u001F\u007F-\u009F]*$"
    )]
    pub sku: String,
    #[schema(minimum = 1, maximum = 1_000_000)]
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

/// A shipping address.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Address {
    #[schema(
        min_length = 1,
        max_length = 200,
        pattern = r"^[^\u0000-\u001F\u007F-\u009F]*$"
    )]
    pub name: String,
    #[schema(
        min_length = 1,
        max_length = 200,
        pattern = r"^[^\u0000-\u001F\u007F-\u009F]*$"
    )]
    pub line1: String,
    #[schema(
        min_length = 1,
        max_length = 100,
        pattern = r"^[^\u0000-\u001F\u007F-\u009F]*$"
    )]
    pub city: String,
    #[schema(
        min_length = 1,
        max_length = 20,
        pattern = r"^[^\u0000-\u001F\u007F-\u009F]*$"
    )]
    pub postal_code: String,
    #[schema(pattern = "^[A-Z]{2}$")]
    pub country: String,
}

/// An [`Address`] at JSON Pointer `at` (for example `/address`).
pub fn validate_address(at: &str, a: &Address, issues: &mut Issues) {
    issues.text(&format!("{at}/name"), &a.name, 200);
    issues.text(&format!("{at}/line1"), &a.line1, 200);
    issues.text(&format!("{at}/city"), &a.city, 100);
    issues.text(&format!("{at}/postal_code"), &a.postal_code, 20);
    if a.country.len() != 2 || !a.country.bytes().all(|b| b.is_ascii_uppercase()) {
        issues.add(
            format!("{at}/country"),
            "must be two upper-case letters (ISO 3166-1 alpha-2)",
        );
    }
}
