//! Counts and times the phases of a job, keeping its figures across phases
//! and, through save/load state, across a resume: the seeds' stateful
//! metrics collector, doing what `plugins/metrics-collector` (Rust) does. At
//! `post_initialization` and `on_train_end` it publishes its figures under
//! `metrics`.
//!
//! Zig implements the functions that wit-bindgen's C bindings declare
//! (`plugin_h.zig` is `plugin.h` through `zig translate-c`). What a function
//! returns is freed by the bindings with `free`, so it comes from
//! `c_allocator`; its arguments are ours to free.

const std = @import("std");
const c = @import("plugin_h.zig");

const gpa = std.heap.c_allocator;
const Counts = std.json.ArrayHashMap(u64);
const Figures = std.json.ArrayHashMap(f64);
const State = struct { calls: Counts, last: Figures };

var started: ?std.Io.Timestamp = null;
var calls: Counts = .{};
/// Milliseconds from the first phase to the last call of each phase.
var at_ms: Figures = .{};
/// The last value of every numeric key it reads.
var last: Figures = .{};

const reads = [_][]const u8{ "loss", "eval_loss", "learning_rate", "step" };

fn slice(s: *const c.plugin_string_t) []const u8 {
    return if (s.len == 0) "" else s.ptr[0..s.len];
}

/// A string the bindings own (and free) from now on.
fn owned(text: []const u8) c.plugin_string_t {
    var s: c.plugin_string_t = undefined;
    c.plugin_string_dup_n(&s, text.ptr, text.len);
    return s;
}

fn strings(items: []const []const u8) c.plugin_list_string_t {
    const list = gpa.alloc(c.plugin_string_t, items.len) catch @panic("out of memory");
    for (items, list) |item, *s| s.* = owned(item);
    return .{ .ptr = list.ptr, .len = list.len };
}

fn fail(err: *c.exports_wasmhooks_plugin_hooks_failure_t, comptime what: []const u8, e: anyerror) bool {
    const message = std.fmt.allocPrint(gpa, what ++ ": {s}", .{@errorName(e)}) catch "out of memory";
    err.* = .{ .message = owned(message) };
    return false;
}

/// Remembers `key` with `value`, copying the key the first time it is seen.
fn put(comptime T: type, map: *std.json.ArrayHashMap(T), key: []const u8, value: T) !void {
    const entry = try map.map.getOrPut(gpa, key);
    if (!entry.found_existing) entry.key_ptr.* = try gpa.dupe(u8, key);
    entry.value_ptr.* = value;
}

export fn exports_wasmhooks_plugin_hooks_describe(ret: *c.exports_wasmhooks_plugin_hooks_manifest_t) void {
    ret.* = .{
        .name = owned("metrics-collector-zig"),
        .version = owned("0.1.0"),
        .phases = strings(&.{"*"}),
        .order = 100,
        .reads = .{ .is_some = true, .val = strings(&reads) },
        .observe = .{ .ptr = null, .len = 0 },
        .rank_zero_only = false,
    };
}

export fn exports_wasmhooks_plugin_hooks_init(job: *c.plugin_string_t, config: *c.plugin_string_t, ret: *c.plugin_option_list_string_t, _: *c.exports_wasmhooks_plugin_hooks_failure_t) bool {
    c.plugin_string_free(job);
    c.plugin_string_free(config);
    // The manifest's keys stand: the config adds none.
    ret.* = .{ .is_some = false, .val = .{ .ptr = null, .len = 0 } };
    return true;
}

