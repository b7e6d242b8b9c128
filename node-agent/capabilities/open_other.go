//go:build !linux

package capabilities

import "syscall"

// perfOpenProbe: perf_event_open is Linux only.
func perfOpenProbe(probeAttr) error { return syscall.ENOSYS }
