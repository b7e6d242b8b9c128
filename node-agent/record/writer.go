// Package record writes and reads sidewatch trace format v1 (CSV: see
// docs/trace-format.md): `sidewatch-agent record` writes what the
// collectors measure, and the agent's replay source reads a recorded trace
// back into the live pipeline.
//
// This is the agent's adapter to the format; the detection engine's
// package owns the format and its fuzzed reader. Swapping this file's
// internals for that package keeps the agent's callers unchanged.
package record

import (
	"bufio"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"

	v1alpha1 "github.com/sidewatch/sidewatch/api/v1alpha1"
	"github.com/sidewatch/sidewatch/node-agent/collect"
)

// Version is the first metadata line of every trace.
const Version = "sidewatch-trace: v1"

// Header is the column line.
const Header = "time_ns,node,namespace,vmi,vcpu,event,value"

// SamplePrefix starts the event name of sample rows.
const SamplePrefix = "sample."

// IsCounterEvent reports whether name is one of the format's counters.
func IsCounterEvent(name string) bool {
	return slices.Contains(v1alpha1.AllCounterEvents, v1alpha1.CounterEvent(name))
}

// Meta is one `# key: value` metadata line.
type Meta struct{ Key, Value string }

// Writer writes a trace. It implements collect.Visitor, so Buffers.Drain
// feeds it directly; rows come out in the order visited, which Buffers
// keeps non-decreasing in time per vCPU.
type Writer struct {
	w    *bufio.Writer
	node string
	// rename maps collector event names to trace event names (stand-ins);
	// events that map to no trace counter are not written.
	rename map[string]string
	line   []byte
	rows   uint64
	err    error
}

// NewWriter writes the version line, the metadata and the header.
func NewWriter(w io.Writer, node string, meta []Meta) (*Writer, error) {
	if node == "" {
		return nil, fmt.Errorf("record: node name is empty")
	}
	tw := &Writer{w: bufio.NewWriterSize(w, 64<<10), node: node}
	fmt.Fprintf(tw.w, "# %s\n", Version)
	for _, m := range meta {
		if strings.ContainsAny(m.Key, ":\n") || strings.Contains(m.Value, "\n") {
			return nil, fmt.Errorf("record: metadata %q: keys may not hold ':' or newlines, values no newlines", m.Key)
		}
		fmt.Fprintf(tw.w, "# %s: %s\n", m.Key, m.Value)
	}
	tw.w.WriteString(Header + "\n")
	return tw, tw.w.Flush()
}

// Rename makes the writer write collector event from under trace name to
// (software stand-ins for hardware counters on machines without a PMU).
func (t *Writer) Rename(from, to string) {
	if t.rename == nil {
		t.rename = map[string]string{}
	}
	t.rename[from] = to
}

func (t *Writer) name(ev string) (string, bool) {
	if to, ok := t.rename[ev]; ok {
		ev = to
	}
	return ev, IsCounterEvent(ev)
}

func (t *Writer) row(time int64, s collect.StreamID, event string, sample bool, value uint64) {
	if t.err != nil {
		return
	}
	b := t.line[:0]
	b = strconv.AppendInt(b, time, 10)
	b = append(b, ',')
	b = append(b, t.node...)
	b = append(b, ',')
	b = append(b, s.Namespace...)
	b = append(b, ',')
	b = append(b, s.VMI...)
	b = append(b, ',')
	b = strconv.AppendInt(b, int64(s.VCPU), 10)
	b = append(b, ',')
	if sample {
		b = append(b, SamplePrefix...)
	}
	b = append(b, event...)
	b = append(b, ',')
	if sample {
		if value == 0 {
			b = append(b, '0')
		} else {
			b = append(b, "0x"...)
			b = strconv.AppendUint(b, value, 16)
		}
	} else {
		b = strconv.AppendUint(b, value, 10)
	}
	b = append(b, '\n')
	t.line = b
	_, t.err = t.w.Write(b)
	t.rows++
}

// Reading implements collect.Visitor: one counter row per measured event.
func (t *Writer) Reading(r *collect.Reading) {
	for i, ev := range r.Events {
		if !r.Has(i) {
			continue
		}
		if name, ok := t.name(ev); ok {
			t.row(r.Time, r.Stream, name, false, r.Values[i])
		}
	}
}

// Sample implements collect.Visitor: one sample row. Only guest
// instruction pointers are written; a host address (TCG, or a sample
// taken while the thread ran host code) says nothing about the guest and
// becomes 0, "unknown".
func (t *Writer) Sample(s *collect.Sample) {
	if name, ok := t.name(s.Event); ok {
		ip := s.IP
		if !s.Mode.Guest() {
			ip = 0
		}
		t.row(s.Time, s.Stream, name, true, ip)
	}
}

// BranchTargets implements collect.Visitor; the format has no branch rows.
func (t *Writer) BranchTargets(collect.StreamID, []uint64) {}

// Rows is how many rows were written.
func (t *Writer) Rows() uint64 { return t.rows }

// Flush writes buffered rows and returns the first write error.
func (t *Writer) Flush() error {
	if t.err != nil {
		return fmt.Errorf("record: %w", t.err)
	}
	if err := t.w.Flush(); err != nil {
		return fmt.Errorf("record: %w", err)
	}
	return nil
}