export fn exports_wasmhooks_plugin_hooks_on_phase(
    phase: *c.exports_wasmhooks_plugin_hooks_phase_t,
    data: *c.exports_wasmhooks_plugin_hooks_data_t,
    ret: *c.exports_wasmhooks_plugin_hooks_list_update_t,
    err: *c.exports_wasmhooks_plugin_hooks_failure_t,
) bool {
    defer c.exports_wasmhooks_plugin_hooks_phase_free(phase);
    defer c.exports_wasmhooks_plugin_hooks_data_free(data);
    ret.* = .{ .ptr = null, .len = 0 };
    // It subscribes to `*`, so phases come by name, and it lists its keys,
    // so their values come in the order of `reads`.
    if (phase.tag != c.WASMHOOKS_PLUGIN_TYPES_PHASE_NAMED or data.tag != c.WASMHOOKS_PLUGIN_TYPES_DATA_LISTED)
        return fail(err, "on_phase", error.UnexpectedShape);
    const values = data.val.listed;
    const slots = if (values.len == 0) &[_]c.wasmhooks_plugin_types_option_value_t{} else values.ptr[0..values.len];
    onPhase(slice(&phase.val.named), slots, ret) catch |e| return fail(err, "on_phase", e);
    return true;
}

/// A value as a float, if it is a number: typed, so nothing to parse but a
/// number past 64 signed bits, which comes as JSON text.
fn number(value: *const c.wasmhooks_plugin_types_value_t) !?f64 {
    return switch (value.tag) {
        c.WASMHOOKS_PLUGIN_TYPES_VALUE_INTEGER => @floatFromInt(value.val.integer),
        c.WASMHOOKS_PLUGIN_TYPES_VALUE_FLOAT => value.val.float_,
        c.WASMHOOKS_PLUGIN_TYPES_VALUE_JSON => try std.fmt.parseFloat(f64, slice(&value.val.json)),
        else => null,
    };
}

fn onPhase(phase: []const u8, values: []const c.wasmhooks_plugin_types_option_value_t, ret: *c.exports_wasmhooks_plugin_hooks_list_update_t) !void {
    if (values.len != reads.len) return error.WrongValueCount;
    const io = std.Io.Threaded.global_single_threaded.io();
    const now = std.Io.Timestamp.now(io, .awake);
    const first = started orelse now;
    started = first;
    try put(u64, &calls, phase, (calls.map.get(phase) orelse 0) + 1);
    const elapsed: f64 = @floatFromInt(first.durationTo(now).nanoseconds);
    try put(f64, &at_ms, phase, elapsed / 1e6);
    for (values, reads) |*slot, key| {
        if (!slot.is_some) continue;
        if (try number(&slot.val)) |n| try put(f64, &last, key, n);
    }
    if (!std.mem.eql(u8, phase, "post_initialization") and !std.mem.eql(u8, phase, "on_train_end")) return;

    var total: u64 = 0;
    for (calls.map.values()) |n| total += n;
    const figures = .{ .calls = calls, .at_ms = at_ms, .last = last, .total_calls = total };
    const text = try std.json.Stringify.valueAlloc(gpa, figures, .{});
    defer gpa.free(text);
    const updates = try gpa.alloc(c.exports_wasmhooks_plugin_hooks_update_t, 1);
    // The figures are a map: they cross as JSON text.
    const value: c.wasmhooks_plugin_types_value_t = .{ .tag = c.WASMHOOKS_PLUGIN_TYPES_VALUE_JSON, .val = .{ .json = owned(text) } };
    updates[0] = .{ .tag = c.WASMHOOKS_PLUGIN_TYPES_UPDATE_SET, .val = .{ .set = .{ .key = owned("metrics"), .value = value } } };
    ret.* = .{ .ptr = updates.ptr, .len = updates.len };
}

export fn exports_wasmhooks_plugin_hooks_save_state(ret: *c.plugin_string_t) bool {
    const text = std.json.Stringify.valueAlloc(gpa, State{ .calls = calls, .last = last }, .{}) catch return false;
    defer gpa.free(text);
    ret.* = owned(text);
    return true;
}

export fn exports_wasmhooks_plugin_hooks_load_state(state: *c.plugin_string_t, err: *c.exports_wasmhooks_plugin_hooks_failure_t) bool {
    defer c.plugin_string_free(state);
    // Leaky: the restored maps live as long as the instance.
    const restored = std.json.parseFromSliceLeaky(State, gpa, slice(state), .{ .allocate = .alloc_always }) catch |e| return fail(err, "load_state", e);
    calls = restored.calls;
    last = restored.last;
    return true;
}
