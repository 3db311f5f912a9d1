// Counts and times the phases of a job, keeping its figures across phases
// and, through save/load state, across a resume: the seeds' stateful metrics
// collector, doing what `plugins/metrics-collector` (Rust) does. At
// `post_initialization` and `on_train_end` it publishes its figures under
// `metrics`.
package export_wasmhooks_plugin_hooks

import (
	"encoding/json"
	"time"

	"wit_component/wasmhooks"
	. "wit_component/wasmhooks_plugin_types"

	witTypes "go.bytecodealliance.org/pkg/wit/types"
)

type (
	unit   = witTypes.Unit
	result = witTypes.Result[unit, Failure]
)

type state struct {
	Calls map[string]uint64  `json:"calls"`
	Last  map[string]float64 `json:"last"`
}

var (
	started time.Time
	calls   = map[string]uint64{}
	// Milliseconds from the first phase to the last call of each phase.
	atMs = map[string]float64{}
	// The last value of every numeric key it reads.
	last = map[string]float64{}
)

// The keys it reads; the host sends their values in this order.
var reads = []string{"loss", "eval_loss", "learning_rate", "step"}

func Describe() Manifest {
	return Manifest{
		Name:    "metrics-collector-go",
		Version: "0.1.0",
		Phases:  []string{"*"},
		Order:   100,
		Reads:   witTypes.Some(reads),
		Observe: []string{},
	}
}

func Init(jobConfig string, pluginConfig string) witTypes.Result[witTypes.Option[[]string], Failure] {
	// The manifest's keys stand: the config adds none.
	return witTypes.Ok[witTypes.Option[[]string], Failure](witTypes.None[[]string]())
}

// number is a value as a float, if it is a number.
func number(value Value) (float64, bool) {
	switch value.Tag() {
	case Value_Integer:
		return float64(value.Integer()), true
	case Value_Float:
		return value.Float(), true
	case Value_Json:
		// A number outside 64 signed bits.
		var n float64
		err := json.Unmarshal([]byte(value.Json()), &n)
		return n, err == nil
	}
	return 0, false
}

func OnPhase(which Phase, data Data) witTypes.Result[[]Update, Failure] {
	defer wasmhooks.Collect()
	now := time.Now()
	if started.IsZero() {
		started = now
	}
	// It subscribes to `*`, so phases come by name.
	if which.Tag() != Phase_Named || data.Tag() != Data_Listed {
		return witTypes.Err[[]Update](Failure{Message: "want a phase by name and listed values"})
	}
	phase := which.Named()
	calls[phase]++
	atMs[phase] = float64(now.Sub(started).Nanoseconds()) / 1e6
	// Values come in the order of `reads`, typed: no JSON to parse.
	for i, value := range data.Listed() {
		if value.IsSome() {
			if n, ok := number(value.Some()); ok {
				last[reads[i]] = n
			}
		}
	}
	if phase != "post_initialization" && phase != "on_train_end" {
		return witTypes.Ok[[]Update, Failure]([]Update{})
	}
	var total uint64
	for _, n := range calls {
		total += n
	}
	figures, err := json.Marshal(map[string]any{"calls": calls, "at_ms": atMs, "last": last, "total_calls": total})
	if err != nil {
		return witTypes.Err[[]Update](Failure{Message: err.Error()})
	}
	set := MakeUpdateSet(Entry{Key: "metrics", Value: MakeValueJson(string(figures))})
	return witTypes.Ok[[]Update, Failure]([]Update{set})
}

func SaveState() witTypes.Option[string] {
	text, err := json.Marshal(state{Calls: calls, Last: last})
	if err != nil {
		return witTypes.None[string]()
	}
	return witTypes.Some(string(text))
}

func LoadState(text string) result {
	var s state
	if err := json.Unmarshal([]byte(text), &s); err != nil {
		return witTypes.Err[unit](Failure{Message: "state: " + err.Error()})
	}
	if s.Calls == nil || s.Last == nil {
		return witTypes.Err[unit](Failure{Message: "state: want an object with calls and last"})
	}
	calls, last = s.Calls, s.Last
	return witTypes.Ok[unit, Failure](unit{})
}
