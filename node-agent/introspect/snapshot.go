package introspect

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
)

// RecordedMonitor replays a monitor's answers: what SaveSnapshot records so
// that a saved guest can be introspected (and benchmarked) without QEMU.
type RecordedMonitor struct {
	HMPAnswers map[string]string          `json:"hmp"`
	QMPAnswers map[string]json.RawMessage `json:"qmp"`
}

func qmpKey(command string, args any) string {
	if args == nil {
		return command
	}
	b, _ := json.Marshal(args)
	return command + " " + string(b)
}

// HMP answers a recorded human monitor command.
func (r *RecordedMonitor) HMP(_ context.Context, command string) (string, error) {
	if s, ok := r.HMPAnswers[command]; ok {
		return s, nil
	}
	return "", fmt.Errorf("recorded monitor: no answer to %q", command)
}

// QMP answers a recorded QMP command.
func (r *RecordedMonitor) QMP(_ context.Context, command string, args any) (json.RawMessage, error) {
	if s, ok := r.QMPAnswers[qmpKey(command, args)]; ok {
		return s, nil
	}
	return nil, fmt.Errorf("recorded monitor: no answer to %s", qmpKey(command, args))
}

// Close does nothing.
func (r *RecordedMonitor) Close() error { return nil }

// Snapshot file names inside a snapshot directory.
const (
	SnapshotMemory  = "memory"
	SnapshotMonitor = "monitor.json"
)

// LoadSnapshot returns the Source of a snapshot directory SaveSnapshot wrote.
func LoadSnapshot(dir string) (Source, error) {
	b, err := os.ReadFile(filepath.Join(dir, SnapshotMonitor))
	if err != nil {
		return Source{}, err
	}
	var rec RecordedMonitor
	if err := json.Unmarshal(b, &rec); err != nil {
		return Source{}, fmt.Errorf("%s: %w", SnapshotMonitor, err)
	}
	return Source{MemoryFile: filepath.Join(dir, SnapshotMemory), Monitor: &rec}, nil
}

// SaveSnapshot copies a running guest's RAM (sparsely: zero pages take no
// disk) and the monitor answers introspection needs into dir. With pause,
// the guest is stopped for the copy (a few hundred milliseconds for a small
// guest) so that the copy is consistent; without, the copy is as torn as a
// live read.
func SaveSnapshot(ctx context.Context, src Source, dir string, pause bool) (err error) {
	if err := src.validate(); err != nil {
		return err
	}
	mon := src.Monitor
	if mon == nil {
		q, err := DialQMP(ctx, src.QMPSocket)
		if err != nil {
			return err
		}
		defer q.Close()
		mon = q
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	rec := &RecordedMonitor{HMPAnswers: map[string]string{}, QMPAnswers: map[string]json.RawMessage{}}
	b, layout, err := openBacking(ctx, src, mon)
	if err != nil {
		return err
	}
	defer b.close()
	if pause {
		if _, err := mon.QMP(ctx, "stop", nil); err != nil {
			return fmt.Errorf("pause guest: %w", err)
		}
		defer func() {
			if _, cerr := mon.QMP(context.WithoutCancel(ctx), "cont", nil); cerr != nil {
				err = errors.Join(err, fmt.Errorf("resume guest: %w", cerr))
			}
		}()
	}
	regs, err := mon.HMP(ctx, "info registers -a")
	if err != nil {
		return err
	}
	rec.HMPAnswers["info registers -a"] = regs
	// Record the layout in the form Open parses, whatever the source was.
	var mt strings.Builder
	mt.WriteString("FlatView #0\n AS \"memory\", root: system\n Root memory region: system\n")
	for _, r := range layout {
		fmt.Fprintf(&mt, "  %016x-%016x (prio 0, ram): ram @%016x\n", r.GPA, r.GPA+r.Size-1, r.Offset)
	}
	rec.HMPAnswers["info mtree -f"] = mt.String()
	rec.QMPAnswers["query-memdev"], _ = json.Marshal([]memdev{{ID: "ram", Size: b.size()}})

	out, err := os.Create(filepath.Join(dir, SnapshotMemory))
	if err != nil {
		return err
	}
	defer out.Close()
	const chunk = 2 << 20
	buf := make([]byte, chunk)
	zero := make([]byte, chunk)
	for off := uint64(0); off < b.size(); off += chunk {
		n := uint64(chunk)
		if off+n > b.size() {
			n = b.size() - off
		}
		if err := b.readAt(buf[:n], off); err != nil {
			return fmt.Errorf("copy guest RAM at %#x: %w", off, err)
		}
		if bytes.Equal(buf[:n], zero[:n]) {
			continue
		}
		if _, err := out.WriteAt(buf[:n], int64(off)); err != nil {
			return err
		}
	}
	if err := out.Truncate(int64(b.size())); err != nil {
		return err
	}
	js, err := json.MarshalIndent(rec, "", " ")
	if err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(dir, SnapshotMonitor), js, 0o644)
}

var _ io.Closer = (*RecordedMonitor)(nil)
