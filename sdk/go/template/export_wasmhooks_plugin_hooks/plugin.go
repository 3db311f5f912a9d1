// The smallest wasmhooks plugin in Go: it asks the node to download the
// model and tokenizer on every node. Build: sdk/go/build.sh DIR OUT.wasm
//
// wit-bindgen's Go bindings call these five functions; the types come from
// the generated package wasmhooks_plugin_types. The package wasmhooks
// (sdk/go/wasmhooks) keeps Go's garbage collector inside callbacks: defer
// wasmhooks.Collect() in each callback that allocates.
package export_wasmhooks_plugin_hooks

import (
	"wit_component/wasmhooks"
	"wit_component/wasmhooks_plugin_log"
	. "wit_component/wasmhooks_plugin_types"

	witTypes "go.bytecodealliance.org/pkg/wit/types"
)

type (
	unit   = witTypes.Unit
	result = witTypes.Result[unit, Failure]
)

func Describe() Manifest {
	return Manifest{
		Name:    "hello-go",
		Version: "0.1.0",
		Phases:  []string{wasmhooks.PhasePreDownload},
		Reads:   witTypes.Some([]string{}), // no keys: the phase is enough
		Observe: []string{},
	}
}

// Init may return the keys to read when the config decides them; None
// keeps the manifest's.
func Init(jobConfig string, pluginConfig string) witTypes.Result[witTypes.Option[[]string], Failure] {
	return witTypes.Ok[witTypes.Option[[]string], Failure](witTypes.None[[]string]())
}

// OnPhase gets a phase it listed by its place in Phases (here 0), and the
// values of the keys it reads in the order of Reads (here none).
func OnPhase(phase Phase, data Data) witTypes.Result[[]Update, Failure] {
	defer wasmhooks.Collect()
	wasmhooks_plugin_log.Log(Level_Info, "hello from Go at "+wasmhooks.PhasePreDownload)
	value := MakeValueText("MODEL_AND_TOKENIZER") // a string crosses as itself
	set := MakeUpdateSet(Entry{Key: wasmhooks.KeyLocalNodeDownloadModel, Value: value})
	return witTypes.Ok[[]Update, Failure]([]Update{set})
}

func SaveState() witTypes.Option[string] {
	return witTypes.None[string]()
}

func LoadState(state string) result {
	return witTypes.Ok[unit, Failure](unit{})
}
