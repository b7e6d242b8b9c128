//go:build linux

package capabilities

import (
	"unsafe"

	"golang.org/x/sys/unix"
)

// perfOpenProbe opens and closes one event on the calling thread.
func perfOpenProbe(p probeAttr) error {
	attr := unix.PerfEventAttr{
		Type:   p.Type,
		Config: p.Config,
		Size:   uint32(unsafe.Sizeof(unix.PerfEventAttr{})),
		Bits:   unix.PerfBitDisabled,
	}
	if p.ExcludeHost {
		attr.Bits |= unix.PerfBitExcludeHost
	}
	if p.BranchStack {
		attr.Sample = 100003
		attr.Sample_type = unix.PERF_SAMPLE_IP | unix.PERF_SAMPLE_BRANCH_STACK
		attr.Branch_sample_type = unix.PERF_SAMPLE_BRANCH_USER | unix.PERF_SAMPLE_BRANCH_ANY_CALL | unix.PERF_SAMPLE_BRANCH_IND_JUMP
	}
	fd, err := unix.PerfEventOpen(&attr, 0, -1, -1, unix.PERF_FLAG_FD_CLOEXEC)
	if err != nil {
		return err
	}
	return unix.Close(fd)
}
