//! The Extism twin of `plugins/bench-ema`: keeps an exponential moving
//! average of `loss` and returns it as `loss_ema`. Extism passes bytes, so
//! the data map comes in as JSON and the updates go back as JSON.

use std::cell::Cell;

use extism_pdk::{FnResult, Json, plugin_fn};
use serde_json::{Map, Value, json};

thread_local! {
    static EMA: Cell<Option<f64>> = const { Cell::new(None) };
}

#[plugin_fn]
pub fn on_step_end(Json(data): Json<Map<String, Value>>) -> FnResult<Json<Value>> {
    let loss = data
        .get("loss")
        .and_then(Value::as_f64)
        .ok_or_else(|| extism_pdk::Error::msg("no loss"))?;
    let ema = EMA.get().map_or(loss, |prev| 0.9 * prev + 0.1 * loss);
    EMA.set(Some(ema));
    Ok(Json(json!({ "loss_ema": ema })))
}
