//! Python values to the host's values and back, without JSON text.

use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyDict, PyFloat, PyInt, PyList, PyString, PyTuple};
use serde_json::{Map, Number, Value};

/// Python values nested deeper than this are refused: the host's values are
/// data, and a cycle or a bomb of nesting must not recurse without end.
const MAX_DEPTH: usize = 64;

/// Where a value sits in what Python passed (`job_config`, `batch.rows`,
/// `values[3]`), for errors. Built as the conversion descends and written
/// out only when one fails: a map's keys and a list's items cost no string.
#[derive(Clone, Copy)]
enum Place<'a> {
    Root(&'a str),
    Key(&'a Place<'a>, &'a str),
    Index(&'a Place<'a>, usize),
}

impl std::fmt::Display for Place<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Place::Root(name) => f.write_str(name),
            Place::Key(Place::Root(""), key) => f.write_str(key),
            Place::Key(parent, key) => write!(f, "{parent}.{key}"),
            Place::Index(parent, i) => write!(f, "{parent}[{i}]"),
        }
    }
}

/// A Python value as a host value: None, bool, int, float, str, and lists,
/// tuples and dicts (with str keys) of them. `place` names it in errors.
pub(crate) fn to_value(obj: &Bound<'_, PyAny>, place: &str, depth: usize) -> PyResult<Value> {
    convert(obj, &Place::Root(place), depth)
}

fn convert(obj: &Bound<'_, PyAny>, place: &Place<'_>, depth: usize) -> PyResult<Value> {
    if depth > MAX_DEPTH {
        return Err(PyValueError::new_err(format!(
            "{place}: nested more than {MAX_DEPTH} deep"
        )));
    }
    if obj.is_none() {
        return Ok(Value::Null);
    }
    // bool before int: Python's bool is an int.
    if obj.is_instance_of::<PyBool>() {
        return Ok(Value::Bool(obj.extract::<bool>()?));
    }
    if obj.is_instance_of::<PyInt>() {
        if let Ok(n) = obj.extract::<i64>() {
            return Ok(Value::from(n));
        }
        if let Ok(n) = obj.extract::<u64>() {
            return Ok(Value::from(n));
        }
        return Err(PyValueError::new_err(format!(
            "{place}: the integer does not fit in 64 bits"
        )));
    }
    if obj.is_instance_of::<PyFloat>() {
        let f = obj.extract::<f64>()?;
        return Number::from_f64(f)
            .map(Value::Number)
            .ok_or_else(|| PyValueError::new_err(format!("{place}: {f} is not a finite number")));
    }
    if obj.is_instance_of::<PyString>() {
        return Ok(Value::String(obj.extract::<String>()?));
    }
    if let Ok(dict) = obj.cast::<PyDict>() {
        return map_of(dict, place, depth + 1).map(Value::Object);
    }
    if let Ok(list) = obj.cast::<PyList>() {
        // The items there when the conversion starts, read from a copy: a
        // subclass's `__iter__` that never ends, or an item's `.item()` that
        // appends to the list, cannot make it run on.
        let list = PyList::new(obj.py(), list.iter())?;
        return items(list.iter(), place, depth);
    }
    if let Ok(tuple) = obj.cast::<PyTuple>() {
        return items(tuple.iter(), place, depth);
    }
    // Scalars that are not Python's own (numpy, torch) convert through
    // their float or int value.
    if let Ok(item) = obj.call_method0("item")
        && !item.is(obj)
    {
        return convert(&item, place, depth + 1);
    }
    Err(PyTypeError::new_err(format!(
        "{place}: a {} cannot cross into a plugin (None, bool, int, float, str, list, tuple or dict)",
        obj.get_type().name()?
    )))
}

/// A list's or tuple's items as a host array.
fn items<'py>(
    items: impl Iterator<Item = Bound<'py, PyAny>>,
    place: &Place<'_>,
    depth: usize,
) -> PyResult<Value> {
    let mut out = Vec::new();
    for (i, item) in items.enumerate() {
        out.push(convert(&item, &Place::Index(place, i), depth + 1)?);
    }
    Ok(Value::Array(out))
}

pub(crate) fn dict_to_map(
    dict: &Bound<'_, PyDict>,
    place: &str,
    depth: usize,
) -> PyResult<Map<String, Value>> {
    map_of(dict, &Place::Root(place), depth)
}

fn map_of(
    dict: &Bound<'_, PyDict>,
    place: &Place<'_>,
    depth: usize,
) -> PyResult<Map<String, Value>> {
    let mut map = Map::new();
    // A copy: converting a value may run Python code (`.item()`) that
    // changes the dict, and iterating a dict that changes size panics.
    for (key, value) in dict.copy()?.iter() {
        let key: String = key
            .extract()
            .map_err(|_| PyTypeError::new_err(format!("{place}: keys must be str")))?;
        let value = convert(&value, &Place::Key(place, &key), depth)?;
        map.insert(key, value);
    }
    Ok(map)
}

/// A host value as a Python value.
pub(crate) fn to_py<'py>(py: Python<'py>, value: &Value) -> PyResult<Bound<'py, PyAny>> {
    Ok(match value {
        Value::Null => py.None().into_bound(py),
        Value::Bool(b) => PyBool::new(py, *b).to_owned().into_any(),
        Value::Number(n) => match (n.as_i64(), n.as_u64()) {
            (Some(i), _) => i.into_pyobject(py)?.into_any(),
            (None, Some(u)) => u.into_pyobject(py)?.into_any(),
            _ => n.as_f64().unwrap_or(f64::NAN).into_pyobject(py)?.into_any(),
        },
        Value::String(s) => PyString::new(py, s).into_any(),
        Value::Array(items) => {
            let list = PyList::empty(py);
            for item in items {
                list.append(to_py(py, item)?)?;
            }
            list.into_any()
        }
        Value::Object(map) => map_to_py(py, map)?.into_any(),
    })
}

pub(crate) fn map_to_py<'py>(
    py: Python<'py>,
    map: &Map<String, Value>,
) -> PyResult<Bound<'py, PyDict>> {
    let dict = PyDict::new(py);
    for (k, v) in map {
        dict.set_item(k, to_py(py, v)?)?;
    }
    Ok(dict)
}
