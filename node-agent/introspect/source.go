package introspect

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
)

// Source says where a guest's RAM and monitor are. Give MemoryFile or PID,
// and QMPSocket or Monitor.
type Source struct {
	// PID is the QEMU process: guest RAM is read through /proc/PID/mem at
	// the address where QEMU mapped it. Works for every memory backend,
	// including the anonymous RAM KubeVirt uses by default.
	PID int
	// MemoryFile is the file of a shared memory backend
	// (memory-backend-file,share=on), mapped read-only.
	MemoryFile string
	// QMPSocket is QEMU's QMP socket; registers and the RAM layout come
	// from it.
	QMPSocket string
	// Monitor is used instead of dialling QMPSocket: a recorded snapshot,
	// or a pass-through of the monitor libvirt owns. Open does not close it.
	Monitor Monitor
	// MemoryBackend is the id of the RAM memory backend (default: the only
	// one query-memdev lists).
	MemoryBackend string
	// Layout overrides the guest physical RAM layout (default: from
	// `info mtree -f`, else Q35Layout of the backend size).
	Layout RAMLayout
	// SystemMap is a symbol profile used when kallsyms cannot be found in
	// guest memory.
	SystemMap *SymbolProfile
}

func (s Source) validate() error {
	switch {
	case s.PID == 0 && s.MemoryFile == "":
		return errors.New("introspect: Source needs MemoryFile (the shared memory backend file) or PID (the QEMU process)")
	case s.PID < 0:
		return fmt.Errorf("introspect: Source.PID %d is not a process id", s.PID)
	case s.QMPSocket == "" && s.Monitor == nil:
		return errors.New("introspect: Source needs QMPSocket (or Monitor): vCPU registers come from QEMU's monitor")
	}
	return nil
}

// ramBackend picks the RAM memory backend.
func ramBackend(ctx context.Context, m Monitor, want string) (memdev, error) {
	devs, err := queryMemdevs(ctx, m)
	if err != nil {
		return memdev{}, err
	}
	if want != "" {
		for _, d := range devs {
			if d.ID == want {
				return d, nil
			}
		}
		return memdev{}, fmt.Errorf("introspect: no memory backend %q (query-memdev lists %d)", want, len(devs))
	}
	if len(devs) != 1 {
		ids := make([]string, len(devs))
		for i, d := range devs {
			ids[i] = d.ID
		}
		return memdev{}, fmt.Errorf("introspect: %d memory backends (%s): set Source.MemoryBackend", len(devs), strings.Join(ids, ", "))
	}
	return devs[0], nil
}

// qemuRAMAddress finds where QEMU pid mapped the backend: by the backend's
// file for file and memfd backends, else the one anonymous read-write
// mapping of exactly the backend's size.
func qemuRAMAddress(ctx context.Context, m Monitor, pid int, dev memdev) (uint64, error) {
	var memPath string
	if raw, err := m.QMP(ctx, "qom-get", map[string]string{"path": "/objects/" + dev.ID, "property": "mem-path"}); err == nil {
		_ = json.Unmarshal(raw, &memPath)
	}
	f, err := os.Open(fmt.Sprintf("/proc/%d/maps", pid))
	if err != nil {
		return 0, fmt.Errorf("introspect: QEMU memory map: %w", err)
	}
	defer f.Close()
	var anon []uint64
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 5 {
			continue
		}
		se := strings.SplitN(fields[0], "-", 2)
		if len(se) != 2 {
			continue
		}
		start, err1 := strconv.ParseUint(se[0], 16, 64)
		end, err2 := strconv.ParseUint(se[1], 16, 64)
		off, err3 := strconv.ParseUint(fields[2], 16, 64)
		if err1 != nil || err2 != nil || err3 != nil || end <= start {
			continue
		}
		path := ""
		if len(fields) >= 6 {
			path = strings.Join(fields[5:], " ")
		}
		switch {
		case memPath != "" && path == memPath && off == 0 && end-start >= dev.Size:
			return start, nil
		case strings.HasPrefix(path, "/memfd:"+dev.ID) && off == 0 && end-start >= dev.Size:
			return start, nil
		case path == "" && strings.HasPrefix(fields[1], "rw") && end-start == dev.Size:
			anon = append(anon, start)
		}
	}
	if err := sc.Err(); err != nil {
		return 0, err
	}
	if len(anon) == 1 {
		return anon[0], nil
	}
	return 0, fmt.Errorf("introspect: cannot tell where QEMU %d maps memory backend %q (%d bytes): %d candidate mappings; pass the backend file instead", pid, dev.ID, dev.Size, len(anon))
}
