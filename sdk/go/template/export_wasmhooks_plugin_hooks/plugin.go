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

func Init(jobConfig string, pluginConfig string) result {
	return witTypes.Ok[unit, Failure](unit{})
}

func OnPhase(phase string, data []Entry) witTypes.Result[[]Update, Failure] {
	defer wasmhooks.Collect()
	wasmhooks_plugin_log.Log(Level_Info, "hello from Go at "+phase)
	set := MakeUpdateSet(Entry{Key: wasmhooks.KeyLocalNodeDownloadModel, Value: `"MODEL_AND_TOKENIZER"`})
	return witTypes.Ok[[]Update, Failure]([]Update{set})
}

func SaveState() witTypes.Option[string] {
	return witTypes.None[string]()
}

func LoadState(state string) result {
	return witTypes.Ok[unit, Failure](unit{})
}
