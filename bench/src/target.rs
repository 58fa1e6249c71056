//! A target of PRODUCT.md as one run measured it: what the report lists and
//! each scenario that judges its own targets builds.

use serde::Serialize;

/// One target of PRODUCT.md and whether this run met it.
#[derive(Debug, Clone, Serialize)]
pub struct Target {
    pub name: &'static str,
    /// What was measured, in `unit`.
    pub value: f64,
    pub unit: &'static str,
    /// The baseline it is divided by, when the target is a ratio.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub baseline: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ratio: Option<f64>,
    /// The requirement, e.g. ">= 0.6 of bare heed".
    pub required: String,
    pub met: bool,
    /// How far from the threshold: measured / required for ">=" targets,
    /// required / measured for "<=" targets (>= 1 when met).
    pub margin: f64,
}
