"""A small feature pipeline over transactions, for the pipeline tests (in
this process and in a subprocess on daft's Ray runner) and the benchmark."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from daft import DataType

from wasmhooks.pipeline import Node, Pipeline, node


@node(inputs=["amount"], dtype=DataType.float64(), version="1")
def log_amount(amount):
    return pc.ln(pc.add(amount.to_arrow(), 1.0))


@node(inputs=["amount", "qty"], dtype=DataType.float64(), version="1")
def unit_price(amount, qty):
    return pc.divide(amount.to_arrow(), pc.max_element_wise(qty.to_arrow(), 1).cast(pa.float64()))


@node(inputs=["category"], dtype=DataType.string(), version="1")
def category_upper(category):
    return pc.utf8_upper(category.to_arrow())


@node(inputs=["merchant"], dtype=DataType.string(), version="1")
def merchant_clean(merchant):
    """Free text to a merchant key: lower case, no store numbers or
    punctuation, single spaces (the usual cleaning before a join)."""
    text = pc.utf8_lower(merchant.to_arrow())
    text = pc.replace_substring_regex(text, r"[#*]?\d+|[^a-z ]", "")
    return pc.utf8_trim_whitespace(pc.replace_substring_regex(text, r" +", " "))


@node(inputs=["log_amount", "unit_price"], dtype=DataType.float64(), version="1")
def score(log_amount, unit_price):
    return pc.add(pc.multiply(log_amount.to_arrow(), 2.0), unit_price.to_arrow())


#: Every node, declared out of dependency order on purpose.
NODES: list[Node] = [score, log_amount, unit_price, category_upper, merchant_clean]


def pipeline() -> Pipeline:
    return Pipeline(NODES, name="features")


def transactions(rows: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    names = np.array(["ACME Foods #12", "Shell 0042*", "The Book-Nook", "GAMESTOP  #7"])
    return {
        "merchant": rng.choice(names, rows),
        "amount": rng.gamma(2.0, 50.0, rows),
        "qty": rng.integers(0, 10, rows),
        "category": rng.choice(np.array(["food", "fuel", "books", "games"]), rows),
    }


MERCHANTS = {
    "ACME Foods #12": "acme foods",
    "Shell 0042*": "shell",
    "The Book-Nook": "the booknook",
    "GAMESTOP  #7": "gamestop",
}


def expected(cols: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The features, computed with NumPy: what the pipeline must produce."""
    log_amount = np.log1p(cols["amount"])
    unit = cols["amount"] / np.maximum(cols["qty"], 1)
    return {
        "log_amount": log_amount,
        "unit_price": unit,
        "category_upper": np.char.upper(cols["category"].astype(str)),
        "merchant_clean": np.array([MERCHANTS[m] for m in cols["merchant"]]),
        "score": 2.0 * log_amount + unit,
    }
