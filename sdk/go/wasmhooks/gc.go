// Package wasmhooks keeps Go's garbage collector where a component may run
// it. The component model forbids calls out of a component while the host
// is handing it arguments (cabi_realloc) or letting it free results
// (post-return), and wasmtime traps such a call ("cannot leave component
// instance"). Go's collector, left to itself, can finish a cycle inside
// cabi_realloc and read the clock there, a call out. Importing this package
// turns automatic collection off; Collect, deferred at the top of each
// callback, collects when the heap has grown enough, inside the callback,
// where calls out are allowed.
//
// sdk/go/build.sh puts this package in the module as wit_component/wasmhooks.
package wasmhooks

import (
	"runtime"
	"runtime/debug"
	"runtime/metrics"
)

// Collection starts once this much has been allocated since the last one,
// or as much as was live after it, whichever is more (Go's default pacing).
const minGrowth = 4 << 20

var (
	sample     = []metrics.Sample{{Name: "/gc/heap/allocs:bytes"}, {Name: "/gc/heap/live:bytes"}}
	allocsAtGC uint64
	liveAtGC   uint64
)

func init() {
	debug.SetGCPercent(-1)
}

// Collect runs a collection if the heap has grown enough since the last.
func Collect() {
	metrics.Read(sample)
	allocs := sample[0].Value.Uint64()
	if allocs-allocsAtGC < max(minGrowth, liveAtGC) {
		return
	}
	runtime.GC()
	metrics.Read(sample)
	allocsAtGC, liveAtGC = sample[0].Value.Uint64(), sample[1].Value.Uint64()
}
