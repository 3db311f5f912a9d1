//! The shapes of the functions a plugin exports, checked when it is
//! loaded. wasmtime checks an export's type only when an instance is bound,
//! and then says only what differs ("expected no `ok` type"): a component
//! built against one version's WIT and exporting it under another's name
//! would load, and fail at its first call without saying which function is
//! wrong. Each version lists its functions' shapes as text (`SHAPES` in its
//! module), rendered from the WIT types the same way as a component's are
//! here; loading a real plugin of each version checks the lists.

use std::fmt::Write as _;

use wasmtime::Engine;
use wasmtime::component::Component;
use wasmtime::component::types::{ComponentFunc, ComponentItem, Type};

/// Longest rendering kept: far past any version's, short enough to quote.
const MAX_TEXT: usize = 2048;
/// Deepest type rendered: the contract's nest a few levels.
const MAX_DEPTH: usize = 16;

/// Checks the functions of the hooks `component` exports under `name`
/// against `expected` (function name, shape); the first that differs (or
/// is missing) is named. An absent interface is left to the linker, whose
/// error says what the world lacks.
pub(crate) fn check(
    component: &Component,
    engine: &Engine,
    name: &str,
    expected: &[(&str, &str)],
) -> Result<(), String> {
    let ty = component.component_type();
    let Some(hooks) = ty.get_export(engine, name) else {
        return Ok(());
    };
    let ComponentItem::ComponentInstance(hooks) = hooks.ty else {
        return Err(format!("its export `{name}` is not an interface"));
    };
    for (func, want) in expected {
        let Some(found) = hooks.get_export(engine, func) else {
            return Err(format!("{name} has no function `{func}`"));
        };
        let ComponentItem::ComponentFunc(found) = found.ty else {
            return Err(format!("{name}'s `{func}` is not a function"));
        };
        let got = render_func(&found);
        if got != *want {
            return Err(format!(
                "{name}'s `{func}` has the shape `{}`, where that version has `{want}`: \
                 was it built against another version of the WIT?",
                crate::text::clean(&got, MAX_TEXT)
            ));
        }
    }
    Ok(())
}

/// A function's shape: `func(name: type, ...) -> type`.
pub(crate) fn render_func(func: &ComponentFunc) -> String {
    let mut out = String::from("func(");
    for (i, (name, ty)) in func.params().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        let _ = write!(out, "{name}: ");
        render(&ty, &mut out, 0);
    }
    out.push(')');
    for (i, ty) in func.results().enumerate() {
        out.push_str(if i == 0 { " -> " } else { ", " });
        render(&ty, &mut out, 0);
    }
    out
}

/// A type as WIT-like text, structural (fields and cases by name), cut at
/// [`MAX_DEPTH`] and [`MAX_TEXT`] (a cut rendering matches no version's).
fn render(ty: &Type, out: &mut String, depth: usize) {
    if depth > MAX_DEPTH || out.len() > MAX_TEXT {
        out.push('…');
        return;
    }
    let inner = |ty: &Type, out: &mut String| render(ty, out, depth + 1);
    let optional = |ty: Option<Type>, out: &mut String| match ty {
        Some(ty) => inner(&ty, out),
        None => out.push('_'),
    };
    match ty {
        Type::Bool => out.push_str("bool"),
        Type::S8 => out.push_str("s8"),
        Type::U8 => out.push_str("u8"),
        Type::S16 => out.push_str("s16"),
        Type::U16 => out.push_str("u16"),
        Type::S32 => out.push_str("s32"),
        Type::U32 => out.push_str("u32"),
        Type::S64 => out.push_str("s64"),
        Type::U64 => out.push_str("u64"),
        Type::Float32 => out.push_str("f32"),
        Type::Float64 => out.push_str("f64"),
        Type::Char => out.push_str("char"),
        Type::String => out.push_str("string"),
        Type::List(list) => {
            out.push_str("list<");
            inner(&list.ty(), out);
            out.push('>');
        }
        Type::Option(option) => {
            out.push_str("option<");
            inner(&option.ty(), out);
            out.push('>');
        }
        Type::Result(result) => {
            out.push_str("result<");
            optional(result.ok(), out);
            out.push_str(", ");
            optional(result.err(), out);
            out.push('>');
        }
        Type::Record(record) => {
            out.push_str("record { ");
            for (i, field) in record.fields().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                let _ = write!(out, "{}: ", field.name);
                inner(&field.ty, out);
            }
            out.push_str(" }");
        }
        Type::Tuple(tuple) => {
            out.push_str("tuple<");
            for (i, ty) in tuple.types().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                inner(&ty, out);
            }
            out.push('>');
        }
        Type::Variant(variant) => {
            out.push_str("variant { ");
            for (i, case) in variant.cases().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                out.push_str(case.name);
                if let Some(ty) = &case.ty {
                    out.push('(');
                    inner(ty, out);
                    out.push(')');
                }
            }
            out.push_str(" }");
        }
        Type::Enum(e) => {
            let _ = write!(
                out,
                "enum {{ {} }}",
                e.names().collect::<Vec<_>>().join(", ")
            );
        }
        Type::Flags(f) => {
            let _ = write!(
                out,
                "flags {{ {} }}",
                f.names().collect::<Vec<_>>().join(", ")
            );
        }
        // None of these is in any version of the contract.
        Type::Map(_) => out.push_str("map"),
        Type::Own(_) => out.push_str("own"),
        Type::Borrow(_) => out.push_str("borrow"),
        Type::Future(_) => out.push_str("future"),
        Type::Stream(_) => out.push_str("stream"),
        Type::ErrorContext => out.push_str("error-context"),
        Type::FixedLengthList(_) => out.push_str("fixed-length-list"),
    }
}
