package probes

import "testing"

// StartGuest runs the real agent behind the test muxer for the external
// tests; it returns the hybrid socket path and the VM's directory.
func StartGuest(t *testing.T, maxConcurrent int) (socket, dir string) {
	vm := startGuest(t, maxConcurrent)
	return vm.mux.Path, vm.dir
}
