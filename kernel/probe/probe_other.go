//go:build !linux

package probe

import "fmt"

func unsupported() error {
	return fmt.Errorf("eBPF probes need Linux: %w", ErrNotSupported)
}

func haveKernelBTF() error        { return unsupported() }
func haveRawTracepoint() error    { return unsupported() }
func haveTracing() error          { return unsupported() }
func haveFentry() error           { return unsupported() }
func havePerfEventProgram() error { return unsupported() }
func haveSoftwareSampling() error { return unsupported() }
func haveKVMExitTracepoint() error {
	return unsupported()
}
func haveSchedSwitch() error          { return unsupported() }
func haveFunction(string) error       { return unsupported() }
func haveKVMBusLockExit() error       { return unsupported() }
func haveCPUFlag(string) error        { return unsupported() }
func InKallsyms(string) (bool, error) { return false, unsupported() }
